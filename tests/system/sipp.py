"""SIPp as a trunk: one process per peer, bound to the trunk's loopback address.

Every run is bounded three ways: `-m` (calls), `-timeout` (SIPp's own global timer) and a
subprocess timeout, so a scenario that waits forever fails the test instead of hanging it.
The message trace (-trace_msg) is kept so a test can check what actually crossed the wire.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tests.conftest import REPO, free_port

SCENARIOS = REPO / "tests" / "sipp"
SIPP_TIMEOUT_S = 30  # SIPp's own -timeout; the subprocess gets a little more
BIND_TIMEOUT_S = 5.0
EXIT_MARGIN_S = 10.0
TRACE_SEPARATOR = "----------------------------------------------- "  # starts each -trace_msg entry


def sipp_binary() -> str:
    found = shutil.which("sipp")
    if found is None:  # a missing SIPp is a failure, never a skip
        raise FileNotFoundError("sipp not found: install Debian sip-tester (make test does)")
    return found


def udp_port_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def udp_bound(ip: str, port: int) -> bool:
    """Whether some socket is bound to ip:port (read from /proc, without binding it)."""
    wanted = "{:08X}:{:04X}".format(int.from_bytes(socket.inet_aton(ip), "little"), port)
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        if line.split()[1] == wanted:
            return True
    return False


def logged_moments(path: Path) -> dict[str, dict[str, float]]:
    """Each call's moments from a scenario's `<log message="kind|[call_id]|[timestamp]"/>`
    lines (-trace_logs): {call id: {kind: epoch seconds}}, the first of each kind."""
    calls: dict[str, dict[str, float]] = {}
    if not path.exists():
        return calls
    for line in path.read_text(errors="replace").splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            kind, call_id, stamp = parts
            calls.setdefault(call_id, {}).setdefault(kind, float(stamp.split()[-1]))
    return calls


@dataclass
class SippResult:
    scenario: str
    returncode: int
    messages: str  # the -trace_msg log
    errors: str  # the -trace_err log
    output: str  # SIPp's screens: the last one has the totals

    def received(self, first_line: str) -> list[str]:
        """Messages received whose first line starts with `first_line` ('INVITE', 'SIP/2.0 200')."""
        return self._traced("message received", first_line)

    def sent(self, first_line: str) -> list[str]:
        return self._traced("message sent", first_line)

    def _traced(self, direction: str, first_line: str) -> list[str]:
        found = []
        for block in self.messages.split(TRACE_SEPARATOR)[1:]:
            head, _, message = block.partition("\n\n")
            if direction in head and message.startswith(first_line):
                found.append(message)
        return found

    def final_statuses(self) -> list[int]:
        """Final status codes of the INVITEs this SIPp sent, in order."""
        codes = []
        for message in self.received("SIP/2.0 "):
            cseq = re.search(r"^CSeq:\s*\d+\s+(\S+)", message, re.M | re.I)
            code = int(message.split()[1])
            if code >= 200 and cseq is not None and cseq.group(1) == "INVITE":
                codes.append(code)
        return codes

    def total(self, counter: str) -> int:
        """A cumulative counter of SIPp's last statistics screen ('Successful call')."""
        found = re.findall(rf"{counter}\s*\|[^|]*\|\s*(\d+)", self.output)
        return int(found[-1]) if found else 0

    def describe(self) -> str:
        return (
            f"{self.scenario}: exit {self.returncode}\n{self.errors}\n"
            f"{self.output[-1500:]}\n{self.messages[-4000:]}"
        )


class Sipp:
    """One SIPp process playing a scenario from tests/sipp as a trunk at ip:port."""

    started: ClassVar[list[Sipp]] = []  # so a failed test's leftovers can be stopped

    def __init__(
        self,
        scenario: str,
        workdir: Path,
        *,
        ip: str,
        port: int | None = None,
        remote: str | None = None,
        called: str | None = None,
        calling: str = "2125550100",
        keys: dict[str, str] | None = None,
        calls: int = 1,
        rate: float | None = None,
        pause_ms: int = 200,
        timeout_s: int = SIPP_TIMEOUT_S,
        trace: bool = True,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.scenario = scenario
        self.ip = ip
        self.port = port or free_port(ip, socket.SOCK_DGRAM)
        self.timeout_s = timeout_s
        name = f"{Path(scenario).stem}-{ip}-{self.port}"
        self.message_file = workdir / f"{name}.messages.log"
        self.error_file = workdir / f"{name}.errors.log"
        self.output_file = workdir / f"{name}.out"
        self.argv = [
            sipp_binary(),
            "-sf", str(SCENARIOS / scenario),
            "-i", ip, "-p", str(self.port),
            "-cp", str(free_port("0.0.0.0", socket.SOCK_DGRAM)),  # SIPp binds it on every address
            "-mp", str(free_port(ip, socket.SOCK_DGRAM)),
            "-m", str(calls),
            "-d", str(pause_ms),
            "-key", "calling", calling,
            *(arg for key, value in (keys or {}).items() for arg in ("-key", key, value)),
            "-timeout", f"{timeout_s}s", "-timeout_error",
            "-nostdin",
            *(("-trace_msg", "-message_file", str(self.message_file)) if trace else ()),
            *(("-trace_err", "-error_file", str(self.error_file)) if trace else ()),
            *(("-r", str(rate)) if rate else ()),
            *(("-s", called) if called else ()),
            *extra,
            *((remote,) if remote else ()),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sipp:
        """Start and wait until the SIP socket is bound (a UAS is then ready for INVITEs);
        a SIPp that exits first (a short call, a bad argument) is left to wait() to judge."""
        deadline = time.monotonic() + BIND_TIMEOUT_S
        while not udp_port_free(self.ip, self.port):  # the previous test's SIPp still exiting
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.ip}:{self.port} is taken by another process")
            time.sleep(0.05)
        with self.output_file.open("wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        Sipp.started.append(self)
        while not udp_bound(self.ip, self.port) and self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sipp did not bind {self.ip}:{self.port}: {self.output()}")
            time.sleep(0.02)
        return self

    def output(self) -> str:
        return self.output_file.read_text(errors="replace") if self.output_file.exists() else ""

    def wait(self) -> SippResult:
        assert self.proc is not None
        try:
            code = self.proc.wait(self.timeout_s + EXIT_MARGIN_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = -9
        return SippResult(
            self.scenario,
            code,
            self._read(self.message_file),
            self._read(self.error_file),
            self.output(),
        )

    def stop(self) -> SippResult:
        """End a UAS that is not needed any more (e.g. a gateway that must see no call)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.wait()

    def run(self) -> SippResult:
        return self.start().wait()

    @classmethod
    def stop_all(cls) -> None:
        while cls.started:
            sipp = cls.started.pop()
            if sipp.proc is not None and sipp.proc.poll() is None:
                sipp.proc.kill()
                sipp.proc.wait()

    @staticmethod
    def _read(path: Path) -> str:
        return path.read_text(errors="replace") if path.exists() else ""


# ---- reading the messages of a trace -------------------------------------------------------


def headers(message: str, name: str) -> list[str]:
    """Every value of a header in a traced message (none: an empty list)."""
    return [v.strip() for v in re.findall(rf"^{name}\s*:(.*)$", message, re.M | re.I)]


def header(message: str, name: str) -> str:
    found = headers(message, name)
    assert found, f"no {name} in:\n{message}"
    return found[0]


def call_id(result: SippResult) -> str:
    """The SIP Call-ID of the (first) call this SIPp placed or took."""
    first = result.sent("INVITE") or result.received("INVITE")
    assert first, result.describe()
    return header(first[0], "Call-ID")


def passed(*results: SippResult) -> None:
    for result in results:
        assert result.returncode == 0, result.describe()


def request_uri_user(invite: str) -> str:
    return invite.split()[1].removeprefix("sip:").split("@")[0]
