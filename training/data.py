"""Image data sets: scikit-learn digits, CIFAR-10 (python batches or .npz, with a verified download), image folders.

Every data set is held as integer grey levels n in {0, .., L-1} (`ImageDataset.pixels`, uint8, (N, C, H, W)) and
served as float32 images in [-1, 1] at the bin centres of the map the likelihood uses (MATH.md 5,
sde_lib.quantization):

    x = (n + 1/2) * 2 / L - 1,        L = 17 for digits (grey levels 0..16), 256 otherwise,

so that a model trained on x and scored by uniform dequantisation y = (n + u) * 2/L - 1 sees one pixel space.
Bad data (a wrong shape or dtype, an empty folder, an unreadable image, an md5 mismatch, a refused pickle or archive)
raises DataError, a ValueError whose message is one line naming the file or folder; a missing split or file raises
FileNotFoundError naming it. Nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DATASET_NAMES",
    "SPLITS",
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "DataError",
    "ImageDataset",
    "load_dataset",
    "dataset_levels",
    "load_digits",
    "load_cifar10",
    "load_folder",
    "download_cifar10",
    "verify_md5",
    "extract_tar",
]

DATASET_NAMES = ("digits", "cifar10", "folder")
SPLITS = ("train", "test")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
DIGITS_TEST_FRACTION = 0.2  # 1437 training and 360 test digits, stratified by class
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
    """Bad data: a malformed, unreadable or refused file, or a folder without images. The message is one line (any
    line breaks of a wrapped library error are folded) naming the file or folder, so a command line can print it as
    is; run.py prints every ValueError as `run.py <command>: error: <message>`."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ImageDataset(Dataset):
    """Integer images `pixels` (N, C, H, W) uint8 in 0..levels-1, served as float32 (C, H, W) bin centres in
    [-1, 1] (module docstring). flip=True mirrors each served image left-right with probability 1/2, drawn from
    torch's global generator (so seeds and saved RNG states reproduce it). `labels` (N,) int64 or None."""

    def __init__(self, pixels: Tensor, levels: int, labels: Tensor | None = None, flip: bool = False):
        if pixels.dtype != torch.uint8 or pixels.dim() != 4:
            raise ValueError(f"pixels must be a uint8 tensor (N, C, H, W), got {pixels.dtype} {tuple(pixels.shape)}")
        if len(pixels) and int(pixels.max()) >= levels:
            raise ValueError(f"pixels must lie in 0..{levels - 1}, got a maximum of {int(pixels.max())}")
        if labels is not None and labels.shape != (len(pixels),):
            raise ValueError(f"labels must have shape ({len(pixels)},), got {tuple(labels.shape)}")
        self.pixels, self.levels, self.labels, self.flip = pixels, int(levels), labels, bool(flip)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.pixels.shape[1:])

    def __len__(self) -> int:
        return len(self.pixels)

    def _to_float(self, pixels: Tensor) -> Tensor:
        """x = (n + 1/2) * 2 / L - 1 = sde_lib.dequantize(n, L, u=1/2), without its per-call range check."""
        return pixels.float() * (2.0 / self.levels) + (1.0 / self.levels - 1.0)

    def __getitem__(self, index: int) -> Tensor:
        x = self._to_float(self.pixels[index])
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x

    def images(self) -> Tensor:
        """All images (N, C, H, W) float32 in [-1, 1], unflipped."""
        return self._to_float(self.pixels)


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
    cifar10  `root`: a directory holding cifar-10-batches-py (or being it), a directory holding <split>.npz, or an
             .npz file (used for either split); download=True first fetches and verifies the official archive.
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
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: any other global (code a crafted file would run) is refused."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: a CIFAR-10 batch holds arrays only")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one python-pickle CIFAR-10 batch file."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{path} is not a readable CIFAR-10 batch: {err}") from err
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch: expected a dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 batch: keys {sorted(batch)} lack 'data' and 'labels'")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {got}")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: 'labels' must have shape ({len(data)},), got {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_cifar_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64 or None) of an .npz with `images` (N, 32, 32, 3) uint8."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable .npz file: {err}") from err
    if "images" not in arrays:
        raise DataError(f"{path} lacks the array 'images' (it holds {sorted(arrays)})")
    images, labels = arrays["images"], arrays.get("labels")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f"{path}: 'images' must be uint8 of shape (N, 32, 32, 3), got {images.dtype} {images.shape}")
    if labels is not None and labels.shape != (len(images),):
        raise DataError(f"{path}: 'labels' must have shape ({len(images)},), got {labels.shape}")
    return images.transpose(0, 3, 1, 2), None if labels is None else labels.astype(np.int64)


def load_cifar10(root: str | os.PathLike, split: str = "train", flip: bool = False) -> ImageDataset:
    """CIFAR-10 `split` from `root` (load_dataset explains the layouts): 50000 training or 10000 test images 3x32x32."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if root.is_file():
        if root.suffix != ".npz":
            raise DataError(f"a CIFAR-10 file must be an .npz, got {root}")
        images, labels = _read_cifar_npz(root)
    elif (root / CIFAR10_DIR).is_dir() or (root / "batches.meta").is_file() or any(root.glob("*_batch*")):
        batch_dir = root / CIFAR10_DIR if (root / CIFAR10_DIR).is_dir() else root
        files = [batch_dir / name for name in CIFAR10_BATCHES[split]]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"CIFAR-10 {split} split incomplete in {batch_dir}: missing {', '.join(missing)}")
        parts = [_read_cifar_batch(f) for f in files]
        images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    elif (root / f"{split}.npz").is_file():
        images, labels = _read_cifar_npz(root / f"{split}.npz")
    else:
        raise FileNotFoundError(
            f"no CIFAR-10 {split} data under {root}: expected {CIFAR10_DIR}/, python batch files, or {split}.npz "
            "(download=True fetches the official archive)"
        )
    if len(images) == 0:
        raise DataError(f"CIFAR-10 {split} data under {root} holds no images")
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images)), 256, None if labels is None else torch.from_numpy(labels), flip
    )


def verify_md5(path: str | os.PathLike, md5: str) -> None:
    """Raise DataError unless the file's MD5 digest equals `md5` (hex)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != md5.lower():
        raise DataError(f"md5 mismatch for {path}: expected {md5.lower()}, got {digest.hexdigest()}")


def extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Extract a (gzipped) tar archive into `dest` with tarfile's "data" filter: members whose path or link target
    leaves `dest`, and device files, are refused (DataError) and never written; a leading "/" is stripped, so
    absolute member paths land inside `dest`."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(dest, filter="data")
    except tarfile.TarError as err:
        raise DataError(f"cannot extract {archive} safely: {err}") from err


def download_cifar10(root: str | os.PathLike, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> Path:
    """Fetch the CIFAR-10 python archive from `url` into `root`, verify its md5, extract it; return the batches
    directory root/cifar-10-batches-py. Nothing is fetched when that directory already holds every batch. The
    archive is written under a temporary name and deleted once extracted (or when its md5 is wrong)."""
    root = Path(root)
    batch_dir = root / CIFAR10_DIR
    if all((batch_dir / name).is_file() for names in CIFAR10_BATCHES.values() for name in names):
        return batch_dir
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz.part"
    try:
        with urllib.request.urlopen(url) as response, open(archive, "wb") as f:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
        verify_md5(archive, md5)
        extract_tar(archive, root)
    finally:
        archive.unlink(missing_ok=True)
    if not batch_dir.is_dir():
        raise DataError(f"the archive from {url} did not contain {CIFAR10_DIR}/")
    return batch_dir


# ---- image folders -----------------------------------------------------------------------------------------------
def load_folder(
    root: str | os.PathLike, split: str = "train", image_size: int = 32, channels: int = 3, flip: bool = False
) -> ImageDataset:
    """Every .png/.jpg/.jpeg file (any case, subdirectories included, sorted by path) under root/<split> if that
    directory exists, else under root for split="train". Each image is converted to grey (channels=1) or RGB
    (channels=3), scaled so that its shorter side is image_size and centre-cropped (PIL ImageOps.fit, bicubic).
    Other files are not images and are ignored. No image at all, or an image file that cannot be opened or decoded,
    raises DataError naming the folder or the file."""
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
