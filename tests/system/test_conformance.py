"""The RFC 4475 and RFC 5118 torture messages, sent over UDP to a running edge from an
admitted trunk's address (hq, 127.0.0.2): each request gets a status its manifest allows,
no response is answered, and the edge still completes a normal call afterwards.

The messages go out byte for byte; the edge answers to the source address and the top
Via's port (RFC 3261 18.2.2), so the trunk listens on every port those Vias name. Some
messages share a transaction key (branch, sent-by, method: RFC 3261 17.2.3), which an
edge rightly takes for a retransmission within timer J (32 s): each of those goes to an
edge of its own (a lane), from a trunk that edge admits.
"""

from __future__ import annotations

import csv
import re
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CONFORMANCE
from tests.system.conftest import GW1, HQ, System, start_system
from tests.system.sipp import Sipp

VIA_PORTS = (5060, 5050, 5070, 6050, 19823)  # every sent-by port in the corpus, 5060 the default
ANSWER_WAIT_S = 2.0  # a request's final response
SILENCE_WAIT_S = 1.0  # how long nothing must come back for a response or a drop
ANY_FINAL = frozenset(range(200, 700))
LANE_TRUNKS = ("127.0.0.6", "127.0.0.7", "127.0.0.8")  # lanes 1-3; lane 0 is hq on edge-pbx


@dataclass(frozen=True)
class Case:
    corpus: str
    file: str
    what: str  # the manifest's "what a B2BUA edge should do with it"

    @property
    def data(self) -> bytes:
        return (CONFORMANCE / self.corpus / self.file).read_bytes()

    @property
    def transaction_key(self) -> tuple[bytes, ...]:
        """RFC 3261 17.2.3: top Via branch, sent-by and method (folding and LWS undone)."""
        head = re.sub(rb"\r?\n[ \t]+", b" ", self.data.split(b"\r\n\r\n")[0])
        via = re.search(rb"^(?:via|v)[ \t]*:[ \t]*(.*)$", head, re.M | re.I)
        top = via.group(1).split(b",")[0] if via else b""
        branch = re.search(rb"branch[ \t]*=[ \t]*([^;, \t\r]+)", top, re.I)
        sent_by = re.sub(rb"[ \t]", b"", top.split(b";")[0]).lower()
        return (branch.group(1) if branch else b"", sent_by, head.split(b" ", 1)[0])

    @property
    def is_response(self) -> bool:
        return self.data.startswith(b"SIP/")

    def allowed(self) -> tuple[frozenset[int], bool]:
        """(the final statuses the manifest allows, whether no answer at all is allowed)."""
        what = self.what.lower()
        if self.is_response:
            return frozenset(), True
        codes = frozenset(int(c) for c in re.findall(r"\b([1-6]\d\d)\b", what))
        drop = "drop" in what
        if "tolerate" in what:  # either behaviour: processed normally or the named reject
            return ANY_FINAL, drop
        if "route it" in what:  # processed normally (any final but 400) or the named status
            return (ANY_FINAL - {400}) | codes, drop
        if codes:
            return codes | ({200} if "answer the options itself" in what else set()), drop
        return ANY_FINAL - {400}, drop  # valid: parsed and answered, whatever the answer


def cases() -> list[tuple[Case, int]]:
    """Every message of both corpora with its lane: the first lane its key is new on."""
    found = []
    keys: list[set[tuple[bytes, ...]]] = [set() for _ in range(1 + len(LANE_TRUNKS))]
    for corpus in ("rfc4475", "rfc5118"):
        with (CONFORMANCE / corpus / "MANIFEST.tsv").open(newline="") as manifest:
            for row in csv.DictReader(manifest, delimiter="\t"):
                case = Case(corpus, row["file"], row["what a B2BUA edge should do with it"])
                lane = next(n for n, used in enumerate(keys) if case.transaction_key not in used)
                keys[lane].add(case.transaction_key)
                found.append((case, lane))
    return found


def transaction(message: bytes) -> tuple[bytes | None, int | None]:
    """(Call-ID, CSeq number) of a message, header folding undone; what pairs an answer."""
    head = re.sub(rb"\r?\n[ \t]+", b" ", message.split(b"\r\n\r\n")[0])
    call_id = re.search(rb"^(?:call-id|i)[ \t]*:[ \t]*(.*?)\s*$", head, re.M | re.I)
    cseq = re.search(rb"^cseq[ \t]*:[ \t]*(\d+)", head, re.M | re.I)
    return (call_id.group(1) if call_id else None, int(cseq.group(1)) if cseq else None)


class Trunk:
    """A trunk as raw UDP sockets: sends from ip:5060, listens on every Via port."""

    def __init__(self, ip: str) -> None:
        self.sockets = []
        for port in VIA_PORTS:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((ip, port))
            self.sockets.append(sock)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def exchange(self, data: bytes, edge: tuple[str, int], wait_s: float) -> list[int]:
        """Send one message; the statuses that answer it, until a final one or `wait_s`."""
        key = transaction(data)
        self.sockets[0].sendto(data, edge)
        statuses: list[int] = []
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(self.sockets, [], [], left)
            for sock in readable:
                answer = sock.recv(65535)
                if answer.startswith(b"SIP/2.0 ") and transaction(answer) == key:
                    statuses.append(int(answer[8:11]))
            if statuses and statuses[-1] >= 200:
                break
        return statuses


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """This module's own system: the usual one plus an edge and a trunk per extra lane."""
    running = start_system(tmp_path_factory.mktemp("tandem"), extra_trunks=LANE_TRUNKS)
    yield running
    running.up.stop()


@pytest.fixture(scope="module")
def lanes(system: System) -> Iterator[list[tuple[Trunk, tuple[str, int]]]]:
    """Per lane: the trunk's sockets and the address of the edge that admits it."""
    pairs = [(HQ, "edge-pbx")] + [(ip, f"edge-x{n}") for n, ip in enumerate(LANE_TRUNKS, 1)]
    opened = []
    for ip, edge in pairs:
        host, port = system.edge_sip(edge).split(":")
        opened.append((Trunk(ip), (host, int(port))))
    yield opened
    for trunk, _ in opened:
        trunk.close()


@pytest.mark.parametrize(
    ("case", "lane"), [pytest.param(case, lane, id=case.file) for case, lane in cases()]
)
def test_torture_message(lanes: list[tuple[Trunk, tuple[str, int]]], case: Case, lane: int) -> None:
    allowed, silence_ok = case.allowed()
    wait = SILENCE_WAIT_S if case.is_response else ANSWER_WAIT_S
    trunk, edge = lanes[lane]
    statuses = trunk.exchange(case.data, edge, wait)

    finals = [status for status in statuses if status >= 200]
    if not finals:
        assert silence_ok, f"{case.file}: no answer; the manifest says {case.what!r}"
        return
    assert finals[0] in allowed, f"{case.file}: {finals[0]}; the manifest says {case.what!r}"


def test_a_normal_call_completes_after_the_corpus(system: System, sipp_dir: Path) -> None:
    callee = Sipp("uas_answer.xml", sipp_dir, ip=GW1, port=system.peer_port(GW1)).start()
    caller = Sipp(
        "uac_call.xml", sipp_dir, ip=HQ, remote=system.pbx_edge, called="+14255551234"
    ).run()
    answered = callee.wait()
    assert caller.returncode == 0, caller.describe()
    assert answered.returncode == 0, answered.describe()
    assert caller.final_statuses() == [200]
