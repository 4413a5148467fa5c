"""The digits metric: generated 8x8 digits against held-out real digits in a digits classifier's feature space.

With f = DigitsClassifier.features (64-d penultimate activations, evaluation.digits_classifier):

    Frechet distance  FD(f(generated), f(test))      (evaluation.frechet, the FID formula)
    precision, recall of f(generated) against f(test) with k = 3 (evaluation.knn_precision_recall)
    real floor        FD(f(n random train digits), f(test)): the same statistic between two real samples of the
                      same size, the value a perfect generator would reach up to sampling noise. One draw of the n
                      digits moves it by about 20% at n = 256, so the floor is the mean over FLOOR_DRAWS draws
                      (with their standard deviation).

Generated images are clamped to [-1, 1] (the data range) before the classifier sees them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .digits_classifier import DigitsClassifier
from .frechet import frechet_distance_of_features
from .knn_precision_recall import precision_recall

__all__ = ["DIGITS_SHAPE", "FLOOR_DRAWS", "DigitsMetric", "RealFloor"]

DIGITS_SHAPE = (1, 8, 8)
FLOOR_DRAWS = 20


class RealFloor(NamedTuple):
    """The real-data floor: mean and standard deviation (ddof 1; 0 for one draw) of `draws` values of FD."""

    mean: float
    sd: float
    draws: int


class DigitsMetric:
    """Frechet distance, precision/recall and predicted-class histogram of digits against a held-out set."""

    def __init__(
        self, classifier: DigitsClassifier, accuracy: float, train_images: Tensor, test_images: Tensor, k: int = 3
    ):
        self.classifier = classifier.eval()
        self.accuracy = float(accuracy)
        self.k = int(k)
        self.train_images = train_images
        self.test_images = test_images
        self.reference = self.features(test_images)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """f(clamp(x, -1, 1)), shape (N, 64), for images (N, 1, 8, 8) in model space."""
        return self.classifier.features(images.detach().float().cpu().clamp(-1, 1))

    @torch.no_grad()
    def evaluate(self, images: Tensor) -> dict:
        """{frechet_distance, precision, recall, class_histogram (10 counts of the classifier's predictions)}."""
        feats = self.features(images)
        p, r = precision_recall(self.reference, feats, k=self.k)
        classes = self.classifier.head(feats).argmax(dim=1)
        return {
            "frechet_distance": frechet_distance_of_features(feats, self.reference),
            "precision": p,
            "recall": r,
            "class_histogram": torch.bincount(classes, minlength=10).tolist(),
        }

    def real_floor(self, n: int, seed: int = 0, draws: int = FLOOR_DRAWS) -> RealFloor:
        """The floor for n samples: FD between min(n, N_train) random train digits and the test digits, over
        `draws` draws of the n digits (one generator seeded with `seed`; the first draw is the single draw of
        earlier versions)."""
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        train = self.features(self.train_images)
        generator = torch.Generator().manual_seed(seed)
        values = [
            frechet_distance_of_features(train[torch.randperm(len(train), generator=generator)[:n]], self.reference)
            for _ in range(draws)
        ]
        sd = float(np.std(values, ddof=1)) if draws > 1 else 0.0
        return RealFloor(float(np.mean(values)), sd, draws)
