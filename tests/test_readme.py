"""The README's commands work as written: every `$ tandem ...` line runs and succeeds."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO

README = (REPO / "README.md").read_text()
COMMANDS = [line[2:] for line in README.splitlines() if line.startswith("$ tandem ")]


def test_readme_gives_the_two_commands_first() -> None:
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    assert "make run" in first_block and "make test" in first_block
    assert COMMANDS, "the README shows no tandem command"


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(command: str) -> None:
    argv = [sys.executable, "-m", "tandem.cli", *shlex.split(command)[1:]]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (REPO / ".ci" / "run").read_text()
