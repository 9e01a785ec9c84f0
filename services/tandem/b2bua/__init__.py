"""tandem's call control, sans-I/O: the call and leg machines of the back-to-back user agent.

Theory of operation
-------------------
A call crosses tandem as two SIP dialogs: the caller's, whose UAS is a `Call` on the edge
where the INVITE arrived (the call's owner), and the callee's, whose UAC is a `Leg` on the
edge that serves the target trunk (the same edge or another). One call has one `Call` and,
over its failovers, one `Leg` per attempt. They talk over the bus only: the call sends the
leg LegCommands (create, cancel, ack, bye, relay), the leg sends the call LegEvents
(progress, answered, failed, ended, relayed requests and answers).

Each machine is `handle(event, now) -> list[Action]`: the edge feeds it what happened
(`events`: a SIP message for its dialog, a bus message for it, a timer) with the wall-clock
time, and executes what it returns (`actions`: send this response or request, publish this
event, create or command a leg, arm or stop a timer, forget me). A machine does no I/O and
reads no clock; its state is an `Enum` and its transitions are one table, `(state, event
type) -> handler`, opened by a comment that reads against RFC 3261 (see `call` and `leg`).
A pair the table does not hold raises `ProtocolError`, which the edge logs, counts and
answers (500 for a request); it never falls through silently.

What belongs where: SIP transactions (retransmissions, timers A-M, matching) are
`tandem.sip`'s, below; sockets, NATS, spans and metrics are the edge's, above. The machines
own the dialogs (`tandem.sip.dialog`), the call's targets and failover, and what crosses
between the two dialogs (`relay`).
"""

from tandem.b2bua.call import Call, CallState
from tandem.b2bua.leg import Leg, LegState
from tandem.b2bua.machine import Machine, ProtocolError

__all__ = ["Call", "CallState", "Leg", "LegState", "Machine", "ProtocolError"]
