"""Property-based fuzzing of every decoder that reads bytes from the network or from disk.

Each decoder, fed mutated valid inputs (byte flips, insertions, deletions, truncations, and structure-aware
rewrites of one field at a time) and random bytes, either returns a well-formed result or raises an error of its
own tree; never anything else (an escaped TypeError or KeyError would crash the aggregator or a node):

    heagg.messages.decode                 -> a Message that re-encodes to itself, or a ProtocolError
    codec.check_header / decode_batch     -> a consistent batch, or InvalidCiphertext (ciphertexts and partials)
    RunningSum.add_bytes                  -> adds exactly, or raises InvalidCiphertext and leaves the sum unchanged
    seal_format.parse_ciphertext          -> a ciphertext of the expected shape, or InvalidCiphertext
    keyfile.open_keyfile / inspect        -> the sealed secret, or KeyFileError / UsageError
    protocol.state.load_record            -> a record, or KeyFileCorrupted (any damage: KeyFileCorrupted)
    crypto.ledger.DecryptionLedger        -> its records, or KeyFileCorrupted; damage never drops a record

The atheris harness (fuzz/envelope_fuzz.py, run by tests/security/test_fuzz_envelope.py) adds coverage-guided
fuzzing of the envelope decoder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from collections import Counter

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heagg.crypto import codec, seal_format
from heagg.crypto.keyfile import MAGIC as KEY_MAGIC
from heagg.crypto.keyfile import inspect_keyfile, open_keyfile, seal_keyfile
from heagg.crypto.ledger import MAGIC as LEDGER_MAGIC
from heagg.crypto.ledger import DecryptionLedger
from heagg.crypto.modarith import add_mod
from heagg.crypto.threshold import PartialDecryption, partial_decrypt
from heagg.crypto.vectors import EncryptedVector, RunningSum, encrypt_vector, layout_of
from heagg.errors import InvalidCiphertext, KeyFileCorrupted, KeyFileError, ProtocolError, UsageError
from heagg.messages import MESSAGE_TYPES, decode
from heagg.protocol.state import load_record, save_record

from .security.campaign import CAMPAIGN
from .test_message_vectors import EXAMPLES, build

#: inputs fed to each decoder in this run, reported in the campaign summary
FED: Counter = Counter()
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    CAMPAIGN.fuzz["decoders (hypothesis)"] = f"{sum(FED.values())} inputs: " + ", ".join(
        f"{name} {n}" for name, n in sorted(FED.items())
    )


# mutation strategies ---------------------------------------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=24)
    | st.binary(max_size=48)
)
#: any msgpack value, maps with keys of every kind (the envelope decoder must refuse non-str keys itself)
MSGPACK = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=12) | st.binary(max_size=4) | st.integers(-5, 5), inner, max_size=4)
    ),
    max_leaves=12,
)

#: msgpack bytes of a map whose key is a list or a map: valid msgpack that Python cannot hold as a dict key
UNHASHABLE_KEY_MAP = st.builds(
    lambda key, value: b"\x81" + msgpack.packb(key, use_bin_type=True) + msgpack.packb(value, use_bin_type=True),
    st.lists(_SCALARS, max_size=2) | st.dictionaries(st.text(max_size=4), _SCALARS, max_size=2),
    _SCALARS,
)


@st.composite
def mutated(draw, data: bytes, *, max_ops: int = 4, protect: range | None = None) -> bytes:
    """``data`` after a few byte-level edits: overwrite, insert, delete, truncate, extend."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["set", "flip", "insert", "delete", "truncate", "extend"]))
        if not out:
            op = "extend"
        pos = draw(st.integers(0, max(len(out) - 1, 0)))
        if protect is not None and pos in protect and op in ("set", "flip"):
            continue
        if op == "set":
            out[pos] = draw(st.integers(0, 255))
        elif op == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del out[pos : pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del out[pos:]
        else:
            out += draw(st.binary(min_size=1, max_size=32))
    return bytes(out)


# the envelope ----------------------------------------------------------------------------------------------------


def decodes_or_refuses(frames: list[bytes]) -> None:
    """The property every envelope must meet; anything but a ProtocolError escapes and fails the test."""
    FED["envelope"] += 1
    try:
        msg = decode(frames)
    except ProtocolError:
        return
    again = decode(msg.to_frames())
    assert again == msg and again.payload == msg.payload


@settings(FAST, max_examples=400)
@given(kind=st.sampled_from(sorted(EXAMPLES)), data=st.data())
def test_envelopes_mutated_byte_by_byte_decode_or_raise_a_protocol_error(kind, data):
    frames = build(kind).to_frames()
    envelope = data.draw(mutated(frames[0], max_ops=6))
    extra = data.draw(st.integers(-len(frames) + 1, 3))
    payload = frames[1:] + [b"x"] * max(extra, 0) if extra >= 0 else frames[1 : len(frames) + extra]
    decodes_or_refuses([envelope, *payload])


@settings(FAST, max_examples=600)
@given(kind=st.sampled_from(sorted(EXAMPLES)), data=st.data())
def test_envelopes_with_a_field_rewritten_decode_or_raise_a_protocol_error(kind, data):
    """Structure-aware: one envelope or body field replaced by any msgpack value, removed, or added."""
    frames = build(kind).to_frames()
    env = msgpack.unpackb(frames[0], raw=False)
    target = data.draw(st.sampled_from(["envelope", "body"]))
    fields = env if target == "envelope" else env["body"]
    op = data.draw(st.sampled_from(["replace", "delete", "add"] if fields else ["add"]))
    if op == "add":
        fields[data.draw(st.text(max_size=12))] = data.draw(MSGPACK)
    else:
        name = data.draw(st.sampled_from(sorted(fields)))
        if op == "delete":
            del fields[name]
        else:
            fields[name] = data.draw(MSGPACK)
    payload = [data.draw(st.binary(max_size=16)) for _ in range(data.draw(st.integers(0, 3)))]
    decodes_or_refuses([msgpack.packb(env, use_bin_type=True), *payload])


@settings(FAST, max_examples=300)
@given(frames=st.lists(st.binary(max_size=200), max_size=5), value=MSGPACK, odd=UNHASHABLE_KEY_MAP)
def test_random_frames_and_values_decode_or_raise_a_protocol_error(frames, value, odd):
    decodes_or_refuses(frames)
    decodes_or_refuses([msgpack.packb(value, use_bin_type=True), *frames[:2]])
    decodes_or_refuses([odd, *frames[:1]])


def test_an_unhashable_message_type_is_a_protocol_error():
    """Found by the structure-aware fuzzer: ``"type": [...]`` raised TypeError, which crashed the aggregator."""
    env = msgpack.unpackb(build("submit").to_frames()[0], raw=False)
    for bad in (["submit"], {"submit": 1}):
        with pytest.raises(ProtocolError):
            decode([msgpack.packb({**env, "type": bad}, use_bin_type=True), b"ct"])
    assert set(EXAMPLES) == set(MESSAGE_TYPES)


# ciphertext and partial batches ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batches(ceremony):
    """A consortium context, and valid batches: a 20-chunk ciphertext (three unpacking blocks) and a partial."""
    c = ceremony(3, 2)
    rng = np.random.default_rng(5)
    vectors = [encrypt_vector(c.ctx, rng.uniform(-1, 1, 20 * c.ctx.degree - 7)) for _ in range(2)]
    partial = partial_decrypt(
        c.ctx, c.shares[1], vectors[0].c1[:2], (1, 2), length=2 * c.ctx.degree - 3, sigma=c.consortium.sigma
    )
    return c.ctx, [v.to_bytes(c.ctx) for v in vectors], partial.to_bytes(c.ctx)


def _bad_coefficient(ctx, blob: bytes, chunk: int, position: int) -> bytes:
    """The batch with one coefficient set to its prime (decoded, edited and re-encoded: header intact)."""
    layout = layout_of(ctx)
    length, data = codec.decode_batch(layout, blob, kind=codec.KIND_CIPHERTEXT, max_chunks=1 << 10)
    data = data.copy()
    data[chunk, 1, 0, position] = ctx.primes[0]
    return codec.encode_batch(layout, codec.KIND_CIPHERTEXT, length, data)


@settings(FAST, max_examples=150)
@given(data=st.data())
def test_partial_batches_decode_or_raise_invalid_ciphertext(batches, data):
    ctx, _, partial = batches
    FED["partial batch"] += 1
    blob = data.draw(mutated(partial[:400], max_ops=3) | st.binary(max_size=120)) + partial[400:]
    try:
        back = PartialDecryption.from_bytes(ctx, blob, index=1, decrypting_set=(1, 2), max_chunks=4)
    except InvalidCiphertext:
        return
    assert back.data.shape[1:] == (len(ctx.primes), ctx.degree) and back.data.shape[0] <= 4
    assert np.all(back.data < np.uint64(ctx.primes[0]))


@st.composite
def headers(draw, ctx):
    """Batch headers field by field: each field valid, off by a little, or anything."""
    layout = layout_of(ctx)

    def field(valid, anything):
        return draw(st.sampled_from([valid, valid, valid]) | anything)

    kind = field(codec.KIND_CIPHERTEXT, st.integers(0, 255))
    length = field(3 * ctx.degree - 5, st.integers(0, 2**64 - 1))
    chunks = field(3, st.integers(0, 2**32 - 1))
    return codec.HEADER.pack(
        field(codec.MAGIC, st.binary(min_size=4, max_size=4)),
        field(codec.FORMAT_VERSION, st.integers(0, 255)),
        kind,
        field(2, st.integers(0, 255)),
        field(len(layout.primes), st.integers(0, 255)),
        field(ctx.degree.bit_length() - 1, st.integers(0, 255)),
        field(layout.bits, st.integers(0, 255)),
        field(0, st.integers(0, 2**16 - 1)),
        length,
        chunks,
        field(layout.parms_id, st.binary(min_size=32, max_size=32)),
        field(layout.scale, st.floats(width=64)),
    )


@settings(FAST, max_examples=300)
@given(data=st.data())
def test_check_header_accepts_only_a_consistent_batch(batches, data):
    ctx, _, _ = batches
    layout = layout_of(ctx)
    header = data.draw(headers(ctx))
    size = data.draw(st.sampled_from([0, 1, layout.payload_bytes(codec.KIND_CIPHERTEXT, 3)]) | st.integers(0, 10**6))
    blob = header + bytes(size)
    FED["batch header"] += 1
    try:
        length, chunks = codec.check_header(layout, blob, kind=codec.KIND_CIPHERTEXT, max_chunks=8)
    except InvalidCiphertext:
        return
    assert chunks <= 8 and chunks == layout.chunks_for(length)
    assert len(blob) == codec.HEADER.size + layout.payload_bytes(codec.KIND_CIPHERTEXT, chunks)


@settings(FAST, max_examples=25)
@given(data=st.data())
def test_a_rejected_batch_leaves_the_running_sum_unchanged(batches, data):
    """Valid and damaged batches in any order, beyond the 16 lazy additions before a reduction: the running sum
    is always exactly the modular sum of the accepted ones, and a rejection changes nothing (count included)."""
    ctx, valid, _ = batches
    chunks = 20
    total, reference, accepted = RunningSum(ctx), None, 0
    for _ in range(data.draw(st.integers(1, 24))):
        choice = data.draw(st.sampled_from(["valid", "valid", "coefficient", "mutated", "length"]))
        blob = valid[data.draw(st.integers(0, 1))]
        if choice == "coefficient":  # fails in the first, middle or last block of unpacking
            blob = _bad_coefficient(
                ctx, blob, data.draw(st.sampled_from([0, 7, 8, 15, 19])), data.draw(st.integers(0, 99))
            )
        elif choice == "mutated":
            blob = data.draw(mutated(blob[:200], max_ops=2)) + blob[200:]
        elif choice == "length":
            blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
        before = None if reference is None else total.total.data.copy()
        FED["running sum"] += 1
        try:
            total.add_bytes(blob, max_chunks=chunks)
        except InvalidCiphertext:
            assert total.count == accepted
            if before is not None:
                np.testing.assert_array_equal(total.total.data, before)
            continue
        vector = EncryptedVector.from_bytes(ctx, blob, max_chunks=chunks)  # accepted: so must the full decoder
        reference = vector.data.copy() if reference is None else add_mod(reference, vector.data, ctx.moduli)
        accepted += 1
        assert total.count == accepted
    if reference is not None:
        np.testing.assert_array_equal(total.total.data, reference)


# SEAL's own format ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seal_blobs(batches):
    """A valid SEAL ciphertext (uncompressed) and the same with a zstd-compressed body, as SEAL writes them."""
    ctx, valid, _ = batches
    _, data = codec.decode_batch(layout_of(ctx), valid[0], kind=codec.KIND_CIPHERTEXT, max_chunks=32)
    plain = seal_format.build_ciphertext(ctx.parms_id, data[0], ntt=True, scale=ctx.scale)
    body = zstandard.ZstdCompressor().compress(plain[seal_format.HEADER.size :])
    header = seal_format.HEADER.pack(seal_format.MAGIC, 16, 4, 3, seal_format.COMPR_ZSTD, 0, 16 + len(body))
    return ctx, data[0], [plain, header + body]


@settings(FAST, max_examples=300)
@given(data=st.data())
def test_seal_ciphertexts_parse_or_raise_invalid_ciphertext(seal_blobs, data):
    ctx, expected, blobs = seal_blobs
    blob = data.draw(st.sampled_from(blobs))
    head = data.draw(st.sampled_from([100, 400]))
    candidate = data.draw(mutated(blob[:head], max_ops=3) | st.binary(max_size=200)) + blob[head:]
    if data.draw(st.booleans()):  # keep the declared total size right, so parsing gets further
        candidate = candidate[:8] + struct.pack("<Q", len(candidate)) + candidate[16:]
    FED["SEAL ciphertext"] += 1
    expect = {"primes": ctx.primes, "degree": ctx.degree, "parms_id": ctx.parms_id, "scale": ctx.scale}
    try:
        parsed = seal_format.parse_ciphertext(candidate, **expect)
    except InvalidCiphertext:
        pass
    else:
        assert parsed.data.shape == expected.shape and parsed.is_ntt_form and parsed.scale == ctx.scale
        assert np.all(parsed.data < np.uint64(ctx.primes[0]))
    with contextlib.suppress(InvalidCiphertext):
        seal_format.parse_plaintext(candidate)


# key files --------------------------------------------------------------------------------------------------------

PASSPHRASE = "fuzzing the sealed file"
_KDF_FIELDS = range(12, 20)  # scrypt n, r, p: mutating them with a valid checksum would cost up to 1 GiB per try


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keyfile") / "site.share"
    seal_keyfile(
        path,
        kind="site-share",
        public={"site": "site-1", "index": 1},
        secret={"share": bytes(range(64)), "group_key": os.urandom(32)},
        passphrase=PASSPHRASE,
        kdf_n=2**10,
    )
    return path.read_bytes(), open_keyfile(path, passphrase=PASSPHRASE).secret


@settings(FAST, max_examples=200)
@given(data=st.data())
def test_mutated_key_files_open_or_raise_a_key_file_error(key_file, tmp_path_factory, data):
    original, secret = key_file
    candidate = data.draw(mutated(original, max_ops=4, protect=_KDF_FIELDS) | st.binary(max_size=300))
    if len(candidate) > 32 and data.draw(st.booleans()) and candidate[12:20] == original[12:20]:
        # a deliberate tamperer recomputes the trailing checksum: then only the AEAD stands in the way
        candidate = candidate[:-32] + hashlib.sha256(candidate[:-32]).digest()
    path = tmp_path_factory.mktemp("mutated") / "site.share"
    path.write_bytes(candidate)
    path.chmod(0o600)
    FED["key file"] += 1
    for passphrase in (PASSPHRASE, None):
        try:
            opened = open_keyfile(path, passphrase=passphrase, expect_kind="site-share")
        except (KeyFileError, UsageError):
            continue
        assert opened.secret == secret  # only an edit the AEAD covers cannot be undone
    same_kdf = candidate[12:20] == original[12:20]  # else inspecting with a passphrase may run a 1 GiB scrypt
    with contextlib.suppress(KeyFileError, UsageError):
        inspect_keyfile(path, passphrase=PASSPHRASE if same_kdf else None)


def _key_file_from_layout(kind: bytes, public_raw: bytes, sealed: bytes) -> bytes:
    header = (
        KEY_MAGIC
        + struct.pack(">HBBIHH", 1, 1, 1, 2**10, 8, 1)
        + os.urandom(28)
        + struct.pack(">H", len(kind))
        + kind
        + struct.pack(">I", len(public_raw))
        + public_raw
    )
    body = header + struct.pack(">I", len(sealed)) + sealed
    return body + hashlib.sha256(body).digest()


@settings(FAST, max_examples=150)
@given(
    kind=st.binary(max_size=20) | st.sampled_from([b"site-share", b"aggregator-key"]),
    public=MSGPACK,
    sealed=st.binary(max_size=64),
)
def test_key_files_with_any_metadata_raise_a_key_file_error(tmp_path_factory, kind, public, sealed):
    """Structure-aware: a well-framed, checksummed file whose kind, metadata and sealed part are anything."""
    path = tmp_path_factory.mktemp("layout") / "k.share"
    path.write_bytes(_key_file_from_layout(kind, msgpack.packb(public, use_bin_type=True), sealed))
    path.chmod(0o600)
    FED["key file"] += 1
    with pytest.raises((KeyFileError, UsageError)):
        open_keyfile(path, passphrase=None)
    try:
        info = inspect_keyfile(path)
    except (KeyFileError, UsageError):
        return
    assert info.lines()  # hostile metadata renders


# state files ------------------------------------------------------------------------------------------------------

RECORD = {
    "format": "heagg-node-state/1",
    "consortium_id": "c-0011",
    "run_id": "r",
    "shared": b"\x85" * 40,
    "history": [{"round": 1, "step": "train"}],
}


@settings(FAST, max_examples=300)
@given(data=st.data())
def test_damaged_state_files_raise_key_file_corrupted(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("state") / "node.state"
    save_record(path, RECORD)
    original = path.read_bytes()
    damaged = data.draw(mutated(original, max_ops=3) | st.binary(max_size=100))
    path.write_bytes(damaged)
    FED["state file"] += 1
    if damaged == original:
        assert load_record(path) == RECORD
        return
    with pytest.raises(KeyFileCorrupted):  # any damage: the checksum catches it
        load_record(path)


@settings(FAST, max_examples=200)
@given(payload=MSGPACK | st.binary(max_size=80) | UNHASHABLE_KEY_MAP)
def test_checksummed_state_files_load_or_raise_key_file_corrupted(tmp_path_factory, payload):
    """A file with a valid checksum around anything (not a crash: a tool or a person wrote it)."""
    path = tmp_path_factory.mktemp("state") / "node.state"
    raw = payload if isinstance(payload, bytes) else msgpack.packb(payload, use_bin_type=True)
    path.write_bytes(raw + hashlib.sha256(raw).digest())
    FED["state file"] += 1
    try:
        record = load_record(path)
    except KeyFileCorrupted:
        return
    assert isinstance(record, dict)


# the decryption ledger --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ledger_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ledger") / "decryption.ledger"
    ledger = DecryptionLedger(path, budget=1000)
    for i in range(4):
        ledger.authorize([os.urandom(32) for _ in range(i + 1)], label=f"run/{i}/train/1", decrypting_set=[1, 2])
    data = path.read_bytes()
    ends, offset = [], len(LEDGER_MAGIC)
    while offset < len(data):
        (size,) = struct.unpack_from("<I", data, offset)
        offset += 4 + size + 8
        ends.append(offset)
    return data, ends


def _open_ledger(tmp_path_factory, data: bytes) -> tuple[DecryptionLedger, bytes]:
    path = tmp_path_factory.mktemp("ledger") / "decryption.ledger"
    path.write_bytes(data)
    FED["ledger"] += 1
    return DecryptionLedger(path, budget=1000), path


@settings(FAST, max_examples=200)
@given(data=st.data())
def test_any_damaged_byte_of_the_ledger_refuses_to_load(tmp_path_factory, ledger_bytes, data):
    """One changed byte anywhere, a length prefix included, refuses to load: the ledger never forgets silently.
    (Before the fix, a damaged length prefix passed for a torn tail and every later record was dropped.)"""
    original, _ = ledger_bytes
    position = data.draw(st.integers(0, len(original) - 1))
    damaged = bytearray(original)
    damaged[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(KeyFileCorrupted):
        _open_ledger(tmp_path_factory, bytes(damaged))


@settings(FAST, max_examples=100)
@given(data=st.data())
def test_a_truncated_ledger_keeps_every_whole_record(tmp_path_factory, ledger_bytes, data):
    """A crash mid-append leaves a prefix: every record wholly inside it is kept, the torn rest dropped."""
    original, ends = ledger_bytes
    cut = data.draw(st.integers(len(LEDGER_MAGIC), len(original)))
    ledger, path = _open_ledger(tmp_path_factory, original[:cut])
    whole = [end for end in ends if end <= cut]
    assert ledger.used == sum(range(1, len(whole) + 1))  # record i holds i + 1 chunk digests
    assert path.read_bytes() == original[: whole[-1] if whole else len(LEDGER_MAGIC)]


@settings(FAST, max_examples=200)
@given(records=st.lists(MSGPACK | st.binary(max_size=30) | UNHASHABLE_KEY_MAP, max_size=3), tail=st.binary(max_size=20))
def test_ledgers_with_any_checksummed_records_load_or_raise_key_file_corrupted(tmp_path_factory, records, tail):
    """Structure-aware: well-framed records (length, payload, checksum) around any payload at all."""
    body = LEDGER_MAGIC
    for record in records:
        raw = record if isinstance(record, bytes) else msgpack.packb(record, use_bin_type=True)
        body += struct.pack("<I", len(raw)) + raw + hashlib.sha256(raw).digest()[:8]
    with contextlib.suppress(KeyFileCorrupted):
        _open_ledger(tmp_path_factory, body + tail)
