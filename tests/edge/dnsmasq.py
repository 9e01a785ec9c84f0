"""A real DNS server for tests: Debian's dnsmasq on a free loopback port, answering only
from the records it is given (NAPTR, SRV, A/AAAA) and NXDOMAIN for anything else in .test.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

DNSMASQ = "/usr/sbin/dnsmasq"
START_TIMEOUT_S = 10.0


def free_udp_and_tcp_port(host: str = "127.0.0.1") -> int:
    """A loopback port free for both UDP and TCP (dnsmasq binds both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port


class Dnsmasq:
    """dnsmasq in the foreground with `records` (its --srv-host=, --host-record=, ... lines)."""

    def __init__(self, records: list[str], log: Path, ttl: int = 60) -> None:
        if shutil.which(DNSMASQ) is None:
            raise RuntimeError(f"{DNSMASQ} is missing: install the Debian package dnsmasq-base")
        self.records = records
        self.log = log
        self.ttl = ttl
        self.port = free_udp_and_tcp_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def start(self) -> None:
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        cmd = [
            DNSMASQ,
            "-k",  # foreground, so the test owns the process
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            f"--port={self.port}",
            "--local=/test/",  # every other name under .test is NXDOMAIN, never forwarded
            f"--local-ttl={self.ttl}",
            f"--user={user}",
            f"--group={group}",
            "--pid-file=",
            "--log-facility=-",
            "--log-queries",
            *self.records,
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while "started, version" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def queries(self, kind: str, name: str) -> int:
        """How many queries of this type for this name dnsmasq has received."""
        return self.log.read_text().count(f"query[{kind}] {name} from")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
