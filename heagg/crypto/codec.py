"""heagg's byte format for batches of RNS polynomials: encrypted vectors and partial decryptions.

A batch travels as one ZeroMQ frame and is validated completely before use. Coefficients are bit-packed at
the width of the largest data prime (60 bits for every preset), which puts a ciphertext at the physical
floor of 2 * log2(q) / 8 bytes per real: 15 bytes per parameter for ``compact`` instead of SEAL's 16.

    offset size  field
    0      4     magic b"HGPB"
    4      1     format version (1)
    5      1     kind: 1 = ciphertexts (2 polynomials per chunk), 2 = partial decryptions (1 per chunk)
    6      1     polynomials per chunk
    7      1     RNS limbs
    8      1     log2 of the polynomial degree N
    9      1     bits per packed coefficient
    10     2     reserved, zero
    12     8     length: how many reals the batch encodes (a chunk holds N of them)
    20     4     chunk count, equal to ceil(length / N)
    24     32    SEAL parms_id of the consortium's ciphertext level
    56     8     CKKS scale (float64)
    64     ...   chunks x polynomials x limbs x N coefficients, little-endian bit-packed

Packing: each group of 64 coefficients becomes ``bits`` little-endian 64-bit words, coefficient k of the
group occupying bits [k*bits, (k+1)*bits) of that group's bit string.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from heagg.crypto.seal_format import check_below_primes
from heagg.errors import BadHeader, BadShape, ParmsMismatch, TooLarge, Truncated

MAGIC = b"HGPB"
FORMAT_VERSION = 1
KIND_CIPHERTEXT = 1
KIND_PARTIAL = 2
_POLYS = {KIND_CIPHERTEXT: 2, KIND_PARTIAL: 1}
_KIND_NAMES = {KIND_CIPHERTEXT: "ciphertext", KIND_PARTIAL: "partial decryption"}
HEADER = struct.Struct("<4sBBBBBBHQI32sd")


def _pairwise(bits: int) -> bool:
    """Widths where two values fill a whole number of bytes (b/4) and a pair fits in 128 bits: a fast path."""
    return 32 < bits < 64 and bits % 4 == 0


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack uint64 values below 2**bits (count a multiple of 64) into ``bits`` words per 64 values."""
    if bits == 64:
        return np.ascontiguousarray(values, dtype="<u8").tobytes()
    if _pairwise(bits):  # the same bit string, built two values (b/4 bytes) at a time
        pairs = values.reshape(-1, 2)
        words = np.empty((pairs.shape[0], 2), dtype="<u8")
        np.bitwise_or(pairs[:, 0], pairs[:, 1] << np.uint64(bits), out=words[:, 0])
        np.right_shift(pairs[:, 1], np.uint64(64 - bits), out=words[:, 1])
        return words.view(np.uint8)[:, : bits // 4].tobytes()
    return _pack_groups(values, bits)


def _pack_groups(values: np.ndarray, bits: int) -> bytes:
    """The general packer, 64 values (``bits`` words) at a time."""
    groups = values.reshape(-1, 64)
    words = np.zeros((groups.shape[0], bits), dtype=np.uint64)
    for k in range(64):
        word, offset = divmod(k * bits, 64)
        column = groups[:, k]
        words[:, word] |= column << np.uint64(offset)
        if offset + bits > 64:
            words[:, word + 1] |= column >> np.uint64(64 - offset)
    return words.astype("<u8", copy=False).tobytes()


def unpack_bits(
    buffer: bytes | memoryview, count: int, bits: int, *, offset: int = 0, out: np.ndarray | None = None
) -> np.ndarray:
    """Inverse of ``pack_bits``: ``count`` values (a multiple of 64) from ``count * bits / 8`` bytes.

    ``out``, a contiguous uint64 array of ``count`` values, receives them instead of a new array (a decoder
    that works block by block reuses one buffer rather than allocating per block).
    """
    if out is not None and (out.dtype != np.uint64 or out.size != count or not out.flags.c_contiguous):
        raise ValueError(f"out must be a contiguous uint64 array of {count} values")
    if _pairwise(bits):
        # A pair is ``width`` bytes: the low value is its first 8 bytes masked, the high value its last 8 bytes
        # shifted down. Unaligned strided views read both straight from the buffer, without copying it.
        width, pairs = bits // 4, count // 2
        if len(buffer) < offset + pairs * width:
            raise ValueError(f"buffer holds fewer than {count} packed values")
        result = np.empty((pairs, 2), dtype=np.uint64) if out is None else out.reshape(pairs, 2)
        if pairs:
            low = np.ndarray((pairs,), dtype="<u8", buffer=buffer, offset=offset, strides=(width,))
            high = np.ndarray((pairs,), dtype="<u8", buffer=buffer, offset=offset + width - 8, strides=(width,))
            np.bitwise_and(low, np.uint64((1 << bits) - 1), out=result[:, 0])
            np.right_shift(high, np.uint64(64 - bits), out=result[:, 1])
        return result.reshape(-1)
    values = _unpack_other(buffer, count, bits, offset)
    if out is None:
        return values
    out.reshape(-1)[:] = values
    return out.reshape(-1)


def _unpack_other(buffer: bytes | memoryview, count: int, bits: int, offset: int) -> np.ndarray:
    """``unpack_bits`` for the widths without a fast path."""
    if bits == 64:
        return np.frombuffer(buffer, dtype="<u8", count=count, offset=offset).astype(np.uint64)
    words = np.frombuffer(buffer, dtype="<u8", count=count // 64 * bits, offset=offset).reshape(-1, bits)
    groups = np.empty((words.shape[0], 64), dtype=np.uint64)
    mask = np.uint64((1 << bits) - 1)
    for k in range(64):
        word, shift = divmod(k * bits, 64)
        column = words[:, word] >> np.uint64(shift)
        if shift + bits > 64:
            column |= words[:, word + 1] << np.uint64(64 - shift)
        groups[:, k] = column & mask
    return groups.reshape(-1)


@dataclass(frozen=True)
class BatchLayout:
    """What a batch must look like to belong to this consortium."""

    primes: tuple[int, ...]
    degree: int
    parms_id: bytes
    scale: float

    @property
    def bits(self) -> int:
        return max(p.bit_length() for p in self.primes)

    def chunks_for(self, length: int) -> int:
        return math.ceil(length / self.degree)

    def payload_bytes(self, kind: int, chunks: int) -> int:
        return chunks * _POLYS[kind] * len(self.primes) * self.degree * self.bits // 8


def encode_batch(layout: BatchLayout, kind: int, length: int, data: np.ndarray) -> bytes:
    """Serialise ``data`` of shape (chunks, polys, limbs, N) for the wire."""
    chunks = data.shape[0]
    if data.shape[1:] != (_POLYS[kind], len(layout.primes), layout.degree) or chunks != layout.chunks_for(length):
        raise BadShape(f"cannot encode {_KIND_NAMES[kind]} batch of shape {data.shape} for length {length}")
    header = HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        kind,
        _POLYS[kind],
        len(layout.primes),
        layout.degree.bit_length() - 1,
        layout.bits,
        0,
        length,
        chunks,
        layout.parms_id,
        layout.scale,
    )
    return header + pack_bits(data.reshape(-1), layout.bits)


def decode_batch(
    layout: BatchLayout, blob: bytes | memoryview, *, kind: int, max_chunks: int
) -> tuple[int, np.ndarray]:
    """Validate and decode a batch; return (length, data of shape (chunks, polys, limbs, N)).

    Checks, in order and before allocating anything large: header size, magic, version, kind, shape, the
    declared chunk count against ``max_chunks``, parms_id and scale, the exact byte count, then every
    coefficient against its prime.
    """
    length, chunks = check_header(layout, blob, kind=kind, max_chunks=max_chunks)
    polys, limbs = _POLYS[kind], len(layout.primes)
    count = chunks * polys * limbs * layout.degree
    data = unpack_bits(blob, count, layout.bits, offset=HEADER.size).reshape(chunks, polys, limbs, layout.degree)
    check_below_primes(data, layout.primes)
    return length, data


def check_header(layout: BatchLayout, blob: bytes | memoryview, *, kind: int, max_chunks: int) -> tuple[int, int]:
    """Every check of ``decode_batch`` but the coefficients' (header, limits, exact size); return (length, chunks).

    For decoders that unpack a batch a few chunks at a time: chunk k's coefficients start at byte
    ``HEADER.size + k * layout.payload_bytes(kind, 1)``.
    """
    name = _KIND_NAMES[kind]
    if len(blob) < HEADER.size:
        raise Truncated(f"{name} batch is {len(blob)} bytes, shorter than its {HEADER.size}-byte header")
    magic, version, got_kind, polys, limbs, log_degree, bits, reserved, length, chunks, parms_id, scale = (
        HEADER.unpack_from(blob)
    )
    if magic != MAGIC:
        raise BadHeader(f"{name} batch has bad magic {magic!r}")
    if version != FORMAT_VERSION:
        raise BadHeader(f"{name} batch format version {version}, expected {FORMAT_VERSION}")
    if got_kind != kind or reserved != 0:
        raise BadHeader(f"expected a {name} batch, got kind {got_kind}")
    if polys != _POLYS[kind] or limbs != len(layout.primes) or log_degree >= 64 or 1 << log_degree != layout.degree:
        raise BadShape(
            f"{name} batch shape ({polys} polys, {limbs} limbs, N=2^{log_degree}) is not "
            f"({_POLYS[kind]}, {len(layout.primes)}, {layout.degree})"
        )
    if bits != layout.bits:
        raise BadShape(f"{name} batch packs {bits}-bit coefficients, expected {layout.bits}")
    if chunks > max_chunks:
        raise TooLarge(f"{name} batch declares {chunks} chunks, limit {max_chunks}")
    if chunks != layout.chunks_for(length):
        raise BadShape(f"{name} batch declares {chunks} chunks for {length} values")
    if parms_id != layout.parms_id:
        raise ParmsMismatch(f"{name} batch parms_id is not the consortium's (another key or preset)")
    if scale != layout.scale:
        raise ParmsMismatch(f"{name} batch scale {scale!r} is not the consortium's {layout.scale!r}")
    expected = HEADER.size + layout.payload_bytes(kind, chunks)
    if len(blob) < expected:
        raise Truncated(f"{name} batch is {len(blob)} bytes, needs {expected}")
    if len(blob) > expected:
        raise BadShape(f"{name} batch has {len(blob) - expected} trailing bytes")
    return length, chunks


def select_chunks(layout: BatchLayout, source: bytes | BinaryIO, indices: list[int]) -> bytes:
    """A ciphertext batch holding only the chunks ``indices`` of a validated batch, without unpacking.

    ``source`` is the batch's bytes or a seekable file holding them. Chunks are byte-aligned in the packed
    layout (N * bits is a multiple of 8), so this is slicing plus a new header.
    """

    def read(offset: int, size: int) -> bytes:
        if isinstance(source, bytes | bytearray | memoryview):
            return bytes(source[offset : offset + size])
        source.seek(offset)
        return source.read(size)

    per_chunk = layout.payload_bytes(KIND_CIPHERTEXT, 1)
    header = bytearray(read(0, HEADER.size))
    struct.pack_into("<QI", header, 12, len(indices) * layout.degree, len(indices))
    return bytes(header) + b"".join(read(HEADER.size + index * per_chunk, per_chunk) for index in indices)


def chunk_digests(layout: BatchLayout, blob: bytes | memoryview) -> list[bytes]:
    """SHA-256 of each chunk's packed bytes in a (header-checked) ciphertext batch.

    Packing is a bijection on coefficients below 2**bits, so this identifies a chunk exactly, and it can be
    computed (and checked against a signature) without unpacking anything.
    """
    (chunks,) = struct.unpack_from("<I", blob, 20)
    per_chunk = layout.payload_bytes(KIND_CIPHERTEXT, 1)
    view = memoryview(blob)
    return [
        hashlib.sha256(view[HEADER.size + k * per_chunk : HEADER.size + (k + 1) * per_chunk]).digest()
        for k in range(chunks)
    ]
