"""Image data sets: scikit-learn digits, CIFAR-10 (python batches or .npz, with a verified download), image folders.

Every data set is held as integer grey levels n in {0, .., L-1} (`ImageDataset.pixels`, uint8, (N, C, H, W)) and
served as float32 images in [-1, 1] at the bin centres of the map the likelihood uses (docs/math.md §5,
sde_lib.quantization):

    x = (n + 1/2) * 2 / L - 1,        L = 17 for digits (grey levels 0..16), 256 otherwise,

so that a model trained on x and scored by uniform dequantisation y = (n + u) * 2/L - 1 sees one pixel space.
Bad data (a wrong shape or dtype, an empty folder, an unreadable image, an md5 mismatch, a refused pickle or archive)
raises DataError, a ValueError whose message is one line naming the file or folder; a missing split or file raises
FileNotFoundError naming it. Nothing is skipped silently.

CIFAR-10 goes through torchvision.datasets.CIFAR10 (its URL, archive MD5, file names and download), with two
guards torchvision lacks: batch files are unpickled by a restricted unpickler (SafeCIFAR10) and the archive is
extracted with tarfile's "data" filter (extract_tar).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .image_dataset import SPLITS, DataError, ImageDataset

__all__ = [
    "DATASET_NAMES",
    "SPLITS",
    "DataError",
    "ImageDataset",
    "load_dataset",
    "dataset_levels",
    "load_digits",
    "load_folder",
]

DATASET_NAMES = ("digits", "cifar10", "folder")
DIGITS_TEST_FRACTION = 0.2  # 1437 training and 360 test digits, stratified by class
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def dataset_levels(name: str) -> int:
    """Number of grey levels L of a data set's pixels: 17 for digits (0..16), 256 for cifar10 and folder."""
    _check_name(name)
    return 17 if name == "digits" else 256


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    flip: bool = False,
    seed: int = 0,
    download: bool = False,
) -> ImageDataset:
    """The `split` ("train" or "test") of data set `name` as float (C, H, W) images in [-1, 1].

    digits   scikit-learn's bundled load_digits (1797 images 1x8x8); the split is stratified and fixed by `seed`.
    cifar10  `root`, tried in this order: an .npz file (used for either split); a directory holding
             cifar-10-batches-py/ (torchvision's layout) or holding the batch files itself (data_batch_1..5,
             test_batch, batches.meta; any directory name); a directory holding <split>.npz. download=True first
             runs download_cifar10(root) (root/cifar-10-batches-py; nothing is fetched when it is complete).
    folder   `root` (or root/<split> when that directory exists): PNG/JPEG files, resized and centre-cropped to
             image_size (default 32) with `channels` 1 (grey) or 3 (RGB, the default), as the cifar10 model's shape.
    image_size / channels may restate the fixed shape of digits (8, 1) and cifar10 (32, 3); other values are refused.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if download and name != "cifar10":
        raise ValueError(f"download applies to cifar10 only, not to {name!r}")
    if name == "folder":
        if root is None:
            raise ValueError("the folder data set needs root, a directory of PNG/JPEG images")
        return load_folder(
            root, split, 32 if image_size is None else image_size, 3 if channels is None else channels, flip
        )
    native = {"digits": (8, 1), "cifar10": (32, 3)}[name]
    for arg, value, fixed in (("image_size", image_size, native[0]), ("channels", channels, native[1])):
        if value is not None and value != fixed:
            raise ValueError(f"{name} images have {arg}={fixed}, got {arg}={value}; use the folder data set to resize")
    if name == "digits":
        if root is not None:
            raise ValueError("digits is bundled with scikit-learn; root must be None")
        return load_digits(split, seed, flip)
    if root is None:
        raise ValueError("cifar10 needs root (a cifar-10-batches-py directory, its parent, or an .npz file)")
    from .cifar10 import download_cifar10, load_cifar10

    if download:
        download_cifar10(root)
    return load_cifar10(root, split, flip)


def _check_name(name: str) -> None:
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")


# ---- digits ------------------------------------------------------------------------------------------------------
def load_digits(split: str = "train", seed: int = 0, flip: bool = False) -> ImageDataset:
    """scikit-learn's load_digits: 1797 images 1x8x8 with grey levels 0..16 and labels 0..9. The train/test split
    (test fraction DIGITS_TEST_FRACTION, stratified by label) is a function of `seed` alone."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    bunch = sklearn_digits()
    images, labels = bunch.images, bunch.target
    train, test = train_test_split(
        np.arange(len(images)), test_size=DIGITS_TEST_FRACTION, random_state=seed, stratify=labels
    )
    index = np.sort(train if split == "train" else test)
    pixels = torch.from_numpy(images[index].astype(np.uint8)[:, None])
    return ImageDataset(pixels, 17, torch.from_numpy(labels[index].astype(np.int64)), flip)


# ---- CIFAR-10 ----------------------------------------------------------------------------------------------------
def load_folder(
    root: str | os.PathLike, split: str = "train", image_size: int = 32, channels: int = 3, flip: bool = False
) -> ImageDataset:
    """Every .png/.jpg/.jpeg file (any case, subdirectories included, sorted by path) under root/<split> if that
    directory exists, else under root for split="train". Each image is converted to grey (channels=1) or RGB
    (channels=3), scaled so that its shorter side is image_size and centre-cropped (PIL ImageOps.fit, bicubic).
    Other files are not images and are ignored. No image at all, or an image file that cannot be opened or decoded,
    raises DataError naming the folder or the file."""
    from PIL import Image, ImageOps  # image files: only folder data sets need pillow

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if int(image_size) < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    folder = root / split if (root / split).is_dir() else root
    if folder == root and split != "train":
        raise FileNotFoundError(f"no {split} split: {root / split} does not exist (root itself serves as train only)")
    if folder == root and any((root / other).is_dir() for other in SPLITS):
        raise FileNotFoundError(f"{root} has split directories but no {split}/ (refusing to mix splits)")
    # Every entry with an image suffix that is not a directory: a broken link named x.png is an unreadable image.
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
    if not files:
        raise DataError(f"no PNG/JPEG images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for path in files:
        try:
            with Image.open(path) as im:
                im = ImageOps.fit(im.convert(mode), (image_size, image_size), method=Image.Resampling.BICUBIC)
        # PIL's decoders raise OSError (UnidentifiedImageError, truncated data), ValueError, SyntaxError (a broken
        # PNG chunk), EOFError, or DecompressionBombError (an image over twice Image.MAX_IMAGE_PIXELS).
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot read image {path}: {type(err).__name__}: {err}") from err
        arrays.append(np.asarray(im, dtype=np.uint8).reshape(image_size, image_size, channels))
    pixels = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())
    return ImageDataset(pixels, 256, None, flip)


_CIFAR10_NAMES = ("CIFAR10_URL", "CIFAR10_MD5", "SafeCIFAR10", "load_cifar10", "download_cifar10", "verify_md5",
                  "extract_tar")  # fmt: skip


def __getattr__(name: str):
    """The CIFAR-10 names, from training.cifar10, imported on first use (it needs torchvision)."""
    if name in _CIFAR10_NAMES:
        from . import cifar10

        return getattr(cifar10, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
