"""`tandem demo` (`make demo`): one real call from a PBX phone to the PSTN, then its CDR and trace.

Starts the system with `tandem up` when it is not running, starts the simulated PBX and
gateway (pjsua2, real RTP), places the call, lets it talk, hangs up, and prints what
tandem recorded. Any step that fails makes the exit status non-zero.
"""

from __future__ import annotations

import datetime
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tandem.config import Config
from tandem.http import api_token
from tandem.sim.client import SimProcess
from tandem.sim.config import SimFile
from tandem.traces import Span, render_tree

UP_TIMEOUT_S = 60.0
RECORD_TIMEOUT_S = 15.0
CALLER, CALLED = "0100", "+14255551212"  # HQ extension 0100 dials a Redmond PSTN number


class DemoError(Exception):
    pass


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(what: str, probe: Any, timeout_s: float = RECORD_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise DemoError(f"no {what} after {timeout_s:.0f}s")
        time.sleep(0.2)


class Demo:
    def __init__(
        self,
        config: Config,
        config_path: str,
        sims: SimFile,
        sims_path: str,
        data_dir: Path,
        talk_s: float,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.sims = sims
        self.sims_path = Path(sims_path)
        self.data_dir = data_dir
        self.talk_s = talk_s
        self.up: subprocess.Popen[bytes] | None = None
        token = api_token(config.api_token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.callstate = httpx.Client(
            base_url=f"http://{config.callstate.api}", headers=headers, timeout=5
        )

    def step(self, text: str) -> None:
        print(f"-- {text}", flush=True)

    def start_system(self) -> None:
        if healthy(f"http://{self.config.router.api}/healthz"):
            self.step(f"tandem is running (router at {self.config.router.api})")
            return
        self.step(f"starting tandem (tandem up); its log: {self.data_dir / 'demo-up.log'}")
        log = self.data_dir / "demo-up.log"
        with log.open("wb") as out:
            self.up = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tandem.cli",
                    "up",
                    "--config",
                    self.config_path,
                    "--data-dir",
                    str(self.data_dir),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        up = self.up
        wait_for(
            "running tandem",
            lambda: "tandem is up" in log.read_text(errors="replace") or up.poll() is not None,
            UP_TIMEOUT_S,
        )
        if up.poll() is not None:
            raise DemoError(f"tandem up exited with {up.returncode}; see {log}")

    def sim(self, kind: str, sim_id: str) -> SimProcess:
        sims = self.sims.pbxs if kind == "pbx" else self.sims.gateways
        sim = next(s for s in sims if s.id == sim_id)
        return SimProcess(kind, sim, self.sims_path, self.data_dir / f"demo-{sim_id}.log")  # type: ignore[arg-type]

    def call(self, pbx: SimProcess, gateway: SimProcess) -> str:
        self.step(f"PBX hq phone {CALLER} calls {CALLED}")
        call = pbx.client.place_call(CALLER, CALLED)
        answered = pbx.client.wait_call(
            call.id, lambda c: c.state == "confirmed" or c.ended, "answer"
        )
        if answered.ended:
            raise DemoError(f"the call failed: {answered.last_status} {answered.reason}")
        far = gateway.client.wait_inbound(lambda c: c.state == "confirmed", "answered call")
        self.step(
            f"answered by the gateway (it was dialled {far.called}); talking {self.talk_s:.0f}s"
        )
        time.sleep(self.talk_s)
        caller_rtp = pbx.client.call(call.id).rtp
        callee_rtp = gateway.client.call(far.id).rtp
        print(
            f"   RTP phone -> gateway: {caller_rtp.tx_packets} sent, "
            f"{callee_rtp.rx_packets} received"
        )
        print(
            f"   RTP gateway -> phone: {callee_rtp.tx_packets} sent, "
            f"{caller_rtp.rx_packets} received"
        )
        if not (caller_rtp.rx_packets and callee_rtp.rx_packets):
            raise DemoError("audio did not flow both ways")
        self.step("the phone hangs up")
        pbx.client.hangup(call.id)
        gateway.client.wait_call(far.id, lambda c: c.ended, "hang-up at the gateway")
        return answered.sip_call_id

    def cdr(self, sip_call_id: str, since: datetime.datetime) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            page = self.callstate.get("/v1/cdrs", params={"since": since.isoformat()}).json()
            return next((c for c in page["cdrs"] if sip_call_id in c["sip_call_ids"]), None)

        cdr: dict[str, Any] = wait_for("CDR", find)
        self.step("the call's CDR (callstate GET /v1/cdrs)")
        for key, value in cdr.items():
            if key != "attempts":
                print(f"   {key:<18} {value}")
        for attempt in cdr["attempts"]:
            print(
                f"   attempt {attempt['attempt']}: trunk {attempt['trunk']} "
                f"{attempt['called']} -> {attempt['status']} {attempt['reason']}"
            )
        return cdr

    def trace(self, trace_id: str) -> None:
        collector = self.config.telemetry.collector
        if collector is None:
            raise DemoError("no local trace collector (telemetry.collector) in the config")

        def spans() -> list[Span] | None:
            reply = httpx.get(f"http://{collector}/v1/traces/{trace_id}", timeout=5)
            if reply.status_code != 200:
                return None
            found = [Span.from_json(s) for s in reply.json()]
            names = {s.name for s in found}
            return found if {"call", "egress leg", "route.decide"} <= names else None

        self.step(f"the call's trace {trace_id} (tandem trace {trace_id})")
        print(render_tree(wait_for("complete trace", spans)))

    def run(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=5)
        pbx, gateway = self.sim("pbx", "hq"), self.sim("gateway", "gw1")
        try:
            self.start_system()
            self.step("starting the simulated PBX hq and PSTN gateway gw1 (pjsua2)")
            for sim in (pbx, gateway):
                sim.launch()
            for sim in (pbx, gateway):
                sim.wait_ready()
            sip_call_id = self.call(pbx, gateway)
            cdr = self.cdr(sip_call_id, since)
            if cdr["final_status"] != 200:
                raise DemoError(f"the CDR says {cdr['final_status']}, not 200")
            self.trace(cdr["trace_id"])
        except Exception as exc:  # the demo reports any failure and exits non-zero
            print(f"DEMO FAILED: {exc}", file=sys.stderr)
            return 1
        finally:
            for sim in (pbx, gateway):
                sim.stop()
            if self.up is not None:
                self.step("stopping the tandem this demo started")
                self.up.send_signal(signal.SIGTERM)
                self.up.wait(60)
        self.step("demo passed")
        return 0
