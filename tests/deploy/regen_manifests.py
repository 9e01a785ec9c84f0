"""Writes deploy/base's generated files from the chart: `python -m tests.deploy.regen_manifests`."""

from __future__ import annotations

from tests.deploy.deploy_render import REPO, base_files

if __name__ == "__main__":
    for path, text in base_files().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
