"""Fréchet distance, statistics and KID against independent float64 references."""

import numpy as np
import pytest
import scipy.linalg

from gansearch.metrics.frechet import (
    GaussianStats,
    MetricError,
    StatsAccumulator,
    frechet_distance,
    gaussian_stats,
    kernel_inception_distance,
    mmd2_unbiased,
)


def scipy_frechet(mu1, cov1, mu2, cov2):
    """The reference FID formula with scipy's general matrix square root."""
    root = scipy.linalg.sqrtm(cov1 @ cov2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(root.real))


def random_spd(rng, dim):
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_accumulator_matches_numpy_in_batches():
    rng = np.random.default_rng(0)
    features = (rng.normal(size=(1000, 16)) * 3 + 1).astype(np.float32)
    accumulator = StatsAccumulator(16)
    for chunk in np.array_split(features, 7):
        accumulator.update(chunk)

    stats = accumulator.finalize()

    exact = features.astype(np.float64)
    assert stats.count == 1000
    np.testing.assert_allclose(stats.mean, exact.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(exact, rowvar=False), rtol=1e-9)


def test_accumulator_rejects_one_sample():
    accumulator = StatsAccumulator(4)
    accumulator.update(np.zeros((1, 4)))
    with pytest.raises(MetricError, match="at least 2 samples"):
        accumulator.finalize()


def test_accumulator_rejects_wrong_dimension():
    with pytest.raises(MetricError, match=r"shape \(n, 4\)"):
        StatsAccumulator(4).update(np.zeros((3, 5)))


def test_frechet_diagonal_closed_form():
    # For diagonal covariances the distance is |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)

    distance = frechet_distance(GaussianStats(mu1, np.diag(var1), 10), GaussianStats(mu2, np.diag(var2), 10))

    assert distance == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_scipy_on_random_covariances():
    rng = np.random.default_rng(1)
    for dim in (2, 8, 64):
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        cov1, cov2 = random_spd(rng, dim), random_spd(rng, dim)

        distance = frechet_distance(GaussianStats(mu1, cov1, 100), GaussianStats(mu2, cov2, 100))

        assert distance == pytest.approx(scipy_frechet(mu1, cov1, mu2, cov2), rel=1e-8)


def test_frechet_of_identical_stats_is_zero():
    rng = np.random.default_rng(2)
    stats = gaussian_stats(rng.normal(size=(500, 32)))
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-8)


def test_frechet_singular_covariance_is_finite_and_real():
    # Fewer samples than dimensions gives a rank-deficient covariance, as with small N in FID.
    rng = np.random.default_rng(3)
    few = gaussian_stats(rng.normal(size=(10, 64)))
    many = gaussian_stats(rng.normal(size=(2000, 64)))

    distance = frechet_distance(few, many)

    assert isinstance(distance, float)
    assert np.isfinite(distance)
    assert distance > 0


def test_frechet_rejects_dimension_mismatch():
    a = GaussianStats(np.zeros(3), np.eye(3), 5)
    b = GaussianStats(np.zeros(4), np.eye(4), 5)
    with pytest.raises(MetricError, match="dimensions differ"):
        frechet_distance(a, b)


def test_frechet_rejects_nan_stats():
    a = GaussianStats(np.array([np.nan, 0.0]), np.eye(2), 5)
    with pytest.raises(MetricError, match="NaN"):
        frechet_distance(a, a)


def reference_mmd2(x, y):
    """Unbiased MMD^2 written with explicit loops over pairs."""
    d = x.shape[1]

    def k(a, b):
        return (a @ b / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_matches_loop_reference():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(20, 5)), rng.normal(loc=0.5, size=(25, 5))
    assert mmd2_unbiased(x, y) == pytest.approx(reference_mmd2(x, y), rel=1e-10)


def test_kid_same_versus_shifted():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    shifted = rng.normal(loc=1.0, size=(600, 8))

    same_mean, same_std = kernel_inception_distance(x, y, subsets=20, subset_size=200)
    shift_mean, _ = kernel_inception_distance(x, shifted, subsets=20, subset_size=200)

    assert abs(same_mean) < 3 * same_std + 1e-3
    assert shift_mean > 10 * abs(same_mean)
    assert same_std > 0


def test_kid_full_subset_equals_mmd2():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    mean, std = kernel_inception_distance(x, y, subsets=3, subset_size=30)
    assert mean == pytest.approx(mmd2_unbiased(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_rejects_single_sample():
    with pytest.raises(MetricError, match="at least 2 samples"):
        kernel_inception_distance(np.zeros((1, 3)), np.zeros((5, 3)))
