"""The transaction layer driven through an in-memory link with a fake clock."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.sip import Request, make_response, parse
from tandem.sip.dialog import Dialog, DialogSet, DialogState
from tandem.sip.transaction import (
    Addr,
    CancelReceived,
    Event,
    InviteClientTransaction,
    MessageRejected,
    RequestReceived,
    ResponseReceived,
    State,
    Timers,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    _ClientTransaction,
)

from .sip_corpus import CASES

UAC_ADDR: Addr = ("10.0.0.1", 5060)
UAS_ADDR: Addr = ("10.0.0.2", 5060)


class Network:
    """Two layers joined by a link that delays every datagram and loses some, seeded."""

    def __init__(
        self,
        *,
        loss: float = 0.0,
        seed: int = 0,
        delay: float = 0.01,
        transport: str = "UDP",
        uas_trying: bool = True,
    ) -> None:
        self.now = 0.0
        self.loss = loss
        self.delay = delay
        self.random = random.Random(seed)
        self.uac = TransactionLayer(UAC_ADDR, transport=transport)
        self.uas = TransactionLayer(UAS_ADDR, transport=transport, auto_trying=uas_trying)
        self.in_flight: list[tuple[float, int, Addr, bytes, Addr]] = []
        self.sent: list[tuple[float, Addr, bytes]] = []  # (time, to, data), lost ones included
        self.events: list[tuple[float, str, Event]] = []
        self.on_event: Callable[[str, Event], None] = lambda side, event: None
        self.lost = 0
        self._seq = 0

    def layer(self, addr: Addr) -> TransactionLayer:
        return self.uac if addr == UAC_ADDR else self.uas

    def flush(self) -> None:
        for src, layer in ((UAC_ADDR, self.uac), (UAS_ADDR, self.uas)):
            for data, dst in layer.datagrams_to_send():
                self.sent.append((self.now, dst, data))
                if self.random.random() < self.loss:
                    self.lost += 1
                else:
                    self._seq += 1
                    heapq.heappush(
                        self.in_flight, (self.now + self.delay, self._seq, dst, data, src)
                    )

    def _deliver(self, side: str, events: list[Event]) -> None:
        for event in events:
            self.events.append((self.now, side, event))
            self.on_event(side, event)

    def run(self, until: float) -> None:
        self.flush()
        while True:
            times = [t for t in (self.uac.get_timer(), self.uas.get_timer()) if t is not None]
            if self.in_flight:
                times.append(self.in_flight[0][0])
            if not times or min(times) > until:
                self.now = until
                return
            self.now = max(self.now, min(times))
            if self.in_flight and self.in_flight[0][0] <= self.now:
                _, _, dst, data, src = heapq.heappop(self.in_flight)
                side = "uac" if dst == UAC_ADDR else "uas"
                self._deliver(side, self.layer(dst).receive(data, src, self.now))
            for side, layer in (("uac", self.uac), ("uas", self.uas)):
                timer = layer.get_timer()
                if timer is not None and timer <= self.now:
                    self._deliver(side, layer.handle_timer(self.now))
            self.flush()

    def sent_times(self, first_line: bytes, to: Addr) -> list[float]:
        return [t for t, dst, d in self.sent if dst == to and d.startswith(first_line)]

    def of(self, side: str, kind: type) -> list[tuple[float, Event]]:
        return [(t, e) for t, s, e in self.events if s == side and isinstance(e, kind)]


def request(method: str = "OPTIONS", cseq: int = 1, to_tag: str = "") -> Request:
    to = "<sip:gw@10.0.0.2>" + (f";tag={to_tag}" if to_tag else "")
    return Request(
        method,
        "sip:gw@10.0.0.2",
        [
            ("From", "<sip:pbx@10.0.0.1>;tag=f1"),
            ("To", to),
            ("Call-ID", "call-1"),
            ("CSeq", f"{cseq} {method}"),
            ("Max-Forwards", "70"),
            ("Contact", "<sip:pbx@10.0.0.1>"),
        ],
    )


def wire(method: str, branch: str, *, via_host: str = "10.0.0.1", extra: str = "") -> bytes:
    """The bytes of `request(method)` as the UAC would send them, with its Via."""
    req = request(method)
    req.headers.prepend("Via", f"SIP/2.0/UDP {via_host};branch={branch}{extra}")
    return bytes(req)


def intervals(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


def test_non_invite_retransmits_at_timer_e_and_gives_up_at_f() -> None:
    net = Network(loss=1.0)
    key = net.uac.send_request(request(), UAS_ADDR, 0.0)
    net.run(40)
    times = net.sent_times(b"OPTIONS", UAS_ADDR)
    assert intervals(times)[:5] == [0.5, 1, 2, 4, 4]  # E doubles up to T2
    assert all(i == 4 for i in intervals(times)[4:]) and len(times) == 11
    ((when, timeout),) = net.of("uac", TransactionTimeout)
    assert when == 32 and timeout == TransactionTimeout(key, "F")  # 64*T1


def test_invite_retransmits_at_timer_a_and_gives_up_at_b() -> None:
    net = Network(loss=1.0)
    key = net.uac.send_request(request("INVITE"), UAS_ADDR, 0.0)
    net.run(40)
    times = net.sent_times(b"INVITE", UAS_ADDR)
    assert intervals(times) == [0.5, 1, 2, 4, 8, 16]  # A doubles with no cap
    assert net.of("uac", TransactionTimeout) == [(32.0, TransactionTimeout(key, "B"))]
    assert net.uac.transaction_state(key) is State.TERMINATED and len(net.uac) == 0


def test_timers_follow_configured_t1_t2() -> None:
    layer = TransactionLayer(UAC_ADDR, timers=Timers(t1=0.1, t2=0.4))
    layer.send_request(request(), UAS_ADDR, 0.0)
    sent = [0.0]
    while (when := layer.get_timer()) is not None and when < 7:
        layer.handle_timer(when)
        if layer.datagrams_to_send():
            sent.append(when)
    assert intervals(sent)[:5] == [0.1, 0.2, 0.4, 0.4, 0.4]
    assert layer.get_timer() is None and len(layer) == 0  # F at 6.4


def test_reliable_transport_never_retransmits() -> None:
    net = Network(loss=1.0, transport="TCP")
    net.uac.send_request(request("INVITE"), UAS_ADDR, 0.0)
    net.uac.send_request(request("OPTIONS", 2), UAS_ADDR, 0.0)
    net.run(40)
    assert len(net.sent) == 2
    assert sorted(e.timer for _, e in net.of("uac", TransactionTimeout)) == ["B", "F"]


def test_provisional_stops_a_and_a_non_2xx_is_acked_once_per_copy() -> None:
    net = Network()

    def uas(side: str, event: Event) -> None:
        if side == "uas" and isinstance(event, RequestReceived) and event.key:
            net.uas.respond(event.key, make_response(event.request, 486, to_tag="t"), net.now)

    net.on_event = uas
    key = net.uac.send_request(request("INVITE"), UAS_ADDR, 0.0)
    net.run(1)
    assert net.sent_times(b"INVITE", UAS_ADDR) == [0.0]
    responses = [e.response.status for _, e in net.of("uac", ResponseReceived)]
    assert responses == [100, 486]
    assert net.uac.transaction_state(key) is State.COMPLETED
    # The ACK is absorbed by the server transaction: the TU never sees it.
    assert [e.request.method for _, e in net.of("uas", RequestReceived)] == ["INVITE"]
    (uas_key,) = {e.key for _, e in net.of("uas", RequestReceived)}
    assert uas_key is not None and net.uas.transaction_state(uas_key) is State.CONFIRMED
    net.run(40)
    assert len(net.sent_times(b"ACK", UAS_ADDR)) == 1
    assert net.uac.transaction_state(key) is State.TERMINATED  # D at 32 s
    assert net.uas.transaction_state(uas_key) is State.TERMINATED  # I at T4
    assert {e.key for _, e in net.of("uac", TransactionTerminated)} >= {key}


def test_server_answers_a_retransmission_with_the_last_response() -> None:
    layer = TransactionLayer(UAS_ADDR)
    data = wire("INVITE", "z9hG4bKa1")
    (event,) = layer.receive(data, UAC_ADDR, 0.0)
    assert isinstance(event, RequestReceived) and event.key is not None
    (trying,) = layer.datagrams_to_send()
    assert trying[0].startswith(b"SIP/2.0 100 Trying")
    assert layer.receive(data, UAC_ADDR, 0.1) == []  # absorbed...
    assert layer.datagrams_to_send() == [trying]  # ...and answered with the last response
    layer.respond(event.key, make_response(event.request, 180, to_tag="x"), 0.2)
    (ringing,) = layer.datagrams_to_send()
    layer.receive(data, UAC_ADDR, 0.3)
    assert layer.datagrams_to_send() == [ringing]


def test_non_invite_server_keeps_its_answer_for_j() -> None:
    layer = TransactionLayer(UAS_ADDR)
    data = wire("OPTIONS", "z9hG4bKj1")
    (event,) = layer.receive(data, UAC_ADDR, 0.0)
    assert isinstance(event, RequestReceived) and event.key is not None
    assert layer.receive(data, UAC_ADDR, 0.1) == [] and layer.datagrams_to_send() == []
    layer.respond(event.key, make_response(event.request, 200), 0.2)
    (answer,) = layer.datagrams_to_send()
    layer.receive(data, UAC_ADDR, 5.0)
    assert layer.datagrams_to_send() == [answer]
    assert layer.get_timer() == pytest.approx(32.2)  # J = 64*T1
    assert layer.handle_timer(32.2) == [TransactionTerminated(event.key)]


def test_server_retransmits_a_non_2xx_at_g_until_h() -> None:
    net = Network(loss=1.0)
    layer = net.uas
    raw = wire("INVITE", "z9hG4bKg1")
    (event,) = layer.receive(raw, UAC_ADDR, 0.0)
    assert isinstance(event, RequestReceived) and event.key is not None
    layer.respond(event.key, make_response(event.request, 503, to_tag="x"), 0.0)
    net.run(40)
    times = net.sent_times(b"SIP/2.0 503", UAC_ADDR)
    assert intervals(times)[:5] == [0.5, 1, 2, 4, 4]  # G doubles up to T2
    assert net.of("uas", TransactionTimeout) == [(32.0, TransactionTimeout(event.key, "H"))]


def test_2xx_is_retransmitted_until_the_ack_and_l_reports_a_missing_ack() -> None:
    net = Network(loss=1.0)
    raw = wire("INVITE", "z9hG4bKl1")
    (event,) = net.uas.receive(raw, UAC_ADDR, 0.0)
    assert isinstance(event, RequestReceived) and event.key is not None
    net.uas.respond(event.key, make_response(event.request, 200, to_tag="x"), 0.0)
    # a retransmitted INVITE in Accepted starts nothing new
    assert net.uas.receive(raw, UAC_ADDR, 0.2) == []
    net.run(40)
    times = net.sent_times(b"SIP/2.0 200", UAC_ADDR)
    assert intervals(times)[:5] == [0.5, 1, 2, 4, 4]
    assert net.of("uas", TransactionTimeout) == [(32.0, TransactionTimeout(event.key, "L"))]


def test_the_ack_for_a_2xx_stops_its_retransmission_and_reaches_the_tu_once() -> None:
    layer = TransactionLayer(UAS_ADDR)
    raw = wire("INVITE", "z9hG4bKk1")
    (event,) = layer.receive(raw, UAC_ADDR, 0.0)
    assert event.key is not None  # type: ignore[union-attr]
    layer.respond(event.key, make_response(event.request, 200, to_tag="x"), 0.0)  # type: ignore[union-attr]
    ack = (
        raw.replace(b"INVITE sip", b"ACK sip")
        .replace(b"1 INVITE", b"1 ACK")
        .replace(b"z9hG4bKk1", b"z9hG4bKk2")
        .replace(b"<sip:gw@10.0.0.2>\r\n", b"<sip:gw@10.0.0.2>;tag=x\r\n")
    )
    (acked,) = layer.receive(ack, UAC_ADDR, 0.7)
    assert isinstance(acked, RequestReceived) and acked.key == event.key  # type: ignore[union-attr]
    assert layer.receive(ack, UAC_ADDR, 0.8) == []
    layer.datagrams_to_send()
    assert layer.handle_timer(31.0) == [] and layer.datagrams_to_send() == []
    # a stray ACK, matching nothing, goes to the TU without a key
    (stray,) = layer.receive(ack.replace(b"1 ACK", b"7 ACK"), UAC_ADDR, 1.0)
    assert isinstance(stray, RequestReceived) and stray.key is None


def test_cancel_matches_the_invite_and_gets_200() -> None:
    net = Network()

    def uas(side: str, event: Event) -> None:
        if side == "uas" and isinstance(event, CancelReceived):
            invite = net.uas._transactions[event.key].request
            net.uas.respond(event.key, make_response(invite, 487, to_tag="t"), net.now)

    net.on_event = uas
    key = net.uac.send_request(request("INVITE"), UAS_ADDR, 0.0)
    net.run(0.5)
    net.uac.cancel(key, net.now)
    net.run(2)
    statuses = sorted(
        (e.response.cseq.method, e.response.status) for _, e in net.of("uac", ResponseReceived)
    )
    assert statuses == [("CANCEL", 200), ("INVITE", 100), ("INVITE", 487)]
    assert len(net.of("uas", CancelReceived)) == 1
    assert len(net.sent_times(b"ACK", UAS_ADDR)) == 1


def test_cancel_after_the_final_response_is_answered_but_changes_nothing() -> None:
    layer = TransactionLayer(UAS_ADDR)
    (event,) = layer.receive(wire("INVITE", "z9hG4bKf1"), UAC_ADDR, 0.0)
    assert isinstance(event, RequestReceived) and event.key is not None
    layer.respond(event.key, make_response(event.request, 486, to_tag="t"), 0.0)
    layer.datagrams_to_send()
    assert layer.receive(wire("CANCEL", "z9hG4bKf1"), UAC_ADDR, 0.1) == []
    ((answer, _),) = layer.datagrams_to_send()
    assert answer.startswith(b"SIP/2.0 200 ")
    assert layer.transaction_state(event.key) is State.COMPLETED


def test_cancelling_twice_sends_one_cancel() -> None:
    net = Network()
    key = net.uac.send_request(request("INVITE"), UAS_ADDR, 0.0)
    net.run(0.5)
    net.uac.cancel(key, net.now)
    net.uac.cancel(key, net.now)
    net.run(1)
    assert len(net.sent_times(b"CANCEL", UAS_ADDR)) == 1


def test_a_branch_in_use_is_refused() -> None:
    layer = TransactionLayer(UAC_ADDR)
    req = request()
    layer.send_request(req, UAS_ADDR, 0.0)
    with pytest.raises(ValueError):
        layer.send_request(req, UAS_ADDR, 0.1)


def test_cancel_waits_for_a_provisional_response() -> None:
    net = Network(uas_trying=False)
    key = net.uac.send_request(request("INVITE"), UAS_ADDR, 0.0)
    net.uac.cancel(key, 0.0)
    net.run(2)
    assert net.sent_times(b"CANCEL", UAS_ADDR) == []
    (received,) = net.of("uas", RequestReceived)
    uas_key = received[1].key  # type: ignore[union-attr]
    assert uas_key is not None
    net.uas.respond(uas_key, make_response(received[1].request, 180, to_tag="t"), net.now)  # type: ignore[union-attr]
    net.run(3)
    assert len(net.sent_times(b"CANCEL", UAS_ADDR)) == 1
    assert len(net.of("uas", CancelReceived)) == 1


def test_cancel_before_a_provisional_stops_the_invite_retransmissions() -> None:
    net = Network(loss=1.0)
    key = net.uac.send_request(request("INVITE"), UAS_ADDR, 0.0)
    net.run(1.6)  # sent at 0, 0.5, 1.5
    net.uac.cancel(key, net.now)
    net.run(40)
    assert net.sent_times(b"INVITE sip", UAS_ADDR) == [0.0, 0.5, 1.5]
    assert net.sent_times(b"CANCEL", UAS_ADDR) == []
    assert net.of("uac", TransactionTimeout) == [(32.0, TransactionTimeout(key, "B"))]


def test_cancel_without_a_transaction_gets_481() -> None:
    layer = TransactionLayer(UAS_ADDR)
    raw = wire("CANCEL", "z9hG4bKc9")
    assert [type(e) for e in layer.receive(raw, UAC_ADDR, 0.0)] == []
    ((answer, addr),) = layer.datagrams_to_send()
    assert answer.startswith(b"SIP/2.0 481 ") and addr == ("10.0.0.1", 5060)


def test_rfc2543_matching_for_a_branch_without_id() -> None:
    badbranch = next(c for c in CASES if c.file == "badbranch.dat").data
    layer = TransactionLayer(UAS_ADDR)
    (event,) = layer.receive(badbranch, ("192.0.2.1", 5060), 0.0)
    assert isinstance(event, RequestReceived) and event.key and event.key[0] == "s2543"
    layer.respond(event.key, make_response(event.request, 200, to_tag="b"), 0.0)
    (answer,) = layer.datagrams_to_send()
    assert layer.receive(badbranch, ("192.0.2.1", 5060), 1.0) == []
    assert layer.datagrams_to_send() == [answer]


def test_rfc2543_invite_and_its_ack_match_without_branches() -> None:
    inv2543 = next(c for c in CASES if c.file == "inv2543.dat").data
    layer = TransactionLayer(UAS_ADDR)
    (event,) = layer.receive(inv2543, ("192.0.2.5", 5060), 0.0)
    assert isinstance(event, RequestReceived) and event.key is not None
    layer.respond(event.key, make_response(event.request, 486, to_tag="b"), 0.0)
    ack = inv2543.replace(b"INVITE sip", b"ACK sip").replace(b"56 INVITE", b"56 ACK")
    assert layer.receive(ack, ("192.0.2.5", 5060), 0.1) == []  # absorbed
    assert layer.transaction_state(event.key) is State.CONFIRMED


def test_a_response_matching_no_transaction_is_dropped() -> None:
    bcast = next(c for c in CASES if c.file == "bcast.dat").data
    layer = TransactionLayer(UAC_ADDR)
    assert layer.receive(bcast, ("192.0.2.198", 5060), 0.0) == []
    assert layer.datagrams_to_send() == []


def test_unparseable_requests_are_answered_statelessly() -> None:
    mismatch = next(c for c in CASES if c.file == "mismatch01.dat").data
    layer = TransactionLayer(UAS_ADDR)
    (event,) = layer.receive(mismatch, ("192.0.2.7", 5070), 0.0)
    assert isinstance(event, MessageRejected) and event.error.status == 400
    ((answer, addr),) = layer.datagrams_to_send()
    assert parse(answer).status == 400 and addr == ("192.0.2.7", 5060)  # type: ignore[union-attr]
    badinv = next(c for c in CASES if c.file == "badinv01.dat").data
    (event,) = layer.receive(badinv, ("192.0.2.7", 5070), 0.0)
    assert isinstance(event, MessageRejected) and layer.datagrams_to_send() == []  # no Via


def test_received_and_rport_are_stamped_and_used() -> None:
    layer = TransactionLayer(UAS_ADDR)
    raw = wire("OPTIONS", "z9hG4bKr1", via_host="pbx.example.com", extra=";rport")
    (event,) = layer.receive(raw, ("198.51.100.7", 40000), 0.0)
    assert isinstance(event, RequestReceived) and event.key is not None
    assert event.request.via.received == "198.51.100.7" and event.request.via.rport == 40000
    layer.respond(event.key, make_response(event.request, 200), 0.0)
    ((_, addr),) = layer.datagrams_to_send()
    assert addr == ("198.51.100.7", 40000)


def test_responding_twice_with_a_final_is_refused() -> None:
    layer = TransactionLayer(UAS_ADDR)
    raw = wire("OPTIONS", "z9hG4bKd1")
    (event,) = layer.receive(raw, UAC_ADDR, 0.0)
    assert isinstance(event, RequestReceived) and event.key is not None
    layer.respond(event.key, make_response(event.request, 200), 0.0)
    with pytest.raises(ValueError):
        layer.respond(event.key, make_response(event.request, 500), 0.0)
    with pytest.raises(KeyError):
        layer.respond(("s", "nope"), make_response(event.request, 500), 0.0)


class Call:
    """A UAC and a UAS that place, answer and hang up one call; the TUs of the test."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.invite = request("INVITE")
        self.dialogs = DialogSet(self.invite)
        self.uas_dialog: Dialog | None = None
        self.bye_answered = False
        self.uas_got_ack = False
        net.on_event = self.on_event

    def on_event(self, side: str, event: Event) -> None:
        net = self.net
        if side == "uas" and isinstance(event, RequestReceived) and event.key is not None:
            req = event.request
            if req.method == "INVITE":
                net.uas.respond(event.key, make_response(req, 180, to_tag="callee"), net.now)
                ok = make_response(
                    req, 200, to_tag="callee", headers=[("Contact", "<sip:gw@10.0.0.2>")]
                )
                self.uas_dialog = Dialog.as_uas(req, ok)
                net.uas.respond(event.key, ok, net.now)
            elif req.method == "ACK":
                self.uas_got_ack = True
            elif req.method == "BYE":
                assert self.uas_dialog is not None and self.uas_dialog.on_request(req) is None
                net.uas.respond(event.key, make_response(req, 200), net.now)
        elif side == "uac" and isinstance(event, ResponseReceived):
            response = event.response
            if response.cseq.method == "INVITE":
                dialog = self.dialogs.on_response(response)
                if response.status == 200 and dialog is not None:
                    net.uac.send_stateless(dialog.create_ack(), UAS_ADDR)  # and for each resend
                    if dialog.local_cseq == 1:  # hang up once, right away
                        net.uac.send_request(dialog.create_request("BYE"), UAS_ADDR, net.now)
            elif response.cseq.method == "BYE" and response.status == 200:
                self.bye_answered = True


def test_calls_complete_under_20_percent_loss() -> None:
    sent = lost = 0
    for seed in range(40):
        net = Network(loss=0.2, seed=seed)
        call = Call(net)
        net.uac.send_request(call.invite, UAS_ADDR, 0.0)
        net.run(64)
        assert call.bye_answered and call.uas_got_ack, seed
        assert call.uas_dialog is not None and call.uas_dialog.state is DialogState.TERMINATED
        assert net.of("uac", TransactionTimeout) == [] and net.of("uas", TransactionTimeout) == []
        assert len(net.uac) == 0 and len(net.uas) == 0  # every transaction ended
        sent, lost = sent + len(net.sent), lost + net.lost
    assert 0.15 < lost / sent < 0.25  # the link really lost a fifth, and calls survived it


def test_a_call_completes_without_loss_in_few_datagrams() -> None:
    net = Network()
    call = Call(net)
    net.uac.send_request(call.invite, UAS_ADDR, 0.0)
    net.run(64)
    assert call.bye_answered
    assert [b" ".join(d.split(b" ", 2)[:2]) for _, _, d in net.sent] == [
        b"INVITE sip:gw@10.0.0.2",
        b"SIP/2.0 100",
        b"SIP/2.0 180",
        b"SIP/2.0 200",
        b"ACK sip:gw@10.0.0.2",
        b"BYE sip:gw@10.0.0.2",
        b"SIP/2.0 200",
    ]


def test_what_lingers_after_a_final_response_holds_no_request() -> None:
    """The INVITE and BYE transactions of a call linger after their final responses (timers
    L, M, J, K): each keeps what matching and resending need, not the parsed request, so
    the thousands a busy edge holds for 32 s are small. One still unanswered keeps it."""
    net = Network()
    call = Call(net)
    net.uac.send_request(call.invite, UAS_ADDR, 0.0)
    net.run(1)
    assert call.bye_answered
    lingering = [*net.uac._transactions.values(), *net.uas._transactions.values()]
    assert sorted((t.key[0], t.key[-1], t.state.value) for t in lingering) == [
        ("c", "BYE", "Completed"),
        ("c", "INVITE", "Accepted"),
        ("s", "BYE", "Completed"),
        ("s", "INVITE", "Accepted"),
    ]
    assert all(t.request is None for t in lingering)
    assert all(t.data == b"" for t in lingering if isinstance(t, _ClientTransaction))
    unanswered = net.uac.send_request(request("OPTIONS", cseq=9), ("10.9.9.9", 5060), net.now)
    assert net.uac._transactions[unanswered].request is not None  # resent, cancellable


operation = st.one_of(
    st.tuples(
        st.just("incoming"), st.sampled_from(["INVITE", "ACK", "CANCEL", "BYE"]), st.integers(0, 2)
    ),
    st.tuples(st.just("respond"), st.integers(0, 4), st.sampled_from([100, 180, 200, 486])),
    st.tuples(st.just("send"), st.sampled_from(["INVITE", "OPTIONS"]), st.integers(0, 2)),
    st.tuples(st.just("answer"), st.integers(0, 4), st.sampled_from([100, 180, 200, 486])),
    st.tuples(st.just("cancel"), st.integers(0, 4), st.integers(0, 2)),
    st.tuples(st.just("wait"), st.integers(0, 40), st.integers(0, 2)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(operation, max_size=25), st.booleans())
def test_no_input_sequence_breaks_the_layer_or_leaks_a_transaction(
    ops: list[tuple[str, object, object]], reliable: bool
) -> None:
    """Like h2's state x input tests: whatever happens in whatever order, nothing raises
    but refusals of the TU's own mistakes, and every transaction that does not wait on
    its TU (or on a final response from the far end) ends once its timers have run."""
    transport = "TCP" if reliable else "UDP"
    server = TransactionLayer(UAS_ADDR, transport=transport)
    client = TransactionLayer(UAC_ADDR, transport=transport)
    branches = ["z9hG4bKp1", "z9hG4bKp2", "z9hG4bK"]
    received: list[RequestReceived] = []
    sent: list[bytes] = []
    client_keys = []
    now = 0.0

    def collect(events: list[Event]) -> None:
        received.extend(e for e in events if isinstance(e, RequestReceived) and e.key)

    for kind, a, b in ops:
        if kind == "incoming":
            collect(server.receive(wire(str(a), branches[int(b)]), UAC_ADDR, now))  # type: ignore[call-overload]
        elif kind == "respond" and received:
            event = received[int(a) % len(received)]  # type: ignore[call-overload]
            if event.key is not None and event.request.method != "ACK":
                with contextlib.suppress(ValueError, KeyError):
                    server.respond(event.key, make_response(event.request, int(b), to_tag="t"), now)  # type: ignore[call-overload]
        elif kind == "send":
            client_keys.append(
                client.send_request(request(str(a), cseq=len(client_keys) + 1), UAS_ADDR, now)
            )
        elif kind == "answer" and sent:
            req = parse(sent[int(a) % len(sent)])  # type: ignore[call-overload]
            if isinstance(req, Request) and req.method != "ACK":
                client.receive(bytes(make_response(req, int(b), to_tag="t")), UAS_ADDR, now)  # type: ignore[call-overload]
        elif kind == "cancel" and client_keys:
            client.cancel(client_keys[int(a) % len(client_keys)], now)  # type: ignore[call-overload]
        elif kind == "wait":
            now += float(a)  # type: ignore[arg-type]
            collect(server.handle_timer(now))
            client.handle_timer(now)
        sent += [d for d, _ in client.datagrams_to_send()]
        server.datagrams_to_send()
    for layer in (server, client):
        for _ in range(1000):  # bounded: a timer that re-arms forever fails the test
            when = layer.get_timer()
            if when is None:
                break
            now = max(now, when)
            layer.handle_timer(now)
        assert layer.get_timer() is None
    waiting_on_tu = {State.TRYING, State.PROCEEDING}
    assert all(t.state in waiting_on_tu for t in server._transactions.values())
    assert all(
        isinstance(t, InviteClientTransaction) and t.state is State.PROCEEDING and not t.cancelled
        for t in client._transactions.values()
    )
