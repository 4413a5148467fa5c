"""Metrics of evaluation/: precision/recall, Frechet distance, clean-fid wiring, the digits feature space."""

import math
import pathlib
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import evaluation
from evaluation import digits_classifier, knn_precision_recall

# clean-fid's frechet_distance passes scipy's deprecated sqrtm(disp=...) argument.
pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")

# ---------------------------------------------------------------- precision / recall


def test_identical_sets_have_precision_and_recall_one():
    x = torch.randn(60, 5, generator=torch.Generator().manual_seed(0))
    assert evaluation.precision_recall(x, x.clone()) == (1.0, 1.0)


def test_far_apart_sets_have_precision_and_recall_zero():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(50, 4, generator=g), torch.randn(40, 4, generator=g) + 100.0
    assert evaluation.precision_recall(real, fake) == (0.0, 0.0)


def test_hand_checked_2d_case():
    # Real: unit-square corners and an outlier at (-20, 0). With k = 3 each corner's radius is sqrt(2)
    # (neighbours at 1, 1, sqrt 2); the outlier's is |(-20, 0) - (1, 0)| = 21 (after 20 and sqrt(401)).
    real = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-20.0, 0.0]])
    # Fake: (0.5, 0.5) is inside the corners' balls, (2.4, 0) is 1.4 <= sqrt 2 from (1, 0); (3, 0) is 2 from
    # (1, 0) and 23 from the outlier (> 21); (10, 10) is far from all. Precision = 2/4.
    fake = torch.tensor([[0.5, 0.5], [2.4, 0.0], [3.0, 0.0], [10.0, 10.0]])
    r_real = evaluation.knn_radii(real, k=3)
    torch.testing.assert_close(r_real, torch.tensor([2**0.5] * 4 + [21.0], dtype=torch.float64))
    # Fake radii (k = 3 of 4 points = the farthest other point): |(0.5,0.5)-(10,10)| = sqrt(180.5),
    # |(2.4,0)-(10,10)| = sqrt(157.76), |(3,0)-(10,10)| = sqrt(149), and (10,10)'s farthest is (0.5,0.5).
    torch.testing.assert_close(
        evaluation.knn_radii(fake, k=3),
        torch.tensor([180.5, 157.76, 149.0, 180.5], dtype=torch.float64).sqrt(),
    )
    # Recall: every corner is within 0.71 of (0.5, 0.5); the outlier is 20.5 > sqrt(180.5) = 13.4 from
    # (0.5, 0.5) and farther from the others. Recall = 4/5.
    p, r = evaluation.precision_recall(real, fake, k=3)
    assert p == 0.5 and r == 0.8


def test_blocked_coverage_matches_a_loop(monkeypatch):
    monkeypatch.setattr(knn_precision_recall, "BLOCK", 7)  # several row blocks, with a ragged last one
    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(40, 3, generator=g, dtype=torch.float64), 1.3 * torch.randn(33, 3, generator=g).double()
    d_rr = np.linalg.norm(real.numpy()[:, None] - real.numpy()[None], axis=-1)
    radii = np.sort(d_rr, axis=1)[:, 3]  # column 0 is the point itself
    torch.testing.assert_close(evaluation.knn_radii(real, 3), torch.from_numpy(radii))
    d_fr = np.linalg.norm(fake.numpy()[:, None] - real.numpy()[None], axis=-1)
    expected = np.mean([any(d_fr[i, j] <= radii[j] for j in range(40)) for i in range(33)])
    assert evaluation.manifold_coverage(real, torch.from_numpy(radii), fake) == pytest.approx(expected, abs=0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: evaluation.knn_radii(torch.zeros(3, 2), k=3), "k must lie"),
        (lambda: evaluation.precision_recall(torch.zeros(5, 2), torch.zeros(5, 3)), "dimensions differ"),
        (lambda: evaluation.knn_radii(torch.zeros(5), k=1), "feature matrix"),
        (lambda: evaluation.frechet_distance_of_features(np.zeros((1, 2)), np.zeros((4, 2))), "n >= 2"),
        (lambda: evaluation.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3)), "shapes"),
    ],
)
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- Frechet distance


def test_frechet_distance_of_two_gaussians_matches_the_closed_form():
    # 2x2: tr sqrt(M) = sqrt(l1) + sqrt(l2) = sqrt(tr M + 2 sqrt(det M)) for M = S1 S2 (positive eigenvalues).
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.0])
    s1 = np.array([[2.0, 0.6], [0.6, 1.0]])
    s2 = np.array([[0.5, -0.2], [-0.2, 3.0]])  # does not commute with s1
    m = s1 @ s2
    closed = (
        np.sum((mu1 - mu2) ** 2)
        + np.trace(s1)
        + np.trace(s2)
        - 2 * math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    )
    assert evaluation.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed, rel=1e-10)
    # Commuting (diagonal) covariances: ||mu1 - mu2||^2 + sum (sqrt a_i - sqrt b_i)^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    assert evaluation.frechet_distance(np.zeros(3), np.diag(a), np.ones(3), np.diag(b)) == pytest.approx(3 + 1 + 0 + 4)


def test_gaussian_fit_is_the_sample_mean_and_unbiased_covariance():
    x = np.random.default_rng(3).normal(size=(30, 4))
    mu, cov = evaluation.gaussian_fit(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(cov, (x - mu).T @ (x - mu) / 29)


# ---------------------------------------------------------------- clean-fid with an injected extractor


def pooled_features(batch: torch.Tensor) -> torch.Tensor:
    """A small fixed extractor: 4x4 average pooling of the grey image, (B, 16)."""
    return torch.nn.functional.adaptive_avg_pool2d(batch.float().mean(dim=1, keepdim=True), 4).flatten(1)


def write_folder(folder: pathlib.Path, images: np.ndarray) -> pathlib.Path:
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img, mode="RGB").save(folder / f"{i:04d}.png")
    return folder


def read_folder(folder: pathlib.Path) -> torch.Tensor:
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory):
    rng = np.random.default_rng(4)
    root = tmp_path_factory.mktemp("fid")
    a = rng.integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    b = np.clip(rng.normal(150, 40, size=(40, 8, 8, 3)), 0, 255).astype(np.uint8)
    return write_folder(root / "a", a), write_folder(root / "b", b)


def test_fid_through_cleanfid_equals_the_frechet_distance_of_the_same_features(two_folders):
    a, b = two_folders
    fid = evaluation.fid_folders(a, b, feature_extractor=pooled_features, native_size=True)
    direct = evaluation.frechet_distance_of_features(pooled_features(read_folder(a)), pooled_features(read_folder(b)))
    assert direct > 100  # the folders differ (mean grey 127.5 vs about 150), so this compares a real number
    assert fid == pytest.approx(direct, rel=1e-6)  # clean-fid averages its float32 features in float32
    assert evaluation.fid_folders(a, a, feature_extractor=pooled_features, native_size=True) == pytest.approx(
        0, abs=1e-6 * direct
    )


def test_compare_folders_gives_fid_kid_precision_recall_of_the_same_features(two_folders):
    a, b = two_folders
    out = evaluation.compare_folders(b, a, feature_extractor=pooled_features, native_size=True)
    fa, fb = pooled_features(read_folder(a)).double(), pooled_features(read_folder(b)).double()
    assert out["fid"] == pytest.approx(evaluation.frechet_distance_of_features(fb, fa), rel=1e-12)
    assert (out["precision"], out["recall"]) == evaluation.precision_recall(fa, fb)
    # KID: both folders hold n = 40 images, so each of clean-fid's subsets (m = min(n1, n2) points, drawn
    # without replacement) is a permutation of the whole set, and KID is the unbiased MMD^2 of the full sets
    # with the kernel k(x, y) = (x.y / d + 1)^3.
    d, n = fa.shape[1], len(fa)
    kaa, kbb, kab = (fa @ fa.T / d + 1) ** 3, (fb @ fb.T / d + 1) ** 3, (fa @ fb.T / d + 1) ** 3
    exact = float((kaa.sum() - kaa.trace() + kbb.sum() - kbb.trace()) / (n * (n - 1)) - 2 * kab.mean())
    assert out["kid"] == pytest.approx(exact, rel=1e-9)
    assert exact > 0.05 * kab.mean()  # different distributions: clearly positive


def test_kid_of_a_set_with_itself_is_minus_twice_the_diagonal_excess_over_m():
    # Unbiased MMD^2 of X against the same X: 2 sum_{i != j} k / (m (m - 1)) - 2 sum_{i,j} k / m^2
    # = -2 (mean_i k_ii - mean_{i != j} k_ij) / m, slightly negative (the self-similarity is left out).
    m, d = 30, 6
    f = np.random.default_rng(5).normal(size=(m, d))
    k = (f @ f.T / d + 1) ** 3
    exact = -2 * (np.trace(k) / m - (k.sum() - np.trace(k)) / (m * (m - 1))) / m
    assert evaluation.kernel_inception_distance(f, f) == pytest.approx(exact, rel=1e-9)


def test_offline_inception_gives_one_clear_error(two_folders, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    import cleanfid.features
    import cleanfid.inception_torchscript

    monkeypatch.setattr(cleanfid.inception_torchscript, "check_download_inception", no_network)
    monkeypatch.setattr(cleanfid.features, "check_download_url", no_network)
    a, b = two_folders
    with pytest.raises(evaluation.InceptionUnavailableError, match="Inception-v3 weights") as err:
        evaluation.fid_folders(a, b)
    message = str(err.value)
    assert "\n" not in message and "internet" in message and "local feature extractor" in message
    with pytest.raises(evaluation.InceptionUnavailableError, match="reference statistics cifar10/32/train"):
        evaluation.compare_to_reference(a, "cifar10", 32)


def test_folder_arguments_are_checked(two_folders, tmp_path):
    a, _ = two_folders
    with pytest.raises(ValueError, match="folder2"):
        evaluation.fid_folders(a, tmp_path / "missing", feature_extractor=pooled_features)
    with pytest.raises(ValueError, match="mode"):
        evaluation.compare_folders(a, a, mode="legacy_caffe", feature_extractor=pooled_features)
    with pytest.raises(ValueError, match="native_size"):
        evaluation.folder_features(a, native_size=True)
    (tmp_path / "one").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "x.png")
    with pytest.raises(ValueError, match="at least 2"):
        evaluation.folder_features(tmp_path / "one", feature_extractor=pooled_features, native_size=True)


# ---------------------------------------------------------------- images


def test_png_round_trip_and_grid(tmp_path):
    x = torch.linspace(-1, 1, 5 * 64).reshape(5, 1, 8, 8)
    paths = evaluation.save_png_folder(x, tmp_path / "imgs")
    back = read_folder(tmp_path / "imgs")[:, :1] / 127.5 - 1
    assert len(paths) == 5 and (back - x).abs().max() <= 1 / 255 + 1e-6  # half a quantisation step of 2/255
    grid = np.asarray(Image.open(evaluation.save_grid(x, tmp_path / "g.png", nrow=3, upscale=2)))
    assert grid.shape == (2 * (2 * 9 + 1), 2 * (3 * 9 + 1))  # 2 rows x 3 columns of 8x8 + 1-pixel padding
    np.testing.assert_array_equal(grid[2:18:2, 2:18:2], evaluation.to_uint8(x)[0, 0].numpy())


# ---------------------------------------------------------------- digits classifier features


@pytest.fixture(scope="module")
def digits_split():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # grey levels 0..16 -> [-1, 1]
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1200], perm[1200:]
    return x[tr], y[tr], x[te], y[te]


@pytest.fixture(scope="module")
def classifier(digits_split, tmp_path_factory, one_thread):
    path = tmp_path_factory.mktemp("clf") / "digits_classifier.pt"
    model, acc = evaluation.load_or_train_digits_classifier(path, *digits_split)
    return model, acc, path


def test_digits_classifier_accuracy_and_cache(classifier, digits_split, monkeypatch):
    model, acc, path = classifier
    # A two-layer CNN separates the 10 digit classes of the 597 held-out images well; 0.95 leaves room for seeds.
    assert acc >= 0.95
    assert acc == evaluation.accuracy(model, digits_split[2], digits_split[3])

    def must_not_train(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(digits_classifier, "train_digits_classifier", must_not_train)
    again, acc2 = evaluation.load_or_train_digits_classifier(path, *digits_split)
    assert acc2 == acc
    torch.testing.assert_close(again.features(digits_split[2]), model.features(digits_split[2]))
    # Another split does not reuse the cache.
    with pytest.raises(AssertionError, match="cached classifier"):
        evaluation.load_or_train_digits_classifier(path, digits_split[0][1:], digits_split[1][1:], *digits_split[2:])


def test_corrupt_classifier_cache_is_rebuilt(digits_split, tmp_path, monkeypatch):
    path = tmp_path / "clf.pt"
    path.write_bytes(b"not a checkpoint")
    stand_in = evaluation.DigitsClassifier().eval()
    monkeypatch.setattr(digits_classifier, "train_digits_classifier", lambda *a, **k: (stand_in, 0.5))
    with pytest.warns(UserWarning, match="unreadable digits classifier cache"):
        model, acc = evaluation.load_or_train_digits_classifier(path, *digits_split)
    assert model is stand_in and acc == 0.5
    monkeypatch.setattr(digits_classifier, "train_digits_classifier", None)  # now it must load, not train
    model, acc = evaluation.load_or_train_digits_classifier(path, *digits_split)
    assert acc == 0.5
    torch.testing.assert_close(model.state_dict(), stand_in.state_dict())


def test_classifier_frechet_distance_is_zero_for_the_same_set_and_large_for_noise(classifier, digits_split):
    model, _, _ = classifier
    _, _, test_x, _ = digits_split
    train_x = digits_split[0]
    with torch.no_grad():
        f_test = model.features(test_x)
        f_train = model.features(train_x[:400])
        f_noise = model.features(torch.rand(400, 1, 8, 8, generator=torch.Generator().manual_seed(6)) * 2 - 1)
    same = evaluation.frechet_distance_of_features(f_test, f_test)
    real = evaluation.frechet_distance_of_features(f_train, f_test)
    noise = evaluation.frechet_distance_of_features(f_noise, f_test)
    assert abs(same) < 1e-6 * noise  # sqrtm round-off only
    assert noise > 20 * real  # real digits from another split are close; uniform noise is not a digit
    assert evaluation.precision_recall(f_test, f_noise) == (0.0, 0.0)


def test_real_floor_is_the_mean_and_sd_over_draws_of_train_digits(classifier, digits_split):
    model, acc, _ = classifier
    train_x, _, test_x, _ = digits_split
    metric = evaluation.DigitsMetric(model, acc, train_x, test_x)
    floor = metric.real_floor(100, seed=3, draws=5)
    assert floor.draws == 5 and floor.sd > 0
    # The same draws by hand: one generator seeded once, a fresh permutation of the train digits per draw.
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        f_test = model.features(test_x)
        values = [
            evaluation.frechet_distance_of_features(
                model.features(train_x[torch.randperm(len(train_x), generator=generator)[:100]]), f_test
            )
            for _ in range(5)
        ]
    assert floor.mean == pytest.approx(np.mean(values), rel=1e-9)
    assert floor.sd == pytest.approx(np.std(values, ddof=1), rel=1e-9)
    # One draw is the single-draw floor of earlier versions (the first of the draws above), with sd 0.
    assert metric.real_floor(100, seed=3, draws=1) == (pytest.approx(values[0], rel=1e-9), 0.0, 1)
    assert metric.real_floor(100, seed=3).draws == evaluation.FLOOR_DRAWS == 20
    with pytest.raises(ValueError, match="draws"):
        metric.real_floor(100, draws=0)


def test_digits_extractor_reads_pngs_like_the_model_reads_tensors(classifier, digits_split, tmp_path):
    model, _, _ = classifier
    x = digits_split[2][:50]
    evaluation.save_png_folder(x, tmp_path / "digits")
    feats = evaluation.folder_features(
        tmp_path / "digits", feature_extractor=evaluation.cleanfid_extractor(model), native_size=True
    )
    with torch.no_grad():
        expected = model.features(evaluation.to_uint8(x).float() / 127.5 - 1)
    np.testing.assert_allclose(feats, expected.double().numpy(), rtol=1e-5, atol=1e-5)
