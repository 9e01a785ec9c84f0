"""Issue 12's header-level rules through the running system, each trunk a SIPp process on
its own loopback address: who the caller is as each trunk sees it (trust, privacy, the
route's alternate caller ID), redirects, the response map, delayed offer, glare, what bad
input gets, and the ring and call limits. What crossed the wire is read from the SIPp
traces; what tandem recorded from callstate's CDRs.

One tandem for the module, with a trunk per behaviour: the PBX hq is in the trust domain
and branch is not; gw1 (untrusted) and gw2 (trusted) take the call history; the other
gateways carry one setting each (limits, a response map, redirects followed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.support import system_config
from tests.system.conftest import BRANCH, GW1, GW2, HQ, System, run_system, trunk, trunk_peers
from tests.system.sipp import Sipp, call_id, header, headers, passed, request_uri_user

GW_LIMITS, GW_MAP, GW_FOLLOW = "127.0.0.6", "127.0.0.7", "127.0.0.8"
MAX_RING_S = MAX_CALL_S = 2.0
ALTERNATE = "+14255550000"  # the main number the suppressing routes present
PAI_NUMBER = "+14255550100"  # who the PBX asserts the caller is

# called numbers, one per route (the route names the behaviour)
TO_GW1 = "+14255551234"
TO_GW2 = "+12065551234"
TO_BRANCH = "+13125550142"
ALTERNATE_TO_GW2 = "+15035551234"
ALTERNATE_TO_GW1 = "+19715551234"
WITHHELD_TO_GW1 = "+15415551234"
LIMITED = "+12135551234"
MAPPED = "+12125551234"
REDIRECTING = "+17205551234"


def features_policy(peers: dict[str, str]) -> dict[str, Any]:
    def pbx(trunk_id: str, ip: str, **fields: Any) -> dict[str, Any]:
        return {"id": trunk_id, "edge": "edge-pbx", "peer": peers[ip], "sources": [ip]} | {
            "pstn_usages": ["Features"],
            "options_interval_s": 0,
            **fields,
        }

    def gateway(trunk_id: str, ip: str, **fields: Any) -> dict[str, Any]:
        return {"id": trunk_id, "edge": "edge-pstn", "peer": peers[ip], "sources": [ip]} | {
            "failover_timer_s": 5,  # generous: only the limits and a 404 move these calls on
            "options_interval_s": 0,  # SIPp trunks would take a probe for a new call
            **fields,
        }

    def route(route_id: str, prefix: str, *trunks: str, **fields: Any) -> dict[str, Any]:
        return {"id": route_id, "number_pattern": rf"^\+1{prefix}\d{{7}}$"} | {
            "pstn_usages": ["Features"],
            "trunks": list(trunks),
            "spread": "ordered",
            **fields,
        }

    return {
        "trunks": [
            pbx("pbx-hq", HQ, trusted=True),
            pbx("pbx-branch", BRANCH),
            gateway("pstn-gw1", GW1, forward_call_history=True),
            gateway("pstn-gw2", GW2, trusted=True, forward_call_history=True),
            gateway("pstn-limits", GW_LIMITS, max_ring_s=MAX_RING_S, max_call_s=MAX_CALL_S),
            gateway("pstn-map", GW_MAP, response_map={404: 503}),
            gateway("pstn-follow", GW_FOLLOW, redirect="follow"),
        ],
        "routes": [
            route("untrusted-gw", "425", "pstn-gw1"),
            route("trusted-gw", "206", "pstn-gw2"),
            route("to-branch", "312", "pbx-branch"),
            route("alternate-trusted", "503", "pstn-gw2", suppress_caller_id=True)
            | {"alternate_caller_id": ALTERNATE},
            route("alternate-untrusted", "971", "pstn-gw1", suppress_caller_id=True)
            | {"alternate_caller_id": ALTERNATE},
            route("withheld", "541", "pstn-gw1", suppress_caller_id=True),
            route("limited", "213", "pstn-limits", "pstn-gw2"),
            route("mapped", "212", "pstn-map", "pstn-gw2"),
            route("redirecting", "720", "pstn-follow"),
        ],
    }


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    peers = trunk_peers(HQ, GW1, BRANCH, GW2, GW_LIMITS, GW_MAP, GW_FOLLOW)
    config = system_config(f"nats://127.0.0.1:{free_port()}", **features_policy(peers))
    running = run_system(tmp_path_factory.mktemp("tandem"), peers, config)
    yield running
    running.up.stop()


def call(system: System, sipp_dir: Path, caller_ip: str, scenario: str, **kwargs: Any) -> Sipp:
    edge = system.pbx_edge if caller_ip in (HQ, BRANCH) else system.pstn_edge
    return Sipp(scenario, sipp_dir, ip=caller_ip, remote=edge, **kwargs)


# ---- who is calling: trust and privacy (RFC 3323, RFC 3325) --------------------------------


def identity_call(
    system: System,
    sipp_dir: Path,
    caller: str,
    callee: str,
    called: str,
    *,
    calling: str,
    display: str,
    privacy: str,
) -> str:
    """A call whose caller (uac_identity.xml) asserts PAI_NUMBER and sends its call history;
    the INVITE the callee received."""
    gateway = trunk(system, callee, "uas_answer.xml", sipp_dir)
    keys = {"display": display, "asserted": PAI_NUMBER, "privacy": privacy}
    placed = call(
        system, sipp_dir, caller, "uac_identity.xml", called=called, calling=calling, keys=keys
    ).run()
    answered = gateway.wait()
    passed(placed, answered)
    return answered.received("INVITE")[0]


def from_user(invite: str) -> str:
    return header(invite, "From").partition("<sip:")[2].partition("@")[0]


WITHHELD = {"calling": "anonymous", "display": "Anonymous"}  # and Privacy: id (or more)


@pytest.mark.parametrize("privacy", ["id", "id;critical"])  # RFC 3323: values joined by ';'
def test_a_withheld_caller_stays_withheld_towards_an_untrusted_gateway(
    system: System, sipp_dir: Path, privacy: str
) -> None:
    invite = identity_call(system, sipp_dir, HQ, GW1, TO_GW1, **WITHHELD, privacy=privacy)
    assert from_user(invite) == "anonymous"
    assert headers(invite, "P-Asserted-Identity") == []
    assert headers(invite, "Privacy") == ["id"]
    assert PAI_NUMBER not in invite  # nowhere: not in From, not in a header tandem added
    cdr = system.cdr(header(invite, "Call-ID"))
    assert cdr["calling_received"] == PAI_NUMBER  # hq is trusted: the CDR knows who called


def test_a_withheld_caller_keeps_its_assertion_towards_a_trusted_gateway(
    system: System, sipp_dir: Path
) -> None:
    invite = identity_call(system, sipp_dir, HQ, GW2, TO_GW2, **WITHHELD, privacy="id")
    assert from_user(invite) == "anonymous"
    assert headers(invite, "P-Asserted-Identity") == [
        f'"Anonymous" <sip:{PAI_NUMBER}@pbx.example.com>'
    ]
    assert headers(invite, "Privacy") == ["id"]


def test_an_untrusted_callers_assertion_is_not_believed(system: System, sipp_dir: Path) -> None:
    invite = identity_call(system, sipp_dir, BRANCH, GW2, TO_GW2, **WITHHELD, privacy="id")
    assert from_user(invite) == "anonymous"
    assert PAI_NUMBER not in invite
    assert headers(invite, "P-Asserted-Identity") == []  # nor does tandem assert 'anonymous'
    assert headers(invite, "Privacy") == ["id"]
    assert system.cdr(header(invite, "Call-ID"))["calling_received"] == "anonymous"


def test_an_untrusted_caller_is_asserted_by_its_from(system: System, sipp_dir: Path) -> None:
    invite = identity_call(
        system, sipp_dir, BRANCH, GW2, TO_GW2,
        calling="2065550142", display="Bob Example", privacy="none",
    )  # fmt: skip
    assert header(invite, "From").startswith('"Bob Example" <sip:2065550142@')
    assert headers(invite, "P-Asserted-Identity") == ["<sip:2065550142@127.0.0.1>"]
    assert PAI_NUMBER not in invite


HISTORY = ("Diversion", "History-Info")


@pytest.mark.parametrize(
    ("callee", "called", "privacy", "history", "privacy_sent"),
    [
        pytest.param(BRANCH, TO_BRANCH, "none", False, [], id="trunk-without-call-history"),
        pytest.param(GW1, TO_GW1, "none", True, [], id="untrusted-trunk-with-call-history"),
        pytest.param(GW1, TO_GW1, "header", False, ["id"], id="untrusted-trunk-privacy-header"),
        pytest.param(GW2, TO_GW2, "header", True, ["header"], id="trusted-trunk-privacy-header"),
    ],
)
def test_call_history_crosses_only_where_the_trunk_takes_it_and_privacy_allows(
    system: System,
    sipp_dir: Path,
    callee: str,
    called: str,
    privacy: str,
    history: bool,
    privacy_sent: list[str],
) -> None:
    invite = identity_call(
        system, sipp_dir, HQ, callee, called,
        calling="4255550100", display="Alice Example", privacy=privacy,
    )  # fmt: skip
    assert ("Alice Example" in header(invite, "From")) is (privacy == "none")
    for name in HISTORY:
        assert bool(headers(invite, name)) is history, f"{name}:\n{invite}"
    if history:
        assert "+14255550199" in header(invite, "Diversion")
        assert len(headers(invite, "History-Info")) == 2
    assert headers(invite, "Privacy") == privacy_sent


# ---- the route's caller ID (Lync's suppress_caller_id, alternate_caller_id) ---------------


@pytest.mark.parametrize(
    ("callee", "called", "from_sent", "asserted", "privacy_sent"),
    [
        pytest.param(GW2, ALTERNATE_TO_GW2, ALTERNATE, ALTERNATE, [], id="alternate-trusted"),
        pytest.param(GW1, ALTERNATE_TO_GW1, ALTERNATE, None, [], id="alternate-untrusted"),
        pytest.param(GW1, WITHHELD_TO_GW1, "anonymous", None, ["id"], id="no-alternate"),
    ],
)
def test_a_suppressing_route_presents_its_alternate_caller_id(
    system: System,
    sipp_dir: Path,
    callee: str,
    called: str,
    from_sent: str,
    asserted: str | None,
    privacy_sent: list[str],
) -> None:
    gateway = trunk(system, callee, "uas_answer.xml", sipp_dir)
    placed = call(system, sipp_dir, HQ, "uac_call.xml", called=called, calling="4255550123").run()
    answered = gateway.wait()
    passed(placed, answered)

    invite = answered.received("INVITE")[0]
    assert from_user(invite) == from_sent
    pai = headers(invite, "P-Asserted-Identity")
    assert pai == ([] if asserted is None else [f"<sip:{asserted}@127.0.0.1>"])
    assert headers(invite, "Privacy") == privacy_sent
    assert "4255550123" not in invite  # the caller's own number never leaves
    assert system.cdr(call_id(placed))["calling_sent"] == (
        ALTERNATE if from_sent == ALTERNATE else ""
    )


# ---- redirects and the response map ------------------------------------------------------


def attempts(cdr: dict[str, Any]) -> list[tuple[str, int, int | None]]:
    return [(a["trunk"], a["status"], a["received_status"]) for a in cdr["attempts"]]


def test_a_redirect_is_relayed_to_the_caller_with_its_contact(
    system: System, sipp_dir: Path
) -> None:
    gw1 = trunk(system, GW1, "uas_redirect.xml", sipp_dir, keys={"contact": TO_BRANCH})
    placed = call(system, sipp_dir, HQ, "uac_rejected.xml", called=TO_GW1).run()
    passed(placed, gw1.wait())

    assert placed.final_statuses() == [302]
    moved = placed.received("SIP/2.0 302")[0]
    assert headers(moved, "Contact") == [f"<sip:{TO_BRANCH}@{system.peers[GW1]}>"]
    cdr = system.cdr(call_id(placed))
    assert (cdr["final_status"], attempts(cdr)) == (302, [("pstn-gw1", 302, None)])


def test_a_followed_redirect_completes_on_the_route_its_contact_selects(
    system: System, sipp_dir: Path
) -> None:
    redirecting = trunk(
        system, GW_FOLLOW, "uas_redirect.xml", sipp_dir, keys={"contact": TO_BRANCH}
    )
    branch = trunk(system, BRANCH, "uas_answer.xml", sipp_dir)
    placed = call(system, sipp_dir, HQ, "uac_call.xml", called=REDIRECTING).run()
    answered = branch.wait()
    passed(placed, redirecting.wait(), answered)

    assert placed.final_statuses() == [200]
    assert placed.received("SIP/2.0 302") == []  # tandem took the redirect itself
    assert request_uri_user(answered.received("INVITE")[0]) == TO_BRANCH
    cdr = system.cdr(call_id(placed))
    assert attempts(cdr) == [("pstn-follow", 302, None), ("pbx-branch", 200, None)]
    assert (cdr["egress_trunk"], cdr["final_status"]) == ("pbx-branch", 200)


def test_a_mapped_404_fails_over_and_the_cdr_keeps_both_codes(
    system: System, sipp_dir: Path
) -> None:
    mapped = trunk(system, GW_MAP, "uas_not_found.xml", sipp_dir)
    gw2 = trunk(system, GW2, "uas_answer.xml", sipp_dir)
    placed = call(system, sipp_dir, HQ, "uac_call.xml", called=MAPPED).run()
    passed(placed, mapped.wait(), gw2.wait())  # 404 is no failover code: 503, its map, is

    assert placed.final_statuses() == [200]
    cdr = system.cdr(call_id(placed))
    assert attempts(cdr) == [("pstn-map", 503, 404), ("pstn-gw2", 200, None)]
    assert (cdr["egress_trunk"], cdr["failover_count"]) == ("pstn-gw2", 1)


# ---- offers and answers: delayed offer, glare ---------------------------------------------


def body(message: str) -> str:
    return message.partition("\n\n")[2].strip()


def cseq(message: str) -> str:
    return header(message, "CSeq")


def once(messages: list[str]) -> list[str]:
    """Messages without their retransmissions (the same start line and CSeq), in order."""
    return list({(m.partition("\n")[0], cseq(m)): m for m in messages}.values())


def test_delayed_offer_crosses_in_the_200_and_the_ack_both_ways(
    system: System, sipp_dir: Path
) -> None:
    gw1 = trunk(system, GW1, "uas_delayed_offer.xml", sipp_dir)
    placed = call(system, sipp_dir, HQ, "uac_delayed_offer.xml", called=TO_GW1).run()
    callee = gw1.wait()
    passed(placed, callee)  # each scenario checked every offer and answer it received

    invites = once(callee.received("INVITE"))
    assert [(cseq(m), body(m)) for m in invites] == [("1 INVITE", ""), ("2 INVITE", "")]
    acks = {cseq(m): body(m) for m in callee.received("ACK")}
    assert "s=answer-1" in acks["1 ACK"] and "s=answer-2" in acks["2 ACK"]
    (reinvite,) = once(placed.received("INVITE"))  # the callee's, in the caller's dialog
    assert body(reinvite) == ""
    assert "s=answer-3" in body(placed.received("ACK")[0])
    cdr = system.cdr(call_id(placed))
    assert (cdr["final_status"], cdr["ended_by"]) == (200, "caller")


def test_crossing_reinvites_both_get_491_and_the_call_goes_on(
    system: System, sipp_dir: Path
) -> None:
    gw1 = trunk(system, GW1, "uas_reinvite_glare.xml", sipp_dir)
    placed = call(system, sipp_dir, HQ, "uac_reinvite_glare.xml", called=TO_GW1).run()
    callee = gw1.wait()
    passed(placed, callee)  # each got 491 for its re-INVITE, then the caller hung up

    assert [cseq(m) for m in once(placed.received("SIP/2.0 491"))] == ["2 INVITE"]
    assert [cseq(m) for m in once(callee.received("SIP/2.0 491"))] == ["1 INVITE"]
    assert len(once(callee.received("INVITE"))) == 1  # the caller's re-INVITE never crossed
    assert callee.received("BYE")
    cdr = system.cdr(call_id(placed))
    assert (cdr["final_status"], cdr["ended_by"], cdr["end_reason"]) == (200, "caller", "normal")


def test_an_update_offer_while_ours_is_pending_gets_491(system: System, sipp_dir: Path) -> None:
    gw1 = trunk(system, GW1, "uas_update_glare.xml", sipp_dir)
    placed = call(system, sipp_dir, HQ, "uac_update_glare.xml", called=TO_GW1).run()
    callee = gw1.wait()
    passed(placed, callee)  # the caller's offer got the callee's answer, the callee's 491

    assert [cseq(m) for m in once(callee.received("SIP/2.0 491"))] == ["1 UPDATE"]
    assert placed.received("UPDATE") == []  # the refused offer did not cross
    answers = [m for m in placed.received("SIP/2.0 200") if cseq(m) == "2 UPDATE"]
    assert answers and "s=update-answer" in body(answers[0])
    cdr = system.cdr(call_id(placed))
    assert (cdr["final_status"], cdr["ended_by"]) == (200, "caller")


# ---- what bad input gets ------------------------------------------------------------------

NOWHERE = "+442071234567"  # no route matches it


def test_refused_refers_get_their_answers_and_the_call_goes_on(
    system: System, sipp_dir: Path
) -> None:
    gw1 = trunk(system, GW1, "uas_answer.xml", sipp_dir)
    placed = call(
        system, sipp_dir, HQ, "uac_refer_refused.xml", called=TO_GW1, keys={"refer_to": NOWHERE}
    ).run()
    callee = gw1.wait()
    passed(placed, callee)

    statuses = {cseq(m): int(m.split()[1]) for m in placed.received("SIP/2.0")}
    assert (statuses["2 REFER"], statuses["3 REFER"]) == (400, 202)
    trying, failed = once(placed.received("NOTIFY"))
    assert header(trying, "Event") == header(failed, "Event") == "refer;id=3"
    assert body(trying) == "SIP/2.0 100 Trying"
    assert header(trying, "Subscription-State").startswith("active")
    assert body(failed).startswith("SIP/2.0 403")  # no route: the transfer failed
    assert header(failed, "Subscription-State").startswith("terminated")
    assert all(header(n, "Content-Type").startswith("message/sipfrag") for n in (trying, failed))
    # the original call went on: the callee saw neither REFER nor BYE until the caller's
    assert callee.received("REFER") == [] and len(callee.received("BYE")) == 1
    cdr = system.cdr(call_id(placed))
    assert (cdr["final_status"], cdr["ended_by"], cdr["end_reason"]) == (200, "caller", "normal")


def test_a_session_interval_below_min_se_gets_422_and_the_retry_goes_through(
    system: System, sipp_dir: Path
) -> None:
    gw1 = trunk(system, GW1, "uas_answer.xml", sipp_dir)
    placed = call(system, sipp_dir, HQ, "uac_session_interval.xml", called=TO_GW1).run()
    callee = gw1.wait()
    passed(placed, callee)  # it checked 422's Min-SE: 90 and the 200's Session-Expires: 90

    assert placed.final_statuses() == [422, 200]
    assert header(placed.received("SIP/2.0 422")[0], "Min-SE") == "90"
    assert len(once(callee.received("INVITE"))) == 1  # the refused INVITE went nowhere
    refused, answered = system.cdrs(call_id(placed), 2)
    assert (refused["final_status"], refused["attempts"]) == (422, [])
    assert (answered["final_status"], answered["ended_by"]) == (200, "caller")


def test_a_caller_requiring_100rel_gets_reliable_183s_until_it_pracks(
    system: System, sipp_dir: Path
) -> None:
    gw1 = trunk(system, GW1, "uas_early_media.xml", sipp_dir, pause_ms=200)
    placed = call(system, sipp_dir, HQ, "uac_100rel.xml", called=TO_GW1).run()
    passed(placed, gw1.wait())  # wrong RAck: 481; right one: 200; then the INVITE's 200

    early = placed.received("SIP/2.0 183")
    assert len(early) >= 2, placed.describe()  # sent again while no PRACK came
    assert {header(m, "RSeq") for m in early} == {header(early[0], "RSeq")}
    assert all("100rel" in header(m, "Require") and "m=audio" in body(m) for m in early)
    statuses = [(int(m.split()[1]), cseq(m)) for m in once(placed.received("SIP/2.0"))]
    assert statuses[-4:] == [(481, "2 PRACK"), (200, "3 PRACK"), (200, "1 INVITE"), (200, "4 BYE")]
    assert system.cdr(call_id(placed))["final_status"] == 200


# ---- ring and call limits ----------------------------------------------------------------


def test_a_call_ringing_past_max_ring_s_gets_480_and_no_failover(
    system: System, sipp_dir: Path
) -> None:
    ringing = trunk(system, GW_LIMITS, "uas_ring_cancelled.xml", sipp_dir)
    gw2 = trunk(system, GW2, "uas_answer.xml", sipp_dir)
    placed = call(system, sipp_dir, HQ, "uac_rejected.xml", called=LIMITED).run()
    passed(placed, ringing.wait())  # cancelled by tandem: 200 to the CANCEL, 487, ACK

    assert placed.received("SIP/2.0 180"), placed.describe()
    assert placed.final_statuses() == [480]
    assert gw2.stop().received("INVITE") == []  # it rang: no failover
    cdr = system.cdr(call_id(placed))
    assert (cdr["final_status"], cdr["end_reason"], len(cdr["attempts"])) == (480, "no_answer", 1)
    rang_ms = cdr["end_unix_ms"] - cdr["attempts"][0]["start_unix_ms"]
    assert rang_ms >= MAX_RING_S * 1000 - 100  # it rang the limit out (wall clock, in ms)


def test_a_call_past_max_call_s_is_ended_both_ways(system: System, sipp_dir: Path) -> None:
    limited = trunk(system, GW_LIMITS, "uas_answer.xml", sipp_dir)
    placed = call(system, sipp_dir, HQ, "uac_callee_hangs_up.xml", called=LIMITED).run()
    callee = limited.wait()
    passed(placed, callee)  # both waited for a BYE, and got it

    assert placed.received("BYE") and callee.received("BYE")
    cdr = system.cdr(call_id(placed))
    assert (cdr["end_reason"], cdr["ended_by"], cdr["final_status"]) == (
        "max_call",
        "system",
        200,
    )
    assert cdr["duration_s"] >= MAX_CALL_S - 0.1  # (the CDR's wall clock, in ms)
