"""Simulated trunks on PJSIP (pjsua2): PBX phones and a PSTN gateway for tests and demos."""
