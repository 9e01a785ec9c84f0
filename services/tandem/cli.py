"""The `tandem` command: one subcommand per process, plus config and routing tools."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop
from pydantic import ValidationError

from tandem import __version__, bus, consolecli, telemetry
from tandem.config import (
    Config,
    ConfigError,
    Media,
    check_files,
    format_errors,
    load_config,
    parse_config,
)
from tandem.http import InsecureApiError

DEFAULT_CONFIG = "examples/tandem.yaml"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("TANDEM_CONFIG", DEFAULT_CONFIG),
        help="the YAML config file (env TANDEM_CONFIG)",
    )
    parser.add_argument(
        "--nats",
        default=os.environ.get("TANDEM_NATS_URL"),
        help="NATS URL; default: the config's (env TANDEM_NATS_URL)",
    )
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--log-level", default=os.environ.get("TANDEM_LOG_LEVEL", "INFO"))


def _service(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument(
        "--api",
        default=os.environ.get("TANDEM_API_LISTEN"),
        help="API listen host:port; default: the config's (env TANDEM_API_LISTEN)",
    )
    parser.add_argument("--grace", type=float, default=30.0, help="drain time on SIGTERM (s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tandem {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="run the whole system locally (NATS, router, callstate, edges)")
    _common(p)
    p.add_argument("--data-dir", default=".tandem", help="where the local NATS keeps its data")
    p.add_argument(
        "--nats-cluster",
        type=int,
        choices=[1, 3, 5],
        help="start this many local nats-server processes as one cluster (config: nats_cluster)",
    )

    _service(sub.add_parser("router", help="run one router replica"))
    _service(sub.add_parser("callstate", help="run the call-state service"))
    p = sub.add_parser("edge", help="run one edge")
    _service(p)
    p.add_argument(
        "--id", default=os.environ.get("TANDEM_EDGE_ID"), help="edge id (env TANDEM_EDGE_ID)"
    )
    p.add_argument(
        "--sip", default=os.environ.get("TANDEM_SIP_LISTEN"), help="SIP listen host:port"
    )
    p.add_argument(
        "--advertise",
        default=os.environ.get("TANDEM_EDGE_ADVERTISE"),
        help="the address trunks reach this edge at (env TANDEM_EDGE_ADVERTISE)",
    )
    p.add_argument(
        "--rtpengine",
        default=os.environ.get("TANDEM_RTPENGINE"),
        help="rtpengine NG addresses, host:port,... instead of media.rtpengine "
        "(env TANDEM_RTPENGINE; on Kubernetes, the node's own)",
    )

    p = sub.add_parser("sim", help="run a simulated trunk (PBX or PSTN gateway) on pjsua2")
    p.add_argument("kind", choices=["pbx", "gateway"])
    p.add_argument("--config", default="examples/sim.yaml", help="the sims' YAML file")
    p.add_argument("--id", help="which sim of that kind; needed when the file has several")
    p.add_argument("--log-level", default=os.environ.get("TANDEM_LOG_LEVEL", "INFO"))
    p.add_argument("--pjsip-log-level", type=int, default=1, help="5 prints SIP messages")

    p = sub.add_parser("check-config", help="validate a config file and summarise it")
    p.add_argument("file")

    p = sub.add_parser("route-test", help="what a call would get, offline from a config file")
    p.add_argument("--config", default=os.environ.get("TANDEM_CONFIG", DEFAULT_CONFIG))
    p.add_argument("--trunk", required=True, help="the ingress trunk's id")
    p.add_argument("--called", required=True, help="the called number as received")
    p.add_argument("--calling", default="", help="the calling number as received")
    p.add_argument("--json", action="store_true", help="answer as JSON (as POST /v1/route-test)")

    p = sub.add_parser("trace", help="print a call's trace as a tree, from tandem up's collector")
    p.add_argument("key", help="a trace id, a tandem call id or a SIP Call-ID")
    p.add_argument("--config", default=os.environ.get("TANDEM_CONFIG", DEFAULT_CONFIG))

    p = sub.add_parser("demo", help="one real call PBX -> PSTN, then its CDR and its trace")
    p.add_argument("--config", default=os.environ.get("TANDEM_CONFIG", DEFAULT_CONFIG))
    p.add_argument("--sims", default="examples/sim.yaml", help="the simulated trunks")
    p.add_argument("--data-dir", default=".tandem")
    p.add_argument("--talk", type=float, default=3.0, help="seconds of conversation")

    p = sub.add_parser("config", help="the routing policy in the configuration store")
    config_sub = p.add_subparsers(dest="action", required=True)
    p = config_sub.add_parser("import", help="store the config file's routing policy")
    _common(p)
    p.add_argument("--if-empty", action="store_true", help="only when no policy is stored")
    consolecli.add_parsers(sub, DEFAULT_CONFIG)  # calls, cdrs, trunks, hangup, ladder
    return parser


def summary(config: Config) -> str:
    lines = [
        f"nats       {config.nats.url} (replicas {config.replicas})",
        f"router     {config.router.api}",
        f"callstate  {config.callstate.api}",
        *(
            f"edge       {e.id}: sip {e.sip}, api {e.api}"
            + (f", tls {e.sip_tls}" if e.sip_tls else "")
            for e in config.edges
        ),
        f"usages     {', '.join(sorted(config.usages)) or '(none)'}",
        *(
            f"trunk      {t.id} on {', '.join(t.edges)} -> {t.peer}/{t.transport}, "
            f"usages [{', '.join(t.pstn_usages)}]"
            + (f", auth {t.auth.username} ({t.auth.password_source})" if t.auth else "")
            + (f", media anchored (srtp {t.srtp}, ice {t.ice})" if t.media == "anchor" else "")
            + ("" if t.enabled else " (disabled)")
            for t in config.trunks
        ),
        *(
            [f"rtpengine  {', '.join(config.media.rtpengine)}"]
            if any(t.media == "anchor" for t in config.trunks)
            else []
        ),
        *(
            f"route      {r.id}: {r.number_pattern} [{', '.join(r.pstn_usages)}] "
            f"-> {', '.join(r.trunks)} (priority {r.priority}, {r.spread})"
            for r in config.routes
        ),
    ]
    return "\n".join(lines)


async def _import(config: Config, nats_url: str, if_empty: bool) -> bool:
    from tandem.policy.store import import_policy

    nc = await bus.connect(nats_url, "tandem-config")
    try:
        js = nc.jetstream()
        await bus.ensure_stores(js, config.replicas)
        return await import_policy(js, config.policy, if_empty)
    finally:
        await nc.close()


def _trace(config: Config, key: str) -> int:
    import httpx

    from tandem.traces import Span, render_tree

    if config.telemetry.collector is None:
        print("no local collector in this config (telemetry.collector)", file=sys.stderr)
        return 2
    try:
        reply = httpx.get(f"http://{config.telemetry.collector}/v1/traces/{key}", timeout=5)
    except httpx.HTTPError as exc:
        print(f"no collector answers at {config.telemetry.collector}: {exc}", file=sys.stderr)
        return 1
    if reply.status_code != 200:
        print(reply.json().get("detail", reply.text), file=sys.stderr)
        return 1
    print(render_tree([Span.from_json(s) for s in reply.json()]))
    return 0


def rtpengine_override(config: Config, addresses: str) -> Media:
    """The media settings with these rtpengine instances (--rtpengine), validated."""
    try:
        return Media.model_validate(
            {**config.media.model_dump(), "rtpengine": [a.strip() for a in addresses.split(",")]}
        )
    except ValidationError as exc:
        raise ConfigError("--rtpengine", format_errors(exc)) from None


def _run_service(args: argparse.Namespace, config: Config) -> int:
    from tandem import process

    nats_url = args.nats or config.nats.url
    creds = os.environ.get("TANDEM_NATS_CREDS")
    if args.command == "edge":
        from tandem.edge.service import Service as EdgeService

        if not args.id:
            raise ConfigError("edge", ["  --id: required (or TANDEM_EDGE_ID)"])
        try:
            edge = config.edge(args.id)
        except KeyError:
            raise ConfigError(args.config, [f"  edges: no edge with id {args.id!r}"]) from None
        overrides = {"sip": args.sip, "api": args.api, "advertise": args.advertise}
        edge = edge.model_copy(update={k: v for k, v in overrides.items() if v})
        if args.rtpengine:
            config = config.model_copy(update={"media": rtpengine_override(config, args.rtpengine)})
        return uvloop.run(
            process.run(
                f"edge:{edge.id}",
                config,
                nats_url,
                edge.api,
                lambda ctx: EdgeService(ctx, edge),
                creds,
                args.grace,
            )
        )
    if args.command == "router":
        from tandem.router.service import Service as RouterService

        return uvloop.run(
            process.run(
                "router",
                config,
                nats_url,
                args.api or config.router.api,
                RouterService,
                creds,
                args.grace,
            )
        )
    from tandem.callstate.service import Service as CallstateService

    return uvloop.run(
        process.run(
            "callstate",
            config,
            nats_url,
            args.api or config.callstate.api,
            CallstateService,
            creds,
            args.grace,
        )
    )


def _run_sim(args: argparse.Namespace) -> int:
    from tandem.sim.config import load_sims

    try:
        from tandem.sim.service import run
    except ModuleNotFoundError as exc:
        if exc.name != "pjsua2":
            raise
        print("tandem sim runs on PJSIP: pip install 'tandem[sim]'", file=sys.stderr)
        return 2

    telemetry.setup_logging("text", args.log_level)
    try:
        sim = load_sims(args.config).pick(args.kind, args.id)
    except KeyError as exc:
        print(f"{args.config}: {exc.args[0]}", file=sys.stderr)
        return 2
    return run(sim, args.kind, args.pjsip_log_level)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check-config":
            print(summary(check_files(load_config(args.file), args.file)))
            return 0
        if args.command == "sim":
            return _run_sim(args)
        config = load_config(args.config)
        if args.command == "route-test":
            from tandem.router.table import route_test

            print(route_test(config.policy, args.trunk, args.called, args.calling, args.json))
            return 0
        if args.command == "trace":
            return _trace(config, args.key)
        if args.command in consolecli.COMMANDS:
            return consolecli.run(args, config)
        if args.command == "demo":
            from tandem.demo import Demo
            from tandem.sim.config import load_sims

            sims = load_sims(args.sims)
            return Demo(config, args.config, sims, args.sims, Path(args.data_dir), args.talk).run()
        telemetry.setup_logging(args.log_format, args.log_level)
        if args.command == "up":
            from tandem.up import up

            if args.nats_cluster:  # validated as if the file said it
                data = config.model_dump(mode="json") | {"nats_cluster": args.nats_cluster}
                config = parse_config(data, "--nats-cluster")
            return up(config, args.config, args.nats, args.data_dir, args.log_format)
        if args.command == "config":
            written = asyncio.run(_import(config, args.nats or config.nats.url, args.if_empty))
            print("policy stored" if written else "a policy is already stored: left as it is")
            return 0
        return _run_service(args, config)
    except (ConfigError, InsecureApiError) as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
