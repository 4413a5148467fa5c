"""Intervals for a study's results (docs/math.md §10): the bootstrap interval of one cell's Frechet distance, and
Student-t intervals over seeds for a mean and for a paired difference.

    fd, lo, hi = frechet_bootstrap(features, reference, resamples=200, seed=0)   # one cell, 95%
    mean, lo, hi = mean_interval(values)                                          # over seeds
    diff, lo, hi = paired_interval(a, b)                                          # a_s - b_s over seeds s
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from torch import Tensor

from .frechet import _as_matrix, frechet_distance_of_features, gaussian_fit

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "Interval",
    "frechet_distances",
    "frechet_bootstrap",
    "t_multiplier",
    "mean_interval",
    "paired_interval",
]

BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_SEED = 0
# Entries of one block of outer products x_i x_i^T (rows x d^2) in frechet_bootstrap: 32 MB of float64.
_BLOCK_ENTRIES = 1 << 22


class Interval(NamedTuple):
    """An estimate and its two-sided interval [lo, hi]."""

    value: float
    lo: float
    hi: float


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix (negative rounding-error eigenvalues set to 0)."""
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distances(means: np.ndarray, covs: np.ndarray, mu_ref: np.ndarray, cov_ref: np.ndarray) -> np.ndarray:
    """FD of each N(means[b], covs[b]) (shapes (B, d), (B, d, d)) against N(mu_ref, cov_ref), shape (B,):
    ||mu_b - mu||^2 + tr C_b + tr C - 2 sum_i sqrt(lambda_i(C^{1/2} C_b C^{1/2})), one batched symmetric
    eigenvalue call (tr (C_b C)^{1/2} is the sum of the square roots of those eigenvalues; docs/math.md §10)."""
    r = _psd_sqrt(np.asarray(cov_ref, np.float64))
    inner = np.linalg.eigvalsh(r @ covs @ r)
    root = np.sqrt(np.clip(inner, 0.0, None)).sum(axis=-1)
    mean_term = np.square(means - mu_ref).sum(axis=-1)
    return mean_term + np.trace(covs, axis1=-2, axis2=-1) + np.trace(cov_ref) - 2.0 * root


def frechet_bootstrap(
    features: Tensor | np.ndarray,
    reference: Tensor | np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> Interval:
    """(FD of `features` against `reference`, the bootstrap interval) (docs/math.md §10).

    The n feature vectors are resampled with replacement `resamples` times (counts from one multinomial draw of a
    generator seeded with `seed`; the reference stays fixed), giving FD*_1..FD*_B. With m their median and q_a,
    q_b their (1 - confidence) / 2 and (1 + confidence) / 2 quantiles, the interval is
    [max(0, FD - (m - q_a)), FD + (q_b - m)]: the spread of FD over resamples, placed at the estimate, so it always
    contains FD. Vectorised: the resampled means and second moments are matrix products of the counts with the
    features and with their outer products (in row blocks), and one batched eigenvalue call gives every FD*.
    """
    x = _as_matrix(features, "features")
    fd = frechet_distance_of_features(x, reference)
    n, d = x.shape
    if int(resamples) < 2 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 2 and confidence in (0, 1), got {resamples}, {confidence}")
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=int(resamples)).astype(np.float64)
    means = counts @ x / n
    second = np.zeros((len(counts), d * d))
    block = max(1, _BLOCK_ENTRIES // (d * d))
    for i in range(0, n, block):
        rows = x[i : i + block]
        second += counts[:, i : i + block] @ (rows[:, :, None] * rows[:, None, :]).reshape(len(rows), d * d)
    covs = (second.reshape(-1, d, d) / n - means[:, :, None] * means[:, None, :]) * (n / (n - 1))
    values = frechet_distances(means, covs, *gaussian_fit(reference))
    alpha = (1.0 - confidence) / 2.0
    q_lo, median, q_hi = np.quantile(values, [alpha, 0.5, 1.0 - alpha])
    return Interval(fd, max(0.0, fd - float(median - q_lo)), fd + float(q_hi - median))


def t_multiplier(count: int, confidence: float = 0.95) -> float:
    """The two-sided Student-t multiplier t_{(1 + confidence) / 2, count - 1} of a mean over `count` values
    (scipy.stats.t.ppf): 4.303 for 3 seeds, 2.776 for 5 at 95%."""
    from scipy.stats import t

    if int(count) < 2:
        raise ValueError(f"a t interval needs at least 2 values, got {count}")
    return float(t.ppf((1.0 + confidence) / 2.0, int(count) - 1))


def mean_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """(mean, mean -+ t s / sqrt(k)) of k values, s their standard deviation (ddof 1): the Student-t interval of
    the mean (docs/math.md §10)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or not np.isfinite(v).all():
        raise ValueError(f"values must be a finite 1-d sequence, got shape {v.shape}")
    half = t_multiplier(len(v), confidence) * float(v.std(ddof=1)) / math.sqrt(len(v))
    mean = float(v.mean())
    return Interval(mean, mean - half, mean + half)


def paired_interval(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> Interval:
    """The paired difference a - b over seeds: mean_interval of d_s = a_s - b_s, where a_s and b_s share seed s
    (docs/math.md §10)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same shape, got {a.shape} and {b.shape}")
    return mean_interval(a - b, confidence)
