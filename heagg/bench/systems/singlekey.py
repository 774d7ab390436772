"""The single-key baseline: how federated learning commonly ships homomorphic encryption today.

Every client holds the same TenSEAL secret context (CKKS, N=8192, coefficient primes 60/40/40 plus the
special prime 60, scale 2^40) and sends each block of 4096 values as a ``ts.ckks_vector`` serialised with
TenSEAL's ``serialize()``; the server loads them into a public copy of the context, adds them with ``+``
(in place) and returns the sums, which a client decrypts with the secret key.

This module imports TenSEAL outside ``heagg.crypto`` on purpose: it measures TenSEAL used as its users use
it, not through heagg's code.
"""

from __future__ import annotations

import time

import numpy as np
import tenseal as ts

from heagg.bench.systems import SINGLE_KEY, AggregatorSpec, Decrypted
from heagg.errors import BadShape

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (60, 40, 40, 60)
SCALE = 2.0**40
#: one real per complex slot, N/2 slots per ciphertext
SLOTS = POLY_MODULUS_DEGREE // 2
#: 2 polynomials x N coefficients x log2(q) bits per ciphertext of N/2 reals, q the product of the data primes
FLOOR_BYTES_PER_PARAM = 2 * POLY_MODULUS_DEGREE * sum(COEFF_MOD_BIT_SIZES[:-1]) / 8 / SLOTS


def _public_bytes(context: ts.Context) -> bytes:
    return context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


class SingleKeySystem:
    name = SINGLE_KEY
    preset = None

    def __init__(self, params: int, sites: int) -> None:
        self.params = params
        self.sites = sites
        self.chunks = -(-params // SLOTS)
        self._context = ts.context(
            ts.SCHEME_TYPE.CKKS, poly_modulus_degree=POLY_MODULUS_DEGREE, coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES)
        )
        self._context.global_scale = SCALE

    def aggregator_spec(self) -> AggregatorSpec:
        return AggregatorSpec(
            SINGLE_KEY, self.params, public_context=_public_bytes(self._context), max_update_bytes=128 * self.params
        )

    def facts(self) -> dict[str, object]:
        return {
            "floor_bytes_per_param": FLOOR_BYTES_PER_PARAM,
            "ckks": f"N={POLY_MODULUS_DEGREE}, primes {'/'.join(map(str, COEFF_MOD_BIT_SIZES[:-1]))} "
            f"+ special {COEFF_MOD_BIT_SIZES[-1]}, scale 2^40, one real per slot",
        }

    def calibrate(self, update: np.ndarray) -> dict[str, float]:
        return {}

    def encrypt(self, update: np.ndarray) -> list[ts.CKKSVector]:
        return [ts.ckks_vector(self._context, update[k * SLOTS : (k + 1) * SLOTS].tolist()) for k in range(self.chunks)]

    def serialise(self, encrypted: object) -> list[bytes]:
        assert isinstance(encrypted, list)
        return [vector.serialize() for vector in encrypted]

    def decrypt(self, aggregate: list[bytes]) -> Decrypted:
        start = time.perf_counter()
        parts = [np.asarray(ts.ckks_vector_from(self._context, frame).decrypt()) for frame in aggregate]
        total = np.concatenate(parts)[: self.params] if parts else np.zeros(0)
        seconds = time.perf_counter() - start
        return Decrypted(total, {"decrypt_s": seconds}, seconds)

    def close(self) -> None:
        pass


class SingleKeySummer:
    """The server's sum: ``ts.ckks_vector_from`` every frame into the public context, ``+`` per block."""

    def __init__(self, spec: AggregatorSpec) -> None:
        self._context = ts.context_from(spec.public_context)
        self._chunks = -(-spec.params // SLOTS)
        self._totals: list[ts.CKKSVector] = []

    def add(self, frames: list[bytes]) -> None:
        if len(frames) != self._chunks:
            raise BadShape(f"expected {self._chunks} ciphertexts, got {len(frames)}")
        first = not self._totals
        for k, frame in enumerate(frames):  # one block at a time: the update is never held whole, decoded
            vector = ts.ckks_vector_from(self._context, frame)
            if first:
                self._totals.append(vector)
            else:
                self._totals[k] += vector

    def finish(self) -> None:
        pass

    def result(self) -> list[bytes]:
        return [total.serialize() for total in self._totals]
