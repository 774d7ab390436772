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
    """Adds encrypted vectors as they arrive: memory is one vector, whatever the number of sites.

    Additions are lazy: every coefficient added is below its prime q < 2**60, so a uint64 total can take
    another (2**64 - 1) // q - 1 additions (15 or more) before it could overflow, and it is reduced modulo q
    only then, and when ``total`` is read. That saves two of the five passes over memory an addition would
    otherwise cost (the sum and the compare-and-subtract of a modular add).
    """

    def __init__(self, ctx: CkksContext) -> None:
        self._moduli = ctx.moduli
        self._layout = layout_of(ctx)
        self._total: EncryptedVector | None = None
        #: every coefficient of the total is below this many times its prime (0: nothing added yet)
        self._multiple = 0
        self._max_multiple = (2**64 - 1) // max(ctx.primes)
        self.count = 0

    def add(self, vector: EncryptedVector) -> None:
        if self._total is None:
            self._total = EncryptedVector(vector.length, vector.data.copy())
        else:
            if vector.length != self._total.length:
                raise BadShape(f"cannot add a vector of length {vector.length} to one of {self._total.length}")
            self._make_room()
            np.add(self._total.data, vector.data, out=self._total.data)
        self._multiple += 1
        self.count += 1

    def add_bytes(self, blob: bytes | memoryview, *, max_chunks: int) -> None:
        """``add(EncryptedVector.from_bytes(ctx, blob, max_chunks=...))`` without decoding the whole vector first.

        The same checks, errors and result, but the wire bytes are unpacked, validated and added a few chunks
        at a time, so no full-size temporary exists: at 10^7 parameters, page-faulting a fresh 160 MB array
        costs more than the additions. A batch rejected part-way is subtracted again, leaving the sum as it was.
        """
        layout = self._layout
        length, chunks = codec.check_header(layout, blob, kind=codec.KIND_CIPHERTEXT, max_chunks=max_chunks)
        if self._total is None:
            shape = (chunks, 2, len(layout.primes), layout.degree)
            total = EncryptedVector(length, np.zeros(shape, dtype=np.uint64))
        elif length != self._total.length:
            raise BadShape(f"cannot add a vector of length {length} to one of {self._total.length}")
        else:
            self._make_room()
            total = self._total
        added = 0
        try:
            for start, block in self._blocks(blob, chunks):
                part = total.data[start : start + block.shape[0]]
                np.add(part, block, out=part)
                added = start + block.shape[0]
        except InvalidCiphertext:
            # undo the blocks already added (they passed validation); nothing was reduced since, so this is exact
            for start, block in self._blocks(blob, added):
                part = total.data[start : start + block.shape[0]]
                np.subtract(part, block, out=part)
            raise
        self._total = total
        self._multiple += 1
        self.count += 1

    def _blocks(self, blob: bytes | memoryview, chunks: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first chunk, validated chunks) of a batch whose header ``codec.check_header`` accepted.

        Every block is a view of one buffer: use it before asking for the next.
        """
        layout = self._layout
        shape = (2, len(layout.primes), layout.degree)
        values = shape[0] * shape[1] * shape[2]
        step = max(1, _BLOCK_VALUES // values)
        chunk_bytes = layout.payload_bytes(codec.KIND_CIPHERTEXT, 1)
        buffer = np.empty(min(step, chunks) * values, dtype=np.uint64)
        for start in range(0, chunks, step):
            count = min(step, chunks - start)
            offset = codec.HEADER.size + start * chunk_bytes
            flat = codec.unpack_bits(blob, count * values, layout.bits, offset=offset, out=buffer[: count * values])
            block = flat.reshape(count, *shape)
            # the same check as check_below_primes, as one maximum per limb: no boolean temporary
            for j, q in enumerate(layout.primes):
                if block[:, :, j].max() >= q:
                    raise CoefficientOutOfRange("a coefficient is not below its prime")
            yield start, block

    def _make_room(self) -> None:
        """Reduce the total if one more addition could overflow a 64-bit word."""
        if self._multiple + 1 > self._max_multiple:
            self._reduce()

    def _reduce(self) -> None:
        """Bring every coefficient (below ``multiple`` * q) below q, a few chunks at a time.

        Halving steps: for k = 2**(j-1), ..., 2, 1 with 2**j >= multiple, a coefficient below 2kq becomes
        min(v, v - kq), which is below kq (v - kq wraps around to above v exactly when v < kq).
        """
        if self._total is None or self._multiple <= 1:
            return
        data = self._total.data
        steps = []
        k = 1 << (self._multiple - 1).bit_length()
        while k > 1:
            k //= 2
            steps.append(self._moduli * np.uint64(k))
        rows = max(1, _BLOCK_VALUES * data.shape[0] // max(data.size, 1))
        scratch = np.empty((min(rows, data.shape[0]), *data.shape[1:]), dtype=np.uint64)
        for start in range(0, data.shape[0], rows):
            part = data[start : start + rows]
            tmp = scratch[: part.shape[0]]
            for kq in steps:
                np.subtract(part, kq, out=tmp)
                np.minimum(part, tmp, out=part)
        self._multiple = 1

    @property
    def total(self) -> EncryptedVector:
        if self._total is None:
            raise ValueError("nothing has been added")
        self._reduce()
        return self._total


def sum_encrypted(ctx: CkksContext, vectors: Iterable[EncryptedVector]) -> EncryptedVector:
    total = RunningSum(ctx)
    for vector in vectors:
        total.add(vector)
    return total.total
