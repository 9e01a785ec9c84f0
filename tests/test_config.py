"""The config file: the example loads; every kind of mistake is refused with its path and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tandem.config import ConfigError, load_config, parse_config
from tandem.policy import Source
from tandem.sip.uri import split_host_port
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "tandem.yaml"


def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return data


def errors_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return "\n".join(caught.value.errors)


def test_the_example_loads() -> None:
    config = load_config(EXAMPLE)
    assert [e.id for e in config.edges] == ["edge-pbx", "edge-pstn"]
    hq = config.trunks[0]
    assert hq.peer_address == ("127.0.0.2", 5060)
    assert (hq.failover_timer_s, hq.failover_response_codes) == (10.0, [408, 503, 504])
    assert {"Internal", "Local", "LongDistance"} == config.usages
    assert config.policy.routes == config.routes


def test_the_issue_shape_is_accepted() -> None:
    """The exact shape the foundation issue fixes (fields may be added, none renamed)."""
    text = r"""
nats: nats://127.0.0.1:4222
router:    {api: 127.0.0.1:8081}
callstate: {api: 127.0.0.1:8082}
edges:
  - {id: edge-pbx,  sip: 127.0.0.1:5060, api: 127.0.0.1:8091}
  - {id: edge-pstn, sip: 127.0.0.1:5080, api: 127.0.0.1:8092}
trunks:
  - id: pbx-hq
    edge: edge-pbx
    peer: 127.0.0.2:5060
    sources: [127.0.0.2]
    pstn_usages: [Local, LongDistance]
    inbound_rules: [{pattern: '^(\d{4})$', translation: '+1425555$1'}]
  - {id: pstn-gw1, edge: edge-pstn, peer: 127.0.0.3:5060, sources: [127.0.0.3], pstn_usages: [Internal]}
routes:
  - {id: redmond-local, number_pattern: '^\+1(425|206)\d{7}$', pstn_usages: [Local], trunks: [pstn-gw1], priority: 1}
  - {id: to-hq, number_pattern: '^\+14255550\d{3}$', pstn_usages: [Internal], trunks: [pbx-hq], priority: 1}
"""
    config = parse_config(yaml.safe_load(text))
    assert [t.id for t in config.trunks] == ["pbx-hq", "pstn-gw1"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["trunks"][0].update(peer="127.0.0.2:0"), "trunks.0.peer: bad port '0'"),
        (
            lambda c: c["trunks"][0].update(sources=["10.0.0.0/33"]),
            "trunks.0.sources: '10.0.0.0/33'",
        ),
        (
            lambda c: c["trunks"][0].update(sources=[]),
            "trunks.0.sources: List should have at least 1",
        ),
        (lambda c: c["trunks"][0].update(transport="sctp"), "trunks.0.transport: Input should be"),
        (
            lambda c: c["trunks"][0].update(failover_response_codes=[180]),
            "not final SIP failure codes",
        ),
        (lambda c: c["trunks"][0].update(colour="red"), "trunks.0.colour: Extra inputs"),
        (lambda c: c["trunks"][1].update(id="pbx-hq"), "duplicate trunk id: ['pbx-hq']"),
        (lambda c: c["trunks"][0].update(edge="nowhere"), "names unknown edge 'nowhere'"),
        (lambda c: c["routes"][0].update(trunks=["ghost"]), "names unknown trunks ['ghost']"),
        (lambda c: c["routes"][0].update(pstn_usages=["Mars"]), "unknown PSTN usages ['Mars']"),
        (lambda c: c["routes"][0].update(number_pattern="^(+1"), "routes.0.number_pattern:"),
        (
            lambda c: c["routes"][0].update(suppress_caller_id=True),
            "alternate_caller_id is required",
        ),
        (
            lambda c: c["routes"][0].update(alternate_caller_id="+0123"),
            "routes.0.alternate_caller_id",
        ),
        (lambda c: c["routes"][0].update(spread="weighted"), "needs a positive weight"),
        (lambda c: c["edges"][0].update(sip="127.0.0.1:sip"), "edges.0.sip: bad port 'sip'"),
        (lambda c: c["edges"][0].update(api="127.0.0.1"), "edges.0.api: missing port"),
        (lambda c: c.update(nats="http://x:4222"), "nats.url: 'http://x:4222' is not a nats://"),
        (lambda c: c.update(nats={"replicas": 0}), "nats.replicas: Input should be greater"),
        (lambda c: c.update(nats={"replicas": 7}), "nats.replicas: Input should be less"),
        (lambda c: c.update(nats={"copies": 3}), "nats.copies: Extra inputs"),
        (lambda c: c.update(nats_cluster=2), "nats_cluster: Input should be 1, 3 or 5"),
        (
            lambda c: c.update(nats={"replicas": 5}, nats_cluster=3),
            "nats_cluster: 3 servers cannot keep nats.replicas: 5 copies",
        ),
    ],
)
def test_mistakes_are_refused_with_path_and_reason(change: Any, expected: str) -> None:
    data = example()
    change(data)
    assert expected in errors_of(data)


def test_nats_is_a_url_or_a_url_with_replicas() -> None:
    assert parse_config({"nats": "nats://10.0.0.1:4222"}).nats.url == "nats://10.0.0.1:4222"
    assert parse_config({}).replicas == 1  # locally, one copy by default
    both = parse_config({"nats": {"url": "nats://a:4222, nats://b:4222", "replicas": 3}})
    assert (both.nats.urls, both.replicas) == (["nats://a:4222", "nats://b:4222"], 3)
    assert parse_config({"nats_cluster": 3}).replicas == 3  # a local cluster: one per server
    assert parse_config({"nats_cluster": 5}).replicas == 3
    assert parse_config({"nats": {"replicas": 1}, "nats_cluster": 3}).replicas == 1


def test_every_field_error_is_reported_at_once() -> None:
    data = example()
    data["trunks"][0]["peer"] = "x:y"
    data["routes"][1]["priority"] = "high"
    lines = errors_of(data).splitlines()
    assert any(line.startswith("  trunks.0.peer:") for line in lines)
    assert any(line.startswith("  routes.1.priority:") for line in lines)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:5060", ("10.0.0.1", 5060)),
        ("[2001:db8::1]:5061", ("2001:db8::1", 5061)),
        ("gw.example.net", ("gw.example.net", 5060)),
        ("2001:db8::1", ("2001:db8::1", 5060)),
    ],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text, 5060) == expected


def test_sources_most_specific_first() -> None:
    import ipaddress

    wide, host, port = (Source.parse(s) for s in ("10.0.0.0/8", "10.1.2.3", "10.1.2.3:5070"))
    ip = ipaddress.ip_address("10.1.2.3")
    assert all(s.matches(ip, 5070) for s in (wide, host, port))
    assert not port.matches(ip, 5060)
    assert max((wide, host, port), key=lambda s: s.specificity) is port
    assert Source.parse("[2001:db8::1]:5060").port == 5060
    assert Source.parse("[2001:db8::1]") == Source.parse("2001:db8::1/128")


def test_check_config_command(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "check-config", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0
    assert "trunk      pbx-hq on edge-pbx -> 127.0.0.2:5060/udp" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("edges: [{id: e, sip: 'nohost:'}]\n")
    refused = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "check-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "edges.0.sip" in refused.stderr
