"""Driving simulated trunks from Python: start one as a process, command it, wait on calls.

Used by the tests, `make demo` and anyone scripting calls; it speaks only the control API.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx

from tandem.sim.config import Kind, Sim
from tandem.sim.views import CallView, SipMessage, SipPresence

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
WAIT_TIMEOUT_S = 15.0
POLL_S = 0.05


class SimError(RuntimeError):
    pass


class SimClient:
    """The control API of one running sim."""

    def __init__(self, control: str, timeout_s: float = 15.0) -> None:
        self.http = httpx.Client(base_url=f"http://{control}", timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, body: object = None) -> httpx.Response:
        response = self.http.request(method, path, json=body)
        if response.status_code >= 400:
            raise SimError(f"{method} {path}: {response.status_code} {response.text}")
        return response

    def healthy(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def place_call(
        self, calling: str, called: str, headers: dict[str, str] | None = None
    ) -> CallView:
        body = {"calling": calling, "called": called, "headers": headers or {}}
        return CallView.model_validate(self._call("POST", "/v1/calls", body).json())

    def calls(self) -> list[CallView]:
        return [CallView.model_validate(c) for c in self._call("GET", "/v1/calls").json()]

    def call(self, call_id: str) -> CallView:
        return CallView.model_validate(self._call("GET", f"/v1/calls/{call_id}").json())

    def sip_messages(self, call_id: str) -> list[SipMessage]:
        """The SIP messages of the call, in and out, oldest first (an inbound call's INVITE
        is the first)."""
        found = self._call("GET", f"/v1/calls/{call_id}/sip").json()
        return [SipMessage.model_validate(m) for m in found]

    def answer(self, call_id: str, code: int = 200) -> CallView:
        body = {"code": code}
        path = f"/v1/calls/{call_id}/answer"
        return CallView.model_validate(self._call("POST", path, body).json())

    def transfer(
        self, call_id: str, to: str | None = None, replaces: str | None = None
    ) -> CallView:
        """Blind transfer to a number (`to`), or attended onto another call (`replaces`)."""
        body = {"to": to} if to is not None else {"replaces": replaces}
        path = f"/v1/calls/{call_id}/transfer"
        return CallView.model_validate(self._call("POST", path, body).json())

    def vanish(self) -> SipPresence:
        """No SIP in or out from now on (no BYE): the far end's requests go unanswered."""
        return SipPresence.model_validate(self._call("POST", "/v1/sip/vanish").json())

    def reappear(self) -> SipPresence:
        return SipPresence.model_validate(self._call("POST", "/v1/sip/reappear").json())

    def send_dtmf(self, call_id: str, digits: str) -> CallView:
        body = {"digits": digits}
        return CallView.model_validate(self._call("POST", f"/v1/calls/{call_id}/dtmf", body).json())

    def hold(self, call_id: str) -> CallView:
        return CallView.model_validate(self._call("POST", f"/v1/calls/{call_id}/hold").json())

    def resume(self, call_id: str) -> CallView:
        return CallView.model_validate(self._call("POST", f"/v1/calls/{call_id}/resume").json())

    def hangup(self, call_id: str, code: int | None = None) -> CallView:
        body = {"code": code} if code is not None else None
        path = f"/v1/calls/{call_id}/hangup"
        return CallView.model_validate(self._call("POST", path, body).json())

    def wait_call(
        self,
        call_id: str,
        condition: Callable[[CallView], bool],
        what: str,
        timeout_s: float = WAIT_TIMEOUT_S,
    ) -> CallView:
        """Poll one call until `condition` holds; on timeout, say what was awaited and seen."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.call(call_id)
            if condition(view):
                return view
            if time.monotonic() > deadline:
                raise SimError(f"call {call_id}: no {what} after {timeout_s}s; last seen {view}")
            time.sleep(POLL_S)

    def wait_message(
        self,
        call_id: str,
        condition: Callable[[SipMessage], bool],
        what: str,
        timeout_s: float = WAIT_TIMEOUT_S,
    ) -> SipMessage:
        """The first SIP message of the call for which `condition` holds, once there is one."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [m for m in self.sip_messages(call_id) if condition(m)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise SimError(f"call {call_id}: no {what} after {timeout_s}s")
            time.sleep(POLL_S)

    def wait_inbound(
        self,
        condition: Callable[[CallView], bool] = lambda c: True,
        what: str = "inbound call",
        timeout_s: float = WAIT_TIMEOUT_S,
    ) -> CallView:
        """The newest inbound call for which `condition` holds, once there is one."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [c for c in self.calls() if c.direction == "inbound" and condition(c)]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise SimError(f"no {what} after {timeout_s}s")
            time.sleep(POLL_S)


class SimProcess:
    """`tandem sim KIND --config FILE --id ID` as a child process, stopped with SIGTERM."""

    def __init__(
        self, kind: Kind, sim: Sim, config: Path, log: Path, pjsip_log_level: int = 1
    ) -> None:
        self.kind = kind
        self.sim = sim
        self.argv = [
            sys.executable,
            "-m",
            "tandem.cli",
            "sim",
            kind,
            "--config",
            str(config),
            "--id",
            sim.id,
            "--pjsip-log-level",
            str(pjsip_log_level),
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = SimClient(sim.control)

    def start(self) -> SimProcess:
        return self.launch().wait_ready()

    def launch(self) -> SimProcess:
        """Start the process without waiting: several sims then start side by side."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def wait_ready(self) -> SimProcess:
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.client.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SimError(f"sim {self.sim.id} did not start:\n{self.output()}")
            time.sleep(POLL_S)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def freeze(self) -> None:
        """SIGSTOP: the box hangs, nothing in or out, SIP nor RTP, until `thaw`."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def terminate(self) -> None:
        """SIGTERM without waiting: several sims then stop side by side."""
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        self.client.close()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.thaw()  # a frozen process never gets to handle its SIGTERM
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(STOP_TIMEOUT_S)

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
