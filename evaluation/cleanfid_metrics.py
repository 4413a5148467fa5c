"""FID, KID and precision/recall of image folders through clean-fid (Parmar et al., 2022).

Features come from clean-fid: its Inception-v3 (mode "clean" or "legacy_tensorflow", 2048-d pool features of
images resized to 299x299) or a local `feature_extractor`, a callable mapping a batch (B, 3, H, W) float in
[0, 255] (clean-fid's convention) to (B, d) features. A local extractor may take the images at their stored
size (`native_size=True`), e.g. the digits classifier of evaluation.digits_classifier.

    FID = Frechet distance of the Gaussian fits of the two feature sets (evaluation.frechet),
    KID = unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets
          (clean-fid's kernel_distance; subsets of min(n_1, n_2, 1000) points),
    P, R = Kynkaanniemi et al. precision / recall with k = 3 (evaluation.knn_precision_recall).

clean-fid downloads its Inception weights and reference statistics on first use. Without internet this fails;
the failure is reported as one InceptionUnavailableError line that says how to proceed.
"""

from __future__ import annotations

import pathlib
import urllib.error
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .frechet import frechet_distance, gaussian_fit
from .knn_precision_recall import precision_recall


def _cleanfid():
    """clean-fid's fid and features modules, imported on first use (the rest of nidiff runs without clean-fid)."""
    from cleanfid import features, fid

    return fid, features


__all__ = [
    "FeatureExtractor",
    "InceptionUnavailableError",
    "MODES",
    "fid_folders",
    "folder_features",
    "kernel_inception_distance",
    "compare_folders",
    "compare_to_reference",
]

FeatureExtractor = Callable[[Tensor], Tensor]
MODES = ("clean", "legacy_tensorflow")


class InceptionUnavailableError(RuntimeError):
    """clean-fid could not fetch its Inception weights or reference statistics (no internet)."""


def _offline_error(what: str, err: Exception) -> InceptionUnavailableError:
    return InceptionUnavailableError(
        f"clean-fid could not download {what} ({type(err).__name__}: {err}); run once with internet access so that "
        "clean-fid caches them, or use a local feature extractor (run.py fid --metric digits, or feature_extractor=...)"
    )


def _keep_size(img: np.ndarray) -> np.ndarray:
    """clean-fid resize hook that leaves the (H, W, 3) uint8 image as stored."""
    return img


def _check_folder(folder: str | pathlib.Path, name: str) -> str:
    path = pathlib.Path(folder)
    if not path.is_dir():
        raise ValueError(f"{name}: {str(path)!r} is not a directory of images")
    return str(path)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def _extractor(feature_extractor: FeatureExtractor | None, mode: str, device: torch.device) -> FeatureExtractor:
    if feature_extractor is not None:
        return feature_extractor
    try:
        return _cleanfid()[1].build_feature_extractor(mode, device, use_dataparallel=False)
    except OSError as err:  # urllib.error.URLError and socket errors are OSErrors
        raise _offline_error("its Inception-v3 weights", err) from err


def _resize_hook(feature_extractor: FeatureExtractor | None, native_size: bool) -> Callable | None:
    if native_size and feature_extractor is None:
        raise ValueError("native_size=True needs a local feature_extractor (Inception expects 299x299 inputs)")
    return _keep_size if native_size else None


def folder_features(
    folder: str | pathlib.Path,
    mode: str = "clean",
    feature_extractor: FeatureExtractor | None = None,
    native_size: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    verbose: bool = False,
) -> np.ndarray:
    """Features (n, d) of every image under `folder` (clean-fid get_folder_features, sorted file order)."""
    _check_mode(mode)
    folder = _check_folder(folder, "folder")
    device = torch.device(device)
    resize = _resize_hook(feature_extractor, native_size)
    feats = _cleanfid()[0].get_folder_features(
        folder,
        _extractor(feature_extractor, mode, device),
        num_workers=0,
        batch_size=int(batch_size),
        device=device,
        mode=mode,
        custom_fn_resize=resize,
        description=f"features {pathlib.Path(folder).name}: ",
        verbose=verbose,
    )
    if len(feats) < 2:
        raise ValueError(f"folder {folder!r} holds {len(feats)} images; at least 2 are needed")
    return feats.astype(np.float64)


def fid_folders(
    folder1: str | pathlib.Path,
    folder2: str | pathlib.Path,
    mode: str = "clean",
    feature_extractor: FeatureExtractor | None = None,
    native_size: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    verbose: bool = False,
) -> float:
    """FID between two image folders with clean-fid's compute_fid (Inception, or the local feature_extractor)."""
    _check_mode(mode)
    folder1, folder2 = _check_folder(folder1, "folder1"), _check_folder(folder2, "folder2")
    device = torch.device(device)
    resize = _resize_hook(feature_extractor, native_size)
    return float(
        _cleanfid()[0].compute_fid(
            folder1,
            folder2,
            mode=mode,
            num_workers=0,
            batch_size=int(batch_size),
            device=device,
            custom_feat_extractor=_extractor(feature_extractor, mode, device),
            custom_fn_resize=resize,
            verbose=verbose,
        )
    )


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray, seed: int = 0) -> float:
    """KID: clean-fid's kernel_distance (unbiased MMD^2, kernel (x.y/d + 1)^3, 100 subsets), with seeded subsets."""
    # kernel_distance draws its subsets from numpy's global RNG: seed it, then restore the caller's state.
    state = np.random.get_state()  # noqa: NPY002
    np.random.seed(seed)  # noqa: NPY002
    try:
        return float(_cleanfid()[0].kernel_distance(np.asarray(features1), np.asarray(features2)))
    finally:
        np.random.set_state(state)  # noqa: NPY002


def _metrics(
    generated: np.ndarray,
    reference: np.ndarray,
    k: int,
    seed: int,
    reference_fit: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    p, r = precision_recall(reference, generated, k=k)
    return {
        "fid": frechet_distance(*gaussian_fit(generated), *(reference_fit or gaussian_fit(reference))),
        "kid": kernel_inception_distance(generated, reference, seed=seed),
        "precision": p,
        "recall": r,
    }


def compare_folders(
    generated: str | pathlib.Path,
    reference: str | pathlib.Path,
    mode: str = "clean",
    feature_extractor: FeatureExtractor | None = None,
    native_size: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    k: int = 3,
    seed: int = 0,
    verbose: bool = False,
) -> dict[str, float]:
    """{fid, kid, precision, recall} of the `generated` folder against the `reference` folder, on one feature pass."""
    opts = dict(mode=mode, feature_extractor=feature_extractor, native_size=native_size, device=device)
    gen = folder_features(generated, batch_size=batch_size, verbose=verbose, **opts)
    ref = folder_features(reference, batch_size=batch_size, verbose=verbose, **opts)
    return _metrics(gen, ref, k, seed)


def compare_to_reference(
    generated: str | pathlib.Path,
    dataset_name: str,
    dataset_res: int,
    dataset_split: str = "train",
    mode: str = "clean",
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    k: int = 3,
    seed: int = 0,
    verbose: bool = False,
) -> dict[str, float]:
    """{fid, kid, precision, recall} of a folder against clean-fid's reference statistics (e.g. "cifar10", 32).

    FID uses the reference (mu, C); KID and precision/recall use clean-fid's stored reference features.
    """
    _check_mode(mode)
    _check_folder(generated, "generated")
    try:
        get_reference_statistics = _cleanfid()[1].get_reference_statistics
        mu, sigma = get_reference_statistics(dataset_name, dataset_res, mode=mode, split=dataset_split, metric="FID")
        ref = get_reference_statistics(dataset_name, dataset_res, mode=mode, split=dataset_split, metric="KID")
    except urllib.error.HTTPError as err:  # the server answered: no such statistics
        raise ValueError(
            f"clean-fid has no reference statistics for dataset {dataset_name!r}, res {dataset_res}, split "
            f"{dataset_split!r}, mode {mode!r} ({err})"
        ) from err
    except OSError as err:
        raise _offline_error(f"the reference statistics {dataset_name}/{dataset_res}/{dataset_split}", err) from err
    gen = folder_features(generated, mode=mode, device=device, batch_size=batch_size, verbose=verbose)
    return _metrics(gen, ref, k, seed, reference_fit=(mu, sigma))
