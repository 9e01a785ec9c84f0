"""The plain manifests: every overlay renders with `kubectl kustomize` into valid objects,
and deploy/base is what the chart renders by default."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tandem.config import parse_config
from tests.deploy.deploy_render import (
    DEPLOY,
    KUBECTL,
    Manifest,
    base_files,
    env_of,
    find,
    kustomize,
    one,
    pod_spec,
    tool,
    validation_errors,
)

OVERLAYS = ("dev", "prod")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> list[Manifest]:
    return kustomize(DEPLOY / "overlays" / request.param)


def nats_conf(manifests: list[Manifest]) -> str:
    (config_map,) = [
        m for m in find(manifests, "ConfigMap") if m["metadata"]["name"].startswith("tandem-nats")
    ]
    conf: str = config_map["data"]["nats.conf"]
    return conf


def test_kubectl_embeds_a_current_kustomize() -> None:
    out = subprocess.run(
        [tool(KUBECTL), "version", "--client"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"Kustomize Version: v(\d+)", out)
    assert match, out
    assert int(match.group(1)) >= 5, "the overlays use kustomize v5 (kubectl 1.27 or later)"


def test_overlay_renders_valid_kubernetes_objects(overlay: list[Manifest]) -> None:
    manifests = overlay
    kinds = {m["kind"] for m in manifests}
    assert {"Namespace", "ConfigMap", "Deployment", "DaemonSet", "StatefulSet"} <= kinds
    assert validation_errors(manifests) == []


def test_overlay_wires_generated_config_into_every_pod(
    overlay: list[Manifest],
) -> None:
    manifests = overlay
    config_maps = {m["metadata"]["name"] for m in find(manifests, "ConfigMap")}
    for workload in [*find(manifests, "Deployment"), *find(manifests, "DaemonSet")]:
        (config,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == "config"]
        assert config["configMap"]["name"] in config_maps
        assert re.fullmatch(r"tandem-config-[a-z0-9]{10}", config["configMap"]["name"])


def test_overlay_namespace_admits_host_networking(overlay: list[Manifest]) -> None:
    manifests = overlay
    (namespace,) = find(manifests, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert {m["metadata"].get("namespace") for m in manifests if m["kind"] != "Namespace"} == {
        namespace["metadata"]["name"]
    }


def test_base_is_the_charts_default_render() -> None:
    for path, text in base_files().items():
        assert path.read_text() == text, (
            f"{path.relative_to(DEPLOY.parent)} is stale: python -m tests.deploy.regen_manifests"
        )


def test_dev_is_small_and_has_its_api_token() -> None:
    manifests = kustomize(DEPLOY / "overlays" / "dev")
    assert one(manifests, "StatefulSet", "tandem-nats")["spec"]["replicas"] == 1
    conf = nats_conf(manifests)
    assert not re.search(r"^cluster\s*{", conf, re.MULTILINE)
    assert one(manifests, "Deployment", "tandem-router")["spec"]["replicas"] == 1
    assert one(manifests, "Deployment", "tandem-callstate")["spec"]["replicas"] == 1
    assert find(manifests, "HorizontalPodAutoscaler") == []
    assert find(manifests, "PodDisruptionBudget") == []
    edge = one(manifests, "DaemonSet", "tandem-edge-1")
    assert "nodeSelector" not in pod_spec(edge)
    args = pod_spec(edge)["containers"][0]["args"]
    assert args[0] == "edge" and args[args.index("--grace") + 1] == "60"
    assert pod_spec(edge)["terminationGracePeriodSeconds"] > 60
    (secret,) = find(manifests, "Secret")
    token_ref = env_of(pod_spec(edge)["containers"][0])["TANDEM_API_TOKEN"]["secretKeyRef"]
    assert token_ref == {"name": secret["metadata"]["name"], "key": "token"}


def test_prod_runs_a_nats_cluster_and_keeps_secrets_out_of_git() -> None:
    manifests = kustomize(DEPLOY / "overlays" / "prod")
    nats = one(manifests, "StatefulSet", "tandem-nats")
    assert nats["spec"]["replicas"] == 3
    claim = nats["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
    assert claim["storage"] == "50Gi"
    assert find(manifests, "Secret") == []
    assert one(manifests, "HorizontalPodAutoscaler", "tandem-router")["spec"]["minReplicas"] == 3
    assert one(manifests, "PodDisruptionBudget", "tandem-router")["spec"]["minAvailable"] == 2
    routes = [
        f"nats://tandem-nats-{i}.tandem-nats-headless:6222" for i in range(3)
    ]  # one route per server of the StatefulSet
    conf = nats_conf(manifests)
    assert all(route in conf for route in routes)


@pytest.mark.parametrize(
    "path", ["base/tandem.yaml", "overlays/prod/tandem.yaml", "overlays/dev/tandem.yaml"]
)
def test_config_files_are_ones_tandem_accepts(path: str) -> None:
    config = parse_config(yaml.safe_load((DEPLOY / path).read_text()), path)
    assert [e.id for e in config.edges] == ["edge-1"]


def test_dev_keeps_one_copy_of_each_stream_on_its_one_server() -> None:
    base = yaml.safe_load((DEPLOY / "base" / "tandem.yaml").read_text())
    dev = yaml.safe_load((DEPLOY / "overlays" / "dev" / "tandem.yaml").read_text())
    assert (base["nats"]["replicas"], dev["nats"]["replicas"]) == (3, 1)
    assert dev["nats"]["url"] == base["nats"]["url"]
    for key in ("router", "callstate", "edges", "telemetry"):
        assert dev[key] == base[key], key
    (config_map,) = [
        m
        for m in kustomize(DEPLOY / "overlays" / "dev")
        if m["kind"] == "ConfigMap" and m["metadata"]["name"].startswith("tandem-config")
    ]
    assert yaml.safe_load(config_map["data"]["tandem.yaml"])["nats"]["replicas"] == 1


def test_prod_policy_keeps_the_process_layout_of_base() -> None:
    base = yaml.safe_load((DEPLOY / "base" / "tandem.yaml").read_text())
    prod = yaml.safe_load((DEPLOY / "overlays" / "prod" / "tandem.yaml").read_text())
    for key in ("nats", "router", "callstate", "edges", "telemetry"):
        assert prod[key] == base[key], key
    edges = {e["id"] for e in prod["edges"]}
    assert prod["trunks"] and all(t["edge"] in edges for t in prod["trunks"])
    trunks = {t["id"] for t in prod["trunks"]}
    assert prod["routes"] and all(set(r["trunks"]) <= trunks for r in prod["routes"])


def test_nats_service_is_the_one_the_chart_points_at() -> None:
    manifests = kustomize(DEPLOY / "overlays" / "prod")
    service = one(manifests, "Service", "tandem-nats")
    assert {p["port"] for p in service["spec"]["ports"]} == {4222}
    router = one(manifests, "Deployment", "tandem-router")
    assert env_of(pod_spec(router)["containers"][0])["TANDEM_NATS_URL"] == (
        "nats://tandem-nats:4222"
    )
