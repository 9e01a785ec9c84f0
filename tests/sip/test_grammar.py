"""The grammar's fast paths accept nothing the full grammar refuses (tandem.sip.grammar)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.sip import grammar

SUBSET = settings(max_examples=60, deadline=None)


@SUBSET
@given(st.from_regex(grammar.FAST_VIA, fullmatch=True))
def test_fast_via_is_a_subset(value: str) -> None:
    assert grammar.VIA.fullmatch(value) and grammar.VIAS.fullmatch(value), value


@SUBSET
@given(st.from_regex(grammar.FAST_NAME_ADDR, fullmatch=True))
def test_fast_name_addr_is_a_subset(value: str) -> None:
    for full in (grammar.ADDRESS, grammar.CONTACTS, grammar.ROUTES):
        assert full.fullmatch(value), value


@pytest.mark.parametrize(
    "value",
    [
        '"J Rosenberg \\\\\\"" <sip:jdrosen@example.com>;tag=98asjd8',  # quoted-pairs
        "sip:a@example.com;tag=1",  # addr-spec
        "Alice Smith <SIP:a@[2001:db8::1]:5060;lr>",  # token display, upper case, IPv6
    ],
)
def test_values_off_the_fast_path_still_pass(value: str) -> None:
    assert grammar.FAST_NAME_ADDR.fullmatch(value) is None
    assert grammar.ADDRESS.fullmatch(value) is not None
