"""Encrypted flat vectors: encrypt a float vector of any length, add many, serialise for the wire.

A vector of ``length`` reals becomes ``ceil(length / N)`` ciphertext chunks, two reals per complex slot
(the first N/2 reals of a chunk in the real parts, the rest in the imaginary parts). Chunks are kept as one
uint64 array of shape (chunks, 2, limbs, N) in NTT form, so summing is one vectorised modular addition and
the aggregator never needs SEAL, a key or a decoder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from heagg.crypto import codec
from heagg.crypto.context import CkksContext
from heagg.crypto.modarith import add_mod, sub_mod
from heagg.errors import BadShape, CoefficientOutOfRange, InvalidCiphertext

#: coefficients ``RunningSum.add_bytes`` unpacks at a time: its temporaries stay in cache
_BLOCK_VALUES = 1 << 16


def layout_of(ctx: CkksContext) -> codec.BatchLayout:
    return codec.BatchLayout(primes=ctx.primes, degree=ctx.degree, parms_id=ctx.parms_id, scale=ctx.scale)


@dataclass(frozen=True, eq=False)
class EncryptedVector:
    """``length`` reals encrypted as chunks of shape (chunks, 2, limbs, N), NTT form."""

    length: int
    data: np.ndarray = field(repr=False)

    @property
    def chunks(self) -> int:
        return self.data.shape[0]

    @property
    def c0(self) -> np.ndarray:
        return self.data[:, 0]

    @property
    def c1(self) -> np.ndarray:
        return self.data[:, 1]

    def to_bytes(self, ctx: CkksContext) -> bytes:
        return codec.encode_batch(layout_of(ctx), codec.KIND_CIPHERTEXT, self.length, self.data)

    @classmethod
    def from_bytes(cls, ctx: CkksContext, blob: bytes | memoryview, *, max_chunks: int) -> EncryptedVector:
        length, data = codec.decode_batch(layout_of(ctx), blob, kind=codec.KIND_CIPHERTEXT, max_chunks=max_chunks)
        return cls(length, data)

    def chunk_digests(self) -> list[bytes]:
        """SHA-256 of each chunk's c1: the part a partial decryption depends on, so the ledger keys on it."""
        return [hashlib.sha256(self.data[k, 1].tobytes()).digest() for k in range(self.chunks)]

    def digest(self) -> bytes:
        """SHA-256 over the length and every chunk, both polynomials."""
        h = hashlib.sha256(self.length.to_bytes(8, "little"))
        h.update(np.ascontiguousarray(self.data).tobytes())
        return h.digest()


def encrypt_vector(ctx: CkksContext, values: np.ndarray) -> EncryptedVector:
    """Encrypt a flat float vector of any length (including 0) under the consortium's public key."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(flat)):
        raise ValueError("cannot encrypt NaN or infinite values")
    n = ctx.degree
    chunks = -(-flat.size // n)
    data = np.empty((chunks, 2, len(ctx.primes), n), dtype=np.uint64)
    for k in range(chunks):
        data[k] = ctx.encrypt_reals(flat[k * n : (k + 1) * n])
    return EncryptedVector(flat.size, data)


class RunningSum:
    """Adds encrypted vectors as they arrive: memory is one vector, whatever the number of sites."""

    def __init__(self, ctx: CkksContext) -> None:
        self._moduli = ctx.moduli
        self._layout = layout_of(ctx)
        self._total: EncryptedVector | None = None
        self.count = 0

    def add_bytes(self, blob: bytes | memoryview, *, max_chunks: int) -> None:
        """``add(EncryptedVector.from_bytes(ctx, blob, max_chunks=...))`` without decoding the whole vector first.

        The same checks, errors and result, but the wire bytes are unpacked, validated and added a few chunks
        at a time, so no full-size temporary exists: at 10^7 parameters, page-faulting a fresh 160 MB array
        costs more than the additions. A batch rejected part-way is subtracted again, leaving the sum as it was.
        """
        layout = self._layout
        length, chunks = codec.check_header(layout, blob, kind=codec.KIND_CIPHERTEXT, max_chunks=max_chunks)
        if self._total is not None and length != self._total.length:
            raise BadShape(f"cannot add a vector of length {length} to one of {self._total.length}")
        shape = (chunks, 2, len(layout.primes), layout.degree)
        total = self._total if self._total is not None else EncryptedVector(length, np.zeros(shape, dtype=np.uint64))
        added = 0
        try:
            for start, block in self._blocks(blob, chunks):
                part = total.data[start : start + block.shape[0]]
                add_mod(part, block, self._moduli, out=part)
                added = start + block.shape[0]
        except InvalidCiphertext:
            if self._total is not None:  # undo the blocks already added (they passed validation)
                for start, block in self._blocks(blob, added):
                    part = total.data[start : start + block.shape[0]]
                    part[...] = sub_mod(part, block, self._moduli)
            raise
        self._total = total
        self.count += 1

    def _blocks(self, blob: bytes | memoryview, chunks: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first chunk, validated chunks) of a batch whose header ``codec.check_header`` accepted."""
        layout = self._layout
        shape = (2, len(layout.primes), layout.degree)
        values = shape[0] * shape[1] * shape[2]
        step = max(1, _BLOCK_VALUES // values)
        chunk_bytes = layout.payload_bytes(codec.KIND_CIPHERTEXT, 1)
        for start in range(0, chunks, step):
            count = min(step, chunks - start)
            offset = codec.HEADER.size + start * chunk_bytes
            block = codec.unpack_bits(blob, count * values, layout.bits, offset=offset).reshape(count, *shape)
            # the same check as check_below_primes, as one maximum per limb: no boolean temporary
            for j, q in enumerate(layout.primes):
                if block[:, :, j].max() >= q:
                    raise CoefficientOutOfRange("a coefficient is not below its prime")
            yield start, block

    def add(self, vector: EncryptedVector) -> None:
        if self._total is None:
            self._total = EncryptedVector(vector.length, vector.data.copy())
        else:
            if vector.length != self._total.length:
                raise BadShape(f"cannot add a vector of length {vector.length} to one of {self._total.length}")
            add_mod(self._total.data, vector.data, self._moduli, out=self._total.data)
        self.count += 1

    @property
    def total(self) -> EncryptedVector:
        if self._total is None:
            raise ValueError("nothing has been added")
        return self._total


def sum_encrypted(ctx: CkksContext, vectors: Iterable[EncryptedVector]) -> EncryptedVector:
    total = RunningSum(ctx)
    for vector in vectors:
        total.add(vector)
    return total.total
