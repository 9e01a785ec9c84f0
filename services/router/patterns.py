"""Number patterns as Lync and Teams write them (.NET regular expressions, searched unanchored).

Placeholder until the router issue: compiles with Python's `re`.
"""

from __future__ import annotations

import re


class PatternError(ValueError):
    """A pattern that no engine tandem trusts can run."""


def compile_pattern(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise PatternError(f"invalid pattern {pattern!r}: {exc}") from None
