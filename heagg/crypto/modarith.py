"""Vectorised arithmetic modulo word-sized primes (up to 62 bits) on numpy uint64 arrays.

numpy has no 128-bit integers, so ``a * b mod q`` takes the exact low 64 bits of the product from uint64
arithmetic (which wraps) and the quotient ``floor(a * b / q)`` from 80-bit extended precision (x87 long
double, 64-bit mantissa): for a, b < q < 2**62 the estimated quotient is off by at most one, and the low
words fix the remainder exactly. Every function takes a ``moduli`` array broadcastable against its
operands, so one call covers all RNS limbs: limb j of ``x[..., j, :]`` is reduced modulo ``moduli[j]``.
"""

from __future__ import annotations

import numpy as np

if np.finfo(np.longdouble).nmant < 63:  # pragma: no cover - platform guard
    raise ImportError("heagg's modular arithmetic needs an 80-bit or wider numpy longdouble (x86_64 or aarch64)")


def limb_moduli(primes: tuple[int, ...] | list[int]) -> np.ndarray:
    """Moduli shaped (limbs, 1) to broadcast against arrays shaped (..., limbs, degree)."""
    return np.asarray(primes, dtype=np.uint64)[:, None]


#: elements per slice in ``add_mod``'s reduction: a few hundred KiB, so its temporary stays in cache
_SLICE = 1 << 16


def add_mod(a: np.ndarray, b: np.ndarray, moduli: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(a + b) mod q for a, b already reduced (q < 2**63, so the sum cannot wrap)."""
    out = np.add(a, b, out=out)
    # For s < 2q, s - q wraps around to above s exactly when s < q, so min(s, s - q) is s mod q. That is
    # two branch-free passes, several times faster than a masked subtract; slicing along the first axis
    # keeps the temporary small, since a whole-array temporary costs more in page faults than the sum.
    if out.ndim == 0:
        np.minimum(out, out - moduli, out=out)
        return out
    bounds = np.broadcast_to(moduli, out.shape)
    rows = max(1, _SLICE * out.shape[0] // max(out.size, 1))
    scratch = np.empty((min(rows, out.shape[0]), *out.shape[1:]), dtype=out.dtype)
    for start in range(0, out.shape[0], rows):
        part = out[start : start + rows]
        tmp = scratch[: part.shape[0]]
        np.subtract(part, bounds[start : start + rows], out=tmp)
        np.minimum(part, tmp, out=part)
    return out


def sub_mod(a: np.ndarray, b: np.ndarray, moduli: np.ndarray) -> np.ndarray:
    """(a - b) mod q for a, b already reduced."""
    out = np.subtract(a, b)  # wraps when a < b; adding q back wraps to the right value
    np.add(out, moduli, out=out, where=a < b)
    return out


def mul_mod(a: np.ndarray, b: np.ndarray, moduli: np.ndarray) -> np.ndarray:
    """(a * b) mod q for a, b already reduced."""
    a, b, moduli = np.broadcast_arrays(a, b, moduli)
    q_ld = moduli.astype(np.longdouble)
    quotient = (a.astype(np.longdouble) * b.astype(np.longdouble) / q_ld).astype(np.uint64)
    # exact modulo 2**64; the true remainder is this value plus or minus one q
    rem = (a * b - quotient * moduli).view(np.int64)
    q_signed = moduli.view(np.int64)
    np.add(rem, q_signed, out=rem, where=rem < 0)
    np.subtract(rem, q_signed, out=rem, where=rem >= q_signed)
    return rem.view(np.uint64)


def reduce_signed(values: np.ndarray, moduli: np.ndarray) -> np.ndarray:
    """Reduce signed int64 values (e.g. a noise polynomial) modulo every prime: shape (..., limbs, degree)."""
    v = values[..., None, :]
    q = moduli.astype(np.int64)
    return np.mod(v, q).astype(np.uint64)


def centered(values: np.ndarray, modulus: int) -> np.ndarray:
    """Values modulo one prime lifted to the centred interval (-q/2, q/2], as int64."""
    v = values.astype(np.int64)  # values < q < 2**62 fit
    return np.where(values > np.uint64(modulus // 2), v - np.int64(modulus), v)
