"""Randomness for secrets and noise, drawn from the operating system's CSPRNG.

numpy's generators are not cryptographic; everything here reads bytes from a ``RandomBytes`` callable
(``os.urandom`` unless a test injects another) and shapes them with numpy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np

RandomBytes = Callable[[int], bytes]


def uniform_mod(q: int, count: int, *, rng: RandomBytes | None = None) -> np.ndarray:
    """``count`` values uniform in [0, q), by rejection sampling (no modulo bias)."""
    rng = rng or os.urandom
    mask = np.uint64((1 << q.bit_length()) - 1)
    out = np.empty(count, dtype=np.uint64)
    filled = 0
    while filled < count:
        need = count - filled
        draw = np.frombuffer(rng(8 * (need + need // 4 + 16)), dtype="<u8") & mask
        draw = draw[draw < np.uint64(q)][:need]
        out[filled : filled + draw.size] = draw
        filled += draw.size
    return out


def gaussian_integers(sigma: float, shape: tuple[int, ...], *, rng: RandomBytes | None = None) -> np.ndarray:
    """Integers distributed as a rounded centred Gaussian of standard deviation ``sigma`` (int64).

    Box–Muller over 53-bit uniforms from the CSPRNG. The tail is cut at about 8.5 sigma (the smallest
    uniform is 2**-54), far beyond what noise flooding's statistical argument needs.
    """
    rng = rng or os.urandom
    count = math.prod(shape)
    if sigma == 0 or count == 0:
        return np.zeros(shape, dtype=np.int64)
    pairs = (count + 1) // 2
    raw = np.frombuffer(rng(16 * pairs), dtype="<u8").reshape(2, pairs) >> np.uint64(11)
    u1 = (raw[0].astype(np.float64) + 0.5) * 2.0**-53  # in (0, 1): log is finite
    u2 = raw[1].astype(np.float64) * 2.0**-53
    radius = np.sqrt(-2.0 * np.log(u1)) * sigma
    angle = 2.0 * np.pi * u2
    z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]
    return np.rint(z).astype(np.int64).reshape(shape)
