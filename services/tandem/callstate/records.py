"""How call events become an active-call record and, when the call ends, its CDR (no I/O).

A record keeps the per-call `seq` of the last event it took, so an event seen again (a
redelivery, a duplicate publish) is recognised and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from tandem.pb import tandem_pb2 as pb

Kind = pb.CallEvent.Kind
State = pb.CallState
EDGE_LOST = "edge_lost"
EDGE_LOST_REASON = "edge lost"


def is_duplicate(call: pb.ActiveCall, event: pb.CallEvent) -> bool:
    if event.seq:
        return event.seq <= call.last_seq
    # an edge that numbers nothing: fall back to "this exact event is already recorded"
    return any(seen == event for seen in call.timeline)


def new_call(event: pb.CallEvent) -> pb.ActiveCall:
    return pb.ActiveCall(
        call_id=event.call_id,
        edge=event.edge,
        ingress_trunk=event.ingress_trunk,
        state=State.ROUTING,
        invite_unix_ms=event.time_unix_ms,
    )


def _attempt(call: pb.ActiveCall, event: pb.CallEvent) -> pb.Attempt:
    for attempt in call.attempts:
        if attempt.leg_id == event.leg_id:
            break
    else:  # a leg event whose leg_attempt we never saw: record the leg anyway
        attempt = call.attempts.add(
            leg_id=event.leg_id, start_unix_ms=event.time_unix_ms, attempt=len(call.attempts) + 1
        )
    if event.trunk:
        attempt.trunk = event.trunk
    if event.sip_call_id:
        attempt.sip_call_id = event.sip_call_id
    if event.leg_edge:
        attempt.edge = event.leg_edge
    return attempt


def _pending(call: pb.ActiveCall) -> pb.Attempt | None:
    """The leg still up: the one an `answered` event that names no leg is about."""
    return next((a for a in reversed(call.attempts) if not a.end_unix_ms), None)


def _started(call: pb.ActiveCall, event: pb.CallEvent) -> None:
    call.invite_unix_ms = event.time_unix_ms or call.invite_unix_ms
    call.sip_call_id = event.sip_call_id
    call.called, call.calling = event.called, event.calling
    call.transferred_from = event.transferred_from


def _routed(call: pb.ActiveCall, event: pb.CallEvent) -> None:
    call.usage, call.route = event.usage, event.route
    call.normalized_called = event.normalized_called
    if call.state == State.ROUTING:
        call.state = State.TRYING


def _leg_attempt(call: pb.ActiveCall, event: pb.CallEvent) -> None:
    attempt = _attempt(call, event)
    attempt.start_unix_ms = event.time_unix_ms
    attempt.called, attempt.calling = event.called, event.calling
    attempt.attempt = event.attempt or attempt.attempt


def _leg_progress(call: pb.ActiveCall, event: pb.CallEvent) -> None:
    attempt = _attempt(call, event)
    attempt.status, attempt.reason = event.status, event.reason
    if call.state in (State.ROUTING, State.TRYING):
        call.state = State.RINGING


def _leg_answered(call: pb.ActiveCall, event: pb.CallEvent) -> None:
    attempt = _attempt(call, event)
    attempt.status, attempt.reason = event.status or 200, event.reason or "OK"
    attempt.answer_unix_ms = event.time_unix_ms
    call.media = event.media or call.media


def _leg_failed(call: pb.ActiveCall, event: pb.CallEvent) -> None:
    attempt = _attempt(call, event)
    attempt.status, attempt.reason = event.status, event.reason
    attempt.received_status = event.received_status
    attempt.end_unix_ms = event.time_unix_ms


def _answered(call: pb.ActiveCall, event: pb.CallEvent) -> None:
    call.state = State.ANSWERED
    call.answer_unix_ms = event.time_unix_ms
    call.media = event.media or call.media
    leg = _attempt(call, event) if event.leg_id else _pending(call)
    if leg is not None:
        leg.answer_unix_ms = leg.answer_unix_ms or event.time_unix_ms
        leg.status = leg.status if leg.status >= 200 else 200


def _ended(call: pb.ActiveCall, event: pb.CallEvent) -> None:
    call.state = State.ENDED
    call.media = event.media or call.media
    call.media_note = event.media_note


APPLY: dict[int, Callable[[pb.ActiveCall, pb.CallEvent], None]] = {
    Kind.STARTED: _started,
    Kind.ROUTED: _routed,
    Kind.LEG_ATTEMPT: _leg_attempt,
    Kind.LEG_PROGRESS: _leg_progress,
    Kind.LEG_ANSWERED: _leg_answered,
    Kind.LEG_FAILED: _leg_failed,
    Kind.ANSWERED: _answered,
    Kind.ENDED: _ended,
}


def apply(call: pb.ActiveCall, event: pb.CallEvent) -> None:
    """Fold one new event into the record (the caller has checked it is not a duplicate).

    An event of a kind this version does not know is kept in the timeline and changes
    nothing else: a newer edge may send kinds an older callstate has not learnt.
    """
    call.timeline.append(event)
    if event.seq:
        call.last_seq = event.seq
    call.edge = call.edge or event.edge
    call.ingress_trunk = call.ingress_trunk or event.ingress_trunk
    call.trace_id = call.trace_id or event.trace_id
    handler = APPLY.get(event.kind)
    if handler is not None:
        handler(call, event)


def ended_event(call: pb.ActiveCall, time_unix_ms: int, ended_by: str, reason: str) -> pb.CallEvent:
    """The `ended` event callstate writes itself when it closes a call (edge lost)."""
    return pb.CallEvent(
        call_id=call.call_id,
        kind=Kind.ENDED,
        seq=call.last_seq + 1,
        time_unix_ms=time_unix_ms,
        edge=call.edge,
        ingress_trunk=call.ingress_trunk,
        ended_by=ended_by,
        reason=reason,
    )


def _quality(record: pb.Cdr, end: pb.CallEvent) -> None:
    """An anchored call's RTP figures: the caller's on the CDR, each leg's on its attempt."""
    legs = {a.leg_id: a for a in record.attempts}
    for quality in end.quality:
        if not quality.leg_id:
            record.ingress_media.CopyFrom(quality)
        elif quality.leg_id in legs:
            legs[quality.leg_id].media.CopyFrom(quality)


def cdr(call: pb.ActiveCall, end: pb.CallEvent) -> pb.Cdr:
    """The finished-call record, after Lync's VoipDetails/SessionDetails and Teams' report."""
    end_ms = end.time_unix_ms
    attempts = [pb.Attempt() for _ in call.attempts]
    for copy, leg in zip(attempts, call.attempts, strict=True):
        copy.CopyFrom(leg)
        copy.end_unix_ms = copy.end_unix_ms or end_ms  # a leg still up ends with the call
    answered = next((a for a in attempts if a.answer_unix_ms), None)
    sent = answered or (attempts[-1] if attempts else None)
    record = pb.Cdr(
        call_id=call.call_id,
        sip_call_ids=[s for s in [call.sip_call_id, *(a.sip_call_id for a in attempts)] if s],
        ingress_trunk=call.ingress_trunk,
        egress_trunk=answered.trunk if answered else "",
        attempts=attempts,
        called_received=call.called,
        calling_received=call.calling,
        called_sent=sent.called if sent else "",
        calling_sent=sent.calling if sent else "",
        invite_unix_ms=call.invite_unix_ms,
        answer_unix_ms=call.answer_unix_ms,
        end_unix_ms=end_ms,
        ended_by=end.ended_by,
        end_reason=end.end_reason or (EDGE_LOST if end.ended_by == EDGE_LOST else ""),
        failover_count=max(0, len(attempts) - 1),
        trace_id=call.trace_id,
        edge=call.edge,
        usage=call.usage,
        route=call.route,
        transferred_from=call.transferred_from,
        transferred_to=end.transferred_to,
        media=end.media or call.media,
        media_note=end.media_note,
    )
    _quality(record, end)
    if call.answer_unix_ms:
        record.duration_s = max(0, end_ms - call.answer_unix_ms) / 1000
        record.final_status, record.final_reason = 200, "OK"
        if end.ended_by == EDGE_LOST:
            record.final_reason = end.reason
    elif end.ended_by == EDGE_LOST:  # nobody saw how the call ended
        record.final_status, record.final_reason = 0, end.reason
    else:
        # the caller got the ended event's status; failing that, the last leg's failure
        last = attempts[-1] if attempts else None
        record.final_status = end.status or (last.status if last and last.status >= 300 else 0)
        record.final_reason = end.reason or (last.reason if last else "")
    return record
