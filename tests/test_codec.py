"""The wire format of encrypted vectors and partials: exact round trips, and every tampering rejected by name."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tenseal import sealapi

from heagg.crypto import codec, seal_format
from heagg.crypto.threshold import PartialDecryption, partial_decrypt
from heagg.crypto.vectors import EncryptedVector, encrypt_vector
from heagg.errors import (
    BadHeader,
    BadShape,
    CoefficientOutOfRange,
    InvalidCiphertext,
    ParmsMismatch,
    TooLarge,
    Truncated,
)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 64), groups=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_bit_packing_round_trips(bits, groups, seed):
    rng = np.random.default_rng(seed)
    values = (
        rng.integers(0, 2**bits, 64 * groups, dtype=np.uint64, endpoint=False)
        if bits < 64
        else (rng.integers(0, 2**63, 64 * groups, dtype=np.uint64))
    )
    packed = codec.pack_bits(values, bits)
    assert len(packed) == 64 * groups * bits // 8
    np.testing.assert_array_equal(codec.unpack_bits(packed, values.size, bits), values)
    if bits < 64:  # the fast path for 36..60-bit widths writes exactly the documented bit string
        assert packed == codec._pack_groups(values, bits)


def test_ciphertext_batch_round_trips_and_is_15_bytes_per_parameter(ceremony):
    c = ceremony(3, 2)
    vec = encrypt_vector(c.ctx, np.linspace(-1, 1, 3 * c.ctx.degree))
    blob = vec.to_bytes(c.ctx)
    back = EncryptedVector.from_bytes(c.ctx, blob, max_chunks=10)
    assert back.length == vec.length
    np.testing.assert_array_equal(back.data, vec.data)
    assert len(blob) == codec.HEADER.size + 3 * 2 * c.ctx.degree * 60 // 8
    assert (len(blob) - codec.HEADER.size) / vec.length == 15.0


def test_partial_batch_round_trips(ceremony):
    c = ceremony(3, 2)
    vec = encrypt_vector(c.ctx, np.ones(100))
    part = partial_decrypt(c.ctx, c.shares[1], vec.c1, (1, 2), length=100, sigma=c.consortium.sigma)
    back = PartialDecryption.from_bytes(c.ctx, part.to_bytes(c.ctx), index=1, decrypting_set=(1, 2), max_chunks=4)
    np.testing.assert_array_equal(back.data, part.data)
    with pytest.raises(BadHeader):  # a partial is not a ciphertext, and vice versa
        EncryptedVector.from_bytes(c.ctx, part.to_bytes(c.ctx), max_chunks=4)
    with pytest.raises(BadHeader):
        PartialDecryption.from_bytes(c.ctx, vec.to_bytes(c.ctx), index=1, decrypting_set=(1, 2), max_chunks=4)


@pytest.fixture
def blob_and_ctx(ceremony):
    c = ceremony(3, 2)
    return encrypt_vector(c.ctx, np.linspace(-1, 1, 1000)).to_bytes(c.ctx), c.ctx


def _patch(blob: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(blob)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_wrong_parms_id_is_rejected(blob_and_ctx, ceremony):
    blob, ctx = blob_and_ctx
    other = ceremony(3, 2, "precise").ctx
    with pytest.raises(ParmsMismatch):
        EncryptedVector.from_bytes(ctx, _patch(blob, 24, "32s", other.parms_id), max_chunks=4)
    # a ciphertext of another consortium with the same preset: same parameters, so the same parms_id, but
    # a different key; that is caught by the contribution signatures, not here (see test_protocol)
    with pytest.raises(ParmsMismatch):
        EncryptedVector.from_bytes(ctx, _patch(blob, 56, "<d", ctx.scale * 2), max_chunks=4)


def test_coefficient_at_or_above_its_prime_is_rejected(blob_and_ctx):
    blob, ctx = blob_and_ctx
    length, data = codec.decode_batch(
        codec.BatchLayout(ctx.primes, ctx.degree, ctx.parms_id, ctx.scale),
        blob,
        kind=codec.KIND_CIPHERTEXT,
        max_chunks=4,
    )
    for bad in (ctx.primes[0], 2**60 - 1):
        tampered = data.copy()
        tampered[0, 1, 0, 17] = bad
        layout = codec.BatchLayout(ctx.primes, ctx.degree, ctx.parms_id, ctx.scale)
        forged = codec.encode_batch(layout, codec.KIND_CIPHERTEXT, length, tampered)
        with pytest.raises(CoefficientOutOfRange):
            EncryptedVector.from_bytes(ctx, forged, max_chunks=4)


def test_truncated_or_extended_batches_are_rejected(blob_and_ctx):
    blob, ctx = blob_and_ctx
    for cut in (0, 1, 10, codec.HEADER.size - 1, codec.HEADER.size, codec.HEADER.size + 7, len(blob) - 1):
        with pytest.raises(Truncated):
            EncryptedVector.from_bytes(ctx, blob[:cut], max_chunks=4)
    with pytest.raises(BadShape):
        EncryptedVector.from_bytes(ctx, blob + b"\0", max_chunks=4)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "error"),
    [
        (0, "4s", b"XXXX", BadHeader),  # magic
        (4, "B", 2, BadHeader),  # format version
        (5, "B", 2, BadHeader),  # kind
        (6, "B", 3, BadShape),  # polynomials per chunk
        (7, "B", 2, BadShape),  # limbs
        (8, "B", 13, BadShape),  # degree 8192 instead of 4096
        (8, "B", 200, BadShape),  # absurd degree
        (9, "B", 64, BadShape),  # packing width
        (12, "<Q", 5000, BadShape),  # length that needs two chunks
        (20, "<I", 2, BadShape),  # chunk count inconsistent with the length
        (20, "<I", 2**31, TooLarge),  # chunk count beyond the limit: refused before allocating
    ],
)
def test_tampered_header_fields_are_rejected_by_name(blob_and_ctx, offset, fmt, value, error):
    blob, ctx = blob_and_ctx
    with pytest.raises(error):
        EncryptedVector.from_bytes(ctx, _patch(blob, offset, fmt, value), max_chunks=4)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_random_corruption_never_escapes_the_error_tree(ceremony, data):
    """Flip bytes or feed garbage: decoding either succeeds on a well-formed batch or raises InvalidCiphertext."""
    c = ceremony(3, 2)
    blob = bytearray(encrypt_vector(c.ctx, np.ones(10)).to_bytes(c.ctx))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    garbage = data.draw(st.binary(max_size=200))
    for candidate in (bytes(blob), garbage, bytes(blob[: data.draw(st.integers(0, len(blob)))])):
        try:
            vec = EncryptedVector.from_bytes(c.ctx, candidate, max_chunks=4)
        except InvalidCiphertext:
            continue
        assert vec.chunks == 1 and np.all(vec.data < np.uint64(c.ctx.primes[0]))


def test_seal_loader_quirks_are_checked_by_heagg(ceremony):
    """SEAL loads a ciphertext with the NTT flag off or an absurd scale; heagg's parser does not."""
    c = ceremony(3, 2)
    data = encrypt_vector(c.ctx, np.ones(4)).data[0]
    ctx = c.ctx
    seal_ctx = ctx._seal
    # SEAL itself loads these without complaint: the reason heagg checks them
    for lax in (
        seal_format.build_ciphertext(ctx.parms_id, data, ntt=False, scale=ctx.scale),
        seal_format.build_ciphertext(ctx.parms_id, data, ntt=True, scale=2.0**300),
    ):
        loaded = seal_format.MemFile().load(sealapi.Ciphertext(seal_ctx), seal_ctx, lax)
        assert loaded.size() == 2
    expect = {"primes": ctx.primes, "degree": ctx.degree, "parms_id": ctx.parms_id, "scale": ctx.scale}
    good = seal_format.build_ciphertext(ctx.parms_id, data, ntt=True, scale=ctx.scale)
    assert np.array_equal(seal_format.parse_ciphertext(good, **expect).data, data)
    for blob, error in [
        (seal_format.build_ciphertext(ctx.parms_id, data, ntt=False, scale=ctx.scale), ParmsMismatch),
        (seal_format.build_ciphertext(ctx.parms_id, data, ntt=True, scale=2.0**300), ParmsMismatch),
        (seal_format.build_ciphertext(ctx.parms_id, data, ntt=True, scale=float("nan")), ParmsMismatch),
        (seal_format.build_ciphertext(b"\1" * 32, data, ntt=True, scale=ctx.scale), ParmsMismatch),
        (good[:-8], Truncated),
        (b"\0" * 16, BadHeader),
        (_patch(good, 3, "B", 2), BadHeader),  # SEAL version 4.2
        (_patch(good, 6, "B", 7), BadHeader),  # compression mode
    ]:
        with pytest.raises(error):
            seal_format.parse_ciphertext(blob, **expect)
    bad = data.copy()
    bad[1, 0, 0] = ctx.primes[0]
    with pytest.raises(CoefficientOutOfRange):
        seal_format.parse_ciphertext(
            seal_format.build_ciphertext(ctx.parms_id, bad, ntt=True, scale=ctx.scale), **expect
        )


def test_golden_batch_encoding():
    """A fixed batch (not an encryption: fixed coefficients) against its stored bytes: the format cannot drift."""
    primes = (1152921504606830593,)
    layout = codec.BatchLayout(primes, 1024, bytes(range(32)), 2.0**56)
    data = (np.arange(2 * 1024, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) % np.uint64(primes[0])).reshape(
        1, 2, 1, 1024
    )
    blob = codec.encode_batch(layout, codec.KIND_CIPHERTEXT, 1000, data)
    path = Path(__file__).parent / "vectors" / "ciphertext-batch-v1.bin"
    if os.environ.get("HEAGG_REGEN_VECTORS"):
        path.write_bytes(blob)
    assert blob == path.read_bytes()
    length, back = codec.decode_batch(layout, path.read_bytes(), kind=codec.KIND_CIPHERTEXT, max_chunks=1)
    assert length == 1000
    np.testing.assert_array_equal(back, data)
