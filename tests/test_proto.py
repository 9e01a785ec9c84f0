"""The generated bus-contract code in services/tandem/pb is what `make proto` makes of proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'proto'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(REPO / "proto/tandem.proto"),
        ],
        check=True,
    )
    for name in ("tandem_pb2.py", "tandem_pb2.pyi"):
        fresh = (tmp_path / name).read_text()
        assert (REPO / "services/tandem/pb" / name).read_text() == fresh, (
            f"{name} is stale: make proto"
        )
