"""Renders the helm chart with helm and the kustomize overlays with kubectl.

Both are the pinned binaries that `make tools` (part of `make test`) installs into
.tandem/tools/bin: a missing one fails the tests with that command, it never skips them.
helm renders a temporary copy of the chart without its NATS dependency, which cannot be
fetched offline; the values that configure that subchart are still checked (test_chart).
"""

from __future__ import annotations

import atexit
import copy
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "tandem"
DEPLOY = REPO / "deploy"
TOOLS_BIN = REPO / ".tandem" / "tools" / "bin"
HELM = TOOLS_BIN / "helm"
KUBECTL = TOOLS_BIN / "kubectl"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema.
KUBE_VERSIONS = ("1.26", kubernetes_validate.latest_version())
# Kinds from CRDs, which the Kubernetes schemas do not hold; tests check them by hand.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

Manifest = dict[str, Any]


class ToolMissing(RuntimeError):
    """A tool the deploy checks need is not installed."""


def tool(binary: Path) -> str:
    if not os.access(binary, os.X_OK):
        raise ToolMissing(
            f"{binary} not found: `make tools` installs helm and kubectl there"
            " (`make test` does it first)"
        )
    return str(binary)


@functools.cache
def offline_chart() -> Path:
    """A copy of the chart without the NATS dependency (and any fetched subchart)."""
    tmp = Path(tempfile.mkdtemp(prefix="tandem-chart-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    chart = tmp / CHART.name
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["dependencies"] = [d for d in meta.get("dependencies", []) if d["name"] != "nats"]
    if not meta["dependencies"]:
        del meta["dependencies"]
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return chart


def _helm(
    args: list[str], value_files: Iterable[Path | str], values: dict[str, Any] | None
) -> subprocess.CompletedProcess[str]:
    argv = [tool(HELM), *args, str(offline_chart())]
    with tempfile.TemporaryDirectory() as tmp:
        files = [str(f) for f in value_files]
        if values is not None:
            extra = Path(tmp) / "values.yaml"
            extra.write_text(yaml.safe_dump(values))
            files.append(str(extra))
        for f in files:
            argv += ["-f", f]
        return subprocess.run(argv, capture_output=True, text=True, check=False)


def helm_template(
    *value_files: Path | str,
    values: dict[str, Any] | None = None,
    name: str = "tandem",
    namespace: str = "tandem",
    kube_version: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`helm template NAME CHART -n NAMESPACE -f ...`; the caller checks the result."""
    args = ["template", name, "--namespace", namespace]
    if kube_version is not None:
        args += ["--kube-version", kube_version]
    return _helm(args, value_files, values)


def helm_lint(
    *value_files: Path | str, values: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    """`helm lint --strict CHART -f ...`: warnings fail too."""
    return _helm(["lint", "--strict"], value_files, values)


def render_chart(*value_files: Path | str, **kwargs: Any) -> list[Manifest]:
    result = helm_template(*value_files, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"chart did not render:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kustomize(overlay: Path) -> list[Manifest]:
    result = subprocess.run(
        [tool(KUBECTL), "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {overlay} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def validation_errors(manifests: Iterable[Manifest]) -> list[str]:
    """Every object against the strict Kubernetes schemas (no unknown fields either)."""
    errors = []
    for obj in manifests:
        if (obj.get("apiVersion"), obj.get("kind")) in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{obj['kind']}/{obj['metadata']['name']} ({version}): {path}: {e}")
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(f"{obj['kind']} {obj['apiVersion']}: no schema in {version}")
    return errors


def find(manifests: Iterable[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]


def one(manifests: Iterable[Manifest], kind: str, name: str) -> Manifest:
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Manifest) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """helm's -f merge: maps merge, everything else replaces, null deletes."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# --- the plain manifests in deploy/base are the chart's default render, made kubectl-shaped ---

BASE_CONFIG = DEPLOY / "base" / "tandem.yaml"
BASE_WORKLOADS = DEPLOY / "base" / "tandem-workloads.yaml"
BASE_HEADER = (
    "# Generated from helm/tandem with its default values by\n"
    "# `python -m tests.deploy.regen_manifests`; edit the chart, then regenerate.\n"
)


def base_files() -> dict[Path, str]:
    """What deploy/base's generated files must hold.

    The chart's default render, minus what kustomize does its own way: the ConfigMap comes
    from a configMapGenerator (its hash suffix rolls the pods, as the chart's checksum
    annotations do), and the API token Secret from the overlay, never from git.
    """
    manifests = render_chart()
    config = one(manifests, "ConfigMap", "tandem-config")["data"]["tandem.yaml"]
    kept = []
    for obj in manifests:
        if obj["kind"] in ("Secret", "ConfigMap"):
            continue
        obj = copy.deepcopy(obj)
        for meta in _metadatas(obj):
            labels = meta.get("labels", {})
            labels.pop("helm.sh/chart", None)
            if labels.get("app.kubernetes.io/managed-by") == "Helm":
                labels["app.kubernetes.io/managed-by"] = "kustomize"
            annotations = meta.get("annotations", {})
            for key in [k for k in annotations if k.startswith("checksum/")]:
                del annotations[key]
            if "annotations" in meta and not annotations:
                del meta["annotations"]
        kept.append(obj)
    workloads = BASE_HEADER + "".join(
        "---\n" + yaml.safe_dump(obj, sort_keys=False, width=1000) for obj in kept
    )
    return {BASE_CONFIG: BASE_HEADER + config, BASE_WORKLOADS: workloads}


def _metadatas(obj: Manifest) -> list[dict[str, Any]]:
    metas = [obj["metadata"]]
    template = obj.get("spec", {}).get("template")
    if isinstance(template, dict) and "metadata" in template:
        metas.append(template["metadata"])
    return metas
