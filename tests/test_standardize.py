"""Federated standardisation: the sum of the sites' moments gives exactly the pooled statistics."""

from __future__ import annotations

import numpy as np
import pytest

from heagg.data import load_wdbc
from heagg.errors import UsageError
from heagg.splits import split_sites
from heagg.standardize import STD_FLOOR, Standardizer, local_moments, moments_length


@pytest.fixture(scope="module")
def federation():
    return split_sites(load_wdbc(), 5, "dirichlet:0.3", seed=0)


def test_local_moments_layout():
    X = np.array([[1.0, 2.0], [3.0, -4.0], [5.0, 6.0]], dtype=np.float32)
    assert local_moments(X, scale=1.0).tolist() == [3.0, 9.0, 4.0, 35.0, 56.0]
    assert local_moments(X, scale=10.0).tolist() == pytest.approx([0.3, 0.9, 0.4, 3.5, 5.6])
    assert moments_length(2) == 5
    assert local_moments(X, scale=1.0).dtype == np.float64


@pytest.mark.parametrize("scale", [1.0, 1e6])
def test_summed_site_moments_equal_pooled_statistics(federation, scale):
    d = federation.train_pool.n_features
    summed = sum(local_moments(site.train.X, scale=scale) for site in federation.sites)
    federated = Standardizer.from_moments(summed, d, scale=scale)
    pooled = Standardizer.fit(federation.train_pool.X)
    np.testing.assert_allclose(federated.mean, pooled.mean, rtol=1e-10)
    np.testing.assert_allclose(federated.std, pooled.std, rtol=1e-9)
    assert summed[0] * scale == len(federation.train_pool)


def test_per_slot_scale_matches_scalar_scale(federation):
    d = federation.train_pool.n_features
    pool = federation.train_pool.X.astype(np.float64)
    # a per-slot scale from bounds: rows, rows * max|x|, rows * max(x^2)
    bound = np.abs(pool).max(axis=0)
    scale = np.concatenate(([1000.0], 1000.0 * bound, 1000.0 * bound**2))
    summed = sum(local_moments(site.train.X, scale=scale) for site in federation.sites)
    assert np.abs(summed).max() < 1.0  # every slot bounded, whatever the feature's magnitude
    per_slot = Standardizer.from_moments(summed, d, scale=scale)
    pooled = Standardizer.fit(pool)
    np.testing.assert_allclose(per_slot.mean, pooled.mean, rtol=1e-10)
    np.testing.assert_allclose(per_slot.std, pooled.std, rtol=1e-9)


def test_small_noise_on_the_decrypted_sums_stays_small(federation):
    d = federation.train_pool.n_features
    bound = np.abs(federation.train_pool.X.astype(np.float64)).max(axis=0)
    scale = np.concatenate(([1000.0], 1000.0 * bound, 1000.0 * bound**2))
    summed = sum(local_moments(site.train.X, scale=scale) for site in federation.sites)
    noisy = summed + np.random.default_rng(0).normal(scale=1e-7, size=summed.size)  # CKKS-like absolute error
    approx = Standardizer.from_moments(noisy, d, scale=scale)
    pooled = Standardizer.fit(federation.train_pool.X)
    np.testing.assert_allclose(approx.std, pooled.std, rtol=1e-2)


def test_transform_gives_zero_mean_unit_variance(federation):
    standardizer = Standardizer.fit(federation.train_pool.X)
    Z = standardizer.transform(federation.train_pool.X)
    assert Z.dtype == np.float32
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(Z.std(axis=0), 1.0, atol=1e-5)


def test_constant_feature_is_not_divided_by_zero():
    X = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    for standardizer in (Standardizer.fit(X), Standardizer.from_moments(local_moments(X, scale=1.0), 2, scale=1.0)):
        assert standardizer.std[1] == 1.0
        assert standardizer.transform(X)[:, 1].tolist() == [0.0, 0.0, 0.0]


def test_negative_variance_from_noise_is_clamped():
    X = np.full((4, 1), 3.0)
    moments = local_moments(X, scale=1.0)
    moments[2] -= 1e-9  # decryption noise pushes sum of squares below count * mean^2
    standardizer = Standardizer.from_moments(moments, 1, scale=1.0)
    assert standardizer.std.tolist() == [1.0] and standardizer.mean.tolist() == pytest.approx([3.0])
    assert STD_FLOOR < 1e-6


def test_bad_moments_are_rejected():
    with pytest.raises(ValueError, match="expected 5 moments"):
        Standardizer.from_moments(np.ones(4), 2, scale=1.0)
    with pytest.raises(ValueError, match="at least one"):
        Standardizer.from_moments(np.zeros(5), 2, scale=1.0)
    with pytest.raises(ValueError, match="scale"):
        local_moments(np.ones((2, 2)), scale=0.0)
    with pytest.raises(ValueError, match="scale"):
        local_moments(np.ones((2, 2)), scale=np.ones(3))


def test_transform_checks_width():
    with pytest.raises(ValueError, match="2 columns"):
        Standardizer.fit(np.ones((3, 2))).transform(np.ones((3, 3)))


def test_dict_round_trip(federation):
    standardizer = Standardizer.fit(federation.train_pool.X)
    back = Standardizer.from_dict(standardizer.to_dict())
    assert np.array_equal(back.mean, standardizer.mean) and np.array_equal(back.std, standardizer.std)
    with pytest.raises(UsageError):
        Standardizer.from_dict({"mean": [0.0]})
    with pytest.raises(UsageError):
        Standardizer.from_dict({"mean": [0.0], "std": [0.0]})
    with pytest.raises(UsageError):
        Standardizer.from_dict({"mean": ["a"], "std": [1.0]})
