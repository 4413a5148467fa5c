"""benchmarks/gpu_check.sh on a machine without a GPU: its syntax, its step time limits, its "no CUDA GPU" exit.

The script's documented contract: default steps whose limits sum to <= 480 s (one 8-minute call), each fitting a
10-minute command; exit status 2 with "gpu_check: no CUDA GPU visible to torch" when torch sees no GPU; python3
when there is no `python`; and its cuda-tests step runs every test file that skips without CUDA.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


def _steps(name: str) -> dict[str, int]:
    line = re.search(rf'^{name}="([^"]*)"$', SCRIPT.read_text(), re.MULTILINE)
    assert line, f"{name}=... not found in {SCRIPT}"
    return {step: int(limit) for step, limit in (entry.split(":") for entry in line.group(1).split())}


def test_script_parses():
    subprocess.run([BASH, "-n", str(SCRIPT)], check=True)


def test_default_step_limits_fit_one_8_minute_call_and_are_documented():
    steps = _steps("DEFAULT_STEPS")
    assert list(steps) == ["cuda-tests", "triton", "update", "bandwidth", "train", "sample", "torchrun"]
    assert sum(steps.values()) <= 480
    assert all(0 < limit <= 600 for limit in {**steps, **_steps("OPTIONAL_STEPS")}.values())
    header = SCRIPT.read_text().split("set -uo pipefail")[0]
    assert f"sum to {sum(steps.values())} <= 480" in header
    for step, limit in steps.items():  # the usage text lists each step with its limit
        assert re.search(rf"^#\s+{re.escape(step)}\s+{limit}\s", header, re.MULTILINE), step


def test_cuda_tests_step_runs_every_test_file_that_skips_without_cuda():
    body = SCRIPT.read_text()
    step = re.search(r"step_cuda_tests\(\) \{(.*?)\n\}", body, re.DOTALL).group(1)
    needs_cuda = sorted(
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "tests").glob("test_*.py")
        if re.search(r"skipif\(\s*not torch\.cuda\.is_available\(\)", path.read_text())
    )
    assert needs_cuda, "no CUDA-only test files found: the pattern is stale"
    assert [f for f in needs_cuda if f not in step] == []


def _fake_path(tmp_path: pathlib.Path) -> str:
    """A PATH with the tools the script needs before its CUDA test and `python3` (no `python`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "mkdir", "tee", "cat", "env"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    (bin_dir / "python3").symlink_to(sys.executable)
    return str(bin_dir)


@pytest.mark.subprocess
def test_without_a_gpu_exits_2_with_its_message(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "OUT")}
    env.update(OUT=str(out), CUDA_VISIBLE_DEVICES="", PATH=_fake_path(tmp_path))
    proc = subprocess.run([BASH, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    message = "gpu_check: no CUDA GPU visible to torch"
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stdout
    assert "command not found" not in proc.stderr  # python3 was found without `python`
    assert message in (out / "summary.md").read_text() and message in (out / "gpu.txt").read_text()


@pytest.mark.subprocess
def test_unknown_step_is_refused(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    proc = subprocess.run([BASH, str(SCRIPT), "no-such-step"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 64 and "unknown step 'no-such-step'" in proc.stderr
