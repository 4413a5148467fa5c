"""A small CNN classifier of 8x8 digits whose penultimate layer is the feature space of the digits metric.

Inception-v3 features mean little on 8x8 greyscale digits, so the main job measures samples in the space of a
classifier trained on the digits themselves (the role Inception plays for ImageNet-like data): features are the
64 activations that feed the final linear layer. The classifier is trained once per data split (Adam, a few
seconds on a CPU), saved to a file with its held-out test accuracy, and reloaded from there afterwards.

Inputs are model-space images (B, 1, 8, 8) in [-1, 1]. `cleanfid_extractor` adapts it to clean-fid's
convention, batches (B, 3, H, W) in [0, 255] of PNGs written by evaluation.images (grey = channel mean).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = [
    "DigitsClassifier",
    "accuracy",
    "train_digits_classifier",
    "load_or_train_digits_classifier",
    "cleanfid_extractor",
]

FORMAT = "nidiff-digits-classifier-v1"


class DigitsClassifier(nn.Module):
    """conv3x3(1->w) SiLU conv3x3(w->2w) SiLU avgpool2 | linear(->64) SiLU = features | linear(->10) = logits."""

    def __init__(self, width: int = 32, feature_dim: int = 64, image_size: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (image_size // 2) ** 2, feature_dim),
            nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, 10)
        self.image_size = image_size

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (B, feature_dim) of images x (B, 1, 8, 8) in [-1, 1]."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, self.image_size, self.image_size):
            raise ValueError(f"x must have shape (B, 1, {self.image_size}, {self.image_size}), got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, 10)."""
        return self.head(self.features(x))


def accuracy(model: DigitsClassifier, images: Tensor, labels: Tensor) -> float:
    """Fraction of images whose arg-max logit equals the label."""
    with torch.no_grad():
        return float((model(images).argmax(dim=1) == labels).double().mean())


def _check_split(images: Tensor, labels: Tensor, name: str) -> None:
    if images.dim() != 4 or images.shape[1] != 1 or labels.shape != (images.shape[0],):
        raise ValueError(
            f"{name}: images (N, 1, H, W) and labels (N,) expected, got {tuple(images.shape)}, {tuple(labels.shape)}"
        )


def train_digits_classifier(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = False,
) -> tuple[DigitsClassifier, float]:
    """Train with Adam on cross-entropy; returns (model in eval mode, accuracy on the held-out test images)."""
    _check_split(train_images, train_labels, "train")
    _check_split(test_images, test_labels, "test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier(image_size=train_images.shape[-1])
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        x, y = train_images.float(), train_labels.long()
        for _ in tqdm(range(epochs), desc="digits classifier", disable=not progress, leave=False):
            for idx in torch.randperm(len(x)).split(batch_size):
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
    model.eval()
    return model, accuracy(model, test_images.float(), test_labels.long())


def _fingerprint(*tensors: Tensor) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_or_train_digits_classifier(
    path: str | pathlib.Path,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    seed: int = 0,
    progress: bool = False,
) -> tuple[DigitsClassifier, float]:
    """(classifier, test accuracy) from the cache file `path` if it was trained on this very split, else train
    it (train_digits_classifier) and write the cache atomically (temporary file, rename)."""
    path = pathlib.Path(path)
    key = _fingerprint(train_images, train_labels, test_images, test_labels)
    if path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("format") == FORMAT and state.get("data") == key:
                model = DigitsClassifier(image_size=train_images.shape[-1])
                model.load_state_dict(state["model"])
                return model.eval(), float(state["test_accuracy"])
        except Exception as err:  # an unreadable cache is rebuilt, never trusted
            warnings.warn(f"ignoring unreadable digits classifier cache {path}: {err}", stacklevel=2)
    model, acc = train_digits_classifier(
        train_images, train_labels, test_images, test_labels, seed=seed, progress=progress
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "data": key, "test_accuracy": acc, "model": model.state_dict()}, tmp)
    os.replace(tmp, path)
    return model, acc


def cleanfid_extractor(model: DigitsClassifier) -> Callable[[Tensor], Tensor]:
    """Feature extractor for clean-fid: (B, 3, H, W) in [0, 255] -> grey p / 255 * 2 - 1 -> model.features."""

    def extract(batch: Tensor) -> Tensor:
        with torch.no_grad():
            return model.features(batch.float().mean(dim=1, keepdim=True) / 127.5 - 1.0)

    return extract
