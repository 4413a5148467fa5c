"""Triton kernels against the torch reference (kernels.reference), the oracle.

Not collected by the main test run (its name does not match test_*.py): tests/test_kernels_triton.py runs it in
a subprocess with TRITON_INTERPRET=1 (Triton on the CPU; the variable must be set before triton is imported),
and benchmarks/gpu_check.sh runs it natively on a CUDA GPU. Tolerance: max |triton - reference| <= tol *
max |reference|, tol = 1e-5 in float32 (float32 round-off of log/cos/sin and of the DFT sums, ~1e-7, with margin)
and 1e-10 in float64 (libm and summation-order round-off, ~1e-15).
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("needs TRITON_INTERPRET=1 (set before triton loads) or a CUDA GPU", allow_module_level=True)

import kernels  # noqa: E402
from kernels import reference, triton_ops  # noqa: E402
from sde_lib.covariance import GFFCovariance, IdentityCovariance, SpectralCovariance  # noqa: E402

DEVICE = torch.device("cpu" if INTERPRET else "cuda")
TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 1e-2}
B = 2  # the interpreter draws noise slowly: keep grids small

COVARIANCES = {
    "gff-1x8x8": lambda: GFFCovariance((1, 8, 8), power=1.0),
    "gff-3x16x16": lambda: GFFCovariance((3, 16, 16), power=1.0),
    "gff-3x32x32": lambda: GFFCovariance((3, 32, 32), power=1.0),
    "gff-2x8x24": lambda: GFFCovariance((2, 8, 24), power=2.0),  # non-square, W not a multiple of 16
    "gff-dc-zero-1x6x10": lambda: GFFCovariance((1, 6, 10), power=1.0, dc="zero"),  # singular, odd padding
    "gff-1x64x64": lambda: GFFCovariance((1, 64, 64), power=1.0),  # float32 in the kernel, float64 via torch.fft
    "gff-1x72x80": lambda: GFFCovariance((1, 72, 80), power=1.0),  # > 64: torch.fft + pointwise kernels
    "identity-3x16x16": lambda: IdentityCovariance((3, 16, 16)),  # pointwise kernel only
}


def assert_matches(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype and got.device == want.device
    scale = want.abs().max().item()
    err = (got.double() - want.double()).abs().max().item()
    assert err <= TOL[want.dtype] * scale, f"max error {err:.3e} > {TOL[want.dtype]:.0e} * {scale:.3f}"


def inputs(cov, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (B, *cov.shape)
    x, eps_theta = (torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype) for _ in range(2))
    c_x, c_eps, c_z = (torch.rand(B, generator=gen, dtype=torch.float64).to(DEVICE, dtype) + 0.5 for _ in range(3))
    return x, eps_theta, c_x, c_eps, c_z


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(COVARIANCES))
def test_kernels_match_reference(name, dtype):
    cov = COVARIANCES[name]()
    x, eps_theta, c_x, c_eps, c_z = inputs(cov, dtype)
    seed = 2**40 + 17  # a key with non-zero high bits

    eps, g = triton_ops.gff_noise(cov, B, seed, device=DEVICE, dtype=dtype)
    eps_ref, g_ref = reference.gff_noise(cov, B, seed, device=DEVICE, dtype=dtype)
    assert_matches(eps, eps_ref)
    assert_matches(g, g_ref)

    x_t, eps_p = triton_ops.perturb(x, c_x, c_z, cov, seed)
    x_t_ref, _ = reference.perturb(x, c_x, c_z, cov, seed)
    assert torch.equal(eps_p, eps)  # the same noise as gff_noise, bit for bit
    assert_matches(x_t, x_t_ref)

    assert_matches(
        triton_ops.ni_update(x, eps_theta, c_x, c_eps, c_z, cov, seed),
        reference.ni_update(x, eps_theta, c_x, c_eps, c_z, cov, seed),
    )
    assert_matches(
        triton_ops.ni_update(x, eps_theta, 0.9, -0.3, 0.0, cov, None),
        reference.ni_update(x, eps_theta, 0.9, -0.3, 0.0, cov, None),
    )
    if cov.is_singular:
        with pytest.raises(ValueError, match="singular"):
            triton_ops.score_scale(eps_theta, c_z, cov)
    else:
        assert_matches(triton_ops.score_scale(eps_theta, c_z, cov), reference.score_scale(eps_theta, c_z, cov))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 8, 8), (2, 8, 24)])
def test_spectral_update_matches_reference(shape, dtype):
    """The spectral family's per-coefficient step (docs/math.md §11): coefficients per element, (1, C, H, W)
    broadcast over the batch or (B, C, H, W), with and without noise."""
    gen = torch.Generator().manual_seed(4)
    y, e = (torch.randn(B, *shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype) for _ in range(2))
    c_y, c_e = (torch.rand(1, *shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype) for _ in range(2))
    c_z = torch.rand(B, *shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
    assert_matches(triton_ops.spectral_update(y, e, c_y, c_e, c_z, 2**40 + 3),
                   reference.spectral_update(y, e, c_y, c_e, c_z, 2**40 + 3))  # fmt: skip
    assert_matches(triton_ops.spectral_update(y, e, c_y, 0.5, 0.0, None),
                   reference.spectral_update(y, e, c_y, 0.5, 0.0, None))  # fmt: skip


def test_data_matched_spectrum():
    gen = torch.Generator().manual_seed(3)
    images = torch.cumsum(torch.randn(32, 2, 12, 12, generator=gen, dtype=torch.float64), dim=-1)
    cov = SpectralCovariance.from_data(images)
    x, eps_theta, c_x, c_eps, c_z = inputs(cov, torch.float64, seed=1)
    assert_matches(
        triton_ops.ni_update(x, eps_theta, c_x, c_eps, c_z, cov, 5),
        reference.ni_update(x, eps_theta, c_x, c_eps, c_z, cov, 5),
    )
    assert_matches(triton_ops.score_scale(eps_theta, c_z, cov), reference.score_scale(eps_theta, c_z, cov))


def test_noise_depends_only_on_seed_and_sample_index():
    cov = GFFCovariance((3, 16, 16))
    eps3, g3 = triton_ops.gff_noise(cov, 3, 99, device=DEVICE)
    eps1, g1 = triton_ops.gff_noise(cov, 1, 99, device=DEVICE)
    again, _ = triton_ops.gff_noise(cov, 3, 99, device=DEVICE)
    other, _ = triton_ops.gff_noise(cov, 3, 100, device=DEVICE)
    assert torch.equal(eps3, again)
    assert torch.equal(eps3[:1], eps1) and torch.equal(g3[:1], g1)
    assert not torch.equal(eps3, other)


def test_dispatch_runs_triton_and_keeps_autograd():
    cov = GFFCovariance((1, 8, 8))
    if os.environ.get(kernels.ENV_VAR, "auto") == "torch":
        pytest.skip("NIDIFF_KERNELS=torch forces the reference")
    assert kernels.backend(DEVICE) == "triton"
    x, eps_theta, c_x, c_eps, c_z = inputs(cov, torch.float32)
    assert torch.equal(
        kernels.ni_update(x, eps_theta, c_x, c_eps, c_z, cov, 4),
        triton_ops.ni_update(x, eps_theta, c_x, c_eps, c_z, cov, 4),
    )
    # inputs that require gradients go to the differentiable reference
    e = eps_theta.clone().requires_grad_(True)
    score = kernels.score_scale(e, c_z, cov)
    assert score.grad_fn is not None
    assert_matches(score.detach(), triton_ops.score_scale(eps_theta, c_z, cov))


@pytest.mark.skipif(INTERPRET, reason="the interpreter miscomputes bfloat16 arithmetic: bf16 is tested on a GPU")
@pytest.mark.parametrize("name", ["gff-3x32x32", "gff-1x72x80"])
def test_bfloat16_matches_reference_on_gpu(name):
    # bf16 tensors are computed in float32 by both backends; outputs differ by at most a bf16 rounding.
    cov = COVARIANCES[name]()
    x, eps_theta, c_x, c_eps, c_z = inputs(cov, torch.bfloat16)
    assert_matches(
        triton_ops.ni_update(x, eps_theta, c_x, c_eps, c_z, cov, 3),
        reference.ni_update(x, eps_theta, c_x, c_eps, c_z, cov, 3),
    )
    x_t, eps = triton_ops.perturb(x, c_x, c_z, cov, 3)
    x_t_ref, eps_ref = reference.perturb(x, c_x, c_z, cov, 3)
    assert_matches(x_t, x_t_ref)
    assert_matches(eps, eps_ref)
