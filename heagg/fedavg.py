"""FedAvg arithmetic shared by the encrypted federation and its plaintext baseline.

A site turns its local model delta into the vector it encrypts: the delta clipped coordinate-wise to
``[-clip, clip]``, multiplied by its weight ``w = min(n, max_site_samples) / max_site_samples``, followed
by the weight itself and a 1 (the participant count). The sums of all three are decrypted together; the
new global model is ``global + sum(w*u) / sum(w)``. Clipping and the weight cap bound every slot, which
is what lets the CKKS scale leave headroom for the sum (see ``heagg.params``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: slots appended after the weighted update: the weight, and a 1 that counts participants
TRAILER = 2


@dataclass(frozen=True)
class FedAvgSettings:
    """Consortium-wide constants, fixed in the manifest at the key ceremony."""

    clip: float = 1.0
    max_site_samples: int = 1000

    def weight(self, n_samples: int) -> float:
        if n_samples <= 0:
            raise ValueError("a site needs at least one training sample")
        return min(n_samples, self.max_site_samples) / self.max_site_samples


def site_vector(delta: np.ndarray, n_samples: int, settings: FedAvgSettings) -> np.ndarray:
    """What a site encrypts: ``[w * clip(delta), w, 1]`` as float64."""
    w = settings.weight(n_samples)
    out = np.empty(delta.size + TRAILER, dtype=np.float64)
    np.clip(np.asarray(delta, dtype=np.float64).ravel(), -settings.clip, settings.clip, out=out[:-TRAILER])
    out[:-TRAILER] *= w
    out[-2] = w
    out[-1] = 1.0
    return out


@dataclass(frozen=True)
class AveragedUpdate:
    update: np.ndarray
    total_weight: float
    participants: float


def average(summed: np.ndarray) -> AveragedUpdate:
    """Split a decrypted sum of site vectors into the averaged update, the total weight and the count."""
    total_weight = float(summed[-2])
    if not total_weight > 0:
        raise ValueError(f"decrypted total weight {total_weight!r} is not positive")
    return AveragedUpdate(summed[:-TRAILER] / total_weight, total_weight, float(summed[-1]))
