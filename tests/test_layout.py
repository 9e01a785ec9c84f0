"""The package layout DESIGN.md fixes: services/ is a source root, imports flow one way, the
sans-I/O cores do no I/O and read no clock, and the wheel holds every module."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "services" / "tandem"
PROCESSES = {"edge", "router", "callstate"}
SANS_IO = {"sip", "b2bua"}
IO_MODULES = {"asyncio", "nats", "opentelemetry", "socket", "selectors", "threading"}
CLOCK_CALLS = {"time", "monotonic", "perf_counter", "time_ns", "monotonic_ns"}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def room(path: Path) -> str:
    """The top-level room of a module: edge, sip, b2bua, ... or the shared module's name."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def clock_reads(tree: ast.AST) -> list[str]:
    """Calls of time.time(), time.monotonic() ... and of those names imported from time."""
    from_time = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "time"
        for alias in node.names
        if alias.name in CLOCK_CALLS
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr in CLOCK_CALLS
            and isinstance(func.value, ast.Name)
            and func.value.id == "time"
        ) or (isinstance(func, ast.Name) and func.id in from_time):
            found.append(f"line {node.lineno}")
    return found


def test_every_room_exists() -> None:
    rooms = {room(p) for p in modules() if p.parent != PACKAGE}
    assert {"sip", "b2bua", "policy", "edge", "router", "callstate", "pb"} <= rooms


def test_no_process_imports_another() -> None:
    wrong = []
    for path in modules():
        here = room(path)
        for name in imported(ast.parse(path.read_text())):
            parts = name.split(".")
            crosses = len(parts) > 1 and parts[0] == "tandem" and parts[1] in PROCESSES - {here}
            if here in PROCESSES and crosses:
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert wrong == []


@pytest.mark.parametrize("core", sorted(SANS_IO))
def test_the_sans_io_cores_do_no_io_and_read_no_clock(core: str) -> None:
    wrong = []
    files = [p for p in modules() if room(p) == core]
    assert files, f"tandem.{core} has no modules"
    for path in files:
        tree = ast.parse(path.read_text())
        for name in imported(tree):
            top = name.split(".")[0]
            if top in IO_MODULES:
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
            parts = name.split(".")
            if (
                parts[0] == "tandem"
                and len(parts) > 1
                and parts[1] not in SANS_IO | {"pb", "__version__"}
            ):
                wrong.append(f"{path.relative_to(REPO)} imports {name} (a room above it)")
            if core == "sip" and name.startswith("tandem.b2bua"):
                wrong.append(f"{path.relative_to(REPO)} imports {name} (b2bua is above sip)")
        wrong += [f"{path.relative_to(REPO)} reads the clock, {at}" for at in clock_reads(tree)]
    assert wrong == []


def test_the_wheel_holds_every_module(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip, "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("tandem-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(REPO / "services")) for p in modules()}
    assert expected - names == set()
    assert {"tandem/py.typed", "tandem/pb/tandem_pb2.pyi"} <= names
    assert not any(n.startswith(("tests/", "services/")) for n in names)


def test_the_installed_package_is_the_source_tree(tmp_path: Path) -> None:
    """From another folder, `import tandem.b2bua` finds services/tandem itself (editable)."""
    out = subprocess.run(
        [sys.executable, "-c", "import tandem.b2bua; print(tandem.b2bua.__file__)"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    )
    assert Path(out.stdout.strip()) == PACKAGE / "b2bua" / "__init__.py"


def test_nothing_reaches_back_into_a_process_service() -> None:
    """Calls, legs, probes, APIs and metrics get narrow interfaces, never the Service."""
    wrong = []
    for path in modules():
        for name in imported(ast.parse(path.read_text())):
            parts = name.split(".")
            service = len(parts) > 2 and parts[1] in PROCESSES and parts[2] == "service"
            if service and path.name not in ("service.py", "cli.py"):
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert wrong == []
