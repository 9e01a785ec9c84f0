"""The leader lease: which callstate replica applies the call events (one at a time; see
`tandem.lease`)."""

LEASE_KEY = "leader"  # in KV TANDEM_CALLSTATE
LEASE_TTL_S = 6.0
