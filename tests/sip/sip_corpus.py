"""The RFC 4475 / RFC 5118 corpus beside the repository, read from its MANIFEST.tsv files."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "conformance"


@dataclass(frozen=True)
class Case:
    folder: str
    file: str
    klass: str  # valid, invalid, semantic, compat
    what: str  # what a B2BUA edge should do with it

    @property
    def data(self) -> bytes:
        return (CORPUS / self.folder / self.file).read_bytes()


def load_cases() -> list[Case]:
    cases = []
    for folder in ("rfc4475", "rfc5118"):
        with (CORPUS / folder / "MANIFEST.tsv").open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                what = row["what a B2BUA edge should do with it"]
                cases.append(Case(folder, row["file"], row["class"], what))
    return cases


CASES = load_cases()
