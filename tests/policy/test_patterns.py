"""The pattern engine: Lync's published rules, the choice of engine, and the route index."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.policy import Rule
from tandem.policy.patterns import (
    PatternError,
    apply_rules,
    compile_pattern,
    compile_rules,
    literal_prefixes,
    replace,
)

# (pattern, translation, number, expected): Microsoft's published normalization examples
MICROSOFT_RULES = [
    (r"^(\d{4})$", "+1206555$1", "1234", "+12065551234"),
    (r"^(\d{7})$", "+1425$1", "5550100", "+14255550100"),
    (r"^011(\d*)$", "+$1", "01191445550100", "+91445550100"),
    (r"^\+1425(\d{7})$", "$1", "+14255551212", "5551212"),
    (r"^\+(\d{9}\d+)$", "011$1", "+441235551010", "011441235551010"),
]


@pytest.mark.parametrize(("pattern", "translation", "number", "expected"), MICROSOFT_RULES)
def test_microsoft_examples(pattern: str, translation: str, number: str, expected: str) -> None:
    assert replace(compile_pattern(pattern), translation, number) == expected


def test_the_first_matching_rule_of_an_ordered_list_applies() -> None:
    rules = compile_rules(
        [
            Rule(pattern=r"^(\d{10})$", translation="+1$1"),
            Rule(pattern=r"^(\d{4})$", translation="+1206555$1"),
        ]
    )
    assert apply_rules(rules, "0100") == ("+12065550100", 1)
    assert apply_rules(rules, "4255550100") == ("+14255550100", 0)
    assert apply_rules(rules, "12345") == ("12345", None)  # no rule: unchanged


def test_patterns_are_searched_unanchored_as_dotnet_does() -> None:
    pattern = compile_pattern(r"555")
    assert pattern.matches("+14255551212")
    assert not compile_pattern(r"^555").matches("+14255551212")
    # Regex.Replace: the match is replaced, what the pattern does not cover stays
    assert replace(compile_pattern(r"(\d{10})[xX](\d{5})"), "+1$1;ext=$2", "4255550100x12345") == (
        "+14255550100;ext=12345"
    )
    assert replace(compile_pattern(r"^9"), "", "914255550100") == "14255550100"


def test_translation_escapes_and_missing_groups() -> None:
    assert replace(compile_pattern(r"^(\d)(\d)?$"), "$$$1-$2", "7") == "$7-"
    assert replace(compile_pattern(r"^\d+$"), "[$0]", "42") == "[42]"


def test_re2_runs_what_it_can() -> None:
    assert compile_pattern(r"^\+1(425|206|253)(\d{7})$").engine == "re2"
    assert compile_pattern(r"^(?<ext>\d{4})$").engine == "re2"


def test_lookaround_and_backreferences_run_on_the_backtracking_engine() -> None:
    every_us_but_two = compile_pattern(r"^\+1(?!(425|206))(\d{10})$")
    assert every_us_but_two.engine == "regex"
    assert every_us_but_two.matches("+19725550100")
    assert not every_us_but_two.matches("+14255550100")
    assert not every_us_but_two.matches("+12065550100")
    repeated = compile_pattern(r"^(\d)\1{3}$")
    assert repeated.engine == "regex"
    assert repeated.matches("7777")
    assert not repeated.matches("7778")


def test_every_engine_reads_digits_as_ascii_digits() -> None:
    arabic_indic = "\u0667\u0667\u0667\u0667"  # four sevens, not in a SIP number
    for text in (r"^(\d)\1{3}$", r"^\d{4}$", r"^(\d{2}|\d{4})$"):
        assert compile_pattern(text).matches("7777")
        assert not compile_pattern(text).matches(arabic_indic), text


def test_a_runaway_backtracking_search_is_cut_short() -> None:
    runaway = compile_pattern(r"^(\d|\d\d|\d{3})*(?=x)\1$")
    assert runaway.engine == "regex"
    started = time.perf_counter()
    assert not runaway.matches("1" * 5000 + "y")
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("pattern", [r"^(\d{4}$", r"^\d{4)", r"(?<=\d+", r"[9-0]"])
def test_a_pattern_no_engine_runs_is_refused(pattern: str) -> None:
    with pytest.raises(PatternError, match="invalid pattern"):
        compile_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "prefixes"),
    [
        (r"^\+1425555\d{4}$", ("+1425555",)),
        (r"^\+1(425|206|253)(\d{7})$", ("+1425", "+1206", "+1253")),
        (r"^\+44(?:20|121)\d+", ("+4420", "+44121")),
        (r"^\+?(\d*)$", ("",)),
        (r"^12?3", ("1",)),
        (r"^\+1(?!(425|206))(\d{10})$", ("+1",)),
        (r"^(1|12)$", ("1", "12")),
        (r"555", None),
        (r"^1|2", None),
        (r"(?i)^abc", None),
    ],
)
def test_literal_prefixes(pattern: str, prefixes: tuple[str, ...] | None) -> None:
    assert literal_prefixes(pattern) == prefixes


PIECES = [r"\d", r"\d{2}", r"\d*", r"\d+", "1", "2", r"\+", "4", "(1|2)", "(12|3)", "(?:4|44)",
          "?", "[1-3]", r"(\d)", "$", "|", "(?!9)", ".", "(4)"]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=6),
    st.booleans(),
    st.lists(st.text("+1234", min_size=0, max_size=8), min_size=1, max_size=8),
)
def test_the_index_never_hides_a_match(
    pieces: list[str], anchored: bool, numbers: list[str]
) -> None:
    """Every number a pattern matches starts with one of its index prefixes."""
    text = ("^" if anchored else "") + "".join(pieces)
    try:
        pattern = compile_pattern(text)
    except PatternError:
        return
    prefixes = literal_prefixes(text)
    for number in numbers:
        if pattern.search(number) is not None and prefixes is not None:
            assert any(number.startswith(p) for p in prefixes), (text, number, prefixes)
        # the digit-shape shortcut answers as the engine does
        assert pattern.matches(number) == (pattern.search(number) is not None), (text, number)
