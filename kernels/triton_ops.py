"""Fused Triton kernels for the four operations of `kernels` (same signatures as `kernels.reference`).

All four are one fused step (docs/math.md §1.4, 2-4)

    out = alpha x + Sigma^p (beta u + gamma z),      z = white noise of (seed, sample, position),

with per-sample alpha, beta, gamma, p = 1/2 (noise, perturbation, sampler update) or -1/2 (score), and
terms switched off at compile time when absent. Sigma^p is the spectral multiplier lambda^p of the covariance
(docs/math.md §1.3); it is applied as follows:

* H, W <= 64 (float64: <= 32, see below): inside the kernel, one program per (sample, channel) image, as a
  2-D discrete Hartley transform by matrix products (`tl.dot` with cos/sin tables): with C_n[k, j] =
  cos(2 pi k j / n) and S_n likewise, DHT(v) = C_H v (C_W + S_W) + S_H v (C_W - S_W), and because lambda^p is
  even under k -> -k, Sigma^p v = DHT(lambda^p * DHT(v)) / (H W). Tiles are padded with zeros to powers of
  two >= 16, so that tl.dot also compiles on a GPU for 8 x 8 images. Noise, filter, scaling and axpy are fused:
  one read of each input, one write of each output.
* float64 tiles are capped at 32 x 32 (MAX_DFT_SIZE_FLOAT64): a 64 x 64 float64 tile needs 192 KiB of shared
  memory, which an H100 / H200 has (227 KiB per block) but an A100 has not (163 KiB): the launch would fail "out
  of resources". `spectral_in_kernel(H, W, dtype)` is the rule.
* larger images, and float64 images with a side over 32: a fused pointwise kernel forms beta u + gamma z,
  torch.fft applies lambda^p (rfft2, multiply, irfft2), and the same pointwise kernel adds alpha x.
* IdentityCovariance: Sigma^p = I, a single pointwise kernel, no spectral work.

Noise follows `kernels.noise` exactly (tl.random.philox with uint64 counters = Philox4x64-10). Arithmetic runs
in float32 (float64 for float64 tensors), loads are cast up first and results cast back to the tensor dtype;
tl.dot runs in IEEE float64, or for float32 as "tf32x3" on a GPU (the interpreter multiplies in float32).
The kernels do not record autograd (the dispatcher sends such calls to the reference).

Triton launches on the current CUDA device, whatever device the tensors are on: every launch runs under
`torch.cuda.device(out.device)` (`_on_device`), so that tensors on cuda:1 are never handed to a launch on cuda:0.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.args import (
    check_cov,
    check_images,
    check_like,
    coefficient,
    coefficient_field,
    compute_dtype,
    noise_request,
    noise_seed,
)
from kernels.noise import NORMALS_PER_COUNTER, check_seed
from kernels.triton_kernels import _pointwise_kernel, _spectral_kernel
from sde_lib.covariance import Covariance, IdentityCovariance

__all__ = [
    "MAX_DFT_SIZE",
    "MAX_DFT_SIZE_FLOAT64",
    "spectral_in_kernel",
    "gff_noise",
    "perturb",
    "ni_update",
    "score_scale",
    "spectral_update",
]

MAX_DFT_SIZE = 64  # images up to 64 x 64 are filtered inside the kernel; larger ones go through torch.fft
MAX_DFT_SIZE_FLOAT64 = 32  # float64: 64 x 64 tiles need 192 KiB of shared memory (an A100 has 163 KiB)
_MIN_DOT = 16  # smallest tl.dot tile side on a GPU
_POINTWISE_ELEMENTS = 2048  # elements per program of the pointwise kernel (8 warps: no register spills)


def _padded(n: int) -> int:
    return max(_MIN_DOT, triton.next_power_of_2(n))


def spectral_in_kernel(H: int, W: int, dtype: torch.dtype) -> bool:
    """Whether Sigma^p of H x W images computed in `dtype` runs inside the kernel (else torch.fft): padded sides
    at most MAX_DFT_SIZE, or MAX_DFT_SIZE_FLOAT64 for float64 (shared memory of an A100; docs/math.md §1.3)."""
    limit = MAX_DFT_SIZE_FLOAT64 if dtype == torch.float64 else MAX_DFT_SIZE
    return max(_padded(H), _padded(W)) <= limit


def reload_noise(HP: int, WP: int, noise_dtype: torch.dtype | None, work: torch.dtype) -> bool:
    """Whether the spectral kernel stores its noise in row chunks and reads the tile back (RELOAD_NOISE): only
    where the stored noise is exactly z (noise in the compute dtype) and where it cuts spills (64 x 64 tiles:
    ptxas spill stores 3.2 KB -> 1.7 KB per thread on sm_90; no change at 32 x 32)."""
    return noise_dtype == work and HP * WP >= 64 * 64


def _on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Make `device` the current CUDA device for a launch (Triton launches there); nothing off CUDA."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _triton_dtype(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot precision: IEEE for float64; for float32 "tf32x3" (three TF32 tensor-core products, about float32
    accuracy, ~1e-6 relative here, and far fewer registers than the FMA path of "ieee")."""
    return "ieee" if dtype == torch.float64 else "tf32x3"


def _cos_sin(n: int) -> tuple[Tensor, Tensor]:
    """cos(2 pi k j / n), sin(2 pi k j / n) in float64, zero-padded to (P, P), P = _padded(n)."""
    P = _padded(n)
    k = torch.arange(n, dtype=torch.int64)
    angle = (2 * math.pi / n) * ((k[:, None] * k[None, :]) % n).to(torch.float64)
    cos = torch.zeros(P, P, dtype=torch.float64)
    sin = torch.zeros(P, P, dtype=torch.float64)
    cos[:n, :n], sin[:n, :n] = torch.cos(angle), torch.sin(angle)
    return cos, sin


@functools.lru_cache(maxsize=64)
def _hartley_tables(H: int, W: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, ...]:
    """(C_H, S_H, C_W + S_W, C_W - S_W) for the kernel's Hartley transform, padded, in `dtype` on `device`."""
    ch, sh = _cos_sin(H)
    cw, sw = _cos_sin(W)
    return tuple(t.to(device=device, dtype=dtype).contiguous() for t in (ch, sh, cw + sw, cw - sw))


_FILTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _spectral_filter(cov: Covariance, power: float, shape: tuple[int, int, int], dtype, device) -> Tensor | None:
    """lambda^power of `cov` laid out for the kernels, or None for the identity operator (no spectral work).

    In the kernel (spectral_in_kernel): (C, HP, WP) full spectrum divided by H W (the inverse Hartley
    normalisation), zero-padded; otherwise (C, H, W // 2 + 1), the rfft2 half spectrum.
    """
    if isinstance(cov, IdentityCovariance):
        return None
    if power < 0 and cov.is_singular:
        raise ValueError("score_scale: this covariance is singular (a zero eigenvalue), so Sigma^-1/2 does not exist")
    cache = _FILTERS.setdefault(cov, {})
    C, H, W = shape
    in_kernel = spectral_in_kernel(H, W, dtype)
    key = (power, dtype, device, in_kernel)
    if key not in cache:
        lam = cov.eigenvalues().pow(power)
        if in_kernel:
            table = torch.zeros(C, _padded(H), _padded(W), dtype=torch.float64)
            table[:, :H, :W] = lam / (H * W)
        else:
            table = lam[..., : W // 2 + 1]
        cache[key] = table.to(device=device, dtype=dtype).contiguous()
    return cache[key]


def _fused_step(
    out: Tensor,
    cov: Covariance,
    power: float,
    x: Tensor | None = None,
    alpha: Tensor | None = None,
    u: Tensor | None = None,
    beta: Tensor | None = None,
    seed: int | None = None,
    gamma: Tensor | None = None,
    noise_out: Tensor | None = None,
) -> None:
    """out = alpha x + Sigma^power (beta u + gamma z(seed)) in place; z also written to noise_out if given.

    out, x, u, noise_out: contiguous (B, C, H, W) on one device; alpha, beta, gamma: (B,) in the compute dtype.
    Everything runs with out's device as the current CUDA device (_on_device).
    """
    if out.numel() == 0:
        return
    with _on_device(out.device):
        _launch(out, cov, power, x, alpha, u, beta, seed, gamma, noise_out)


def _launch(out, cov, power, x, alpha, u, beta, seed, gamma, noise_out) -> None:
    """The body of _fused_step, under the tensors' CUDA device."""
    B, C, H, W = out.shape
    work = compute_dtype(out.dtype)
    flt = _spectral_filter(cov, power, (C, H, W), work, out.device)
    flags = dict(HAS_U=u is not None, HAS_NOISE=seed is not None, STORE_NOISE=noise_out is not None)
    dummy = out
    seed = 0 if seed is None else seed
    Wo = -(-W // NORMALS_PER_COUNTER)
    if flt is not None and spectral_in_kernel(H, W, work):
        ch, sh, cps, cms = _hartley_tables(H, W, work, out.device)
        HP, WP = ch.shape[0], cps.shape[0]
        _spectral_kernel[(B * C,)](
            out,
            dummy if noise_out is None else noise_out,
            dummy if x is None else x,
            dummy if u is None else u,
            dummy if alpha is None else alpha,
            dummy if beta is None else beta,
            dummy if gamma is None else gamma,
            flt,
            ch,
            sh,
            cps,
            cms,
            seed,
            C,
            H,
            W,
            Wo,
            HP=HP,
            WP=WP,
            HAS_X=x is not None,
            RELOAD_NOISE=reload_noise(HP, WP, None if noise_out is None else noise_out.dtype, work),
            COMPUTE=_triton_dtype(work),
            PRECISION=dot_precision(work),
            num_warps=8 if max(HP, WP) >= 64 else 4,
            **flags,
        )
        return
    per_element = any(c is not None and c.dim() == 4 for c in (alpha, beta, gamma))  # spectral_update's layout
    rows = B * C * H
    BLOCK_W = min(triton.next_power_of_2(max(W, NORMALS_PER_COUNTER)), 256)
    BLOCK_R = max(1, _POINTWISE_ELEMENTS // BLOCK_W)
    grid = (triton.cdiv(rows, BLOCK_R), triton.cdiv(W, BLOCK_W))

    def pointwise(dst, x_, alpha_, u_, beta_, **flags_) -> None:
        _pointwise_kernel[grid](
            dst,
            dummy if noise_out is None else noise_out,
            dummy if x_ is None else x_,
            dummy if u_ is None else u_,
            dummy if alpha_ is None else alpha_,
            dummy if beta_ is None else beta_,
            dummy if gamma is None else gamma,
            seed,
            rows,
            C * H,
            W,
            Wo,
            BLOCK_R=BLOCK_R,
            BLOCK_W=BLOCK_W,
            HAS_X=x_ is not None,
            COMPUTE=_triton_dtype(work),
            PER_ELEMENT=per_element,
            num_warps=8,
            **flags_,
        )

    if flt is None:
        pointwise(out, x, alpha, u, beta, **flags)
        return
    v = torch.empty(out.shape, dtype=work, device=out.device)
    pointwise(v, None, None, u, beta, **flags)
    filtered = torch.fft.irfft2(torch.fft.rfft2(v).mul_(flt), s=(H, W))
    ones = torch.ones(B, dtype=work, device=out.device)
    pointwise(out, x, alpha, filtered, ones, HAS_U=True, HAS_NOISE=False, STORE_NOISE=False)


def gff_noise(
    cov: Covariance,
    n: int,
    seed: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """White eps and g = Sigma^{1/2} eps, (n, *cov.shape) (docs/math.md §1.4); see kernels.reference.gff_noise."""
    cov, shape, n, seed, device, dtype = noise_request(cov, n, seed, device, dtype)
    eps = torch.empty((n, *shape), dtype=dtype, device=device)
    g = torch.empty_like(eps)
    ones = torch.ones(n, dtype=compute_dtype(dtype), device=device)
    _fused_step(g, cov, 0.5, seed=seed, gamma=ones, noise_out=eps)
    return eps, g


def perturb(x0: Tensor, a: Tensor | float, s: Tensor | float, cov: Covariance, seed: int) -> tuple[Tensor, Tensor]:
    """x_t = a x0 + s Sigma^{1/2} eps and eps (docs/math.md §2-4); see kernels.reference.perturb."""
    cov = check_cov(cov)
    x0 = check_images(x0, cov, "x0")
    B, work = x0.shape[0], compute_dtype(x0.dtype)
    a = coefficient(a, B, work, x0.device, "a").contiguous()
    s = coefficient(s, B, work, x0.device, "s").contiguous()
    seed = check_seed(seed)
    x_t = torch.empty_like(x0, memory_format=torch.contiguous_format)
    eps = torch.empty_like(x0, memory_format=torch.contiguous_format)
    _fused_step(x_t, cov, 0.5, x=x0.contiguous(), alpha=a, seed=seed, gamma=s, noise_out=eps)
    return x_t, eps


def ni_update(
    x: Tensor,
    eps_theta: Tensor,
    c_x: Tensor | float,
    c_eps: Tensor | float,
    c_z: Tensor | float,
    cov: Covariance,
    seed: int | None,
) -> Tensor:
    """x_next = c_x x + Sigma^{1/2} (c_eps eps_theta + c_z z) (docs/math.md §2-4); see kernels.reference.ni_update."""
    cov = check_cov(cov)
    x = check_images(x, cov, "x")
    eps_theta = check_like(eps_theta, x, "eps_theta", "x")
    B, work = x.shape[0], compute_dtype(x.dtype)
    c_x = coefficient(c_x, B, work, x.device, "c_x").contiguous()
    c_eps = coefficient(c_eps, B, work, x.device, "c_eps").contiguous()
    seed = noise_seed(seed, c_z)
    gamma = None if seed is None else coefficient(c_z, B, work, x.device, "c_z").contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _fused_step(
        out,
        cov,
        0.5,
        x=x.contiguous(),
        alpha=c_x,
        u=eps_theta.contiguous(),
        beta=c_eps,
        seed=seed,
        gamma=gamma,
    )
    return out


def score_scale(eps_theta: Tensor, s: Tensor | float, cov: Covariance) -> Tensor:
    """-Sigma^{-1/2} eps_theta / s (docs/math.md §2-4); see kernels.reference.score_scale."""
    cov = check_cov(cov)
    eps_theta = check_images(eps_theta, cov, "eps_theta")
    B, work = eps_theta.shape[0], compute_dtype(eps_theta.dtype)
    minus_inv_s = -1.0 / coefficient(s, B, work, eps_theta.device, "s")
    out = torch.empty_like(eps_theta, memory_format=torch.contiguous_format)
    _fused_step(out, cov, -0.5, u=eps_theta.contiguous(), beta=minus_inv_s.contiguous())
    return out


def spectral_update(
    y: Tensor, e: Tensor, c_y: Tensor | float, c_e: Tensor | float, c_z: Tensor | float, seed: int | None
) -> Tensor:
    """c_y y + c_e e + c_z z per element (docs/math.md §11); see kernels.reference.spectral_update."""
    e = check_like(e, y, "e", "y")
    work = compute_dtype(y.dtype)
    seed = noise_seed(seed, c_z)
    gamma = None if seed is None else coefficient_field(c_z, y, work, "c_z")
    out = torch.empty_like(y, memory_format=torch.contiguous_format)
    _fused_step(
        out,
        IdentityCovariance(),
        1.0,
        x=y.contiguous(),
        alpha=coefficient_field(c_y, y, work, "c_y"),
        u=e.contiguous(),
        beta=coefficient_field(c_e, y, work, "c_e"),
        seed=seed,
        gamma=gamma,
    )
    return out
