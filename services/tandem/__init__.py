"""tandem: an inter-trunk SIP session manager on a NATS bus."""

__version__ = "0.1.0"
