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
        (
            lambda c: c["trunks"][0].update(edge=["edge-pbx", "nowhere"]),
            "names unknown edge 'nowhere'",
        ),
        (lambda c: c["trunks"][0].update(edge=[]), "trunks.0.edge: names no edge"),
        (
            lambda c: c["trunks"][0].update(edge=["edge-pbx", "edge-pbx"]),
            "duplicate edge: ['edge-pbx']",
        ),
        (
            lambda c: c["trunks"][0].update(
                edge=["edge-pbx", "edge-pstn"], register={"aor": "sip:acme@carrier.example"}
            ),
            "a trunk that registers (register, registrar) has one edge",
        ),
        (lambda c: c["routes"][0].update(trunks=["ghost"]), "names unknown trunks ['ghost']"),
        (lambda c: c["routes"][0].update(pstn_usages=["Mars"]), "unknown PSTN usages ['Mars']"),
        (lambda c: c["routes"][0].update(number_pattern="^(+1"), "routes.0.number_pattern:"),
        (
            lambda c: c["trunks"][0].update(response_map={404: 200}),
            "maps final SIP codes only (300-699), not [200]",
        ),
        (
            lambda c: c["trunks"][0].update(session_expires_s=120, min_se_s=300),
            "session_expires_s (120) is below min_se_s (300)",
        ),
        (lambda c: c["trunks"][0].update(min_se_s=30), "trunks.0.min_se_s: Input should be"),
        (lambda c: c["trunks"][0].update(refer="forward"), "trunks.0.refer: Input should be"),
        (lambda c: c["trunks"][0].update(redirect="loop"), "trunks.0.redirect: Input should be"),
        (lambda c: c["trunks"][0].update(max_ring_s=-1), "trunks.0.max_ring_s: Input should be"),
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


# ---- trunks on the real network (issue 13): TLS, digest credentials, registration, DNS ----

AUTH = {"username": "pbx-hq", "password_env": "TANDEM_TEST_PBX_HQ_PASSWORD"}


def _tls_trunk(c: dict[str, Any], **fields: Any) -> None:
    c["edges"][0].update(sip_tls="127.0.0.1:5061", tls={"cert": "/c.pem", "key": "/k.pem"})
    c["trunks"][0].update(transport="tls", **fields)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda c: c["trunks"][0].update(tls_verify="maybe"),
            "trunks.0.tls_verify: Input should be a valid boolean",
        ),
        (
            lambda c: _tls_trunk(c, tls_names=["sbc..example.com"]),
            "trunks.0.tls_names: not DNS names: ['sbc..example.com']",
        ),
        (lambda c: _tls_trunk(c, tls_names=["*.example.com"]), "trunks.0.tls_names: not DNS names"),
        (
            lambda c: _tls_trunk(c, tls_names=["a.test", "a.test"]),
            "trunks.0.tls_names: duplicate name",
        ),
        (
            lambda c: c["trunks"][0].update(tls_names=["sbc.example.com"]),
            "trunks.0: tls_names needs transport: tls",
        ),
        (
            lambda c: c["trunks"][0].update(transport="tls", tls_names=["sbc.example.com"]),
            "trunk 'pbx-hq' has tls_names but edge 'edge-pbx' has no sip_tls",
        ),
        (
            lambda c: c["trunks"][0].update(auth={**AUTH, "password_file": "/run/secrets/p"}),
            "trunks.0.auth: give exactly one of password_env and password_file",
        ),
        (
            lambda c: c["trunks"][0].update(auth={"username": "u"}),
            "give exactly one of password_env",
        ),
        (
            lambda c: c["trunks"][0].update(auth={**AUTH, "password_env": "1-BAD"}),
            "trunks.0.auth.password_env: '1-BAD' is not an environment variable name",
        ),
        (
            lambda c: c["trunks"][0].update(auth={**AUTH, "username": ""}),
            "trunks.0.auth.username: String should have at least 1",
        ),
        (
            lambda c: c["trunks"][0].update(auth={**AUTH, "username": "a\r\nVia: x"}),
            "trunks.0.auth.username: must be printable",
        ),
        (
            lambda c: c["trunks"][0].update(auth={**AUTH, "password": "hunter2"}),
            "trunks.0.auth.password: Extra inputs are not permitted",
        ),
        (
            lambda c: c["trunks"][0].update(auth={**AUTH, "challenge": "yes please"}),
            "trunks.0.auth.challenge: Input should be a valid boolean",
        ),
        (
            lambda c: c["trunks"][0].update(register={"aor": "tel:+14255550100"}),
            "trunks.0.register.aor: must be a sip: or sips: URI with a user part",
        ),
        (
            lambda c: c["trunks"][0].update(register={"aor": "sip:carrier.test"}),
            "trunks.0.register.aor: must be a sip: or sips: URI",
        ),
        (
            lambda c: c["trunks"][0].update(register={"aor": "sip:a@b", "expires": 10}),
            "trunks.0.register.expires: Input should be greater than or equal to 60",
        ),
        (
            lambda c: c["trunks"][0].update(register={"expires": 600}),
            "trunks.0.register.aor: Field required",
        ),
        (
            lambda c: c["trunks"][0].update(
                register={"aor": "sip:a@b"}, registrar=True, auth={**AUTH, "challenge": True}
            ),
            "a trunk either registers to its peer (register) or is a registrar",
        ),
        (
            lambda c: c["trunks"][0].update(registrar=True),
            "registrar: true needs auth with challenge: true",
        ),
        (
            lambda c: c["trunks"][0].update(registrar=True, auth=AUTH),
            "registrar: true needs auth with challenge: true",
        ),
        (
            lambda c: c["edges"][0].update(sip_tls="127.0.0.1:tls"),
            "edges.0.sip_tls: bad port 'tls'",
        ),
        (
            lambda c: c["edges"][0].update(sip_tls="127.0.0.1:5061"),
            "edges.0: sip_tls needs tls: {cert, key}",
        ),
        (lambda c: c["edges"][0].update(tls={"cert": "/c.pem"}), "edges.0.tls.key: Field required"),
        (
            lambda c: c["edges"][0].update(tls={"cert": "", "key": "/k"}),
            "edges.0.tls.cert: String should have at least 1",
        ),
        (
            lambda c: c["edges"][1].update(sip=c["edges"][0]["sip"]),
            "edges edge-pbx, edge-pstn share sip 127.0.0.1:5060: each needs an own_port",
        ),
        (
            lambda c: c["edges"][0].update(own_port=5060),
            "edges.0: own_port must differ from the sip port",
        ),
        (
            lambda c: [e.update(sip="127.0.0.1:5070", own_port=5071) for e in c["edges"]],
            "duplicate edge own_port: ['127.0.0.1:5071']",
        ),
        (
            lambda c: c["edges"][0].update(own_port=5080),
            "an edge's own_port is another edge's sip address: ['127.0.0.1:5080']",
        ),
        (
            lambda c: c.update(dns={"nameservers": ["ns1.example.com"]}),
            "dns.nameservers: 'ns1.example.com': a nameserver is an IP address[:port]",
        ),
        (
            lambda c: c.update(dns={"nameservers": ["127.0.0.1:99999"]}),
            "dns.nameservers: bad port '99999'",
        ),
        (lambda c: c.update(dns={"timeout_s": 0}), "dns.timeout_s: Input should be greater than 0"),
        (
            lambda c: c.update(dns={"servers": ["127.0.0.1"]}),
            "dns.servers: Extra inputs are not permitted",
        ),
    ],
)
def test_network_fields_are_refused_with_path_and_reason(change: Any, expected: str) -> None:
    data = example()
    change(data)
    assert expected in errors_of(data)


def test_network_fields_are_accepted_and_optional() -> None:
    data = example()
    data["dns"] = {"nameservers": ["127.0.0.1:5353", "[::1]"], "timeout_s": 1.5}
    data["edges"][1].update(
        sip_tls="127.0.0.1", tls={"cert": "/c.pem", "key": "/k.pem", "ca": "/ca.pem"}
    )
    data["trunks"][2].update(
        peer="carrier.test",
        transport="tls",
        tls_names=["sbc.carrier.test"],
        auth={
            "username": "tandem",
            "password_file": "/run/secrets/carrier",
            "realm": "carrier.test",
        },
        register={"aor": "sip:+14255550100@carrier.test"},
    )
    data["trunks"][0]["auth"] = {**AUTH, "challenge": True}
    data["trunks"][0]["registrar"] = True
    config = parse_config(data)
    assert config.dns.addresses == [("127.0.0.1", 5353), ("::1", 53)]
    assert config.edges[1].sip_tls_address == ("127.0.0.1", 5061)
    carrier = config.trunks[2]
    assert carrier.tls_verify and carrier.registration is not None
    assert (carrier.registration.aor, carrier.registration.expires) == (
        "sip:+14255550100@carrier.test",
        600,
    )
    # the policy store and the API keep the config's spelling, and read it back
    stored = carrier.model_dump_json()
    assert '"register":{' in stored and "registration" not in stored
    assert type(carrier).model_validate_json(stored) == carrier
    plain = load_config(EXAMPLE)
    assert (plain.dns.nameservers, plain.edges[0].tls, plain.trunks[0].auth) == ([], None, None)


def test_the_password_is_read_where_it_is_named_and_never_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tandem.policy.model import SecretError, TrunkAuth

    monkeypatch.setenv("TANDEM_TEST_PBX_HQ_PASSWORD", "s3cret-from-env")
    by_env = TrunkAuth.model_validate(AUTH)
    assert by_env.password() == "s3cret-from-env"
    secret_file = tmp_path / "password"
    secret_file.write_text("s3cret-from-file\n")
    by_file = TrunkAuth(username="u", password_file=str(secret_file))
    assert by_file.password() == "s3cret-from-file"
    shown = repr(by_env) + repr(by_file) + by_env.model_dump_json() + by_file.model_dump_json()
    assert "s3cret" not in shown
    monkeypatch.delenv("TANDEM_TEST_PBX_HQ_PASSWORD")
    with pytest.raises(
        SecretError, match="environment variable TANDEM_TEST_PBX_HQ_PASSWORD is not set"
    ):
        by_env.password()
    secret_file.write_text("\n")
    with pytest.raises(SecretError, match="is empty"):
        by_file.password()
    secret_file.unlink()
    with pytest.raises(SecretError, match=r"cannot read file .*: FileNotFoundError"):
        by_file.password()


def _tls_config(tmp_path: Path) -> tuple[dict[str, Any], Any]:
    from tests.edge.certs import Ca

    ca = Ca(tmp_path / "pki")
    issued = ca.issue("edge", ["edge-pbx.tandem.test"])
    data = example()
    data["edges"][0].update(
        sip_tls="127.0.0.1:5061",
        tls={"cert": str(issued.cert), "key": str(issued.key), "ca": str(ca.bundle)},
    )
    data["trunks"][0]["auth"] = AUTH
    return data, ca


def test_check_files_reads_certificates_and_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tandem.config import file_errors

    data, ca = _tls_config(tmp_path)
    monkeypatch.setenv("TANDEM_TEST_PBX_HQ_PASSWORD", "hunter2")
    assert file_errors(parse_config(data)) == []

    monkeypatch.delenv("TANDEM_TEST_PBX_HQ_PASSWORD")
    other = ca.issue("other", ["other.test"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    cases = [
        (
            {"cert": str(tmp_path / "missing.pem")},
            "edges.0.tls.cert: cannot read '"
            + str(tmp_path / "missing.pem")
            + "': No such file or directory",
        ),
        (
            {"key": str(other.key)},
            f"edges.0.tls: {tmp_path}/pki/edge.pem with {other.key}: the key is not the certificate's",
        ),
        (
            {"cert": str(garbage)},
            f"edges.0.tls: {garbage} with {tmp_path}/pki/edge.key: no PEM data in it",
        ),
        ({"ca": str(garbage)}, f"edges.0.tls: {garbage}: no PEM data in it"),
    ]
    for files, expected in cases:
        broken = yaml.safe_load(yaml.safe_dump(data))
        broken["edges"][0]["tls"].update(files)
        errors = "\n".join(file_errors(parse_config(broken)))
        assert expected in errors
        assert (
            "trunks.0.auth.password_env: environment variable TANDEM_TEST_PBX_HQ_PASSWORD is not set"
            in errors
        )


def test_check_config_command_checks_files_and_never_prints_secrets(tmp_path: Path) -> None:
    data, _ = _tls_config(tmp_path)
    path = tmp_path / "tandem.yaml"
    path.write_text(yaml.safe_dump(data))
    command = [sys.executable, "-m", "tandem.cli", "check-config", str(path)]
    env = {k: v for k, v in __import__("os").environ.items() if k != "TANDEM_TEST_PBX_HQ_PASSWORD"}
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 2
    assert (
        "trunks.0.auth.password_env: environment variable TANDEM_TEST_PBX_HQ_PASSWORD is not set"
        in refused.stderr
    )
    ok = subprocess.run(
        command, capture_output=True, text=True, timeout=60,
        env={**env, "TANDEM_TEST_PBX_HQ_PASSWORD": "hunter2-secret"},
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "edge-pbx: sip 127.0.0.1:5060, api 127.0.0.1:8091, tls 127.0.0.1:5061" in ok.stdout
    assert "auth pbx-hq (environment variable TANDEM_TEST_PBX_HQ_PASSWORD)" in ok.stdout
    assert "hunter2-secret" not in ok.stdout + ok.stderr


# ---- media (issue 17): anchoring through rtpengine -----------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["trunks"][2].update(media="relay"), "trunks.2.media: Input should be"),
        (
            lambda c: c["trunks"][2].update(srtp="sdes"),
            "srtp and ice apply to anchored media: set media: anchor",
        ),
        (lambda c: c["trunks"][2].update(media="anchor", srtp="zrtp"), "trunks.2.srtp: Input"),
        (lambda c: c["trunks"][2].update(media="anchor", ice="lite"), "trunks.2.ice: Input"),
        (lambda c: c["trunks"][2].update(media_timeout_s=-1), "trunks.2.media_timeout_s: Input"),
        (lambda c: c["trunks"][2].update(media_fallback="drop"), "trunks.2.media_fallback"),
        (lambda c: c.update(media={"rtpengine": []}), "media.rtpengine: List should have at least"),
        (lambda c: c.update(media={"rtpengine": ["10.0.0.9:99999"]}), "bad port '99999'"),
        (
            lambda c: c.update(media={"rtpengine": ["10.0.0.9", "10.0.0.9:2223"]}),
            "media.rtpengine: duplicate rtpengine instance",
        ),
        (lambda c: c.update(media={"interface": "eth0"}), "'eth0': an IP address, or IP!PUBLIC-IP"),
        (lambda c: c.update(media={"port_min": 40000, "port_max": 40001}), "room for one call"),
    ],
)
def test_media_mistakes_are_refused_with_path_and_reason(change: Any, expected: str) -> None:
    data = example()
    change(data)
    assert expected in errors_of(data)


def test_media_fields_are_accepted_with_their_defaults() -> None:
    data = example()
    data["trunks"][2].update(
        media="anchor", srtp="dtls", ice="force", media_timeout_s=0, media_fallback="bypass"
    )
    data["media"] = {
        "rtpengine": ["10.0.0.9", "10.0.0.10:22222"],
        "interface": "10.0.0.9!203.0.113.9",
    }
    config = parse_config(data)
    gw = config.trunks[2]
    assert (gw.media, gw.srtp, gw.ice, gw.media_timeout_s, gw.media_fallback) == (
        "anchor",
        "dtls",
        "force",
        0,
        "bypass",
    )
    hq = config.trunks[0]
    assert (hq.media, hq.srtp, hq.ice, hq.media_timeout_s, hq.media_fallback) == (
        "bypass",
        "off",
        "remove",
        60.0,
        "reject",
    )
    assert config.media.addresses == [("10.0.0.9", 2223), ("10.0.0.10", 22222)]
    assert parse_config(example()).media.addresses == [("127.0.0.1", 2223)]


def test_check_config_shows_anchored_trunks_and_rtpengine(tmp_path: Path) -> None:
    data = example()
    data["trunks"][2].update(media="anchor", srtp="sdes")
    path = tmp_path / "anchored.yaml"
    path.write_text(yaml.safe_dump(data))
    out = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert (
        "pstn-gw1 on edge-pstn -> 127.0.0.3:5060/udp, usages [Internal], media anchored (srtp sdes, ice remove)"
        in out.stdout
    )
    assert "rtpengine  127.0.0.1:2223" in out.stdout
