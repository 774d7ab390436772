"""Feature standardisation for a consortium, without any site revealing its data.

Decision: federated statistics. Every site computes its local moments — row count, per-feature sum and per-feature
sum of squares (``local_moments``) — and the consortium adds them up through the same encrypted threshold path as the
model updates, so neither the aggregator nor any other site sees one site's moments; only the sums are decrypted.
Every site then scales with the same global mean and standard deviation (``Standardizer.from_moments``), exactly
what a central model trained on the pooled rows would use (``Standardizer.fit``). Scaling with local statistics
instead would give each site a different input space and break averaging under the feature skew hospitals have.

Scale. Raw moments are large (WDBC's "worst area" reaches 4254, so one site's sum of squares is ~1e10) and CKKS can
only add values that stay within its headroom, so ``local_moments`` divides the vector by ``scale`` and
``from_moments`` multiplies it back. ``scale`` is chosen by the consortium, from public bounds, never from one site's
data. It may be one number or one per slot (length 1 + 2d): CKKS adds an absolute error to every slot, so with a
single scale large enough for "worst area" the sums of squares of a feature like "mean smoothness" (~0.01 per row)
sink below that error; a per-slot scale (for instance max_rows * bound**2 for a feature's sum of squares) keeps
every slot near 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from heagg.errors import UsageError

#: a decrypted standard deviation below this is treated as a constant feature and scaled by 1
STD_FLOOR = 1e-8


def moments_length(n_features: int) -> int:
    """Length of a moments vector: the count, then d sums, then d sums of squares."""
    return 1 + 2 * n_features


def local_moments(X: np.ndarray, *, scale: float | np.ndarray) -> np.ndarray:
    """``[count, sums..., sums_of_squares...] / scale`` of a site's raw features, as float64."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D feature matrix, got shape {X.shape}")
    moments = np.concatenate(([float(X.shape[0])], X.sum(axis=0), np.square(X).sum(axis=0)))
    return moments / _checked_scale(scale, moments.size)


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
    def from_moments(cls, summed: np.ndarray, n_features: int, *, scale: float | np.ndarray) -> Standardizer:
        """The global standardiser from the sum of every site's ``local_moments`` (same ``scale``)."""
        summed = np.asarray(summed, dtype=np.float64).ravel()
        if summed.size != moments_length(n_features):
            raise ValueError(f"expected {moments_length(n_features)} moments for {n_features} features, "
                             f"got {summed.size}")
        moments = summed * _checked_scale(scale, summed.size)
        count = moments[0]
        if not count > 0.5:  # the decrypted count is approximate, but at least one row must be behind it
            raise ValueError(f"summed moments count {count!r} rows; at least one is needed")
        mean = moments[1 : 1 + n_features] / count
        # E[x^2] - mean^2 may come out slightly negative from CKKS noise or rounding: clamp before the root
        variance = np.maximum(moments[1 + n_features :] / count - np.square(mean), 0.0)
        return cls(mean, _floored(np.sqrt(variance)))

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


def _checked_scale(scale: float | np.ndarray, length: int) -> np.ndarray | float:
    array = np.asarray(scale, dtype=np.float64)
    if array.ndim not in (0, 1) or (array.ndim == 1 and array.size != length):
        raise ValueError(f"scale must be a number or a vector of length {length}")
    if not (np.isfinite(array).all() and (array > 0).all()):
        raise ValueError("scale must be finite and positive")
    return float(array) if array.ndim == 0 else array
