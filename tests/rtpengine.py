"""A real rtpengine for tests: the Debian daemon, run in user space exactly as `tandem up`
runs it, on a free NG port and its own port range; it can be stopped and started again."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

from tandem.up import rtpengine_command
from tests.conftest import free_port

START_TIMEOUT_S = 10.0


def ng_ping(port: int, timeout_s: float = 0.2) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.sendto(b"ping1 d7:command4:pinge", ("127.0.0.1", port))
        try:
            return b"pong" in sock.recv(1024)
        except OSError:
            return False


class Rtpengine:
    def __init__(self, log: Path) -> None:
        self.port = free_port(kind=socket.SOCK_DGRAM)
        self.first = random.randrange(30000, 60000, 100)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Rtpengine:
        command = rtpengine_command(self.address, "127.0.0.1", self.first, self.first + 99)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ng_ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rtpengine did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
