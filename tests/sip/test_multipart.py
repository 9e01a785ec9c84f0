"""Multipart bodies (tandem.sip.multipart)."""

from __future__ import annotations

import pytest

from tandem.sip import parse
from tandem.sip.multipart import boundary_of, split_multipart

from .sip_corpus import CASES


def test_rfc4475_mpart01() -> None:
    msg = parse(next(c for c in CASES if c.file == "mpart01.dat").data)
    text, signature = split_multipart(msg.headers.get("Content-Type") or "", msg.body)
    assert (text.content_type, text.body) == ("text/plain", b"Hello")
    assert signature.content_type == "application/octet-stream"
    assert signature.headers.get("content-transfer-encoding") == "binary"
    assert signature.body.startswith(b"0\x82\x01R") and len(signature.body) == 342


def test_sdp_beside_isup() -> None:
    body = (
        b"--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n"
        b"\r\n--b1\r\nContent-Type: application/isup;version=itu-t92+\r\n\r\n\x01\x00\x49"
        b"\r\n--b1--\r\n"
    )
    sdp, isup = split_multipart('multipart/mixed; boundary="b1"', body)
    assert sdp.body == b"v=0\r\n" and isup.body == b"\x01\x00\x49"
    assert isup.content_type == "application/isup"
    assert boundary_of("multipart/mixed;boundary=b1") == "b1"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/sdp", b"v=0\r\n"),
        ("multipart/mixed", b"--x\r\n\r\nhi\r\n--x--"),
        ("multipart/mixed;boundary=x", b"--x\r\n\r\nhi\r\n"),
        ("multipart/mixed;boundary=x", b"--x\r\nno blank line\r\n--x--"),
    ],
)
def test_not_multipart(content_type: str, body: bytes) -> None:
    with pytest.raises(ValueError):
        split_multipart(content_type, body)
