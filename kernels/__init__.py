"""Fused non-isotropic noise kernels: GFF noise, forward perturbation, sampler update, score scaling.

Every non-isotropic step reduces to one of (docs/math.md §1.4, 2-4)

    eps, g = gff_noise(cov, n, seed)                       eps ~ N(0, I) white, g = Sigma^{1/2} eps
    x_t, eps = perturb(x0, a, s, cov, seed)                x_t = a x0 + s Sigma^{1/2} eps
    x_next = ni_update(x, eps_theta, c_x, c_eps, c_z, cov, seed)
                                                           x_next = c_x x + Sigma^{1/2} (c_eps eps_theta + c_z z)
    score = score_scale(eps_theta, s, cov)                 score = -Sigma^{-1/2} eps_theta / s
    y_next = spectral_update(y, e, c_y, c_e, c_z, seed)    y_next = c_y y + c_e e + c_z z, per element (§11)

with per-sample coefficients (B,) (tensors or numbers). The white noise of perturb / ni_update for a seed is
exactly gff_noise(cov, B, seed)'s eps, and sample i's noise depends only on (seed, i): the rule is in
`kernels.noise` (counter-based Philox4x64-10 + Box-Muller; seeds are Python ints, 0 <= seed < 2**63).

Two backends compute the same numbers (to float rounding): `kernels.reference` (torch.fft through the
covariance operators) and `kernels.triton_ops` (fused Triton kernels). `backend(device)` picks one:
CUDA tensors use Triton, CPU tensors the torch reference, and the environment variable NIDIFF_KERNELS
overrides it: "torch" always uses the reference; "triton" always uses Triton, which on the CPU needs
TRITON_INTERPRET=1 (the Triton interpreter, set before triton is imported; used by the tests). Calls whose
tensors require gradients use the (differentiable) reference: the Triton kernels do not record autograd.
Arithmetic is float32 (float64 for float64 tensors); float16/bfloat16 results are rounded back.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch
from torch import Tensor

from kernels import reference
from sde_lib.covariance import Covariance

__all__ = ["gff_noise", "perturb", "ni_update", "score_scale", "spectral_update", "backend", "ENV_VAR"]

ENV_VAR = "NIDIFF_KERNELS"


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def backend(device: torch.device | str | None = None) -> str:
    """The backend, "triton" or "torch", that the kernels use for tensors on `device`.

    `device` defaults to "cuda" when a CUDA device is available, else the CPU. Rule: NIDIFF_KERNELS=torch ->
    "torch"; NIDIFF_KERNELS=triton -> "triton" (on the CPU only with TRITON_INTERPRET=1, else RuntimeError);
    unset or "auto" -> "triton" for CUDA tensors when triton is installed, "torch" otherwise.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_cuda = torch.device(device).type == "cuda"
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in ("auto", "torch", "triton"):
        raise ValueError(f"{ENV_VAR} must be 'torch', 'triton' or 'auto', got {choice!r}")
    if choice == "torch":
        return "torch"
    if choice == "triton":
        if not _triton_installed():
            raise RuntimeError(f"{ENV_VAR}=triton but triton is not installed")
        if not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                f"{ENV_VAR}=triton on a {torch.device(device).type} device needs a CUDA GPU, "
                "or TRITON_INTERPRET=1 (set before triton is imported) to run the Triton kernels on the CPU"
            )
        return "triton"
    return "triton" if on_cuda and _triton_installed() else "torch"


def _implementation(device: torch.device | str, *tensors: object) -> ModuleType:
    needs_grad = torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in tensors)
    if needs_grad or backend(device) == "torch":
        return reference
    from kernels import triton_ops  # imported on first use: TRITON_INTERPRET is read when triton loads

    return triton_ops


def gff_noise(
    cov: Covariance,
    n: int,
    seed: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """n draws: white eps ~ N(0, I) and g = Sigma^{1/2} eps ~ N(0, Sigma), each (n, *cov.shape) (docs/math.md §1.4).

    `device` / `dtype` default to torch's defaults. Sample i depends only on (seed, i).
    """
    device = torch.get_default_device() if device is None else torch.device(device)
    return _implementation(device).gff_noise(cov, n, seed, device=device, dtype=dtype)


def perturb(x0: Tensor, a: Tensor | float, s: Tensor | float, cov: Covariance, seed: int) -> tuple[Tensor, Tensor]:
    """x_t = a x0 + s Sigma^{1/2} eps with eps = gff_noise(cov, B, seed)'s eps; returns (x_t, eps) (docs/math.md §2-4).

    x0: (B, C, H, W); a, s: (B,) tensors or numbers (NI-DDPM: sqrt(abar_t), sqrt(1 - abar_t); NI-VE: 1, sigma).
    """
    device = x0.device if isinstance(x0, Tensor) else "cpu"
    return _implementation(device, x0, a, s).perturb(x0, a, s, cov, seed)


def ni_update(
    x: Tensor,
    eps_theta: Tensor,
    c_x: Tensor | float,
    c_eps: Tensor | float,
    c_z: Tensor | float,
    cov: Covariance,
    seed: int | None,
) -> Tensor:
    """x_next = c_x x + Sigma^{1/2} (c_eps eps_theta + c_z z), z = gff_noise(cov, B, seed)'s eps (docs/math.md §2-4).

    The common form of ancestral, DDIM, Euler-Maruyama, reverse-diffusion and probability-flow steps.
    c_*: (B,) tensors or numbers. c_z = 0 gives no noise; seed=None is allowed only then.
    """
    device = x.device if isinstance(x, Tensor) else "cpu"
    return _implementation(device, x, eps_theta, c_x, c_eps, c_z).ni_update(x, eps_theta, c_x, c_eps, c_z, cov, seed)


def score_scale(eps_theta: Tensor, s: Tensor | float, cov: Covariance) -> Tensor:
    """Score of an eps-model: -Sigma^{-1/2} eps_theta / s, s the marginal std, (B,) or a number (docs/math.md §2-4).

    Raises ValueError for a singular covariance.
    """
    device = eps_theta.device if isinstance(eps_theta, Tensor) else "cpu"
    return _implementation(device, eps_theta, s).score_scale(eps_theta, s, cov)


def spectral_update(
    y: Tensor, e: Tensor, c_y: Tensor | float, c_e: Tensor | float, c_z: Tensor | float, seed: int | None
) -> Tensor:
    """y_next = c_y y + c_e e + c_z z elementwise: a step of the spectral family in its basis (docs/math.md §11).

    y, e: (B, C, H, W) spectral coefficients; c_*: numbers or tensors broadcasting to y (per coefficient, e.g.
    (1, C, H, W) or (B, C, H, W)); z = kernels.noise's white noise of `seed` (c_z = 0: none, seed may be None).
    """
    device = y.device if isinstance(y, Tensor) else "cpu"
    return _implementation(device, y, e, c_y, c_e, c_z).spectral_update(y, e, c_y, c_e, c_z, seed)
