"""The container image, checked as text (there is no Docker engine here): multi-stage, a slim
Python 3.11 base, non-root, no build tools in the final stage, the version in a label."""

from __future__ import annotations

import fnmatch
import re
import tomllib

import yaml

from tests.deploy.deploy_render import CHART, DEPLOY, REPO

DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make", "clang", "git", "pip install")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions(DOCKERFILE):
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _args() -> dict[str, str]:
    args = {}
    for word, rest in _instructions(DOCKERFILE):
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    return args


def test_image_is_multi_stage_on_slim_python_311() -> None:
    stages = _stages()
    assert len(stages) >= 2
    base = _args()["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base
    assert all(stage[0][1].split()[0] == "${PYTHON_IMAGE}" for stage in stages)


def test_final_stage_has_no_build_tools_and_copies_only_the_environment() -> None:
    final = _stages()[-1]
    text = "\n".join(f"{word} {rest}" for word, rest in final)
    for tool in BUILD_TOOLS:
        assert not re.search(rf"(?<![\w/.-]){re.escape(tool)}(?![\w/.-])", text), tool
    copies = [rest for word, rest in final if word == "COPY"]
    assert copies and all(rest.startswith("--from=") for rest in copies)


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = [rest for word, rest in _stages()[-1] if word == "USER"]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can be checked"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)


def test_version_label_matches_the_package_and_the_chart() -> None:
    final = _stages()[-1]
    labels = " ".join(rest for word, rest in final if word == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert ("ARG", f"VERSION={VERSION}") in final
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == VERSION


def test_entrypoint_is_the_tandem_command() -> None:
    final = _stages()[-1]
    assert ("ENTRYPOINT", '["tandem"]') in final
    exposed = " ".join(rest for word, rest in final if word == "EXPOSE").split()
    assert {"5060/udp", "5060/tcp", "8080/tcp"} <= set(exposed)


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last matching pattern wins, `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        bare = pattern.removeprefix("**/")
        if (
            fnmatch.fnmatch(path, pattern)
            or fnmatch.fnmatch(path, pattern + "/*")
            or fnmatch.fnmatch(path.rsplit("/", 1)[-1], bare)
        ):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        rest.split()[0]
        for word, rest in _stages()[0]
        if word == "COPY" and not rest.startswith("--from")
    ]
    assert copied == ["pyproject.toml", "services"]
    for path in ("pyproject.toml", "services/tandem/cli.py", "services/tandem/sip/message.py"):
        assert not _ignored(path, patterns), path
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "services/tandem/__pycache__/x.pyc",
    ):
        assert _ignored(path, patterns), path


def test_the_rtpengine_image_is_debians_daemon_run_as_a_user() -> None:
    text = (DEPLOY / "rtpengine.Dockerfile").read_text()
    instructions = _instructions(text)
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert froms == ["${DEBIAN_IMAGE}"] and "DEBIAN_IMAGE=debian:bookworm-slim" in text
    run = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "apt-get install -y --no-install-recommends rtpengine-daemon" in run
    assert "rm -rf /var/lib/apt/lists/*" in run
    assert ("USER", "10001:10001") in instructions
    assert ("ENTRYPOINT", '["rtpengine"]') in instructions
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["media"]["rtpengine"]["image"]["tag"] == "10.5"  # Debian bookworm's
