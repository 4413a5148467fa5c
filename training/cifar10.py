"""CIFAR-10 through torchvision.datasets.CIFAR10 (its URL, archive MD5, file names and download), with two guards
torchvision lacks: batch files are unpickled by a restricted unpickler (SafeCIFAR10) and the archive is extracted
with tarfile's "data" filter (extract_tar). Also the .npz layout (images (N, 32, 32, 3) uint8, labels)."""

from __future__ import annotations

import os
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, VisionDataset
from torchvision.datasets.utils import calculate_md5, download_url

from .image_dataset import SPLITS, DataError, ImageDataset

__all__ = ["CIFAR10_URL", "CIFAR10_MD5", "SafeCIFAR10", "load_cifar10", "download_cifar10", "verify_md5", "extract_tar"]

CIFAR10_URL = CIFAR10.url  # torchvision's: https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz
CIFAR10_MD5 = CIFAR10.tgz_md5  # of that archive
CIFAR10_DIR = CIFAR10.base_folder  # cifar-10-batches-py
CIFAR10_BATCHES = {"train": [name for name, _ in CIFAR10.train_list], "test": [name for name, _ in CIFAR10.test_list]}


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
