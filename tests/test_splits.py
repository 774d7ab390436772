"""Splitting a data set across simulated sites: disjoint, deterministic, and skewed the way the spec says."""

from __future__ import annotations

import numpy as np
import pytest

from heagg.data import Dataset, load_wdbc
from heagg.errors import UsageError
from heagg.splits import MIN_TRAIN_ROWS, Federation, SplitSpec, holdout_split, parse_split, split_sites


def numbered(n: int = 500, positive_rate: float = 0.4, seed: int = 0) -> Dataset:
    """A data set whose first feature is the row number, so every split can be traced back to rows."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < positive_rate).astype(np.int64)
    X = np.column_stack([np.arange(n), rng.normal(size=n)])
    return Dataset(X, y, ("row", "noise"), "numbered")


def row_ids(data: Dataset) -> list[int]:
    return data.X[:, 0].astype(np.int64).tolist()


def malignant_share_spread(fed: Federation) -> float:
    """Mean absolute difference between a site's malignant share and the pooled one: 0 for perfectly IID sites."""
    pooled = fed.train_pool.y.mean()
    return float(np.mean([abs(site.train.y.mean() - pooled) for site in fed.sites]))


# --- parse_split -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("iid", SplitSpec("iid")),
        (" IID ", SplitSpec("iid")),
        ("dirichlet:0.3", SplitSpec("dirichlet", alpha=0.3)),
        ("dirichlet:5", SplitSpec("dirichlet", alpha=5.0)),
        ("size:0.5", SplitSpec("size", big_fraction=0.5)),
    ],
)
def test_parse_split_accepts_the_documented_forms(text, spec):
    assert parse_split(text) == spec
    assert parse_split(str(spec)) == spec


@pytest.mark.parametrize(
    "text",
    [
        "",
        "random",
        "iid:1",
        "dirichlet",
        "dirichlet:",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:abc",
        "dirichlet:nan",
        "dirichlet:inf",
        "size",
        "size:0",
        "size:1",
        "size:1.5",
        "size:half",
    ],
)
def test_parse_split_rejects_anything_else_listing_the_forms(text):
    with pytest.raises(UsageError) as info:
        parse_split(text)
    assert "iid" in str(info.value) and "dirichlet:ALPHA" in str(info.value) and "size:FRACTION" in str(info.value)


# --- split_sites -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.3", "size:0.5"])
def test_split_is_deterministic(spec):
    a, b = (split_sites(load_wdbc(), 5, spec, seed=7) for _ in range(2))
    c = split_sites(load_wdbc(), 5, spec, seed=8)
    pairs = [
        (a.test, b.test),
        *((sa.train, sb.train) for sa, sb in zip(a.sites, b.sites, strict=True)),
        *((sa.test, sb.test) for sa, sb in zip(a.sites, b.sites, strict=True)),
    ]
    assert all(np.array_equal(x.X, y.X) and np.array_equal(x.y, y.y) for x, y in pairs)
    assert not all(np.array_equal(sa.train.X, sc.train.X) for sa, sc in zip(a.sites, c.sites, strict=True))


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.3", "dirichlet:0.05", "size:0.6"])
def test_all_splits_are_disjoint_and_cover_every_row(spec):
    data = numbered()
    fed = split_sites(data, 6, spec, seed=3)
    parts = [row_ids(fed.test)] + [row_ids(s.train) for s in fed.sites] + [row_ids(s.test) for s in fed.sites]
    every = [i for part in parts for i in part]
    assert len(every) == len(set(every)) == len(data)
    # labels travel with their rows
    for site in fed.sites:
        assert np.array_equal(site.train.y, data.y[row_ids(site.train)])
    assert sorted(row_ids(fed.train_pool)) == sorted(i for s in fed.sites for i in row_ids(s.train))
    assert [s.name for s in fed.sites] == [f"site-{k}" for k in range(1, 7)]


def test_global_test_set_is_the_same_whatever_the_sites():
    data = numbered()
    reference = row_ids(split_sites(data, 3, "iid", seed=11).test)
    for n_sites, spec in ((5, "dirichlet:0.1"), (8, "size:0.3"), (2, "iid")):
        assert row_ids(split_sites(data, n_sites, spec, seed=11).test) == reference
    assert len(reference) == 100  # 20% of 500


def test_global_test_set_is_stratified():
    data = load_wdbc()
    fed = split_sites(data, 5, "dirichlet:0.1", seed=0)
    assert abs(fed.test.y.mean() - data.y.mean()) < 0.01
    assert abs(len(fed.test) - 0.2 * len(data)) <= 1


def test_iid_sites_share_class_mix_and_size():
    fed = split_sites(load_wdbc(), 5, "iid", seed=0)
    sizes = [len(s.train) + len(s.test) for s in fed.sites]
    assert max(sizes) - min(sizes) <= 1
    assert malignant_share_spread(fed) < 0.02
    assert all(0 < s.test.y.sum() < len(s.test) for s in fed.sites)  # local test splits are stratified


def test_dirichlet_skews_labels_more_as_alpha_shrinks():
    data = load_wdbc()
    spread = {
        spec: np.mean([malignant_share_spread(split_sites(data, 5, spec, seed=s)) for s in range(5)])
        for spec in ("iid", "dirichlet:100", "dirichlet:1", "dirichlet:0.3", "dirichlet:0.1")
    }
    assert spread["iid"] < 0.02
    assert spread["dirichlet:0.3"] > 0.2 > spread["dirichlet:100"]
    assert spread["dirichlet:0.1"] > spread["dirichlet:1"] > spread["dirichlet:100"]


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_size_skew_gives_the_big_site_its_fraction(fraction):
    fed = split_sites(load_wdbc(), 4, f"size:{fraction}", seed=2)
    sizes = [len(s.train) + len(s.test) for s in fed.sites]
    total = sum(sizes)
    assert abs(sizes[0] - fraction * total) <= 2
    assert max(sizes[1:]) - min(sizes[1:]) <= 1
    assert abs(fed.sites[0].train.y.mean() - fed.train_pool.y.mean()) < 0.03  # size skew only, not label skew


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_site_gets_the_minimum_training_rows(alpha, seed):
    fed = split_sites(load_wdbc(), 10, f"dirichlet:{alpha}", seed=seed)
    assert min(len(s.train) for s in fed.sites) >= MIN_TRAIN_ROWS
    assert malignant_share_spread(fed) > 0.2  # topping up starved sites keeps the skew


def test_minimum_rows_is_a_parameter():
    fed = split_sites(load_wdbc(), 4, "dirichlet:0.01", seed=0, min_train_rows=40)
    assert min(len(s.train) for s in fed.sites) >= 40


def test_too_many_sites_is_a_usage_error():
    with pytest.raises(UsageError, match=r"too many .* use at most 45 sites"):
        split_sites(load_wdbc(), 46, "iid", seed=0)
    assert len(split_sites(load_wdbc(), 45, "iid", seed=0).sites) == 45  # 456 rows // 10 per site


def test_impossible_size_split_is_a_usage_error():
    with pytest.raises(UsageError, match="use a fraction between"):
        split_sites(load_wdbc(), 10, "size:0.95", seed=0)
    with pytest.raises(UsageError, match="at least 2 sites"):
        split_sites(load_wdbc(), 1, "size:0.5", seed=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"test_fraction": 1.0}, "test fraction"), ({"site_test_fraction": -0.1}, "site test fraction")],
)
def test_bad_fractions_are_usage_errors(kwargs, match):
    with pytest.raises(UsageError, match=match):
        split_sites(load_wdbc(), 3, "iid", seed=0, **kwargs)


def test_zero_sites_is_a_usage_error():
    with pytest.raises(UsageError, match="positive integer"):
        split_sites(load_wdbc(), 0, "iid", seed=0)


def test_holdout_split_is_stratified_and_keeps_minimum():
    data = numbered(60)
    train, test = holdout_split(data, 0.25, seed=4)
    assert sorted(row_ids(train) + row_ids(test)) == list(range(60))
    assert abs(len(test) - 15) <= 1 and abs(test.y.mean() - data.y.mean()) < 0.05
    small = data.take(np.arange(10), "small")
    train, test = holdout_split(small, 0.5, seed=4)
    assert len(train) >= MIN_TRAIN_ROWS
