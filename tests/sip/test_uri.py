"""URIs and name-addr values (tandem.sip.uri)."""

from __future__ import annotations

import pytest

from tandem.sip import URI, NameAddr
from tandem.sip.uri import quote_display, unescape


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@example.com",
        "sips:alice:secret@example.com:5061;transport=tcp;lr",
        "sip:+14155550123@gw.example.net;user=phone",
        "sip:[2001:db8::1]:5070;maddr=[2001:db8::2]",
        "sip:user@example.com?Subject=hi&Route=%3Csip:x%3E",
        "sip:user;par=u%40example.net@example.com",
        "tel:+1-201-555-0123;phone-context=example.com",
        "urn:service:sos",
    ],
)
def test_uri_round_trip(text: str) -> None:
    assert str(URI.parse(text)) == text


def test_uri_parts() -> None:
    uri = URI.parse("SIPS:alice:pw@[2001:db8::1]:5061;transport=TLS;lr?Subject=x")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sips",
        "alice",
        "pw",
        "2001:db8::1",
        5061,
    )
    assert uri.param("TRANSPORT") == "TLS" and uri.param("lr") == "" and uri.param("x") is None
    assert uri.headers == (("Subject", "x"),)
    assert URI.parse("tel:+15551234;ext=1").user == "+15551234"
    assert str(uri.with_param("lr", None).with_param("user", "phone")).endswith(
        ";lr;user=phone?Subject=x"
    )


def test_escapes() -> None:
    uri = URI.parse("sip:%75se%72@example.com")
    assert uri.user == "%75se%72" and unescape(uri.user) == "user"


@pytest.mark.parametrize("text", ["sip:a@b@c", "sip:a@[2001:db8:::1]", "sip:", "nocolon"])
def test_invalid_uris(text: str) -> None:
    with pytest.raises(ValueError):
        URI.parse(text)


def test_name_addr_forms() -> None:
    a = NameAddr.parse('"Bell, Alexander" <sip:a.g.bell@example.com>;tag=43')
    assert a.display == "Bell, Alexander" and a.tag == "43"
    b = NameAddr.parse("sip:a@example.com;tag=1")  # addr-spec: ;tag belongs to the header
    assert b.uri.params == () and b.tag == "1"
    c = NameAddr.parse("Alice Smith <sip:a@example.com;lr>")
    assert c.display == "Alice Smith" and c.uri.param("lr") == ""
    assert NameAddr.parse(str(a)) == a
    assert str(b.with_param("tag", "2")) == "<sip:a@example.com>;tag=2"


def test_display_names_are_quoted() -> None:
    assert quote_display('a "b" \\ c') == '"a \\"b\\" \\\\ c"'
    odd = NameAddr(URI.parse("sip:x@y"), 'say "hi"\x07')
    assert NameAddr.parse(str(odd)) == odd


@pytest.mark.parametrize(
    "text", ["", '"unterminated <sip:a@b>', "Bell, Alexander <sip:a@b>", "< sip:a@b >"]
)
def test_an_invalid_address_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        NameAddr.parse(text)
