"""Feature standardisation for a consortium, without any site revealing its data.

Decision: federated statistics, not per-site scaling. Scaling with local statistics would give each site a
different input space, which breaks averaging under the label and feature skew hospitals have. Instead the
consortium computes the pooled mean and standard deviation through the same encrypted threshold path as the
model updates, in two steps, each an average over sites weighted by their sample counts:

1. ``location_summary``: per feature, the signed log2-magnitude of the site's mean and the log2 of its standard
   deviation, divided by 64 so they fit in [-1, 1] whatever the units. Their average gives a public, coarse
   ``centre`` and ``spread`` per feature (``centre_and_spread``); they reveal orders of magnitude only.
2. ``centred_moments``: per feature, the site's mean of z and of z^2 with z = (x - centre) / (4 * spread). With
   sample-count weights their average is exactly the pooled mean of z and z^2, and every value stays near or
   below 1, so CKKS's absolute error (about 1e-5 for the compact preset) is small relative to all of them, for
   features of any magnitude (a single global scale would drown features like "smoothness", ~0.01, under
   features like "area", ~1000), and centring first avoids the cancellation of E[x^2] - E[x]^2 for features
   whose spread is small next to their mean.

``Standardizer.from_centred_moments`` turns the decrypted average into the pooled mean and standard deviation;
``Standardizer.fit`` computes them directly for the centrally trained baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from heagg.errors import UsageError

#: a decrypted standard deviation below this is treated as a constant feature and scaled by 1
STD_FLOOR = 1e-8


#: log2 magnitudes are divided by this so that any float64 value maps into [-1, 1]
LOG_RANGE = 64.0
#: z = (x - centre) / (SPREAD_MARGIN * spread): a site's mean of z^2 stays below 1 unless its spread is over
#: 4 times the consortium's coarse spread (then it is clipped); a smaller margin would clip more often, a larger
#: one would lose precision (the error on the standard deviation grows with the margin squared)
SPREAD_MARGIN = 4.0


def summary_length(n_features: int) -> int:
    """Length of a location summary and of a centred-moments vector: two values per feature."""
    return 2 * n_features


def _features(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"expected a non-empty 2-D feature matrix, got shape {X.shape}")
    return X


def location_summary(X: np.ndarray) -> np.ndarray:
    """Step 1: ``[sign(mean) * log2(1 + |mean|) / 64 ..., log2(1 + std) / 64 ...]`` of a site's features."""
    X = _features(X)
    mean, std = X.mean(axis=0), X.std(axis=0)
    return np.concatenate((np.sign(mean) * np.log2(1 + np.abs(mean)), np.log2(1 + std))) / LOG_RANGE


def centre_and_spread(average: np.ndarray, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """The public coarse centre and spread from the weighted average of every site's ``location_summary``."""
    average = np.asarray(average, dtype=np.float64).ravel()
    if average.size != summary_length(n_features):
        raise ValueError(f"expected {summary_length(n_features)} values for {n_features} features, got {average.size}")
    location = np.clip(average[:n_features], -1, 1) * LOG_RANGE
    centre = np.sign(location) * (np.exp2(np.abs(location)) - 1)
    spread = np.exp2(np.clip(average[n_features:], 0, 1) * LOG_RANGE) - 1
    # a constant feature has no spread: scale by something tiny next to its centre instead of by zero
    spread = np.maximum(spread, np.maximum(np.abs(centre) * 1e-6, 1e-12))
    return centre, spread


def centred_moments(X: np.ndarray, centre: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Step 2: ``[mean(z) ..., mean(z^2) ...]`` with ``z = (x - centre) / (4 * spread)``."""
    z = (_features(X) - centre) / (SPREAD_MARGIN * spread)
    return np.concatenate((z.mean(axis=0), np.square(z).mean(axis=0)))


@dataclass(frozen=True, eq=False)
class Standardizer:
    """Per-feature ``(x - mean) / std`` with the consortium's global mean and (population) standard deviation."""

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        mean = np.array(self.mean, dtype=np.float64, copy=True)
        std = np.array(self.std, dtype=np.float64, copy=True)
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"mean and std must be 1-D of equal length, got {mean.shape} and {std.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError("mean and std must be finite and std positive")
        mean.setflags(write=False)
        std.setflags(write=False)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def n_features(self) -> int:
        return int(self.mean.size)

    @classmethod
    def from_centred_moments(cls, average: np.ndarray, centre: np.ndarray, spread: np.ndarray) -> Standardizer:
        """The pooled standardiser from the weighted average of every site's ``centred_moments``."""
        average = np.asarray(average, dtype=np.float64).ravel()
        n = centre.size
        if average.size != summary_length(n):
            raise ValueError(f"expected {summary_length(n)} moments for {n} features, got {average.size}")
        mean_z, mean_z2 = average[:n], average[n:]
        # E[z^2] - E[z]^2 may come out slightly negative from CKKS noise: clamp before the root
        std_z = np.sqrt(np.maximum(mean_z2 - np.square(mean_z), 0.0))
        unit = SPREAD_MARGIN * spread
        return cls(centre + unit * mean_z, _floored(unit * std_z))

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        """The standardiser of one pooled feature matrix (the centrally trained baseline)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"expected a non-empty 2-D feature matrix, got shape {X.shape}")
        return cls(X.mean(axis=0), _floored(X.std(axis=0)))

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Standardised features as float32 (the dtype the models train in)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected a matrix with {self.n_features} columns, got shape {X.shape}")
        return ((X - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: Any) -> Standardizer:
        """Inverse of ``to_dict``; a malformed dict (e.g. from an edited model card) is a ``UsageError``."""
        if not isinstance(data, dict) or set(data) != {"mean", "std"}:
            raise UsageError("a standardiser must be a mapping with exactly the keys 'mean' and 'std'")
        try:
            return cls(np.asarray(data["mean"], dtype=np.float64), np.asarray(data["std"], dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"invalid standardiser: {exc}") from exc


def _floored(std: np.ndarray) -> np.ndarray:
    return np.where(std < STD_FLOOR, 1.0, std)


def federated_standardizer(parts: Sequence[np.ndarray], weights: Sequence[float]) -> Standardizer:
    """Both federated steps computed in the clear, with the same weighting the sites use when encrypting.

    The plaintext-FedAvg baseline uses this, and tests compare the encrypted protocol against it.
    """
    w = np.asarray(weights, dtype=np.float64)
    n_features = np.asarray(parts[0]).shape[1]
    summary = sum(wi * location_summary(X) for wi, X in zip(w, parts, strict=True)) / w.sum()
    centre, spread = centre_and_spread(summary, n_features)
    moments = sum(wi * centred_moments(X, centre, spread) for wi, X in zip(w, parts, strict=True)) / w.sum()
    return Standardizer.from_centred_moments(moments, centre, spread)
