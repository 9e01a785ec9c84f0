"""Writes deploy/base's generated files from the chart: `python tests/deploy/regen_manifests.py`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_render import REPO, base_files  # noqa: E402

if __name__ == "__main__":
    for path, text in base_files().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
