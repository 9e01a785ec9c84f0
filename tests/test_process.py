"""One long-running process: JSON log lines, health on its API, a clean exit on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import REPO, NatsServer, free_port


def test_router_process_logs_json_and_stops_on_sigterm(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    api = f"127.0.0.1:{free_port()}"
    log = tmp_path / "router.log"
    cmd = [
        sys.executable,
        "-m",
        "tandem.cli",
        "router",
        "--config",
        str(REPO / "examples/tandem.yaml"),
        "--nats",
        nats_server.url,
        "--api",
        api,
        "--log-format",
        "json",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stderr=out, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://{api}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert httpx.get(f"http://{api}/readyz", timeout=1).json() == {"ready": True}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    messages = [e["msg"] for e in entries]
    assert "router ready" in messages and "router stopped" in messages
    assert all({"ts", "level", "logger", "msg"} <= e.keys() for e in entries)


def test_a_public_api_without_token_refuses_to_start(nats_server: NatsServer) -> None:
    cmd = [
        sys.executable,
        "-m",
        "tandem.cli",
        "callstate",
        "--config",
        str(REPO / "examples/tandem.yaml"),
        "--nats",
        nats_server.url,
        "--api",
        f"0.0.0.0:{free_port()}",
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, cwd=REPO, env={"PATH": "/usr/bin:/bin"}
    )
    assert result.returncode == 2
    assert "set TANDEM_API_TOKEN" in result.stderr
