"""Running the whole system in a test: a config on free ports and `tandem up` as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, free_port

UP_TIMEOUT_S = 60.0


def system_config(nats_url: str, **policy: Any) -> dict[str, Any]:
    """The example deployment (two PBXs, one gateway) with every port free for this test."""
    example = yaml.safe_load((REPO / "examples" / "tandem.yaml").read_text())
    example["nats"] = nats_url
    example["router"] = {"api": f"127.0.0.1:{free_port()}"}
    example["callstate"] = {"api": f"127.0.0.1:{free_port()}"}
    for edge in example["edges"]:
        edge["sip"] = f"127.0.0.1:{free_port()}"
        edge["api"] = f"127.0.0.1:{free_port()}"
    example["telemetry"] = {"collector": f"127.0.0.1:{free_port()}"}
    example.update(policy)
    return example


class TandemUp:
    """`tandem up` in its own process group, stopped with SIGTERM like an operator would."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config = config
        self.path = workdir / "tandem.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.log = workdir / "up.log"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "tandem.cli",
            "up",
            "--config",
            str(self.path),
            "--data-dir",
            str(self.workdir / "data"),
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
            )
        deadline = time.monotonic() + UP_TIMEOUT_S
        while "tandem is up" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tandem up did not come up:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)

    def descendants(self) -> list[int]:
        """Processes tandem up started that are still alive (found by the test's paths)."""
        assert self.proc is not None
        alive = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(self.path).encode() in cmdline or str(self.workdir).encode() in cmdline:
                alive.append(int(entry.name))
        return [pid for pid in alive if pid not in (os.getpid(), self.proc.pid)]
