"""Renders the helm chart (through the Go renderer in helmrender/) and the kustomize overlays.

Both tools must be present: a missing `go`, sprig source or `kubectl` fails the tests with
the package to install, it never skips them. The renderer is built once per source version
into .tandem/ (gitignored), so later runs only execute it.
"""

from __future__ import annotations

import copy
import hashlib
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
RENDERER_SRC = Path(__file__).resolve().parent / "helmrender" / "main.go"
GOCODE = Path("/usr/share/gocode")
CACHE = REPO / ".tandem" / "helmrender"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema.
KUBE_VERSIONS = ("1.26", kubernetes_validate.latest_version())
# Kinds from CRDs, which the Kubernetes schemas do not hold; tests check them by hand.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

Manifest = dict[str, Any]


class ToolMissing(RuntimeError):
    """A tool the deploy checks need is not installed."""


def _renderer() -> Path:
    go = shutil.which("go")
    if go is None:
        raise ToolMissing("`go` not found: apt-get install golang-go")
    if not (GOCODE / "src/github.com/Masterminds/sprig").is_dir():
        raise ToolMissing(
            "sprig source not found: apt-get install golang-github-masterminds-sprig-dev"
        )
    digest = hashlib.sha256(RENDERER_SRC.read_bytes()).hexdigest()[:16]
    binary = CACHE / f"helmrender-{digest}"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        # GOPATH mode against Debian's packaged sources: no module proxy, no network.
        "GO111MODULE": "off",
        "GOPATH": str(GOCODE),
        "GOCACHE": str(CACHE / "gocache"),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "CGO_ENABLED": "0",
    }
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        out = Path(tmp) / "helmrender"
        subprocess.run(
            [go, "build", "-o", str(out), str(RENDERER_SRC)],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
        out.replace(binary)  # atomic: a concurrent build just wins the same name
    for stale in CACHE.glob("helmrender-*"):
        if stale != binary:
            stale.unlink(missing_ok=True)
    return binary


def helm_template(
    *value_files: Path | str,
    values: dict[str, Any] | None = None,
    name: str = "tandem",
    namespace: str = "tandem",
    chart: Path = CHART,
) -> subprocess.CompletedProcess[str]:
    """Runs the renderer like `helm template NAME CHART -f ...`; the caller checks the result."""
    args = [str(_renderer()), "-chart", str(chart), "-name", name, "-namespace", namespace]
    with tempfile.TemporaryDirectory() as tmp:
        files = [str(f) for f in value_files]
        if values is not None:
            extra = Path(tmp) / "values.yaml"
            extra.write_text(yaml.safe_dump(values))
            files.append(str(extra))
        for f in files:
            args += ["-f", f]
        return subprocess.run(args, capture_output=True, text=True, check=False)


def render_chart(*value_files: Path | str, **kwargs: Any) -> list[Manifest]:
    result = helm_template(*value_files, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"chart did not render:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kustomize(overlay: Path) -> list[Manifest]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise ToolMissing("`kubectl` not found: apt-get install kubernetes-client (or kubectl)")
    result = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=False
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
