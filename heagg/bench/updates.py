"""The site updates every system is measured on: one distinct float32 vector per site, regenerated from a seed.

Each system regenerates the same vectors rather than keeping them, so a setting costs one update's memory,
not one per site. The plaintext truth is summed in float64 in site order, exactly as the plaintext
aggregator sums, so the plaintext baseline's error is exactly zero.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: every coordinate is within [-BOUND, BOUND]: the FedAvg clip of heagg's default settings (``FedAvgSettings``)
BOUND = 1.0


def site_update(seed: int, params: int, sites: int, site: int) -> np.ndarray:
    """Site ``site`` (1-based)'s float32 update for the setting (params, sites)."""
    rng = np.random.default_rng([seed, params, sites, site])
    return rng.uniform(-BOUND, BOUND, params).astype(np.float32)


def site_updates(seed: int, params: int, sites: int) -> Iterator[np.ndarray]:
    for site in range(1, sites + 1):
        yield site_update(seed, params, sites, site)


def true_sum(seed: int, params: int, sites: int) -> np.ndarray:
    """The float64 sum of every site's update, added in site order."""
    total = np.zeros(params, dtype=np.float64)
    for update in site_updates(seed, params, sites):
        np.add(total, update, out=total)
    return total
