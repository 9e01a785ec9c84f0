"""The helm chart, linted and rendered by helm in every mode.

Each set of values passes `helm lint --strict` and renders into objects valid against the
strict Kubernetes schemas; the tests then check what the deployment of a SIP service
depends on: where the edges' advertised address comes from, the drain on SIGTERM, the
policy import, secrets, probes and the NATS switch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tandem.config import parse_config
from tests.deploy import deploy_render
from tests.deploy.deploy_render import (
    CHART,
    KUBE_VERSIONS,
    Manifest,
    ToolMissing,
    containers,
    deep_merge,
    env_of,
    find,
    helm_lint,
    helm_template,
    one,
    pod_spec,
    render_chart,
    validation_errors,
)

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet")

# The values the tests below render besides the defaults and ci/; all are linted too.
NUMERIC_EDGE_ID = {"edges": {"instances": [{"id": "123", "sipPort": 5060, "apiPort": 8091}]}}
ONE_TRUNK = {
    "policy": {
        "trunks": [{"id": "t1", "edge": "edge-1", "peer": "10.0.0.9:5060", "sources": ["10.0.0.9"]}]
    }
}
OTHER_TOKEN = {"apiToken": {"value": "other"}}
TOKEN_SECRET = {"apiToken": {"existingSecret": "voice-api"}}
EXTERNAL_NATS_URL = "nats://nats.messaging:4222"
EXTERNAL_NATS = {"nats": {"enabled": False}, "bus": {"url": EXTERNAL_NATS_URL}}
MATRIX = [
    pytest.param([], None, id="default"),
    *(pytest.param([f], None, id=f.name) for f in CI_VALUES),
    pytest.param([], NUMERIC_EDGE_ID, id="numeric-edge-id"),
    pytest.param([], ONE_TRUNK, id="one-trunk"),
    pytest.param([], OTHER_TOKEN, id="token-in-values"),
    pytest.param([], TOKEN_SECRET, id="token-in-a-secret"),
    pytest.param([], EXTERNAL_NATS, id="external-nats-url"),
]


@pytest.fixture(scope="module")
def default() -> list[Manifest]:
    return render_chart()


@pytest.fixture(scope="module")
def loadbalancer() -> list[Manifest]:
    return render_chart(CHART / "ci" / "loadbalancer-values.yaml")


@pytest.fixture(scope="module")
def full() -> list[Manifest]:
    return render_chart(CHART / "ci" / "full-values.yaml")


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["kind"] in WORKLOAD_KINDS]


# --- values and schema ---


def test_values_yaml_matches_the_schema() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(DEFAULTS)


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_ci_values_match_the_schema(values_file: Path) -> None:
    merged = deep_merge(DEFAULTS, yaml.safe_load(values_file.read_text()))
    jsonschema.Draft7Validator(SCHEMA).validate(merged)


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        paths.add(prefix + key)
        paths |= _schema_paths(sub, f"{prefix}{key}.")
    return paths


def _value_paths(values: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in values.items():
        paths.add(prefix + key)
        # Free-form Kubernetes objects and string maps are typed as a whole by the schema.
        if isinstance(value, dict) and key not in (
            "resources",
            "podSecurityContext",
            "securityContext",
            "fileStore",
        ):
            paths |= _value_paths(value, f"{prefix}{key}.")
    return paths


def test_schema_describes_every_value() -> None:
    missing = _value_paths(DEFAULTS) - _schema_paths(SCHEMA)
    assert not missing, f"values without a schema entry: {sorted(missing)}"


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"edges": {"mode": "nodePort"}}, "unknown edge mode"),
        ({"router": {"replicaCount": 3}}, "unknown key (a typo)"),
        ({"callstate": {"replicas": 3}}, "more callstate replicas than are useful"),
        ({"edges": {"instances": [{"id": "router", "sipPort": 5060, "apiPort": 8091}]}}, "name"),
        ({"edges": {"instances": [{"id": "e1", "sipPort": 70000, "apiPort": 8091}]}}, "port"),
        ({"nats": {"config": {"jetstream": {"enabled": False}}}}, "tandem needs JetStream"),
        ({"bus": {"url": "http://nats:4222"}}, "not a NATS URL"),
        ({"bus": {"replicas": 0}}, "no copy of the streams at all"),
        ({"policy": {"trunks": [{"id": "t1"}]}}, "a trunk without edge and peer"),
        (
            {"policy": {"trunks": [{**ONE_TRUNK["policy"]["trunks"][0], "srtp": "zrtp"}]}},
            "an srtp tandem does not know",
        ),
        ({"media": {"rtpengine": {"enabled": "yes"}}}, "not a boolean"),
        ({"media": {"rtpengine": {"advertise": "node-1"}}}, "advertise is an address"),
    ],
)
def test_schema_refuses_bad_values(override: dict[str, Any], why: str) -> None:
    merged = deep_merge(DEFAULTS, override)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(merged)
    result = helm_template(values=override)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


# --- every render lints clean and is valid Kubernetes ---


@pytest.mark.parametrize(("value_files", "values"), MATRIX)
def test_chart_passes_helm_lint_strict(
    value_files: list[Path], values: dict[str, Any] | None
) -> None:
    result = helm_lint(*value_files, values=values)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("value_files", "values"), MATRIX)
def test_chart_renders_valid_kubernetes_objects(
    value_files: list[Path], values: dict[str, Any] | None
) -> None:
    manifests = render_chart(*value_files, values=values)
    assert workloads(manifests), "no workloads rendered"
    assert validation_errors(manifests) == []


def test_the_chart_admits_the_oldest_kubernetes_it_is_validated_against() -> None:
    assert helm_template(kube_version=KUBE_VERSIONS[0]).returncode == 0
    older = helm_template(kube_version="1.25")
    assert older.returncode != 0
    assert "chart requires kubeVersion" in older.stderr


def test_validation_catches_a_broken_object(default: list[Manifest]) -> None:
    router = json.loads(json.dumps(one(default, "Deployment", "tandem-router")))
    pod_spec(router)["containers"][0]["ports"][0]["containerPort"] = "eighty"
    pod_spec(router)["restartPolicy"] = "Sometimes"
    assert validation_errors([router])


def test_a_missing_tool_fails_rather_than_skips(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(deploy_render, "HELM", tmp_path / "helm")
    monkeypatch.setattr(deploy_render, "KUBECTL", tmp_path / "kubectl")
    with pytest.raises(ToolMissing, match=r"helm not found: `make tools`.*`make test`"):
        render_chart()
    with pytest.raises(ToolMissing, match=r"kubectl not found: `make tools`.*`make test`"):
        deploy_render.kustomize(deploy_render.DEPLOY / "overlays" / "dev")


def test_numeric_looking_edge_ids_stay_strings() -> None:
    manifests = render_chart(values=NUMERIC_EDGE_ID)
    edge = one(manifests, "DaemonSet", "tandem-123")
    assert edge["metadata"]["labels"]["tandem.io/edge-id"] == "123"
    assert pod_spec(edge)["nodeSelector"] == {"tandem.io/edge": "123"}
    assert validation_errors(manifests) == []


def test_chart_declares_the_nats_chart_as_a_switchable_dependency() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (nats,) = [d for d in chart["dependencies"] if d["name"] == "nats"]
    assert nats["repository"] == "https://nats-io.github.io/k8s/helm/charts/"
    assert nats["condition"] == "nats.enabled"
    assert DEFAULTS["nats"]["enabled"] is True
    assert DEFAULTS["nats"]["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert DEFAULTS["nats"]["config"]["jetstream"]["enabled"] is True


# --- router, callstate ---


def test_router_scales_with_an_autoscaler_and_a_disruption_budget(
    default: list[Manifest],
) -> None:
    router = one(default, "Deployment", "tandem-router")
    assert "replicas" not in router["spec"], "the HPA owns the replica count"
    hpa = one(default, "HorizontalPodAutoscaler", "tandem-router")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "tandem-router",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = one(default, "PodDisruptionBudget", "tandem-router")
    assert pdb["spec"]["selector"]["matchLabels"] == router["spec"]["selector"]["matchLabels"]


def test_router_without_autoscaling_sets_replicas(full: list[Manifest]) -> None:
    assert one(full, "Deployment", "tandem-router")["spec"]["replicas"] == 3
    assert find(full, "HorizontalPodAutoscaler") == []


def test_callstate_runs_a_leader_and_a_standby_by_default(default: list[Manifest]) -> None:
    assert one(default, "Deployment", "tandem-callstate")["spec"]["replicas"] == 2
    assert DEFAULTS["callstate"]["replicas"] == 2


def test_streams_are_kept_three_times_on_the_three_nats_servers(default: list[Manifest]) -> None:
    config = yaml.safe_load(one(default, "ConfigMap", "tandem-config")["data"]["tandem.yaml"])
    assert config["nats"] == {"url": "nats://tandem-nats:4222", "replicas": 3}
    assert parse_config(config).replicas == DEFAULTS["nats"]["config"]["cluster"]["replicas"]
    single = render_chart(values=deep_merge(EXTERNAL_NATS, {"bus": {"replicas": 1}}))
    config = yaml.safe_load(one(single, "ConfigMap", "tandem-config")["data"]["tandem.yaml"])
    assert config["nats"]["replicas"] == 1  # an existing single server


def test_more_replicas_than_nats_servers_is_refused() -> None:
    result = helm_template(values={"bus": {"replicas": 5}})
    assert result.returncode != 0
    assert "bus.replicas: 5 copies need as many NATS servers" in result.stderr


def test_the_router_imports_the_policy_once(loadbalancer: list[Manifest]) -> None:
    router = one(loadbalancer, "Deployment", "tandem-router")
    (init,) = pod_spec(router)["initContainers"]
    assert init["args"][:2] == ["config", "import"]
    assert "--if-empty" in init["args"]
    config_path = init["args"][init["args"].index("--config") + 1]
    config = yaml.safe_load(one(loadbalancer, "ConfigMap", "tandem-config")["data"]["tandem.yaml"])
    assert [t["id"] for t in config["trunks"]] == ["pbx-hq", "pstn-gw1"]
    assert [r["id"] for r in config["routes"]] == ["redmond-local"]
    assert config["routes"][0]["number_pattern"] == r"^\+1(425|206)\d{7}$"
    assert [e["id"] for e in config["edges"]] == ["edge-pbx", "edge-pstn"]
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    assert config_path == mounts["config"] + "/tandem.yaml"


@pytest.mark.parametrize(
    "values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "default"
)
def test_the_config_file_is_one_tandem_accepts(values_file: Path | None) -> None:
    manifests = render_chart(*([values_file] if values_file else []))
    (config_map,) = find(manifests, "ConfigMap")
    config = parse_config(yaml.safe_load(config_map["data"]["tandem.yaml"]), "chart")
    values = deep_merge(DEFAULTS, yaml.safe_load(values_file.read_text()) if values_file else {})
    assert [e.id for e in config.edges] == [e["id"] for e in values["edges"]["instances"]]
    assert [t.id for t in config.trunks] == [t["id"] for t in values["policy"]["trunks"]]
    assert config.callstate.edge_lost_s == values["callstate"]["edgeLostSeconds"]
    assert config.telemetry.mask_numbers is values["telemetry"]["maskNumbers"]


def test_policy_import_can_be_turned_off(full: list[Manifest]) -> None:
    assert "initContainers" not in pod_spec(one(full, "Deployment", "tandem-router"))


# --- edges: host network (default) ---


def test_edges_run_on_the_host_network_of_labelled_nodes(default: list[Manifest]) -> None:
    (edge,) = find(default, "DaemonSet")
    spec = pod_spec(edge)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet", "NATS is found by its Service name"
    assert spec["nodeSelector"] == {"tandem.io/edge": "edge-1"}
    ports = {(p["name"], p["protocol"]): p for p in spec["containers"][0]["ports"]}
    assert ports["sip-udp", "UDP"]["hostPort"] == ports["sip-tcp", "TCP"]["hostPort"] == 5060
    assert find(default, "StatefulSet") == []
    assert not [s for s in find(default, "Service") if s["spec"].get("type") == "LoadBalancer"]


def test_hostnetwork_edges_advertise_the_node_address(default: list[Manifest]) -> None:
    env = env_of(pod_spec(one(default, "DaemonSet", "tandem-edge-1"))["containers"][0])
    assert env["TANDEM_EDGE_ADVERTISE"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert env["TANDEM_EDGE_ID"] == "edge-1"


def test_an_edge_can_advertise_a_configured_address(full: list[Manifest]) -> None:
    edge = one(full, "DaemonSet", "tandem-edge-pstn")
    env = env_of(pod_spec(edge)["containers"][0])
    assert env["TANDEM_EDGE_ADVERTISE"] == "198.51.100.7"
    assert pod_spec(edge)["nodeSelector"] == {
        "voice.example.com/edge": "edge-pstn",
        "topology.kubernetes.io/zone": "a",
    }


@pytest.mark.parametrize(
    "values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "default"
)
def test_no_edge_ever_advertises_the_pod_ip(values_file: Path | None) -> None:
    manifests = render_chart(*([values_file] if values_file else []))
    text = yaml.safe_dump_all(manifests)
    assert "status.podIP" not in text
    for edge in workloads(manifests):
        if edge["metadata"]["labels"]["app.kubernetes.io/component"] == "edge":
            assert "TANDEM_EDGE_ADVERTISE" in env_of(pod_spec(edge)["containers"][0])


# --- edges: StatefulSet behind LoadBalancer Services ---


def test_loadbalancer_mode_runs_one_pod_per_edge_behind_udp_and_tcp(
    loadbalancer: list[Manifest],
) -> None:
    assert find(loadbalancer, "DaemonSet") == []
    for edge_id, port, tls_port, address in [
        ("edge-pbx", 5060, None, "203.0.113.10"),
        ("edge-pstn", 5080, 5081, "203.0.113.11"),
    ]:
        sts = one(loadbalancer, "StatefulSet", f"tandem-{edge_id}")
        assert sts["spec"]["replicas"] == 1
        spec = pod_spec(sts)
        assert "hostNetwork" not in spec
        env = env_of(spec["containers"][0])
        assert env["TANDEM_EDGE_ADVERTISE"] == address
        assert env["TANDEM_EDGE_ID"] == edge_id
        svc = one(loadbalancer, "Service", f"tandem-{edge_id}")
        assert svc["spec"]["type"] == "LoadBalancer"
        assert svc["spec"]["externalTrafficPolicy"] == "Local", "trunk ACLs need the source"
        assert svc["spec"]["publishNotReadyAddresses"] is True, "in-dialog requests while draining"
        assert {(p["protocol"], p["port"]) for p in svc["spec"]["ports"]} == {
            ("UDP", port),
            ("TCP", port),
            *([("TCP", tls_port)] if tls_port else []),
        }
        assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
        assert svc["spec"]["loadBalancerSourceRanges"] == ["10.1.0.0/24", "10.2.0.0/24"]
        governing = one(loadbalancer, "Service", sts["spec"]["serviceName"])
        assert governing["spec"]["clusterIP"] == "None"
    assert one(loadbalancer, "Service", "tandem-edge-pbx")["spec"]["loadBalancerIP"] == (
        "203.0.113.10"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {
                "edges": {
                    "mode": "loadBalancer",
                    "instances": [{"id": "e1", "sipPort": 5060, "apiPort": 8091}],
                }
            },
            "needs advertise or loadBalancerIP",
        ),
        (
            {
                "edges": {
                    "instances": [
                        {"id": "e1", "sipPort": 5060, "apiPort": 8091},
                        {"id": "e1", "sipPort": 5080, "apiPort": 8092},
                    ]
                }
            },
            'edge id "e1" appears twice',
        ),
        ({"nats": {"enabled": False}}, "bus.url is required when nats.enabled=false"),
        (
            {
                "edges": {
                    "instances": [
                        {"id": "e1", "sipPort": 5060, "sipTlsPort": 5061, "apiPort": 8091}
                    ]
                }
            },
            "edges.instances[e1]: sipTlsPort needs tls.existingSecret",
        ),
    ],
)
def test_the_chart_refuses_unusable_values(values: dict[str, Any], message: str) -> None:
    result = helm_template(values=values)
    assert result.returncode != 0
    assert message in result.stderr


# --- draining, probes, security ---


def test_edges_drain_on_prestop_within_their_grace_period(default: list[Manifest]) -> None:
    edge = one(default, "DaemonSet", "tandem-edge-1")
    container = pod_spec(edge)["containers"][0]
    grace = int(container["args"][container["args"].index("--grace") + 1])
    assert grace == DEFAULTS["edges"]["drainSeconds"] >= 600, "calls need time to end"
    assert pod_spec(edge)["terminationGracePeriodSeconds"] > grace
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    assert "kill -TERM 1" in command[2]
    assert edge["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1


def test_router_and_callstate_stop_after_their_endpoints_are_gone(
    default: list[Manifest],
) -> None:
    for name in ("tandem-router", "tandem-callstate"):
        spec = pod_spec(one(default, "Deployment", name))
        container = spec["containers"][0]
        assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
        grace = int(container["args"][container["args"].index("--grace") + 1])
        assert spec["terminationGracePeriodSeconds"] > grace + 5


@pytest.mark.parametrize(
    "values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "default"
)
def test_every_container_is_probed_limited_and_locked_down(values_file: Path | None) -> None:
    manifests = render_chart(*([values_file] if values_file else []))
    for workload in workloads(manifests):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in containers(workload):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert c["resources"]["requests"]["memory"]
            assert c["resources"]["limits"]["memory"]
        main = spec["containers"][0]
        if workload["metadata"]["labels"]["app.kubernetes.io/component"] == "rtpengine":
            # no HTTP API (its CLI must not face the node's network): its TCP NG port
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert main[probe]["tcpSocket"] == {"port": "ng-tcp"}
            continue
        assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}
        assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}
        assert "api" in {p["name"] for p in main["ports"]}


# --- configuration, secrets, rollouts ---


def _checksums(manifests: list[Manifest]) -> dict[str, dict[str, str]]:
    return {
        w["metadata"]["name"]: {
            k: v
            for k, v in w["spec"]["template"]["metadata"]["annotations"].items()
            if k.startswith("checksum/")
        }
        for w in workloads(manifests)
    }


def test_pods_roll_when_the_config_or_secrets_change(default: list[Manifest]) -> None:
    before = _checksums(default)
    assert set(before) == {"tandem-router", "tandem-callstate", "tandem-edge-1"}
    assert all(set(c) == {"checksum/config", "checksum/secret"} for c in before.values())
    again = _checksums(render_chart())
    assert again == before, "an unchanged release must not roll its pods"
    changed = _checksums(render_chart(values=ONE_TRUNK))
    token = _checksums(render_chart(values=OTHER_TOKEN))
    for name in before:
        assert changed[name]["checksum/config"] != before[name]["checksum/config"]
        assert token[name]["checksum/secret"] != before[name]["checksum/secret"]


def test_api_token_is_generated_or_taken_from_values_or_a_secret(
    default: list[Manifest], full: list[Manifest]
) -> None:
    generated = one(default, "Secret", "tandem-api-token")["data"]["token"]
    assert len(generated) >= 40
    assert one(full, "Secret", "tandem-api-token")["data"]["token"] == "czNjcjN0LXRva2Vu"
    external = render_chart(values=TOKEN_SECRET)
    assert find(external, "Secret") == []
    for manifests, secret in [(default, "tandem-api-token"), (external, "voice-api")]:
        for workload in workloads(manifests):
            for c in containers(workload):
                ref = env_of(c)["TANDEM_API_TOKEN"]["secretKeyRef"]
                assert ref == {"name": secret, "key": "token"}


def test_nats_credentials_are_mounted_from_a_secret(full: list[Manifest]) -> None:
    secret = one(full, "Secret", "tandem-nats-creds")
    assert set(secret["data"]) == {"nats.creds"}
    for workload in workloads(full):
        spec = pod_spec(workload)
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["nats-creds"]["secret"]["secretName"] == "tandem-nats-creds"
        for c in containers(workload):
            mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
            assert env_of(c)["TANDEM_NATS_CREDS"] == mounts["nats-creds"] + "/nats.creds"


def test_without_credentials_nothing_is_mounted(default: list[Manifest]) -> None:
    for workload in workloads(default):
        assert "nats-creds" not in {v["name"] for v in pod_spec(workload)["volumes"]}
        assert "TANDEM_NATS_CREDS" not in env_of(pod_spec(workload)["containers"][0])


def _nats_urls(manifests: list[Manifest]) -> set[str]:
    urls = set()
    for workload in workloads(manifests):
        for c in containers(workload):
            urls.add(env_of(c)["TANDEM_NATS_URL"])
    (config_map,) = find(manifests, "ConfigMap")
    urls.add(yaml.safe_load(config_map["data"]["tandem.yaml"])["nats"]["url"])
    return urls


def test_the_nats_switch_only_changes_the_nats_url(default: list[Manifest]) -> None:
    external = render_chart(values=EXTERNAL_NATS)
    assert _nats_urls(default) == {"nats://tandem-nats:4222"}
    assert _nats_urls(external) == {EXTERNAL_NATS_URL}

    def normalized(manifests: list[Manifest], url: str) -> list[Manifest]:
        kept = [m for m in manifests if m["kind"] != "Secret"]  # a fresh random token
        text = yaml.safe_dump_all(kept).replace(url, "NATS_URL")
        out = list(yaml.safe_load_all(text))
        for w in workloads(out):
            w["spec"]["template"]["metadata"]["annotations"].pop("checksum/config")
        return out

    assert normalized(default, "nats://tandem-nats:4222") == normalized(external, EXTERNAL_NATS_URL)


def test_the_nats_service_name_follows_the_release_name() -> None:
    assert _nats_urls(render_chart(name="voice")) == {"nats://voice-nats:4222"}
    assert _nats_urls(render_chart(name="nats-voice")) == {"nats://nats-voice:4222"}


# --- observability ---


def test_traces_go_to_the_configured_otlp_endpoint(full: list[Manifest]) -> None:
    for workload in workloads(full):
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        env = env_of(pod_spec(workload)["containers"][0])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
        assert env["OTEL_SERVICE_NAME"] == f"tandem-{component}"
        assert "deployment.environment=prod" in env["OTEL_RESOURCE_ATTRIBUTES"]
        assert "k8s.pod.name=$(POD_NAME)" in env["OTEL_RESOURCE_ATTRIBUTES"]


def test_no_otlp_endpoint_by_default(default: list[Manifest]) -> None:
    for workload in workloads(default):
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env_of(pod_spec(workload)["containers"][0])


def test_service_monitor_scrapes_every_process(
    default: list[Manifest], full: list[Manifest]
) -> None:
    assert find(default, "ServiceMonitor") == []
    monitor = one(full, "ServiceMonitor", "tandem")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "api", "path": "/metrics", "interval": "15s", "scrapeTimeout": "5s"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = {
        s["metadata"]["labels"]["app.kubernetes.io/component"]
        for s in find(full, "Service")
        if selector.items() <= s["metadata"]["labels"].items()
        and "api" in {p["name"] for p in s["spec"]["ports"]}
    }
    assert scraped == {"router", "callstate", "edge"}


# --- TLS, trunk credentials, DNS (issue 13) ---


def _edge_config(manifests: list[Manifest]) -> dict[str, Any]:
    (config_map,) = find(manifests, "ConfigMap")
    return dict(yaml.safe_load(config_map["data"]["tandem.yaml"]))


def test_the_tls_secret_is_mounted_in_the_edges_and_named_in_their_config(
    full: list[Manifest],
) -> None:
    config = _edge_config(full)
    files = {"cert": "/etc/tandem/tls/tls.crt", "key": "/etc/tandem/tls/tls.key"}
    pbx, pstn = config["edges"]
    assert pbx["sip_tls"] == "0.0.0.0:5061" and pbx["tls"] == files | {
        "ca": "/etc/tandem/tls/ca.crt"
    }
    assert "sip_tls" not in pstn and pstn["tls"] == pbx["tls"]  # mutual TLS outbound only
    for edge_id, tls_port in [("edge-pbx", 5061), ("edge-pstn", None)]:
        spec = pod_spec(one(full, "DaemonSet", f"tandem-{edge_id}"))
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "tandem-edge-tls"
        (container,) = spec["containers"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["tls"]["mountPath"] == "/etc/tandem/tls" and mounts["tls"]["readOnly"]
        assert "subPath" not in mounts["tls"], "a subPath mount never sees the Secret rotate"
        ports = {p["name"]: p for p in container["ports"]}
        if tls_port:
            assert ports["sip-tls"] == {
                "name": "sip-tls", "containerPort": 5061, "hostPort": 5061, "protocol": "TCP"
            }  # fmt: skip
        else:
            assert "sip-tls" not in ports
    for name in ("tandem-router", "tandem-callstate"):
        volumes = {v["name"] for v in pod_spec(one(full, "Deployment", name))["volumes"]}
        assert not volumes & {"tls", "credentials"}, "only the edges hold the SIP secrets"


def test_trunk_passwords_are_a_secret_mounted_in_the_edges_never_in_the_config(
    full: list[Manifest],
) -> None:
    secret = one(full, "Secret", "tandem-credentials")
    assert secret["data"] == {"carrier": "Y2Fycmllci1zM2NyZXQ="}  # carrier-s3cret
    (config_map,) = find(full, "ConfigMap")
    assert "carrier-s3cret" not in config_map["data"]["tandem.yaml"]
    config = parse_config(yaml.safe_load(config_map["data"]["tandem.yaml"]), "chart")
    carrier = next(t for t in config.trunks if t.id == "carrier")
    assert carrier.auth is not None
    assert carrier.auth.password_file == "/etc/tandem/credentials/carrier"
    for edge_id in ("edge-pbx", "edge-pstn"):
        spec = pod_spec(one(full, "DaemonSet", f"tandem-{edge_id}"))
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["credentials"]["secret"]["secretName"] == "tandem-credentials"
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["credentials"] == "/etc/tandem/credentials"
    managed = render_chart(values={"credentials": {"existingSecret": "voice-trunks"}})
    assert find(managed, "Secret", "tandem-credentials") == []
    volumes = {
        v["name"]: v for v in pod_spec(one(managed, "DaemonSet", "tandem-edge-1"))["volumes"]
    }
    assert volumes["credentials"]["secret"]["secretName"] == "voice-trunks"


def test_without_tls_or_credentials_the_edges_mount_neither(default: list[Manifest]) -> None:
    spec = pod_spec(one(default, "DaemonSet", "tandem-edge-1"))
    assert not {v["name"] for v in spec["volumes"]} & {"tls", "credentials"}
    (edge,) = _edge_config(default)["edges"]
    assert "tls" not in edge and "sip_tls" not in edge
    assert "dns" not in _edge_config(default)


def test_the_dns_servers_reach_the_config(full: list[Manifest]) -> None:
    config = parse_config(_edge_config(full), "chart")
    assert config.dns.addresses == [("10.96.0.10", 53), ("10.96.0.11", 53)]
    assert config.dns.timeout_s == 1.5


def test_the_schema_takes_every_field_of_the_policy_models() -> None:
    """A trunk or route field the config takes and the chart's schema refuses would make
    helm refuse a valid policy: the two lists are kept equal."""
    from tandem.policy import Route, Trunk

    policy = SCHEMA["properties"]["policy"]["properties"]
    for model, key in ((Trunk, "trunks"), (Route, "routes")):
        fields = {f.alias or name for name, f in model.model_fields.items()}
        assert fields == set(policy[key]["items"]["properties"]), key


# --- anchored media: rtpengine ---


@pytest.fixture(scope="module")
def media() -> list[Manifest]:
    return render_chart(CHART / "ci" / "media-values.yaml")


def test_no_rtpengine_unless_asked(default: list[Manifest]) -> None:
    assert DEFAULTS["media"]["rtpengine"]["enabled"] is False
    assert not [w for w in workloads(default) if "rtpengine" in w["metadata"]["name"]]
    for edge in find(default, "DaemonSet"):
        assert "TANDEM_RTPENGINE" not in env_of(pod_spec(edge)["containers"][0])


def test_rtpengine_runs_on_the_edge_nodes_host_network_in_user_space(
    media: list[Manifest],
) -> None:
    rtpengine = one(media, "DaemonSet", "tandem-rtpengine")
    spec = pod_spec(rtpengine)
    assert spec["hostNetwork"] is True
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term["matchExpressions"] == [{"key": "tandem.io/edge", "operator": "Exists"}]
    (container,) = spec["containers"]
    args = container["args"]
    assert "--table=-1" in args and "--foreground" in args
    assert "--interface=$(NODE_IP)!198.51.100.20" in args  # the advertised address in SDP
    assert {"--listen-ng=$(NODE_IP):22223", "--port-min=40000", "--port-max=49999"} <= set(args)
    assert env_of(container)["NODE_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    ports = {(p["name"], p["protocol"]): p["hostPort"] for p in container["ports"]}
    assert ports == {("ng", "UDP"): 22223, ("ng-tcp", "TCP"): 22223}
    assert spec["tolerations"][0]["key"] == "dedicated"
    assert rtpengine["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1


def test_each_edge_controls_its_own_nodes_rtpengine_first(media: list[Manifest]) -> None:
    edge = one(media, "DaemonSet", "tandem-edge-1")
    env = env_of(pod_spec(edge)["containers"][0])
    assert env["TANDEM_NODE_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert env["TANDEM_RTPENGINE"] == "$(TANDEM_NODE_IP):22223,10.9.0.5:2223"
    names = [e["name"] for e in pod_spec(edge)["containers"][0]["env"]]
    assert names.index("TANDEM_NODE_IP") < names.index("TANDEM_RTPENGINE")  # expands in order
    (config_map,) = find(media, "ConfigMap")
    config = parse_config(yaml.safe_load(config_map["data"]["tandem.yaml"]), "chart")
    assert config.media.rtpengine == ["10.9.0.5:2223"]
    assert next(t for t in config.trunks if t.id == "pstn-gw1").srtp == "sdes"


def test_rtpengine_off_the_host_network_edges_runs_on_every_node() -> None:
    values = {
        "media": {"rtpengine": {"enabled": True}},
        "edges": {
            "mode": "loadBalancer",
            "instances": [
                {"id": "e1", "sipPort": 5060, "apiPort": 8091, "advertise": "203.0.113.9"}
            ],
        },
    }
    manifests = render_chart(values=values)
    spec = pod_spec(one(manifests, "DaemonSet", "tandem-rtpengine"))
    assert "affinity" not in spec and "nodeSelector" not in spec
    assert validation_errors(manifests) == []


def test_the_chart_refuses_an_empty_port_range() -> None:
    result = helm_template(
        values={"media": {"rtpengine": {"enabled": True, "portMin": 40000, "portMax": 40000}}}
    )
    assert result.returncode != 0 and "portMax must be above portMin" in result.stderr
