"""Data sets (training/data.py): pixel map, splits, file layouts, safe download path, and every error path.

CIFAR-10 and image-folder fixtures are tiny files built in tmp_path; nothing touches the network.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pathlib
import pickle
import struct
import tarfile
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from sde_lib import dequantize
from training.cifar10 import CIFAR10_DIR
from training.data import (
    CIFAR10_MD5,
    CIFAR10_URL,
    DataError,
    ImageDataset,
    SafeCIFAR10,
    dataset_levels,
    download_cifar10,
    extract_tar,
    load_dataset,
    verify_md5,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_CIFAR_SAMPLE = ROOT / ".." / "shared" / "data" / "cifar10" / "sample_1k.npz"


# ---- digits --------------------------------------------------------------------------------------------------------
def test_digits_pixels_levels_and_the_float_map():
    ds = load_dataset("digits", split="train")
    assert dataset_levels("digits") == ds.levels == 17
    assert ds.pixels.dtype == torch.uint8 and ds.pixels.shape[1:] == (1, 8, 8)
    assert int(ds.pixels.min()) == 0 and int(ds.pixels.max()) == 16
    x = ds[0]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8)
    # Bin centres of the likelihood's map (docs/math.md §5): x = (n + 1/2) 2/17 - 1, inside [-1, 1].
    all_x = ds.images()
    torch.testing.assert_close(all_x, dequantize(ds.pixels, 17, u=0.5).float(), rtol=0, atol=1e-6)
    assert all_x.min().item() == pytest.approx(-1 + 1 / 17) and all_x.max().item() == pytest.approx(1 - 1 / 17)
    assert torch.equal(torch.stack([ds[i] for i in range(len(ds))]), all_x)
    # The bin of x, floor((x + 1) L / 2), is the integer level again.
    assert torch.equal(((all_x.double() + 1) * 17 / 2).floor().to(torch.uint8), ds.pixels)


def test_digits_split_sizes_partition_stratification_and_determinism():
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    assert (len(train), len(test)) == (1437, 360)
    # Train and test partition the 1797 digits: their images (as a multiset, with labels) are the full set.
    full = load_digits()
    rows = lambda pix, lab: sorted(p.tobytes() + bytes([y]) for p, y in zip(pix.numpy(), lab.numpy()))  # noqa: E731
    both = rows(torch.cat([train.pixels, test.pixels]), torch.cat([train.labels, test.labels]))
    assert both == rows(torch.from_numpy(full.images.astype(np.uint8)[:, None]), torch.from_numpy(full.target))
    # Stratified: every class is 20% of the test split up to rounding (one image).
    counts = np.bincount(full.target, minlength=10)
    assert np.all(np.abs(np.bincount(test.labels.numpy(), minlength=10) - 0.2 * counts) <= 1)
    # The split is a function of the seed alone.
    assert torch.equal(load_dataset("digits", split="test", seed=0).pixels, test.pixels)
    assert not torch.equal(load_dataset("digits", split="test", seed=1).pixels, test.pixels)


# ---- CIFAR-10 fixtures ---------------------------------------------------------------------------------------------
def random_batch(n: int, seed: int) -> dict:
    """A python-pickle CIFAR-10 batch as the official files hold it: bytes keys, (n, 3072) uint8 rows."""
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"fixture",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"f%d.png" % i for i in range(n)],
    }


def write_batches(batch_dir: pathlib.Path, sizes=(2, 2, 2, 2, 2), test_size=3) -> dict[str, dict]:
    batch_dir.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i + 1}" for i in range(len(sizes))] + ["test_batch"]
    batches = {name: random_batch(n, seed) for seed, (name, n) in enumerate(zip(names, [*sizes, test_size]))}
    for name, batch in batches.items():
        (batch_dir / name).write_bytes(pickle.dumps(batch, protocol=2))
    return batches


def test_cifar10_python_batches_layout_labels_and_levels(tmp_path):
    batches = write_batches(tmp_path / CIFAR10_DIR)
    train = load_dataset("cifar10", root=tmp_path, split="train")
    test = load_dataset("cifar10", root=tmp_path / CIFAR10_DIR, split="test")  # the batches dir itself also works
    assert (len(train), len(test)) == (10, 3) and train.levels == dataset_levels("cifar10") == 256
    assert train.image_shape == (3, 32, 32) and train[0].shape == (3, 32, 32)
    # Official row layout: 1024 red, 1024 green, 1024 blue values, each 32x32 row-major.
    row = batches["data_batch_2"][b"data"][1]
    img = train.pixels[3].numpy()
    for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 30), (0, 17, 3)]:
        assert img[c, h, w] == row[c * 1024 + h * 32 + w]
    expected = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert train.labels.tolist() == expected
    assert test.labels.tolist() == batches["test_batch"][b"labels"]
    assert -1 < train.images().min() and train.images().max() < 1


def test_cifar10_npz_file_and_split_npz(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "test.npz", images=images, labels=np.arange(5))
    for root in (tmp_path / "test.npz", tmp_path):
        ds = load_dataset("cifar10", root=root, split="test")
        assert len(ds) == 5 and ds.labels.tolist() == list(range(5))
        assert torch.equal(ds.pixels, torch.from_numpy(images).permute(0, 3, 1, 2))  # (N, H, W, C) -> (N, C, H, W)
    with pytest.raises(FileNotFoundError, match="train.npz"):
        load_dataset("cifar10", root=tmp_path, split="train")


@pytest.mark.skipif(not SHARED_CIFAR_SAMPLE.is_file(), reason="shared CIFAR-10 sample not present")
def test_shared_cifar10_sample_loads():
    ds = load_dataset("cifar10", root=SHARED_CIFAR_SAMPLE, split="test")
    assert len(ds) == 1000 and ds.image_shape == (3, 32, 32)
    assert set(ds.labels.tolist()) == set(range(10))


def test_horizontal_flips_mirror_half_the_time_and_follow_the_torch_seed(tmp_path):
    write_batches(tmp_path / CIFAR10_DIR)
    ds = load_dataset("cifar10", root=tmp_path, split="test", flip=True)
    plain = ds.images()[0]
    torch.manual_seed(0)
    draws = [ds[0] for _ in range(400)]
    flipped = [torch.equal(d, plain.flip(-1)) for d in draws]
    assert all(f or torch.equal(d, plain) for f, d in zip(flipped, draws))
    # Binomial(400, 1/2): standard deviation 0.025 in the fraction; 0.1 is four of them.
    assert abs(np.mean(flipped) - 0.5) < 0.1
    torch.manual_seed(0)
    assert all(torch.equal(ds[0], d) for d in draws[:20])


def test_cifar10_bad_data_errors(tmp_path):
    batch_dir = tmp_path / CIFAR10_DIR
    write_batches(batch_dir)
    (batch_dir / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_dataset("cifar10", root=tmp_path, split="test")

    bad = random_batch(2, 0)
    bad[b"data"] = bad[b"data"][:, :100]
    (batch_dir / "data_batch_3").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_3.*\(N, 3072\)"):
        load_dataset("cifar10", root=tmp_path, split="train")

    bad = random_batch(2, 0)
    bad[b"labels"] = [1, 2, 3]
    (batch_dir / "data_batch_3").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match="labels"):
        load_dataset("cifar10", root=tmp_path, split="train")

    (batch_dir / "data_batch_3").write_bytes(pickle.dumps(random_batch(2, 0), protocol=2)[:50])  # truncated
    with pytest.raises(ValueError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path, split="train")

    with pytest.raises(FileNotFoundError, match="no CIFAR-10"):
        load_dataset("cifar10", root=tmp_path / "empty_dir_that_is_missing", split="train")
    with pytest.raises(ValueError, match="image_size=32"):
        load_dataset("cifar10", root=tmp_path, image_size=64)
    with pytest.raises(ValueError, match="needs root"):
        load_dataset("cifar10")


class _RunsCode:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_batch_is_refused_without_running_its_code(tmp_path):
    batch_dir = tmp_path / CIFAR10_DIR
    write_batches(batch_dir)
    marker = tmp_path / "ran"
    evil = random_batch(2, 0)
    evil[b"labels"] = _RunsCode(marker)
    (batch_dir / "test_batch").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(ValueError, match="refusing to load global"):
        load_dataset("cifar10", root=tmp_path, split="test")
    assert not marker.exists()


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"pictures": np.zeros((2, 32, 32, 3), np.uint8)}, "lacks the array 'images'"),
        ({"images": np.zeros((2, 3, 32, 32), np.uint8)}, r"\(N, 32, 32, 3\)"),
        ({"images": np.zeros((2, 32, 32, 3), np.float32)}, "uint8"),
        ({"images": np.zeros((2, 32, 32, 3), np.uint8), "labels": np.zeros(3)}, "labels"),
        ({"images": np.zeros((0, 32, 32, 3), np.uint8)}, "no images"),
    ],
)
def test_bad_npz_files_are_refused(tmp_path, arrays, match):
    np.savez(tmp_path / "data.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_dataset("cifar10", root=tmp_path / "data.npz")


def test_a_non_npz_file_is_refused(tmp_path):
    (tmp_path / "data.npz").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_dataset("cifar10", root=tmp_path / "data.npz")
    (tmp_path / "data.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="must be an .npz"):
        load_dataset("cifar10", root=tmp_path / "data.bin")


# ---- CIFAR-10 through torchvision ----------------------------------------------------------------------------------
def _py2_str(b: bytes) -> bytes:
    """A Python 2 str in a protocol-2 pickle: SHORT_BINSTRING or BINSTRING."""
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _py2_int(n: int) -> bytes:
    return b"K" + bytes([n]) if 0 <= n < 256 else b"J" + struct.pack("<i", n)


def py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """The bytes Python 2's cPickle.dump(batch, f, 2) writes for an official batch: str keys (which Python 3 reads as
    bytes or latin-1 text, not as the protocol-2 `_codecs.encode` calls of the fixtures above), numpy's _reconstruct
    of a uint8 (N, 3072) array, a list of int labels."""
    n, m = data.shape
    dtype = (
        b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R("  # dtype('u1', 0, 1)
        + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb"  # its state
    )  # fmt: skip
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R("
        + _py2_int(1) + _py2_int(n) + _py2_int(m) + b"\x86" + dtype + b"\x89" + _py2_str(data.tobytes()) + b"tb"
    )  # fmt: skip
    items = [
        (b"batch_label", _py2_str(b"training batch 1 of 5")),
        (b"labels", b"](" + b"".join(_py2_int(y) for y in labels) + b"e"),
        (b"data", array),
        (b"filenames", b"](" + _py2_str(b"f.png") * n + b"e"),
    ]
    return b"\x80\x02}(" + b"".join(_py2_str(k) + v for k, v in items) + b"u."


def test_python2_pickled_batches_as_the_official_files_hold_them_load(tmp_path):
    rng = np.random.default_rng(0)
    batch_dir = tmp_path / CIFAR10_DIR
    batch_dir.mkdir()
    expected = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data, labels = rng.integers(0, 256, (2 + i, 3072), dtype=np.uint8), rng.integers(0, 10, 2 + i).tolist()
        (batch_dir / name).write_bytes(py2_batch(data, labels))
        expected[name] = data, labels
    assert (
        pickle.loads((batch_dir / "test_batch").read_bytes(), encoding="latin1")["labels"] == expected["test_batch"][1]
    )
    test = load_dataset("cifar10", root=tmp_path, split="test")
    assert np.array_equal(test.pixels.numpy().reshape(-1, 3072), expected["test_batch"][0])
    assert test.labels.tolist() == expected["test_batch"][1]
    train = load_dataset("cifar10", root=batch_dir, split="train")
    assert len(train) == 2 + 3 + 4 + 5 + 6
    assert np.array_equal(train.pixels[:2].numpy().reshape(-1, 3072), expected["data_batch_1"][0])


def test_safe_cifar10_is_a_torchvision_cifar10(tmp_path):
    import torchvision

    batches = write_batches(tmp_path / CIFAR10_DIR)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {b"label_names": [n.encode() for n in names], b"num_cases_per_batch": 10000, b"num_vis": 3072}
    (tmp_path / CIFAR10_DIR / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    ds = SafeCIFAR10(tmp_path, train=False)
    assert isinstance(ds, torchvision.datasets.CIFAR10)
    # torchvision's attributes: data (N, H, W, C) uint8, targets a list, classes from batches.meta.
    row = batches["test_batch"][b"data"][2]
    assert ds.data.shape == (3, 32, 32, 3) and ds.data.dtype == np.uint8
    assert np.array_equal(ds.data[2], row.reshape(3, 32, 32).transpose(1, 2, 0))
    assert ds.targets == batches["test_batch"][b"labels"] and ds.classes == names and ds.class_to_idx["cat"] == 3
    image, label = ds[2]
    assert np.array_equal(np.asarray(image), ds.data[2]) and label == ds.targets[2]
    ds = SafeCIFAR10(tmp_path / CIFAR10_DIR, train=True, transform=torchvision.transforms.PILToTensor())
    assert len(ds) == 10 and torch.equal(ds[3][0], load_dataset("cifar10", root=tmp_path).pixels[3])
    (tmp_path / CIFAR10_DIR / "batches.meta").unlink()
    assert SafeCIFAR10(tmp_path, train=False).classes == []  # batches.meta is optional


def test_batches_directory_under_any_name_and_the_root_rule(tmp_path):
    batches = write_batches(tmp_path / "my_cifar")
    for root in (tmp_path / "my_cifar", str(tmp_path / "my_cifar")):
        assert load_dataset("cifar10", root=root, split="test").labels.tolist() == batches["test_batch"][b"labels"]
    # A complete batches directory given as root is not fetched again into root/cifar-10-batches-py.
    unreachable = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # the discard port: refused if ever tried
    assert download_cifar10(tmp_path / "my_cifar", url=unreachable) == tmp_path / "my_cifar"
    assert not (tmp_path / "my_cifar" / CIFAR10_DIR).exists()
    # cifar-10-batches-py/ under root wins over batch files beside it.
    inner = write_batches(tmp_path / "my_cifar" / CIFAR10_DIR, test_size=4)
    assert (
        load_dataset("cifar10", root=tmp_path / "my_cifar", split="test").labels.tolist()
        == (inner["test_batch"][b"labels"])
    )


def test_torchvisions_constants_are_the_official_archive():
    assert CIFAR10_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a" and CIFAR10_DIR == "cifar-10-batches-py"


def test_crafted_pickles_are_refused_everywhere_without_running_code(tmp_path):
    marker = tmp_path / "ran"
    evil = pickle.dumps(_RunsCode(marker), protocol=2)
    # In batches.meta (which torchvision would unpickle too), with the batches directory under another name.
    write_batches(tmp_path / "a" / CIFAR10_DIR)
    (tmp_path / "a" / CIFAR10_DIR / "batches.meta").write_bytes(evil)
    with pytest.raises(DataError, match=r"batches\.meta.*refusing to load global"):
        SafeCIFAR10(tmp_path / "a", train=False)
    write_batches(tmp_path / "b")
    (tmp_path / "b" / "data_batch_5").write_bytes(evil)
    with pytest.raises(DataError, match=r"data_batch_5.*refusing to load global"):
        load_dataset("cifar10", root=tmp_path / "b", split="train")
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):  # whole-file payload, every protocol
        (tmp_path / "b" / "test_batch").write_bytes(pickle.dumps({b"data": _RunsCode(marker)}, protocol=protocol))
        with pytest.raises(DataError, match="test_batch"):
            load_dataset("cifar10", root=tmp_path / "b", split="test")
    assert not marker.exists()


def test_cifar_data_errors_are_one_line_data_errors(tmp_path):
    write_batches(tmp_path / CIFAR10_DIR)
    (tmp_path / CIFAR10_DIR / "data_batch_1").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(DataError, match="data_batch_1.*expected a dict") as err:
        load_dataset("cifar10", root=tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / CIFAR10_DIR / "data_batch_1").write_bytes(pickle.dumps({b"data": 1}, protocol=2))
    with pytest.raises(DataError, match="data_batch_1.*lack 'data' and 'labels'"):
        load_dataset("cifar10", root=tmp_path)


# ---- md5, extraction and download ----------------------------------------------------------------------------------
def tar_gz(path: pathlib.Path, members: dict[str, bytes]) -> str:
    """Write a gzipped tar of regular files {name: content}; return its md5."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_verify_md5_accepts_the_right_digest_only(tmp_path):
    f = tmp_path / "blob"
    f.write_bytes(b"abc")
    verify_md5(f, "900150983cd24fb0d6963f7d28e17f72")  # RFC 1321 test suite: MD5("abc")
    verify_md5(f, "900150983CD24FB0D6963F7D28E17F72")
    with pytest.raises(ValueError, match="md5 mismatch"):
        verify_md5(f, "0" * 32)


def test_extract_tar_writes_members_and_refuses_escaping_ones(tmp_path):
    good = tmp_path / "good.tar.gz"
    tar_gz(good, {"d/a.txt": b"A", "d/b/c.txt": b"C"})
    extract_tar(good, tmp_path / "out")
    assert (tmp_path / "out" / "d" / "b" / "c.txt").read_bytes() == b"C"

    evil = tmp_path / "evil.tar.gz"
    tar_gz(evil, {"../escaped.txt": b"X"})
    with pytest.raises(ValueError, match="cannot extract"):
        extract_tar(evil, tmp_path / "out_evil")
    assert not (tmp_path / "escaped.txt").exists()

    absolute = tmp_path / "absolute.tar.gz"
    name = f"{tmp_path.name}_absolute_escaped.txt"
    tar_gz(absolute, {f"/{name}": b"X"})
    extract_tar(absolute, tmp_path / "out_abs")  # the leading "/" is stripped: the file lands inside dest
    assert (tmp_path / "out_abs" / name).read_bytes() == b"X" and not pathlib.Path(f"/{name}").exists()

    link = tmp_path / "link.tar.gz"
    with tarfile.open(link, "w:gz") as tar:
        info = tarfile.TarInfo("d/passwd")
        info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValueError, match="cannot extract"):
        extract_tar(link, tmp_path / "out_link")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve(tmp_path):
    """url(path): an http://127.0.0.1 URL of a file under tmp_path, served by a local server for the test's duration
    (the download code path without a network; torchvision's download_url reads no file:// URLs)."""
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield lambda path: f"http://127.0.0.1:{server.server_port}/{path.relative_to(tmp_path).as_posix()}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_fetches_verifies_and_extracts_an_archive(tmp_path, serve):
    source = tmp_path / "source"
    batches = write_batches(source / CIFAR10_DIR)
    members = {f"{CIFAR10_DIR}/{name}": (source / CIFAR10_DIR / name).read_bytes() for name in batches}
    archive = tmp_path / "cifar.tar.gz"
    md5 = tar_gz(archive, members)
    url = serve(archive)

    with pytest.raises(ValueError, match="md5 mismatch"):
        download_cifar10(tmp_path / "data", url=url, md5="0" * 32)
    assert not (tmp_path / "data" / CIFAR10_DIR).exists() and list((tmp_path / "data").iterdir()) == []

    batch_dir = download_cifar10(tmp_path / "data", url=url, md5=md5)
    assert batch_dir == tmp_path / "data" / CIFAR10_DIR
    assert list((tmp_path / "data").iterdir()) == [batch_dir]  # the archive is gone
    ds = load_dataset("cifar10", root=tmp_path / "data", split="test")
    assert ds.labels.tolist() == batches["test_batch"][b"labels"]
    # Already complete: nothing is fetched (this URL does not exist), also through load_dataset(download=True).
    assert download_cifar10(tmp_path / "data", url=(tmp_path / "missing").as_uri(), md5=md5) == batch_dir
    assert len(load_dataset("cifar10", root=tmp_path / "data", split="train", download=True)) == 10


def test_download_of_an_archive_without_the_batches_directory_fails(tmp_path, serve):
    archive = tmp_path / "other.tar.gz"
    md5 = tar_gz(archive, {"something_else/readme.txt": b"hi"})
    with pytest.raises(ValueError, match=CIFAR10_DIR):
        download_cifar10(tmp_path / "data", url=serve(archive), md5=md5)


def test_download_errors_are_one_line_and_leave_no_archive(tmp_path, serve):
    source = tmp_path / "source"
    write_batches(source / CIFAR10_DIR)
    archive = tmp_path / "cifar.tar.gz"
    md5 = tar_gz(archive, {f"{CIFAR10_DIR}/{p.name}": p.read_bytes() for p in (source / CIFAR10_DIR).iterdir()})
    data = tmp_path / "data"
    # Unreachable (HTTP 404): DataError naming the URL.
    with pytest.raises(DataError, match="cannot download .*missing.tar.gz") as err:
        download_cifar10(data, url=serve(tmp_path / "missing.tar.gz"), md5=md5)
    assert "\n" not in str(err.value) and list(data.iterdir()) == []
    # An archive whose members escape root, with the right md5: refused by the safe extraction, nothing written.
    evil = tmp_path / "evil.tar.gz"
    evil_md5 = tar_gz(evil, {f"{CIFAR10_DIR}/test_batch": b"x", "../escaped.txt": b"X"})
    with pytest.raises(DataError, match="cannot extract"):
        download_cifar10(data, url=serve(evil), md5=evil_md5)
    assert not (tmp_path / "escaped.txt").exists() and not (data / "cifar-10-python.tar.gz").exists()
    # A corrupt archive left in root is re-fetched, verified and extracted (over the partial extraction), then deleted.
    (data / "cifar-10-python.tar.gz").write_bytes(b"partial")
    assert download_cifar10(data, url=serve(archive), md5=md5.upper()) == data / CIFAR10_DIR
    assert list(data.iterdir()) == [data / CIFAR10_DIR]


def test_an_archive_placed_in_root_installs_offline_and_is_kept(tmp_path, serve):
    source = tmp_path / "source"
    batches = write_batches(source / CIFAR10_DIR)
    data = tmp_path / "data"
    data.mkdir()
    placed = data / "cifar-10-python.tar.gz"  # torchvision's archive name
    md5 = tar_gz(placed, {f"{CIFAR10_DIR}/{name}": (source / CIFAR10_DIR / name).read_bytes() for name in batches})
    assert download_cifar10(data, url=serve(tmp_path / "nothing_here"), md5=md5) == data / CIFAR10_DIR
    assert placed.is_file() and sorted(p.name for p in data.iterdir()) == [CIFAR10_DIR, placed.name]
    assert load_dataset("cifar10", root=data, split="test").labels.tolist() == batches["test_batch"][b"labels"]


# ---- image folders -------------------------------------------------------------------------------------------------
def save(path: pathlib.Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_centre_crops_resizes_and_converts_channels(tmp_path):
    # 12 wide x 8 high with distinct columns: fitting to 8x8 keeps columns 2..9 exactly (no resampling needed).
    wide = np.tile(np.arange(0, 240, 20, dtype=np.uint8)[None, :], (8, 1))
    save(tmp_path / "a_wide.png", wide)
    save(tmp_path / "b_const_rgb.jpg", np.full((20, 20, 3), (200, 100, 50), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    grey = load_dataset("folder", root=tmp_path, image_size=8, channels=1)
    assert len(grey) == 2 and grey.image_shape == (1, 8, 8) and grey.levels == 256 and grey.labels is None
    assert np.array_equal(grey.pixels[0, 0].numpy(), wide[:, 2:10])
    # PIL's ITU-R 601-2 luma L = (299 R + 587 G + 114 B) / 1000 = 125.5 for a constant image (JPEG: +-2).
    assert np.abs(grey.pixels[1].numpy().astype(float) - 125.5).max() <= 2.5
    rgb = load_dataset("folder", root=tmp_path, image_size=8, channels=3)
    assert rgb.image_shape == (3, 8, 8)
    assert torch.equal(rgb.pixels[0, 0], rgb.pixels[0, 2])  # a grey image has equal R, G, B
    assert np.abs(rgb.pixels[1].numpy().reshape(3, -1).mean(1) - (200, 100, 50)).max() <= 3
    assert -1 < rgb[1].min() and rgb[1].max() < 1 and rgb[1].dtype == torch.float32


def test_folder_default_shape_and_split_directories(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            save(tmp_path / split / "sub" / f"{i}.png", np.full((40, 40, 3), 10 * i, np.uint8))
    train = load_dataset("folder", root=tmp_path)
    assert len(train) == 3 and train.image_shape == (3, 32, 32)  # the cifar10 model's shape by default
    assert [int(train.pixels[i].float().mean()) for i in range(3)] == [0, 10, 20]  # sorted by path
    assert len(load_dataset("folder", root=tmp_path, split="test")) == 2


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PNG/JPEG images"):
        load_dataset("folder", root=tmp_path / "empty", image_size=8, channels=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("folder", root=tmp_path / "missing", image_size=8, channels=1)
    with pytest.raises(FileNotFoundError, match="no test split"):
        load_dataset("folder", root=tmp_path / "empty", split="test", image_size=8, channels=1)
    only_test = tmp_path / "only_test"
    save(only_test / "test" / "0.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(FileNotFoundError, match="no train/"):
        load_dataset("folder", root=only_test, image_size=8, channels=1)

    bad = tmp_path / "bad"
    save(bad / "0.png", np.zeros((8, 8), np.uint8))
    (bad / "1.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="1.png"):
        load_dataset("folder", root=bad, image_size=8, channels=1)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(buf, format="PNG")
    (bad / "1.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # truncated
    with pytest.raises(ValueError, match="1.png"):
        load_dataset("folder", root=bad, image_size=8, channels=1)

    with pytest.raises(ValueError, match="channels"):
        load_dataset("folder", root=bad, image_size=8, channels=2)
    with pytest.raises(ValueError, match="needs root"):
        load_dataset("folder")


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def test_a_folder_without_images_is_one_line_naming_it(tmp_path):
    for folder in (tmp_path / "empty", tmp_path / "other_files"):
        folder.mkdir()
    (tmp_path / "other_files" / "readme.txt").write_text("no\nimages\n")
    (tmp_path / "other_files" / "x.gif").write_bytes(png_bytes(np.zeros((8, 8), np.uint8), "GIF"))
    (tmp_path / "other_files" / "dir.png").mkdir()  # a directory is not an image file
    for folder in (tmp_path / "empty", tmp_path / "other_files"):
        with pytest.raises(DataError) as err:
            load_dataset("folder", root=folder)
        assert str(err.value) == f"no PNG/JPEG images (.png, .jpg, .jpeg) under {folder}"


def test_a_corrupt_or_unreadable_image_is_one_line_naming_the_file(tmp_path):
    folder = tmp_path / "imgs"
    save(folder / "0.png", np.zeros((8, 8), np.uint8))
    bad = folder / "sub" / "1.png"
    bad.parent.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # incompressible
    png, jpeg = png_bytes(noise), png_bytes(noise, "JPEG")
    cases = {
        "garbage": lambda: bad.write_bytes(os.urandom(64)),
        "empty": lambda: bad.write_bytes(b""),
        "a PNG cut short": lambda: bad.write_bytes(png[: len(png) // 2]),
        "a JPEG cut short": lambda: bad.write_bytes(jpeg[: len(jpeg) // 2]),
        "a dangling link": lambda: bad.symlink_to(tmp_path / "gone.png"),
    }
    for case, make in cases.items():
        bad.unlink(missing_ok=True)
        make()
        with pytest.raises(DataError, match=f"^cannot read image {bad}: ") as err:
            load_dataset("folder", root=folder, image_size=8, channels=1)
        assert "\n" not in str(err.value), case


def test_every_corruption_of_a_png_or_jpeg_loads_or_is_a_data_error(tmp_path):
    """PIL raises OSError, ValueError, SyntaxError (a broken PNG chunk) or EOFError for damaged files: all of them
    are DataError naming the file, none escapes as another type."""
    rng = np.random.default_rng(0)
    originals = {
        "x.png": png_bytes(rng.integers(0, 256, (8, 8), dtype=np.uint8)),
        "x.jpg": png_bytes(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "JPEG"),
    }
    errors = 0
    for name, original in originals.items():
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        for i in range(0, len(original), 1 if name.endswith("png") else 5):
            for value in (original[i] ^ 0xFF, 0):
                (folder / name).write_bytes(original[:i] + bytes([value]) + original[i + 1 :])
                try:
                    load_dataset("folder", root=folder, image_size=4, channels=3)
                except DataError as err:
                    assert str(err).startswith(f"cannot read image {folder / name}: ")
                    errors += 1
    assert errors > 50


def test_data_error_folds_its_message_into_one_line():
    err = DataError("cannot read x.png:\n  broken\r\n stream\t here")
    assert isinstance(err, ValueError) and str(err) == "cannot read x.png: broken stream here"
    assert pickle.loads(pickle.dumps(err)).args == err.args  # crosses DataLoader worker processes intact


# ---- the API -------------------------------------------------------------------------------------------------------
def test_load_dataset_argument_errors():
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="unknown data set"):
        dataset_levels("mnist")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="validation")
    with pytest.raises(ValueError, match="image_size=8"):
        load_dataset("digits", image_size=32)
    with pytest.raises(ValueError, match="channels=1"):
        load_dataset("digits", channels=3)
    with pytest.raises(ValueError, match="root must be None"):
        load_dataset("digits", root="somewhere")
    with pytest.raises(ValueError, match="download applies to cifar10 only"):
        load_dataset("digits", download=True)


def test_image_dataset_validates_its_pixels():
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 8, 8), 256)
    with pytest.raises(ValueError, match="0..16"):
        ImageDataset(torch.full((2, 1, 8, 8), 17, dtype=torch.uint8), 17)
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), 256, labels=torch.zeros(3))
