"""Improved precision and recall (Kynkaanniemi et al., 2019) on feature vectors.

Each feature set defines a manifold estimate: the union of balls around its points, each ball's radius the
distance to the point's k-th nearest neighbour within the same set (k = 3 by default). Then

    precision = fraction of generated features inside the union of real balls,
    recall    = fraction of real features inside the union of generated balls.

A point lies inside a ball when its distance is <= the radius, so identical sets give P = R = 1.
Distances are Euclidean (torch.cdist), computed in float64 row blocks to bound memory.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["knn_radii", "manifold_coverage", "precision_recall"]

BLOCK = 1024


def _as_features(x: Tensor | np.ndarray, name: str) -> Tensor:
    x = torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64)
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty (n, d) feature matrix, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds non-finite values")
    return x


def knn_radii(features: Tensor | np.ndarray, k: int = 3) -> Tensor:
    """r_i = distance from x_i to its k-th nearest neighbour among the other points of the set, shape (n,)."""
    x = _as_features(features, "features")
    if int(k) < 1 or int(k) >= x.shape[0]:
        raise ValueError(f"k must lie in [1, n - 1] = [1, {x.shape[0] - 1}], got {k}")
    k = int(k)
    # The (k+1)-th smallest distance in a row counts the point itself (distance 0) first.
    return torch.cat(
        [
            torch.cdist(x[i : i + BLOCK], x).topk(k + 1, dim=1, largest=False).values[:, k]
            for i in range(0, len(x), BLOCK)
        ]
    )


def manifold_coverage(support: Tensor | np.ndarray, radii: Tensor, queries: Tensor | np.ndarray) -> float:
    """Fraction of `queries` q with min_i (||q - s_i|| - r_i) <= 0: inside the union of balls B(s_i, r_i)."""
    s, q = _as_features(support, "support"), _as_features(queries, "queries")
    if s.shape[1] != q.shape[1]:
        raise ValueError(f"feature dimensions differ: {s.shape[1]} vs {q.shape[1]}")
    radii = torch.as_tensor(radii, dtype=torch.float64)
    if radii.shape != (s.shape[0],):
        raise ValueError(f"radii must have shape ({s.shape[0]},), got {tuple(radii.shape)}")
    inside = [
        ((torch.cdist(q[i : i + BLOCK], s) - radii[None, :]).min(dim=1).values <= 0) for i in range(0, len(q), BLOCK)
    ]
    return float(torch.cat(inside).double().mean())


def precision_recall(real: Tensor | np.ndarray, generated: Tensor | np.ndarray, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of `generated` against `real` features (n, d) with k-NN radii (Kynkaanniemi et al.)."""
    precision = manifold_coverage(real, knn_radii(real, k), generated)
    recall = manifold_coverage(generated, knn_radii(generated, k), real)
    return precision, recall
