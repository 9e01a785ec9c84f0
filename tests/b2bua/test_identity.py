"""What of the caller's identity crosses to each trunk (RFC 3323, RFC 3325), with the route's
caller-ID suppression (Lync's alternate caller ID)."""

from __future__ import annotations

from tandem.b2bua.profile import Profile
from tandem.sip import Request
from tests.b2bua.world import World, caller_invite, target

PAI = "<sip:+14255550100@pbx.example.com>"


def leg_invite(
    invite: Request, *, caller: Profile, callee: Profile, **target_fields: object
) -> Request:
    w = World(target("gw1", **target_fields), caller=caller, gw1=callee)
    w.invite_txn.request = invite
    w.start()
    return w.leg().invite


def anonymous_caller() -> Request:
    invite = caller_invite()
    invite.headers.set("From", '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=caller')
    invite.headers.add("P-Asserted-Identity", PAI)
    invite.headers.add("Privacy", "id")
    return invite


TRUSTED_PBX = Profile(trunk="pbx", trusted=True, session_expires_s=0)
UNTRUSTED_PBX = Profile(trunk="pbx", session_expires_s=0)
TRUSTED_GW = Profile(trunk="gw1", trusted=True, session_expires_s=0)
UNTRUSTED_GW = Profile(trunk="gw1", session_expires_s=0)


def test_a_plain_call_presents_the_calling_number_and_no_identity_to_an_untrusted_trunk() -> None:
    invite = leg_invite(caller_invite(), caller=UNTRUSTED_PBX, callee=UNTRUSTED_GW)
    assert invite.from_.uri.user == "+14255550100"
    assert "p-asserted-identity" not in invite.headers
    assert "privacy" not in invite.headers


def test_a_trusted_trunk_gets_an_asserted_identity() -> None:
    invite = leg_invite(caller_invite(), caller=UNTRUSTED_PBX, callee=TRUSTED_GW)
    assert invite.headers.get("p-asserted-identity") == "<sip:+14255550100@10.0.0.2>"


def test_withheld_caller_id_stays_withheld_towards_an_untrusted_trunk() -> None:
    """The wave-1 bug: the PAI's number was written into the outgoing From."""
    w = World(target("gw1"), caller=TRUSTED_PBX, gw1=UNTRUSTED_GW)
    w.invite_txn.request = anonymous_caller()
    w.start()
    invite = w.leg().invite
    assert w.call.calling == "+14255550100"  # routing and the CDR know the true number
    assert invite.from_.uri.user == "anonymous"
    assert invite.from_.display in (None, "Anonymous", '"Anonymous"')
    assert "p-asserted-identity" not in invite.headers
    assert invite.headers.get("privacy") == "id"


def test_withheld_caller_id_towards_a_trusted_trunk_keeps_the_assertion_and_privacy() -> None:
    invite = leg_invite(anonymous_caller(), caller=TRUSTED_PBX, callee=TRUSTED_GW)
    assert invite.from_.uri.user == "anonymous"
    assert invite.headers.get("p-asserted-identity") == PAI
    assert invite.headers.get("privacy") == "id"


def test_an_untrusted_callers_assertion_is_not_believed() -> None:
    w = World(target("gw1"), caller=UNTRUSTED_PBX, gw1=TRUSTED_GW)
    w.invite_txn.request = anonymous_caller()
    w.start()
    assert w.call.calling == "anonymous"
    assert w.leg().invite.headers.get("p-asserted-identity") != PAI


def test_an_anonymous_untrusted_caller_gets_no_asserted_identity() -> None:
    """Nothing is known of who calls: a trusted trunk must not be told it is 'anonymous'."""
    w = World(target("gw1", calling="anonymous"), caller=UNTRUSTED_PBX, gw1=TRUSTED_GW)
    w.invite_txn.request = anonymous_caller()
    w.start()
    invite = w.leg().invite
    assert "p-asserted-identity" not in invite.headers
    assert invite.headers.get("privacy") == "id"


def test_privacy_values_are_read_as_rfc_3323_writes_them() -> None:
    """priv-values are joined by ';' (Privacy: id;critical): each one counts."""
    invite = anonymous_caller()
    invite.headers.set("Privacy", "id;critical")
    untrusted = leg_invite(invite, caller=TRUSTED_PBX, callee=UNTRUSTED_GW)
    assert untrusted.from_.uri.user == "anonymous"
    assert "p-asserted-identity" not in untrusted.headers
    trusted = leg_invite(invite, caller=TRUSTED_PBX, callee=TRUSTED_GW)
    assert trusted.headers.get("privacy") == "critical; id"


def test_a_suppressed_caller_id_presents_the_alternate_number() -> None:
    """Lync: suppress_caller_id with alternate_caller_id shows the alternate, no privacy."""
    invite = leg_invite(
        caller_invite(),
        caller=UNTRUSTED_PBX,
        callee=TRUSTED_GW,
        suppress_caller_id=True,
        calling="+14255550000",  # the router put the alternate here
    )
    assert invite.from_.uri.user == "+14255550000"
    assert invite.headers.get("p-asserted-identity") == "<sip:+14255550000@10.0.0.2>"
    assert "privacy" not in invite.headers


def test_suppression_without_an_alternate_is_anonymous_with_privacy_id() -> None:
    invite = leg_invite(
        caller_invite(),
        caller=UNTRUSTED_PBX,
        callee=UNTRUSTED_GW,
        suppress_caller_id=True,
        calling="",
    )
    assert invite.from_.uri.user == "anonymous"
    assert invite.headers.get("privacy") == "id"


def history_invite(privacy: str | None) -> Request:
    invite = caller_invite()
    invite.headers.add("Diversion", "<sip:+14255550199@pbx.example.com>;reason=no-answer")
    if privacy:
        invite.headers.add("Privacy", privacy)
    return invite


def test_call_history_crosses_only_where_the_trunk_takes_it_and_privacy_allows() -> None:
    takes = Profile(trunk="gw1", forward_call_history=True, session_expires_s=0)
    trusted = Profile(trunk="gw1", forward_call_history=True, trusted=True, session_expires_s=0)
    assert (
        leg_invite(history_invite(None), caller=UNTRUSTED_PBX, callee=UNTRUSTED_GW).headers.get(
            "diversion"
        )
        is None
    )
    assert leg_invite(history_invite(None), caller=UNTRUSTED_PBX, callee=takes).headers.get(
        "diversion"
    )
    hidden = leg_invite(history_invite("header"), caller=UNTRUSTED_PBX, callee=takes)
    assert hidden.headers.get("diversion") is None  # an untrusted trunk, and privacy asks
    kept = leg_invite(history_invite("header"), caller=UNTRUSTED_PBX, callee=trusted)
    assert kept.headers.get("diversion") and kept.headers.get("privacy") == "header"
