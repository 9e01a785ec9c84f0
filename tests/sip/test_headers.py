"""The header store and the Via and CSeq values (tandem.sip.headers)."""

from __future__ import annotations

import pytest

from tandem.sip import CSeq, Headers, Via


def test_store_is_ordered_case_insensitive_and_multi_valued() -> None:
    h = Headers([("via", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("X-Foo", "1"), ("v", "SIP/2.0/UDP b")])
    assert [n for n, _ in h] == ["Via", "X-Foo", "Via"]
    assert h.get_all("VIA") == ["SIP/2.0/UDP a;branch=z9hG4bK1", "SIP/2.0/UDP b"]
    assert h.get("x-foo") == "1" and "X-FOO" in h and h.get("nope") is None
    h.prepend("Via", "SIP/2.0/UDP top")
    assert h.get("Via") == "SIP/2.0/UDP top"
    h.set("via", "SIP/2.0/UDP only")
    assert h.get_all("Via") == ["SIP/2.0/UDP only"] and [n for n, _ in h] == ["Via", "X-Foo"]
    h.remove("x-foo")
    assert len(h) == 1


def test_remove_first_takes_one_value_of_a_joined_line() -> None:
    h = Headers([("Route", "<sip:a;lr>, <sip:b;lr>"), ("Route", "<sip:c;lr>")])
    h.remove_first("Route")
    assert h.values("Route") == ["<sip:b;lr>", "<sip:c;lr>"]
    h.remove_first("Route")
    h.remove_first("Route")
    assert "Route" not in h


def test_replace_first_keeps_the_line_where_it_is() -> None:
    h = Headers([("To", "<sip:b>"), ("Via", "SIP/2.0/UDP a, SIP/2.0/UDP b")])
    h.replace_first("v", "SIP/2.0/UDP a;received=1.2.3.4")
    assert list(h) == [("To", "<sip:b>"), ("Via", "SIP/2.0/UDP a;received=1.2.3.4, SIP/2.0/UDP b")]
    with pytest.raises(KeyError):
        h.replace_first("Route", "<sip:x>")


def test_values_split_only_list_headers() -> None:
    h = Headers([("Date", "Sat, 13 Nov 2010 23:29:00 GMT"), ("Allow", "INVITE, ACK,BYE")])
    assert h.values("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
    assert h.values("Allow") == ["INVITE", "ACK", "BYE"]


def test_via_round_trip_and_params() -> None:
    via = Via.parse(
        "SIP/2.0/tcp [2001:db8::1]:5070 ; branch=z9hG4bKa;received=192.0.2.9;rport=4000"
    )
    assert (via.transport, via.host, via.port, via.branch) == (
        "TCP",
        "2001:db8::1",
        5070,
        "z9hG4bKa",
    )
    assert via.response_addr == ("192.0.2.9", 4000)
    assert Via.parse(str(via)) == via
    stamped = via.with_params(received="10.1.1.1", rport="5000")
    assert stamped.received == "10.1.1.1" and stamped.rport == 5000
    assert str(Via("TLS", "gw.example.net")) == "SIP/2.0/TLS gw.example.net"
    assert Via("TLS", "gw.example.net").response_addr == ("gw.example.net", 5061)
    assert Via.parse("SIP/2.0/UDP a;rport=x").rport is None


def test_cseq() -> None:
    assert CSeq.parse("0009  INVITE") == CSeq(9, "INVITE")
    assert str(CSeq(10, "BYE")) == "10 BYE"


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-Evil", "a\r\nVia: SIP/2.0/UDP evil"), ("X-Evil", "a\nb"), ("Bad Name", "x"), ("", "x")],
)
def test_values_that_would_inject_lines_are_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        Headers([(name, value)])
    with pytest.raises(ValueError):
        Headers().add(name, value)


@pytest.mark.parametrize("text", ["", "SIP/2.0/UDP", "SIP/2.0/UDP a;;", "nonsense"])
def test_an_invalid_via_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        Via.parse(text)


@pytest.mark.parametrize("text", ["", "1", "INVITE", "1 2 3", "-1 BYE"])
def test_an_invalid_cseq_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        CSeq.parse(text)
