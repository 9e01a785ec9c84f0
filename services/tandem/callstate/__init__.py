"""callstate: the record of every call and leg (active calls, CDRs, trunk counters) and its API."""
