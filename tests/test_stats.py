"""evaluation.stats: the bootstrap interval of a Frechet distance and the Student-t intervals over seeds
(docs/math.md §10)."""

import math

import numpy as np
import pytest

from evaluation import frechet_distance, gaussian_fit
from evaluation.stats import frechet_bootstrap, frechet_distances, mean_interval, paired_interval, t_multiplier

# clean-fid's frechet_distance passes scipy's deprecated sqrtm(disp=...) argument.
pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")


def test_batched_frechet_distance_equals_the_sqrtm_formula():
    rng = np.random.default_rng(0)
    d = 6
    means = rng.normal(size=(3, d))
    covs = np.stack([(a := rng.normal(size=(d, d))) @ a.T / d + 0.1 * np.eye(d) for _ in range(3)])
    mu, c = rng.normal(size=d), np.diag(rng.uniform(0.5, 2.0, size=d))
    expected = [frechet_distance(means[b], covs[b], mu, c) for b in range(3)]
    np.testing.assert_allclose(frechet_distances(means, covs, mu, c), expected, rtol=1e-9, atol=1e-9)


def test_bootstrap_interval_covers_the_analytic_value_at_the_stated_rate():
    # Samples of N(mu, C) in d = 2 against a fixed reference set: the analytic value is the FD between N(mu, C)
    # and the reference's Gaussian fit. n = 4000 makes the estimator's O(d / n) bias small against its spread.
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(20_000, 2)) @ np.array([[1.0, 0.3], [0.0, 0.8]])
    mu, c = np.array([0.5, -0.3]), np.array([[1.5, 0.2], [0.2, 0.6]])
    truth = frechet_distance(mu, c, *gaussian_fit(reference))
    intervals = [
        frechet_bootstrap(np.random.default_rng(100 + s).multivariate_normal(mu, c, size=4000), reference, seed=s)
        for s in range(60)
    ]
    covered = sum(iv.lo <= truth <= iv.hi for iv in intervals)
    # Binomial(60, 0.95): P(covered <= 52) = 0.010 (these seeds: 56); an interval that missed the spread would not.
    assert covered >= 53, covered
    for iv in intervals:
        assert 0 <= iv.lo <= iv.value <= iv.hi
    # The half-width estimates 1.96 standard deviations of the estimate over independent samples.
    spread = np.std([iv.value for iv in intervals], ddof=1)
    half = np.mean([(iv.hi - iv.lo) / 2 for iv in intervals])
    assert 0.7 < half / (1.96 * spread) < 1.4, (half, spread)


def test_bootstrap_is_reproducible_and_contains_a_biased_estimate():
    # n = 16 < d = 64: the resampled FDs lie far above the estimate; the interval still holds it.
    rng = np.random.default_rng(2)
    x, ref = rng.normal(size=(16, 64)), rng.normal(size=(360, 64))
    a, b = frechet_bootstrap(x, ref, seed=3), frechet_bootstrap(x, ref, seed=3)
    assert a == b and a.lo <= a.value <= a.hi and a.hi > a.lo
    assert frechet_bootstrap(x, ref, seed=4) != a


def test_t_multiplier_for_three_and_five_seeds():
    assert t_multiplier(3) == pytest.approx(4.302653, abs=1e-6)
    assert t_multiplier(5) == pytest.approx(2.776445, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        t_multiplier(1)


def test_paired_interval_equals_a_hand_computation():
    a, b = [3.0, 5.0, 4.0], [1.0, 2.0, 4.5]
    # d = (2, 3, -0.5): mean 1.5, s^2 = (0.25 + 2.25 + 4) / 2 = 3.25, half-width t_{0.975, 2} sqrt(3.25 / 3).
    half = 4.302652729911275 * math.sqrt(3.25 / 3)
    diff = paired_interval(a, b)
    assert diff.value == pytest.approx(1.5)
    assert (diff.lo, diff.hi) == (pytest.approx(1.5 - half), pytest.approx(1.5 + half))
    assert mean_interval([2.0, 3.0, -0.5]) == diff
    with pytest.raises(ValueError, match="same shape"):
        paired_interval([1.0, 2.0], [1.0])
