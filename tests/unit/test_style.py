"""The code style CI holds the repository to: ruff's linter and formatter, configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.paths import REPO_ROOT as REPO


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(command):
    proc = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, f"ruff {' '.join(command)} (fix with: ruff check --fix . && ruff format .):\n{proc.stdout}{proc.stderr}"
