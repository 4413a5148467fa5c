"""How kernels.triton_ops launches its kernels, checked on the CPU with stand-in kernels (no GPU, no interpreter).

* Device: Triton launches on the current CUDA device, so every launch must run under the tensors' device
  (`triton_ops._on_device`); the stand-ins record whether they were launched inside that context and for which
  device. That a real launch on cuda:1 works is checked on a GPU (tests/test_kernels_cuda.py).
* Routing: float64 tiles are capped at 32 x 32 (a 64 x 64 float64 tile needs 192 KiB of shared memory, more
  than an A100 has); larger float64 images go through torch.fft between two pointwise launches.
The numbers themselves are checked against the reference by tests/kernels_triton/triton_cases.py.
"""

from __future__ import annotations

import ast
import contextlib
import inspect

import pytest
import torch

triton_ops = pytest.importorskip("kernels.triton_ops")
from sde_lib.covariance import GFFCovariance, IdentityCovariance  # noqa: E402


class _Recorder:
    """Stand-ins for triton_ops._on_device and the two kernels: each launch records (kernel, context device)."""

    def __init__(self) -> None:
        self.current: torch.device | None = None
        self.entered: list[torch.device] = []
        self.launches: list[tuple[str, torch.device | None, torch.device]] = []

    @contextlib.contextmanager
    def on_device(self, device: torch.device):
        self.entered.append(device)
        previous, self.current = self.current, device
        try:
            yield
        finally:
            self.current = previous

    def kernel(self, name: str):
        recorder = self

        class Fake:
            def __getitem__(self, grid):
                def launch(out, *args, **kwargs):
                    recorder.launches.append((name, recorder.current, out.device))
                    out.zero_()

                return launch

        return Fake()


@pytest.fixture
def recorder(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(triton_ops, "_on_device", rec.on_device)
    monkeypatch.setattr(triton_ops, "_spectral_kernel", rec.kernel("spectral"))
    monkeypatch.setattr(triton_ops, "_pointwise_kernel", rec.kernel("pointwise"))
    return rec


def _run_all_ops(cov, dtype) -> None:
    B = 2
    x = torch.randn(B, *cov.shape, dtype=dtype)
    triton_ops.gff_noise(cov, B, 3, device="cpu", dtype=dtype)
    triton_ops.perturb(x, 0.5, 0.7, cov, 3)
    triton_ops.ni_update(x, x, 0.9, 0.1, 0.2, cov, 3)
    triton_ops.ni_update(x, x, 0.9, 0.1, 0.0, cov, None)
    if not isinstance(cov, IdentityCovariance):
        triton_ops.score_scale(x, 0.5, cov)


@pytest.mark.parametrize(
    "cov, dtype",
    [
        (GFFCovariance((3, 16, 16)), torch.float32),  # spectral kernel
        (GFFCovariance((1, 72, 80)), torch.float32),  # pointwise, torch.fft, pointwise
        (GFFCovariance((1, 64, 64)), torch.float64),  # float64 over the cap: torch.fft path
        (IdentityCovariance((2, 8, 8)), torch.float32),  # one pointwise launch
    ],
    ids=["spectral", "fft", "float64-capped", "identity"],
)
def test_every_launch_runs_under_the_tensors_device(recorder, cov, dtype):
    _run_all_ops(cov, dtype)
    assert recorder.launches
    for name, context, device in recorder.launches:
        assert context is not None, f"{name} kernel launched outside _on_device"
        assert context == device, f"{name} kernel launched under {context} for tensors on {device}"


def test_on_device_makes_the_tensors_cuda_device_current(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: seen.append(device) or contextlib.nullcontext())
    with triton_ops._on_device(torch.device("cuda", 1)):
        pass
    assert seen == [torch.device("cuda", 1)]
    with triton_ops._on_device(torch.device("cpu")):  # the interpreter's tensors: no CUDA call at all
        pass
    assert seen == [torch.device("cuda", 1)]


def test_launch_sites_are_only_in_the_body_run_under_on_device():
    """Structural guard: kernels are launched only from _launch, and _launch is called only under _on_device."""
    tree = ast.parse(inspect.getsource(triton_ops))
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for name, node in functions.items():
        launches = [
            n
            for n in ast.walk(node)
            if isinstance(n, ast.Subscript) and getattr(n.value, "id", "") in ("_spectral_kernel", "_pointwise_kernel")
        ]
        assert not launches or name == "_launch", f"{name} launches a kernel outside _launch"
    callers = [(name, n) for name, node in functions.items() for n in ast.walk(node) if isinstance(n, ast.With)]
    guarded = [
        name
        for name, w in callers
        if any(getattr(item.context_expr.func, "id", "") == "_on_device" for item in w.items)
        and any(isinstance(c, ast.Call) and getattr(c.func, "id", "") == "_launch" for c in ast.walk(w))
    ]
    calls = [
        name
        for name, node in functions.items()
        for n in ast.walk(node)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "_launch"
    ]
    assert guarded == calls == ["_fused_step"]


# ---- float64 tile cap ------------------------------------------------------------------------------------------
def test_spectral_in_kernel_rule():
    f32, f64 = torch.float32, torch.float64
    assert triton_ops.MAX_DFT_SIZE == 64 and triton_ops.MAX_DFT_SIZE_FLOAT64 == 32
    assert triton_ops.spectral_in_kernel(64, 64, f32) and triton_ops.spectral_in_kernel(8, 8, f32)
    assert not triton_ops.spectral_in_kernel(65, 8, f32) and not triton_ops.spectral_in_kernel(8, 72, f32)
    assert triton_ops.spectral_in_kernel(32, 32, f64) and triton_ops.spectral_in_kernel(8, 24, f64)
    assert not triton_ops.spectral_in_kernel(33, 32, f64) and not triton_ops.spectral_in_kernel(16, 64, f64)
    assert not triton_ops.spectral_in_kernel(64, 64, f64)


@pytest.mark.parametrize(
    "shape, dtype, kernels",
    [
        ((1, 64, 64), torch.float32, ["spectral"]),
        ((1, 32, 32), torch.float64, ["spectral"]),
        ((1, 8, 24), torch.float64, ["spectral"]),
        ((1, 64, 64), torch.float64, ["pointwise", "pointwise"]),
        ((1, 40, 16), torch.float64, ["pointwise", "pointwise"]),
    ],
)
def test_float64_images_over_32_go_through_torch_fft(recorder, shape, dtype, kernels):
    cov = GFFCovariance(shape)
    eps, g = triton_ops.gff_noise(cov, 2, 5, device="cpu", dtype=dtype)
    assert [name for name, _, _ in recorder.launches] == kernels
    assert g.shape == (2, *shape) and g.dtype == dtype
    layout = triton_ops._FILTERS[cov][(0.5, dtype, torch.device("cpu"), kernels == ["spectral"])]
    half = (shape[0], shape[1], shape[2] // 2 + 1)
    assert tuple(layout.shape) == (half if kernels != ["spectral"] else (1, *map(triton_ops._padded, shape[1:])))
