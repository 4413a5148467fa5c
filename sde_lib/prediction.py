"""What a network may predict, and the white noise each prediction implies (docs/math.md §2-4).

A network sees x = a x0 + s Sigma^{1/2} eps with (a, s) the per-sample signal and noise scales it was trained at
(e.g. NI-DDPM: sqrt(abar_i), sqrt(1 - abar_i); continuous SDEs: a(t), std(t)). Each kind of output determines the
white-noise prediction eps, and with it the score grad log p(x) = -Sigma^{-1/2} eps / s, the invariant that every
sampler reads at its own noise scale:

    "eps"    eps itself
    "x0"     the denoised image:  eps = Sigma^{-1/2} (x - a x0) / s
    "v"      per eigen-coefficient k of Sigma (lambda_k), with s_k = s sqrt(lambda_k) and c_k^2 = a^2 + s_k^2:
             v_k = (a eps_k - s_k x0_k) / c_k,  so  eps_k = (s_k x_k + a c_k v_k) / c_k^2
             (Sigma = I, a^2 + s^2 = 1: v = a eps - s x0, the usual v)
    "u"      NCSN's unconditional output, score = u / s:  eps = -Sigma^{1/2} u
    "score"  the score itself:  eps = -s Sigma^{1/2} score

Tweedie's denoiser is the one place x0 is formed from eps: E[x0 | x] = (x - s Sigma^{1/2} eps) / a.
"""

from __future__ import annotations

from torch import Tensor

from .covariance import Covariance

__all__ = ["PREDICTIONS", "check_prediction", "eps_from_prediction", "tweedie_coefficients"]

PREDICTIONS = ("eps", "x0", "v", "u", "score")


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    return prediction


def _bc(v: Tensor | float) -> Tensor | float:
    return v[:, None, None, None] if isinstance(v, Tensor) and v.dim() == 1 else v


def tweedie_coefficients(a: Tensor | float, s: Tensor | float) -> tuple[Tensor | float, Tensor | float]:
    """(c_x, c_eps) with E[x0 | x] = c_x x + c_eps Sigma^{1/2} eps = (x - s Sigma^{1/2} eps) / a
    (docs/math.md §2, 4)."""
    return 1 / a, -s / a


def eps_from_prediction(
    prediction: str, out: Tensor, x: Tensor, a: Tensor | float, s: Tensor | float, cov: Covariance, basis=None
) -> Tensor:
    """The white-noise prediction eps at scales (a, s) (each (B,) or a number) of a network output (module doc).

    Per-coefficient scales (a, s of shape (B, C, H, W) in the spectral basis of `basis`, an SDE of the spectral
    family, docs/math.md §11) use the same formulas coefficient by coefficient, with Sigma^{1/2} = I."""
    out = out.to(x.dtype)
    if prediction == "eps":
        return out
    if isinstance(a, Tensor) and a.dim() == 4:
        return _spectral_eps(prediction, out, x, a.to(x.dtype), s.to(x.dtype), basis)
    a, s = _bc(a), _bc(s)
    if prediction == "x0":
        return cov.inv_sqrt_mul(x - a * out) / s
    if prediction == "u":
        return -cov.sqrt_mul(out)
    if prediction == "score":
        return -s * cov.sqrt_mul(out)
    if prediction == "v":
        s_k = s * cov.basis_eigenvalues(x.dtype, x.device).sqrt()
        c2 = a**2 + s_k**2
        return cov.from_basis((s_k * cov.to_basis(x) + a * c2.sqrt() * cov.to_basis(out)) / c2)
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def _spectral_eps(prediction: str, out: Tensor, x: Tensor, a: Tensor, s: Tensor, basis) -> Tensor:
    """eps = U^T e with e from the prediction's coefficients: x0: e = (y - a x0) / s; score: e = -s score;
    v: e = (s y + a c v) / c^2, c^2 = a^2 + s^2 (y = U x)."""
    if basis is None:
        raise ValueError("per-coefficient scales need the SDE whose spectral basis they belong to (basis=sde)")
    y, o = basis.to_spectral(x), basis.to_spectral(out)
    if prediction == "x0":
        e = (y - a * o) / s
    elif prediction == "score":
        e = -s * o
    elif prediction == "v":
        c2 = a**2 + s**2
        e = (s * y + a * c2.sqrt() * o) / c2
    else:
        raise ValueError(f"prediction {prediction!r} has no per-coefficient form (NCSN's u is for the VE family)")
    return basis.from_spectral(e)
