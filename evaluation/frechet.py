"""Frechet distance between Gaussian fits of feature sets (the quantity behind FID).

For features X_1 (n_1, d) and X_2 (n_2, d) with sample means mu_i and sample covariances C_i,

    FD = ||mu_1 - mu_2||^2 + tr(C_1 + C_2 - 2 (C_1 C_2)^{1/2})

(the 2-Wasserstein distance squared between N(mu_1, C_1) and N(mu_2, C_2)). The matrix square root is
clean-fid's `frechet_distance` (scipy.linalg.sqrtm, with its diagonal offset for a singular product).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

__all__ = ["gaussian_fit", "frechet_distance", "frechet_distance_of_features"]


def _as_matrix(features: Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(features, Tensor):
        features = features.detach().cpu().double().numpy()
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"{name} must be a (n, d) feature matrix with n >= 2, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{name} holds non-finite values")
    return features


def gaussian_fit(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, C): sample mean (d,) and unbiased sample covariance (d, d) of features (n, d), float64."""
    x = _as_matrix(features, "features")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}) between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}"
        )
    from cleanfid.fid import frechet_distance as cleanfid_frechet_distance  # imported on first use

    return float(cleanfid_frechet_distance(mu1, sigma1, mu2, sigma2))


def frechet_distance_of_features(features1: Tensor | np.ndarray, features2: Tensor | np.ndarray) -> float:
    """FD between the Gaussian fits (gaussian_fit) of two feature sets with the same dimension d."""
    f1, f2 = _as_matrix(features1, "features1"), _as_matrix(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    return frechet_distance(*gaussian_fit(f1), *gaussian_fit(f2))
