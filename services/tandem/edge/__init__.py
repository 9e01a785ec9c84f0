"""The edge: where trunks meet tandem: SIP sockets, admission, call control, egress legs, health."""
