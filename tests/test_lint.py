"""The tree stays clean under the project's ruff configuration (pyproject.toml)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean():
    cmd = [shutil.which("ruff")] if shutil.which("ruff") else [sys.executable, "-m", "ruff"]
    proc = subprocess.run([*cmd, "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    if "No module named ruff" in proc.stderr:
        pytest.fail("ruff is not installed: pip install -e '.[dev]'")
    assert proc.returncode == 0, proc.stdout + proc.stderr
