"""Federated standardisation: two averaged steps give the pooled statistics, for features of any magnitude."""

from __future__ import annotations

import numpy as np
import pytest

from heagg.data import load_wdbc
from heagg.errors import UsageError
from heagg.splits import split_sites
from heagg.standardize import (
    STD_FLOOR,
    Standardizer,
    centre_and_spread,
    centred_moments,
    federated_standardizer,
    location_summary,
    summary_length,
)


@pytest.fixture(scope="module")
def federation():
    return split_sites(load_wdbc(), 5, "dirichlet:0.3", seed=0)


def test_sample_weighted_steps_give_exactly_the_pooled_statistics(federation):
    parts = [site.train.X for site in federation.sites]
    federated = federated_standardizer(parts, [len(X) for X in parts])
    pooled = Standardizer.fit(federation.train_pool.X)
    np.testing.assert_allclose(federated.mean, pooled.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(federated.std, pooled.std, rtol=1e-9)


def test_every_encrypted_value_is_within_one(federation):
    """What sites encrypt must stay within the CKKS headroom whatever the units (WDBC areas reach ~4000)."""
    parts = [site.train.X for site in federation.sites]
    summaries = [location_summary(X) for X in parts]
    assert max(np.abs(s).max() for s in summaries) <= 1
    centre, spread = centre_and_spread(np.mean(summaries, axis=0), parts[0].shape[1])
    assert max(np.abs(centred_moments(X, centre, spread)).max() for X in parts) <= 1


def test_ckks_sized_errors_barely_move_the_result(federation):
    """An absolute error of 1e-5 on each averaged value (compact's order) moves every std by < 0.5%."""
    parts = [site.train.X for site in federation.sites]
    weights = np.array([len(X) for X in parts], dtype=np.float64)
    rng = np.random.default_rng(0)
    d = parts[0].shape[1]
    summary = sum(w * location_summary(X) for w, X in zip(weights, parts, strict=True)) / weights.sum()
    centre, spread = centre_and_spread(summary + rng.normal(scale=1e-5, size=summary.size), d)
    moments = sum(w * centred_moments(X, centre, spread) for w, X in zip(weights, parts, strict=True)) / weights.sum()
    noisy = Standardizer.from_centred_moments(moments + rng.normal(scale=1e-5, size=moments.size), centre, spread)
    pooled = Standardizer.fit(federation.train_pool.X)
    np.testing.assert_allclose(noisy.std, pooled.std, rtol=5e-3)
    assert np.max(np.abs(noisy.mean - pooled.mean) / pooled.std) < 5e-3


def test_a_feature_with_a_large_offset_keeps_its_small_spread():
    """x = 2020 +- 2 (a year): centring first avoids E[x^2] - E[x]^2 cancelling to noise."""
    rng = np.random.default_rng(1)
    parts = [np.column_stack([2020 + 2 * rng.standard_normal(50), rng.standard_normal(50) * 1e-3]) for _ in range(4)]
    federated = federated_standardizer(parts, [50] * 4)
    pooled = Standardizer.fit(np.vstack(parts))
    np.testing.assert_allclose(federated.std, pooled.std, rtol=1e-9)
    np.testing.assert_allclose(federated.mean, pooled.mean, rtol=1e-12)


def test_summary_layout():
    X = np.array([[1.0, -2.0], [3.0, -6.0]])
    summary = location_summary(X)
    assert summary.shape == (summary_length(2),)
    assert summary[:2].tolist() == pytest.approx([np.log2(3) / 64, -np.log2(5) / 64])
    assert summary[2:].tolist() == pytest.approx([np.log2(2) / 64, np.log2(3) / 64])


def test_transform_gives_zero_mean_unit_variance(federation):
    standardizer = Standardizer.fit(federation.train_pool.X)
    Z = standardizer.transform(federation.train_pool.X)
    assert Z.dtype == np.float32
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(Z.std(axis=0), 1.0, atol=1e-5)


def test_constant_feature_is_not_divided_by_zero():
    X = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    for standardizer in (Standardizer.fit(X), federated_standardizer([X[:2], X[2:]], [2, 1])):
        assert standardizer.std[1] == 1.0
        assert standardizer.transform(X)[:, 1].tolist() == [0.0, 0.0, 0.0]


def test_negative_variance_from_noise_is_clamped():
    centre, spread = np.array([3.0]), np.array([1.0])
    standardizer = Standardizer.from_centred_moments(np.array([0.0, -1e-9]), centre, spread)
    assert standardizer.std.tolist() == [1.0] and standardizer.mean.tolist() == pytest.approx([3.0])
    assert STD_FLOOR < 1e-6


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="expected 4"):
        centre_and_spread(np.ones(3), 2)
    with pytest.raises(ValueError, match="expected 4 moments"):
        Standardizer.from_centred_moments(np.ones(3), np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="non-empty"):
        location_summary(np.ones((0, 2)))


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
