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
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, VisionDataset
from torchvision.datasets.utils import calculate_md5, download_url

__all__ = [
    "DATASET_NAMES",
    "SPLITS",
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "DataError",
    "ImageDataset",
    "SafeCIFAR10",
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
CIFAR10_URL = CIFAR10.url  # torchvision's: https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz
CIFAR10_MD5 = CIFAR10.tgz_md5  # of that archive
CIFAR10_DIR = CIFAR10.base_folder  # cifar-10-batches-py
CIFAR10_BATCHES = {"train": [name for name, _ in CIFAR10.train_list], "test": [name for name, _ in CIFAR10.test_list]}
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
def _holds_cifar_batches(root: Path) -> bool:
    """Whether `root` is a CIFAR-10 batch location: it holds cifar-10-batches-py/ or is a batches directory."""
    return (root / CIFAR10_DIR).is_dir() or (root / "batches.meta").is_file() or any(root.glob("*_batch*"))


def _batches_complete(batch_dir: Path) -> bool:
    return all((batch_dir / name).is_file() for names in CIFAR10_BATCHES.values() for name in names)


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


def _unpickle_dict(path: Path) -> dict:
    """The dict a CIFAR-10 python pickle (a batch or batches.meta) holds, keys as str, read by _ArrayUnpickler."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as err:
        raise DataError(f"{path} is not a readable CIFAR-10 file: {err}") from err
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 file: expected a dict, got {type(batch).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one python-pickle CIFAR-10 batch file."""
    batch = _unpickle_dict(path)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 batch: keys {sorted(batch)} lack 'data' and 'labels'")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {got}")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: 'labels' must have shape ({len(data)},), got {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


class SafeCIFAR10(CIFAR10):
    """torchvision.datasets.CIFAR10 with its python-pickle batch files read by a restricted unpickler.

    torchvision reads the batch files with pickle.load, which runs whatever code a crafted file names. This subclass
    reads them (and batches.meta, if present) with an unpickler that admits plain containers and numpy arrays only,
    and checks each batch's shapes, so a hostile or malformed file raises DataError naming it and runs nothing.
    What a caller sees is torchvision's: `data` (N, 32, 32, 3) uint8, `targets`, `classes` (from batches.meta, empty
    without it), `class_to_idx`, __getitem__ -> (PIL image, label), transforms.

    root: torchvision's rule, a directory holding cifar-10-batches-py/, or else the directory holding the batch files
    (data_batch_1..5, test_batch) itself, under any name. The split's batch files must all be there
    (FileNotFoundError naming the missing ones). Unlike torchvision, their MD5 is not compared with the official
    files': re-packed and test batches load, each validated as it is read. download=True runs download_cifar10(root)
    first (torchvision's fetch and archive MD5 check, then a safe extraction).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        train: bool = True,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        download: bool = False,
    ) -> None:
        VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.train = train
        if download:
            self.download()
        batch_dir = Path(self.root) / self.base_folder
        if not batch_dir.is_dir():
            batch_dir = Path(self.root)
        names = CIFAR10_BATCHES["train" if train else "test"]
        missing = [name for name in names if not (batch_dir / name).is_file()]
        if missing:
            split = "train" if train else "test"
            raise FileNotFoundError(f"CIFAR-10 {split} split incomplete in {batch_dir}: missing {', '.join(missing)}")
        parts = [_read_cifar_batch(batch_dir / name) for name in names]
        self.data = np.concatenate([p[0] for p in parts]).transpose(0, 2, 3, 1)  # HWC, as torchvision
        self.targets = np.concatenate([p[1] for p in parts]).tolist()
        meta = batch_dir / self.meta["filename"]
        self.classes = []
        if meta.is_file():
            label_names = _unpickle_dict(meta).get(self.meta["key"], [])
            self.classes = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in label_names]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    def download(self) -> None:
        download_cifar10(self.root, self.url, self.tgz_md5)


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
    """CIFAR-10 `split` from `root` (load_dataset explains the layouts): 50000 training or 10000 test images 3x32x32.
    Python batch files are read by SafeCIFAR10 (restricted unpickling), .npz files with allow_pickle=False."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if root.is_file():
        if root.suffix != ".npz":
            raise DataError(f"a CIFAR-10 file must be an .npz, got {root}")
        images, labels = _read_cifar_npz(root)
    elif _holds_cifar_batches(root):
        cifar = SafeCIFAR10(root, train=split == "train")
        images, labels = cifar.data.transpose(0, 3, 1, 2), np.asarray(cifar.targets, dtype=np.int64)
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
    """Raise DataError unless the file's MD5 digest equals `md5` (hex, any case)."""
    digest = calculate_md5(path)
    if digest != md5.lower():
        raise DataError(f"md5 mismatch for {path}: expected {md5.lower()}, got {digest}")


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
    """torchvision's CIFAR10 download=True, with a safe extraction; returns the batches directory
    root/cifar-10-batches-py.

    Nothing is fetched when that directory already holds every batch file, or when root itself does (root is a
    batches directory, the second root rule of SafeCIFAR10; then root is returned). Otherwise torchvision's download_url
    fetches `url` to root/cifar-10-python.tar.gz and verifies its MD5 against `md5` (an archive already there that
    verifies is used without fetching: the way to install offline). A mismatch raises DataError and the bad archive
    is deleted. The archive is then extracted by extract_tar (tarfile's "data" filter; torchvision's own extraction
    has none) and deleted, unless it was there before and verified.
    """
    root = Path(root)
    batch_dir = root / CIFAR10_DIR
    if _batches_complete(batch_dir):
        return batch_dir
    if _batches_complete(root):
        return root
    archive = root / CIFAR10.filename
    keep = archive.is_file() and calculate_md5(archive) == md5.lower()
    try:
        try:
            download_url(url, os.fspath(root), CIFAR10.filename, md5.lower())
        except RuntimeError as err:  # torchvision: "File not found or corrupted." when the MD5 does not match
            if archive.is_file():
                verify_md5(archive, md5)
            raise DataError(f"cannot download {url} to {archive}: {err}") from err
        except OSError as err:  # urllib.error.URLError and other I/O errors
            raise DataError(f"cannot download {url} to {archive}: {err}") from err
        extract_tar(archive, root)
    finally:
        if not keep:
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
