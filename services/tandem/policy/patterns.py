"""Number patterns and rules as Lync and Teams write them: .NET regular expressions, searched.

A pattern matches as .NET's `Regex.IsMatch` does: searched anywhere in the number unless the
pattern anchors itself. It runs on RE2 (linear time, so no input can stall the router) when
RE2 accepts it; the .NET constructs RE2 lacks (lookaround, backreferences, atomic groups)
run on the backtracking `regex` engine with a time limit, and a search that overruns it
counts as no match. A pattern neither engine compiles is refused.

A rule applies as .NET's `Regex.Replace(number, pattern, translation)`: every match is
replaced by the translation with `$1`..`$9` (and `$0`, `$$`) expanded, and whatever the
pattern does not match stays as it was; the first rule whose pattern matches is applied.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import re2
import regex  # type: ignore[import-untyped]

BACKTRACK_TIMEOUT_S = 0.002  # a decision's budget is ~200 µs; one runaway pattern may not eat 10x
MAX_PREFIXES = 64  # alternations expanded into index prefixes, beyond which the index gives up
# bounded, so that memory does not grow with the policy: the router's table holds its own
# patterns, and an RE2 program is compiled again when it has left the cache
PATTERN_CACHE = 1 << 14
RE2_CACHE = 1 << 10  # ~2 KB a program
_REGEX_FLAGS = regex.VERSION0 | regex.ASCII  # \d is 0-9 on every engine, as RE2 reads it
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refusal is expected (lookaround): no stderr noise from C++


class PatternError(ValueError):
    """A pattern that no engine tandem trusts can run."""


class _Match(Protocol):
    def group(self, index: int, /) -> str | Any: ...

    def span(self) -> tuple[int, int]: ...


@dataclass(frozen=True, eq=False, slots=True)
class Pattern:
    """A number pattern, on the engine that can run it."""

    text: str
    engine: Literal["re2", "regex"]
    groups: int
    digits: tuple[str, int, int] | None = None  # '^prefix\d{m,n}$' as (prefix, m, n)
    backtracking: Any = field(default=None, repr=False)  # `regex`'s compiled form, kept

    @property
    def compiled(self) -> Any:
        """The engine's compiled form. RE2's comes from a bounded cache: 100,000 routes'
        programs would hold 40 MB that the few in use do not need, and a miss compiles in
        ~15 µs. `regex` takes ~200 µs (a decision's whole budget): each pattern keeps its own
        (lookaround and the like are rare)."""
        return self.backtracking if self.engine == "regex" else _re2(self.text)

    def search(self, number: str) -> _Match | None:
        if self.engine == "re2":
            found: _Match | None = self.compiled.search(number)
            return found
        try:
            found = self.compiled.search(number, timeout=BACKTRACK_TIMEOUT_S)
        except TimeoutError:
            return None
        return found

    def matches(self, number: str) -> bool:
        if self.digits is not None:  # the common shape, without calling an engine
            prefix, least, most = self.digits
            rest = number[len(prefix) :]
            return (
                number.startswith(prefix)
                and least <= len(rest) <= most
                and (not rest or (rest.isascii() and rest.isdigit()))
            )
        return self.search(number) is not None

    def finditer(self, number: str) -> list[_Match]:
        if self.engine == "re2":
            return list(self.compiled.finditer(number))
        try:
            return list(self.compiled.finditer(number, timeout=BACKTRACK_TIMEOUT_S))
        except TimeoutError:
            return []


@functools.lru_cache(maxsize=RE2_CACHE)
def _re2(pattern: str) -> Any:
    return re2.compile(pattern, _RE2_OPTIONS)


@functools.lru_cache(maxsize=PATTERN_CACHE)  # config validation and the router share compilations
def compile_pattern(pattern: str) -> Pattern:
    """Compile on RE2 if it can, else on `regex` with a time limit; PatternError if neither."""
    shape = _digits_shape(pattern)
    if shape is not None:  # valid by its shape: most routes never need RE2 (time and memory)
        digits, groups = shape
        return Pattern(pattern, "re2", groups, digits)
    try:
        return Pattern(pattern, "re2", _re2(pattern).groups)
    except re2.error as exc:
        re2_reason = exc.args[0].decode() if isinstance(exc.args[0], bytes) else str(exc)
    try:
        backtracking = regex.compile(pattern, _REGEX_FLAGS)
    except regex.error as exc:
        raise PatternError(
            f"invalid pattern {pattern!r}: {exc} (and RE2 says: {re2_reason})"
        ) from None
    return Pattern(pattern, "regex", backtracking.groups, backtracking=backtracking)


# '^' literal '\d' quantifier '$', the digits optionally in one group; literals are plain
# characters or escaped ASCII punctuation, which every engine reads the same way
_DIGITS_SHAPE = re.compile(
    r"\^((?:\\[+*.()#\-\[\]{}|?^$\\]|[0-9A-Za-z#;=_,:@/ -])*)(\()?\\d"
    r"(?:\{(\d{1,3})(,(\d{0,3}))?\}|([*+]))?(?(2)\))\$"
)
_UNBOUNDED = 1 << 30


def _digits_shape(pattern: str) -> tuple[tuple[str, int, int], int] | None:
    """Most routes read '^\\+1425555\\d{4}$': ((literal, least, most digits), groups)."""
    shape = _DIGITS_SHAPE.fullmatch(pattern)
    if shape is None:
        return None
    literal, group, least, comma, most, star_plus = shape.groups()
    # interned: the route index holds the same prefix as its key
    prefix = sys.intern("".join(atom[-1] for atom in _ATOM.findall(literal)))
    if star_plus:
        least_n, most_n = int(star_plus == "+"), _UNBOUNDED
    elif least is None:
        least_n = most_n = 1
    elif comma is None:
        least_n = most_n = int(least)
    else:
        least_n, most_n = int(least), int(most) if most else _UNBOUNDED
    if least_n > most_n or least_n > 1000 or 1000 < most_n < _UNBOUNDED:
        return None  # let the engine refuse it (RE2 caps a repeat at 1000)
    return (prefix, least_n, most_n), int(group is not None)


# ---- translations -----------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def parse_translation(translation: str) -> tuple[str | int, ...]:
    """'+1425$1' -> ('+1425', 1): literal text and group numbers, `$$` being a literal '$'."""
    parts: list[str | int] = []
    literal: list[str] = []
    i = 0
    while i < len(translation):
        char = translation[i]
        following = translation[i + 1] if i + 1 < len(translation) else ""
        if char == "$" and following.isdigit():
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(int(following))
            i += 2
            continue
        literal.append(char)
        i += 2 if char == "$" and following == "$" else 1
    if literal:
        parts.append("".join(literal))
    return tuple(parts)


def check_translation(translation: str, pattern: Pattern) -> None:
    """Refuse `$n` beyond the pattern's groups (Lync's rule editors refuse it too)."""
    beyond = sorted(
        {p for p in parse_translation(translation) if isinstance(p, int) and p > pattern.groups}
    )
    if beyond:
        raise PatternError(
            f"translation {translation!r} uses ${beyond[0]} but the pattern has "
            f"{pattern.groups} group(s)"
        )


def expand(parts: Sequence[str | int], match: _Match) -> str:
    return "".join(p if isinstance(p, str) else (match.group(p) or "") for p in parts)


def replace(pattern: Pattern, translation: str, number: str) -> str | None:
    """Regex.Replace(number, pattern, translation), or None when the pattern does not match."""
    if pattern.digits is not None:  # '^prefix(\d{n})$': the whole number, the digits are $1
        if not pattern.matches(number):
            return None
        groups = (number, number[len(pattern.digits[0]) :] if pattern.groups else "")
        return "".join(
            p if isinstance(p, str) else (groups[p] if p < 2 else "")
            for p in parse_translation(translation)
        )
    if pattern.search(number) is None:  # most rules do not match: spare the finditer
        return None
    found = pattern.finditer(number)
    if not found:
        return None
    parts = parse_translation(translation)
    out: list[str] = []
    end = 0
    for match in found:
        start, stop = match.span()
        out.append(number[end:start])
        out.append(expand(parts, match))
        end = stop
    out.append(number[end:])
    return "".join(out)


@dataclass(frozen=True)
class CompiledRule:
    pattern: Pattern
    translation: str


def compile_rules(rules: Sequence[Any]) -> tuple[CompiledRule, ...]:
    """Rules as configured ({pattern, translation}) to compiled ones, in their order."""
    return tuple(CompiledRule(compile_pattern(r.pattern), r.translation) for r in rules)


def apply_rules(rules: Sequence[CompiledRule], number: str) -> tuple[str, int | None]:
    """The first rule that matches rewrites the number: (number, index of that rule or None)."""
    for index, rule in enumerate(rules):
        rewritten = replace(rule.pattern, rule.translation, number)
        if rewritten is not None:
            return rewritten, index
    return number, None


# ---- the literal prefixes a pattern needs, for the route index --------------------------

_META = set("\\^$.|?*+()[]{}")
_QUANTIFIERS = set("?*+{")
_CASE_INSENSITIVE = re.compile(r"\(\?[a-zA-Z]*i")
# our own scanners over pattern text (linear, trusted): stdlib re is the quickest binding
_ATOM = re.compile(r"\\[^A-Za-z0-9]|[^\\^$.|?*+()\[\]{}]")
_LITERAL_RUN = re.compile(rf"(?:{_ATOM.pattern})*")


@functools.lru_cache(maxsize=PATTERN_CACHE)
def literal_prefixes(pattern: str) -> tuple[str, ...] | None:
    """The literal prefixes one of which every number the pattern matches starts with.

    None when the pattern does not pin the start of the number (not anchored by `^`, or an
    alternation at the top), so the route must be tested against every number. Only
    literals and groups that are plain alternations of literals are read; anything else
    ends the prefix there, which keeps the answer sound for patterns in any .NET syntax.
    """
    if (
        not pattern.startswith("^")
        or _has_top_level_alternation(pattern)
        or _CASE_INSENSITIVE.search(pattern)  # `regex` applies inline flags to the whole
    ):
        return None
    prefixes = [""]
    i = 1
    while i < len(pattern):
        run = _LITERAL_RUN.match(pattern, i)
        assert run is not None  # the run may be empty, never absent
        atoms = [atom[-1] for atom in _ATOM.findall(run.group())]
        after = run.end()
        quantified = after < len(pattern) and pattern[after] in _QUANTIFIERS
        if quantified:
            if not atoms:  # '^?': the anchor itself is optional
                return None
            atoms.pop()  # optional or repeated: the prefix ends before it
        literal = "".join(atoms)
        prefixes = [p + literal for p in prefixes]
        if quantified:
            break
        alternatives, after = _literal_group(pattern, after)
        if alternatives is None or (after < len(pattern) and pattern[after] in _QUANTIFIERS):
            break
        if len(prefixes) * len(alternatives) > MAX_PREFIXES:
            break
        prefixes = [p + a for p in prefixes for a in alternatives]
        i = after
    return tuple(prefixes)


def _literal_atom(pattern: str, i: int) -> tuple[str | None, int]:
    char = pattern[i]
    if char == "\\":
        if i + 1 < len(pattern) and not pattern[i + 1].isalnum():
            return pattern[i + 1], i + 2  # \+ \. \( ...: the character itself
        return None, i
    if char in _META:
        return None, i
    return char, i + 1


def _literal_group(pattern: str, i: int) -> tuple[list[str] | None, int]:
    """'(425|206)' or '(?:425|206)' at i -> (['425', '206'], index after ')')."""
    if i >= len(pattern) or pattern[i] != "(":
        return None, i
    j = i + 1
    if pattern.startswith("?:", j):
        j += 2
    elif j < len(pattern) and pattern[j] == "?":
        return None, i  # lookaround, named group, inline options: not read
    alternatives = [""]
    while j < len(pattern):
        if pattern[j] == ")":
            if any(a == "" for a in alternatives):
                return None, i
            return alternatives, j + 1
        if pattern[j] == "|":
            alternatives.append("")
            j += 1
            continue
        atom, after = _literal_atom(pattern, j)
        if atom is None or (after < len(pattern) and pattern[after] in _QUANTIFIERS):
            return None, i
        alternatives[-1] += atom
        j = after
    return None, i


def _has_top_level_alternation(pattern: str) -> bool:
    if "|" not in pattern:
        return False
    depth = 0
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if pattern.startswith("]", i + 1) or pattern.startswith("^]", i + 1):
                i += 1 + pattern.startswith("^]", i + 1)  # a leading ']' is a member
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            return True
        i += 1
    return False
