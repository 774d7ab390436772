"""Splitting one data set across simulated sites, the way real hospital consortia differ.

``split_sites`` first holds out a stratified global test set (used only to report results, never trained on), then
deals the remaining rows to the sites according to a ``SplitSpec``, and finally lets every site hold out its own
stratified local test split. Three consortium shapes are modelled:

- ``iid``: every site draws from the same distribution (stratified, sizes within one row of each other);
- ``dirichlet:ALPHA``: label skew — for each class, the share of every site is drawn from Dirichlet(ALPHA), so a
  small ALPHA gives sites that see mostly one diagnosis (Hsu et al., 2019);
- ``size:FRACTION``: one big hospital (``site-1``) holds that fraction of the rows, the others share the rest equally.

Every site keeps at least ``min_train_rows`` training rows. A Dirichlet draw that starves a site is redrawn (up to
``DIRICHLET_REDRAWS`` times, from the same seeded generator); for extreme ALPHA the draw that starved the fewest rows
is then topped up by moving random rows, one at a time, from the currently largest site — which keeps the skew of
the donors intact. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from heagg.data import Dataset
from heagg.errors import UsageError

log = logging.getLogger(__name__)

#: fewest training rows any site may end up with
MIN_TRAIN_ROWS = 8
#: Dirichlet redraws before topping up the smallest sites
DIRICHLET_REDRAWS = 100

SPLIT_FORMS = "iid, dirichlet:ALPHA (ALPHA > 0, e.g. dirichlet:0.3) or size:FRACTION (0 < FRACTION < 1, e.g. size:0.5)"


@dataclass(frozen=True)
class SplitSpec:
    """How rows are dealt to sites: "iid", "dirichlet" (with ``alpha``) or "size" (with ``big_fraction``)."""

    kind: str
    alpha: float | None = None
    big_fraction: float | None = None

    def __post_init__(self) -> None:
        ok = (
            (self.kind == "iid" and self.alpha is None and self.big_fraction is None)
            or (self.kind == "dirichlet" and self.big_fraction is None and _positive(self.alpha))
            or (self.kind == "size" and self.alpha is None and self.big_fraction is not None
                and 0.0 < self.big_fraction < 1.0)
        )
        if not ok:
            raise UsageError(f"invalid split {self!r}; accepted forms: {SPLIT_FORMS}")

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "size":
            return f"size:{self.big_fraction:g}"
        return "iid"


@dataclass(frozen=True)
class SiteData:
    """One simulated hospital: its name ("site-1", ...), its training rows and its local test rows."""

    name: str
    train: Dataset
    test: Dataset


@dataclass(frozen=True)
class Federation:
    """The sites, the global held-out test set, and the union of the sites' training rows (for the baseline)."""

    sites: tuple[SiteData, ...]
    test: Dataset
    train_pool: Dataset
    spec: SplitSpec
    seed: int


def parse_split(spec: str) -> SplitSpec:
    """Parse ``iid``, ``dirichlet:ALPHA`` or ``size:FRACTION``; anything else is a ``UsageError``."""
    text = spec.strip().lower()
    kind, sep, value = text.partition(":")
    if kind == "iid" and not sep:
        return SplitSpec("iid")
    if kind in ("dirichlet", "size") and value:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if kind == "dirichlet" and _positive(number):
            return SplitSpec("dirichlet", alpha=number)
        if kind == "size" and 0.0 < number < 1.0:
            return SplitSpec("size", big_fraction=number)
    raise UsageError(f"unknown split {spec!r}; accepted forms: {SPLIT_FORMS}")


def split_sites(
    dataset: Dataset,
    n_sites: int,
    spec: SplitSpec | str,
    *,
    seed: int,
    test_fraction: float = 0.2,
    site_test_fraction: float = 0.2,
    min_train_rows: int = MIN_TRAIN_ROWS,
) -> Federation:
    """Split ``dataset`` into a global test set and ``n_sites`` sites, each with a local train/test split."""
    if isinstance(spec, str):
        spec = parse_split(spec)
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1:
        raise UsageError(f"the number of sites must be a positive integer, got {n_sites!r}")
    for label, fraction in (("test fraction", test_fraction), ("site test fraction", site_test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise UsageError(f"the {label} must be in [0, 1), got {fraction!r}")
    if spec.kind == "size" and n_sites < 2:
        raise UsageError(f"split {spec} needs at least 2 sites: one big site and the others")

    test_rng, partition_rng, *site_rngs = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(
        2 + n_sites))
    pool, test = _stratified_holdout(dataset.y, test_fraction, test_rng, min_keep=0)

    # a site needs enough rows that its local test split still leaves min_train_rows to train on
    rows_per_site = math.ceil(min_train_rows / (1.0 - site_test_fraction))
    if n_sites * rows_per_site > pool.size:
        raise UsageError(
            f"{n_sites} sites is too many for {dataset.name!r}: {pool.size} rows remain after the global test "
            f"split and every site needs at least {rows_per_site} ({min_train_rows} to train on plus its local "
            f"test share); use at most {pool.size // rows_per_site} sites")

    y_pool = dataset.y[pool]
    if spec.kind == "iid":
        parts = _iid_partition(y_pool, n_sites, partition_rng)
    elif spec.kind == "dirichlet":
        assert spec.alpha is not None
        parts = _dirichlet_partition(y_pool, n_sites, spec.alpha, rows_per_site, partition_rng)
    else:
        assert spec.big_fraction is not None
        parts = _size_partition(y_pool, n_sites, spec.big_fraction, rows_per_site, partition_rng)

    sites = []
    for k, (part, rng) in enumerate(zip(parts, site_rngs, strict=True), start=1):
        rows = pool[part]
        keep, held = _stratified_holdout(dataset.y[rows], site_test_fraction, rng, min_keep=min_train_rows)
        name = f"site-{k}"
        sites.append(SiteData(name, dataset.take(np.sort(rows[keep]), f"{dataset.name}/{name}/train"),
                              dataset.take(np.sort(rows[held]), f"{dataset.name}/{name}/test")))
    train_pool = Dataset.concat([s.train for s in sites], f"{dataset.name}/train-pool")
    return Federation(tuple(sites), dataset.take(test, f"{dataset.name}/test"), train_pool, spec, seed)


def holdout_split(dataset: Dataset, fraction: float, *, seed: int | np.random.Generator,
                  min_train_rows: int = MIN_TRAIN_ROWS) -> tuple[Dataset, Dataset]:
    """A site's own stratified (train, test) split, by the same rule ``split_sites`` applies to every site."""
    if not 0.0 <= fraction < 1.0:
        raise UsageError(f"the test fraction must be in [0, 1), got {fraction!r}")
    if len(dataset) < min_train_rows:
        raise UsageError(f"{dataset.name!r} has {len(dataset)} rows; a site needs at least {min_train_rows}")
    keep, held = _stratified_holdout(dataset.y, fraction, np.random.default_rng(seed), min_keep=min_train_rows)
    return dataset.take(keep, f"{dataset.name}/train"), dataset.take(held, f"{dataset.name}/test")


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _stratified_holdout(y: np.ndarray, fraction: float, rng: np.random.Generator, *,
                        min_keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held-out) positions into ``y``: about ``fraction`` of each class held out.

    A class keeps at least one row on the kept side when it has two or more, and at least ``min_keep`` rows stay
    kept overall; a class with a single row stays kept (that is where stratification stops being possible).
    """
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in (0, 1)]
    held_counts = [min(round(fraction * idx.size), max(idx.size - 1, 0)) for idx in by_class]
    excess = sum(held_counts) - max(y.size - min_keep, 0)
    while excess > 0:
        largest = int(np.argmax(held_counts))
        held_counts[largest] -= 1
        excess -= 1
    held = np.concatenate([idx[:k] for idx, k in zip(by_class, held_counts, strict=True)])
    kept = np.concatenate([idx[k:] for idx, k in zip(by_class, held_counts, strict=True)])
    return np.sort(kept), np.sort(held)


def _iid_partition(y: np.ndarray, n_sites: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Deal class-sorted shuffled rows round-robin: every site gets the same class mix, sizes within one row."""
    order = np.concatenate([rng.permutation(np.flatnonzero(y == c)) for c in (0, 1)])
    return [np.sort(order[k::n_sites]) for k in range(n_sites)]


def _dirichlet_partition(y: np.ndarray, n_sites: int, alpha: float, min_rows: int,
                         rng: np.random.Generator) -> list[np.ndarray]:
    best: list[np.ndarray] = []
    for _ in range(DIRICHLET_REDRAWS):
        parts = _dirichlet_draw(y, n_sites, alpha, rng)
        if not best or min(p.size for p in parts) > min(p.size for p in best):
            best = parts
        if min(p.size for p in best) >= min_rows:
            return best
    # Extreme alpha: top up the smallest site from the largest until every site has min_rows. The largest site
    # always has more than min_rows while some site has fewer, because split_sites checked n_sites * min_rows rows.
    members = [list(p) for p in best]
    moved = 0
    while True:
        sizes = [len(m) for m in members]
        short, donor = int(np.argmin(sizes)), int(np.argmax(sizes))
        if sizes[short] >= min_rows:
            break
        members[short].append(members[donor].pop(int(rng.integers(sizes[donor]))))
        moved += 1
    log.info("dirichlet:%g left a site below %d rows in %d draws; moved %d rows from the largest sites",
             alpha, min_rows, DIRICHLET_REDRAWS, moved)
    return [np.sort(np.asarray(m, dtype=np.int64)) for m in members]


def _dirichlet_draw(y: np.ndarray, n_sites: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """One label-skewed partition: class c is cut among the sites in proportions drawn from Dirichlet(alpha)."""
    pieces: list[list[np.ndarray]] = [[] for _ in range(n_sites)]
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == c))
        shares = rng.dirichlet(np.full(n_sites, alpha))
        cuts = np.floor(np.cumsum(shares)[:-1] * idx.size).astype(np.int64)
        for k, piece in enumerate(np.split(idx, cuts)):
            pieces[k].append(piece)
    return [np.sort(np.concatenate(p)) for p in pieces]


def _size_partition(y: np.ndarray, n_sites: int, big_fraction: float, min_rows: int,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Site 1 takes a stratified ``big_fraction`` of the rows; the others share the rest like ``iid``."""
    rest, big = _stratified_holdout(y, big_fraction, rng, min_keep=0)
    others = [rest[p] for p in _iid_partition(y[rest], n_sites - 1, rng)]
    parts = [big, *others]
    if min(p.size for p in parts) < min_rows:
        lowest = min_rows / y.size
        highest = 1.0 - (n_sites - 1) * min_rows / y.size
        raise UsageError(
            f"split size:{big_fraction:g} leaves a site with {min(p.size for p in parts)} rows but every site needs "
            f"{min_rows}; with {n_sites} sites and {y.size} rows use a fraction between {lowest:.2f} and "
            f"{highest:.2f}")
    return parts
