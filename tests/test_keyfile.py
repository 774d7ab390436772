"""Sealed key files (heagg.crypto.keyfile): real files under tmp_path.

Tests seal with a cheap scrypt (``kdf_n=FAST_N``) through the explicit keyword; one test uses the default cost.
"""

from __future__ import annotations

import base64
import errno
import getpass
import hashlib
import io
import logging
import os
import stat
import struct
import sys
import tempfile
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heagg.crypto import keyfile
from heagg.crypto.keyfile import (
    DEFAULT_KDF_N,
    MAGIC,
    MAX_FILE_BYTES,
    KeyFile,
    inspect_keyfile,
    open_keyfile,
    passphrase_from_env_or_prompt,
    seal_keyfile,
)
from heagg.errors import KeyFileCorrupted, KeyFileError, UsageError, WrongKeyFile, WrongPassphrase

FAST_N = 2**10
PASS = "correct horse battery"
PUBLIC = {"site": "st-olav", "index": 2, "consortium": "nordic-onco", "verify_key": bytes(range(32))}
SECRET = {
    "share": b"\x00\xffshare-bytes\x00" * 4,
    "limbs": [[1152921504606830593, 0, 2**64 - 1], [-(2**63), 7]],
    "group_key": bytes(range(100, 132)),
    "nested": {"a": [True, None, 1.5, "text"], "b": b""},
}

# A version-1 file sealed once (kdf_n=2**10, passphrase PASS): keeps the format from drifting unnoticed.
GOLDEN_HEX = (
    "48454147474b4559000100010000040000080001b52682ed9c569807202f0e7986bdebee61eb20e487e9560dfd55ce83000a"
    "736974652d73686172650000001582a473697465a773742d6f6c6176a5696e646578020000002c3225d03717c265540408f5"
    "cfd3f31710dbe15f71fb154ed45c451a9dbb1b3683a1ca7082921767b295107c5f9c3d1c5e052715d4b478f828d5da9a47f9"
    "f406663f96b79903f4f428afef51e3"
)
GOLDEN_FINGERPRINT = "975ce960efa9dfd6"
GOLDEN_SECRET = {"share": bytes(range(8)), "q": 1152921504606830593}


def seal(path: Path, *, passphrase: str | None = PASS, kind: str = "site-share", **kwargs) -> str:
    kwargs.setdefault("public", PUBLIC)
    kwargs.setdefault("secret", SECRET)
    kwargs.setdefault("kdf_n", FAST_N)
    return seal_keyfile(path, kind=kind, passphrase=passphrase, **kwargs)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def header_len(data: bytes) -> int:
    """H in the documented layout: 54 + K + P."""
    k = int.from_bytes(data[48:50], "big")
    p = int.from_bytes(data[50 + k : 54 + k], "big")
    return 54 + k + p


def rechecksum(data: bytes) -> bytes:
    """Replace the trailing SHA-256 so a modification gets past the checksum (a deliberate tamperer)."""
    return data[:-32] + hashlib.sha256(data[:-32]).digest()


def build_from_spec(
    *, kind: bytes = b"site-share", public_raw: bytes, secret_raw: bytes, passphrase: str = "", n: int = FAST_N
) -> bytes:
    """An independent writer following the module docstring, to check the documented layout is the real one."""
    salt, nonce = os.urandom(16), os.urandom(12)
    flags = 0 if passphrase else 1
    header = (
        MAGIC
        + struct.pack(">HBBIHH", 1, flags, 1, n, 8, 1)
        + salt
        + nonce
        + struct.pack(">H", len(kind))
        + kind
        + struct.pack(">I", len(public_raw))
        + public_raw
    )
    key = Scrypt(salt=salt, length=32, n=n, r=8, p=1).derive(passphrase.encode())
    sealed = AESGCM(key).encrypt(nonce, secret_raw, header)
    body = header + struct.pack(">I", len(sealed)) + sealed
    return body + hashlib.sha256(body).digest()


def assert_one_line(exc: BaseException, path: Path) -> None:
    message = str(exc)
    assert "\n" not in message
    assert str(path) in message


# --- round trips ---------------------------------------------------------------------------------------------------


def test_round_trip_with_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "site.key"
    fingerprint = seal(path)
    kf = open_keyfile(path, passphrase=PASS, expect_kind="site-share")
    assert kf.secret == SECRET
    assert kf.secret["limbs"][0][2] == 2**64 - 1 and kf.secret["limbs"][1][0] == -(2**63)
    assert type(kf.secret["share"]) is bytes
    assert kf.public == PUBLIC
    assert (kf.kind, kf.fingerprint, kf.insecure) == ("site-share", fingerprint, False)


def test_round_trip_insecure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "demo.key"
    fingerprint = seal(path, passphrase=None)
    assert path.read_bytes()[10] & 1  # the insecure flag in the header
    with caplog.at_level(logging.WARNING, logger="heagg.keyfile"):
        kf = open_keyfile(path, passphrase=None)
    assert kf.secret == SECRET and kf.insecure and kf.fingerprint == fingerprint
    assert any("passphrase" in r.getMessage() and r.name == "heagg.keyfile" for r in caplog.records)


def test_default_kdf_parameters(tmp_path: Path) -> None:
    path = tmp_path / "default.key"
    seal_keyfile(path, kind="site-share", public={}, secret={"k": b"x" * 32}, passphrase=PASS)
    data = path.read_bytes()
    assert DEFAULT_KDF_N == 2**15
    assert int.from_bytes(data[12:16], "big") == 2**15
    assert (int.from_bytes(data[16:18], "big"), int.from_bytes(data[18:20], "big")) == (8, 1)
    assert open_keyfile(path, passphrase=PASS).secret == {"k": b"x" * 32}


def test_golden_file_opens_and_matches_documented_layout(tmp_path: Path) -> None:
    data = bytes.fromhex(GOLDEN_HEX)
    path = write(tmp_path / "golden.key", data)
    kf = open_keyfile(path, passphrase=PASS, expect_kind="site-share")
    assert kf.secret == GOLDEN_SECRET
    assert kf.public == {"site": "st-olav", "index": 2}
    assert kf.fingerprint == GOLDEN_FINGERPRINT
    # the byte layout in the module docstring
    assert data[:8] == MAGIC == b"HEAGGKEY"
    assert int.from_bytes(data[8:10], "big") == 1
    assert data[10] == 0 and data[11] == 1  # flags, scrypt
    assert int.from_bytes(data[12:16], "big") == 2**10
    k = int.from_bytes(data[48:50], "big")
    assert data[50 : 50 + k] == b"site-share"
    h = header_len(data)
    c = int.from_bytes(data[h : h + 4], "big")
    assert len(data) == h + 36 + c
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()
    assert hashlib.sha256(data[:h]).hexdigest()[:16] == GOLDEN_FINGERPRINT


def test_file_built_from_the_documented_layout_opens(tmp_path: Path) -> None:
    public, secret = {"site": "a", "pk": b"\x01" * 32}, {"k": b"\x02" * 32, "i": [1, 2]}
    raw = dict(public_raw=msgpack.packb(public), secret_raw=msgpack.packb(secret))
    path = write(tmp_path / "spec.key", build_from_spec(**raw, passphrase=PASS))
    kf = open_keyfile(path, passphrase=PASS, expect_kind="site-share")
    assert (kf.public, kf.secret, kf.insecure) == (public, secret, False)
    path = write(tmp_path / "spec-insecure.key", build_from_spec(**raw))
    assert open_keyfile(path, passphrase=None).secret == secret


@pytest.mark.parametrize(
    ("public", "secret"),
    [
        ({b"bytes-key": 1}, {"k": 1}),  # public keys must be str
        ([1, 2], {"k": 1}),  # public must be a map
        ({"site": "a"}, [1, 2]),  # secret must be a map
        ({"site": "a"}, {"k": msgpack.ExtType(5, b"x")}),  # no ext types
        ({"site": "a"}, {1: 2}),  # str map keys only
    ],
)
def test_well_sealed_but_malformed_content_is_corrupted(tmp_path: Path, public: object, secret: object) -> None:
    """Anyone can forge an insecure file with a valid tag, so the decoded content is checked too."""
    data = build_from_spec(public_raw=msgpack.packb(public), secret_raw=msgpack.packb(secret))
    path = write(tmp_path / "forged.key", data)
    with pytest.raises(KeyFileCorrupted) as err:
        open_keyfile(path, passphrase=None)
    assert_one_line(err.value, path)


def test_fingerprint_is_sha256_of_header_and_changes_on_reseal(tmp_path: Path) -> None:
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    fp_a, fp_b = seal(a), seal(b)
    data = a.read_bytes()
    assert fp_a == hashlib.sha256(data[: header_len(data)]).hexdigest()[:16]
    assert len(fp_a) == 16 and fp_a != fp_b  # fresh salt and nonce
    assert inspect_keyfile(a).fingerprint == open_keyfile(a, passphrase=PASS).fingerprint == fp_a


def test_repr_never_shows_secret(tmp_path: Path) -> None:
    path = tmp_path / "site.key"
    seal(path)
    kf = open_keyfile(path, passphrase=PASS)
    assert isinstance(kf, KeyFile)
    assert "share-bytes" not in repr(kf) and "secret" not in repr(kf) and "share-bytes" not in str(kf)


# --- writing ----------------------------------------------------------------------------------------------------------


def test_file_mode_is_exactly_0600(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        seal(tmp_path / "site.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "site.key").stat().st_mode) == 0o600


def test_refuses_to_overwrite_and_leaves_existing_file_unchanged(tmp_path: Path) -> None:
    path = write(tmp_path / "site.key", b"precious key material")
    with pytest.raises(UsageError, match="already exists: refusing to overwrite key material") as err:
        seal(path)
    assert_one_line(err.value, path)
    assert path.read_bytes() == b"precious key material"
    assert sorted(os.listdir(tmp_path)) == ["site.key"]  # no temp file left behind


def test_target_created_during_write_is_not_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "site.key", b"created concurrently")
    monkeypatch.setattr(keyfile, "_refuse_existing", lambda _path: None)  # lose the race: the link must refuse
    with pytest.raises(UsageError, match="already exists"):
        seal(path)
    assert path.read_bytes() == b"created concurrently"
    assert sorted(os.listdir(tmp_path)) == ["site.key"]


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keyfile.os, "fsync", full_disk)
    path = tmp_path / "site.key"
    with pytest.raises(UsageError, match="No space left on device") as err:
        seal(path)
    assert_one_line(err.value, path)
    assert os.listdir(tmp_path) == []


def test_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "site.key"
    with pytest.raises(UsageError) as err:
        seal(path)
    assert_one_line(err.value, path)


@pytest.mark.parametrize(
    "secret",
    [{"s": {1, 2}}, {"s": {1: b"int keys do not read back"}}, {3: b"x"}, {"s": 2**64}, ["not", "a", "dict"]],
)
def test_unstorable_secret_is_refused_before_writing(tmp_path: Path, secret: object) -> None:
    with pytest.raises(UsageError) as err:
        seal(tmp_path / "site.key", secret=secret)
    assert "int keys do not read back" not in str(err.value)
    assert os.listdir(tmp_path) == []


def test_bad_kind_short_passphrase_and_absurd_kdf_are_refused(tmp_path: Path) -> None:
    for kwargs in ({"kind": "Site Share"}, {"kind": ""}, {"passphrase": "short"}, {"passphrase": ""}, {"kdf_n": 3000}):
        with pytest.raises(UsageError):
            seal(tmp_path / "site.key", **kwargs)
    with pytest.raises(UsageError):
        seal(tmp_path / "site.key", kdf_n=2**23)
    assert os.listdir(tmp_path) == []


# --- opening: passphrases, kinds, permissions ---------------------------------------------------------------------


def test_wrong_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "site.key"
    seal(path)
    with pytest.raises(WrongPassphrase, match="wrong passphrase for") as err:
        open_keyfile(path, passphrase="incorrect horse battery")
    assert_one_line(err.value, path)


def test_missing_passphrase_for_protected_file(tmp_path: Path) -> None:
    path = tmp_path / "site.key"
    seal(path)
    with pytest.raises(WrongPassphrase, match="protected by a passphrase") as err:
        open_keyfile(path, passphrase=None)
    assert_one_line(err.value, path)


def test_passphrase_given_for_insecure_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "demo.key"
    seal(path, passphrase=None)
    with pytest.raises(WrongPassphrase, match="without a passphrase") as err:
        open_keyfile(path, passphrase=PASS)
    assert_one_line(err.value, path)


def test_expect_kind_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "agg.key"
    seal(path, kind="aggregator-key")
    with pytest.raises(WrongKeyFile, match="is an aggregator-key file, expected a site-share file") as err:
        open_keyfile(path, passphrase=PASS, expect_kind="site-share")
    assert_one_line(err.value, path)
    assert open_keyfile(path, passphrase=PASS, expect_kind="aggregator-key").kind == "aggregator-key"


def test_missing_file_and_directory_are_usage_errors(tmp_path: Path) -> None:
    for path in (tmp_path / "absent.key", tmp_path):
        with pytest.raises(UsageError) as err:
            open_keyfile(path, passphrase=PASS)
        assert_one_line(err.value, path)
        with pytest.raises(UsageError):
            inspect_keyfile(path)


def test_group_readable_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "site.key"
    seal(path)
    path.chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="heagg.keyfile"):
        assert open_keyfile(path, passphrase=PASS).secret == SECRET
    assert any("chmod 600" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    path.chmod(0o600)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="heagg.keyfile"):
        open_keyfile(path, passphrase=PASS)
    assert not caplog.records


def test_world_writable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "site.key"
    seal(path)
    path.chmod(0o666)
    with pytest.raises(KeyFileError, match="world-writable") as err:
        open_keyfile(path, passphrase=PASS)
    assert_one_line(err.value, path)
    assert inspect_keyfile(path).mode == 0o666  # inspect still describes it


# --- opening: damaged and hostile files -------------------------------------------------------------------------------


@pytest.fixture
def small_file(tmp_path: Path) -> bytes:
    seal(tmp_path / "orig.key", public={"site": "a"}, secret={"k": b"\x01" * 16})
    return (tmp_path / "orig.key").read_bytes()


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_single_byte_flip_is_detected(tmp_path: Path, small_file: bytes, mask: int) -> None:
    path = tmp_path / "flipped.key"
    for pos in range(len(small_file)):
        data = bytearray(small_file)
        data[pos] ^= mask
        path.unlink(missing_ok=True)
        write(path, bytes(data))
        expected = WrongKeyFile if pos < len(MAGIC) else KeyFileCorrupted
        with pytest.raises(expected) as err:
            open_keyfile(path, passphrase=PASS)
        assert_one_line(err.value, path)


def test_every_byte_flip_with_recomputed_checksum_is_detected(tmp_path: Path, small_file: bytes) -> None:
    """A tamperer can fix the checksum; the AEAD tag (or the parser) must still refuse every change."""
    path = tmp_path / "tampered.key"
    for pos in range(len(small_file) - 32):
        data = bytearray(small_file)
        data[pos] ^= 0x01
        path.unlink(missing_ok=True)
        write(path, rechecksum(bytes(data)))
        with pytest.raises((KeyFileCorrupted, WrongPassphrase, WrongKeyFile)) as err:
            open_keyfile(path, passphrase=PASS)
        assert_one_line(err.value, path)


def test_truncation_at_every_length(tmp_path: Path, small_file: bytes) -> None:
    path = tmp_path / "truncated.key"
    for length in range(len(small_file)):
        path.unlink(missing_ok=True)
        write(path, small_file[:length])
        with pytest.raises(KeyFileCorrupted) as err:
            open_keyfile(path, passphrase=PASS)
        assert_one_line(err.value, path)


def test_appended_bytes(tmp_path: Path, small_file: bytes) -> None:
    path = write(tmp_path / "appended.key", small_file + b"\x00")
    with pytest.raises(KeyFileCorrupted, match="checksum mismatch"):
        open_keyfile(path, passphrase=PASS)
    path.unlink()
    write(path, rechecksum(small_file[:-32] + b"extra" + small_file[-32:]))
    with pytest.raises(KeyFileCorrupted, match="trailing"):
        open_keyfile(path, passphrase=PASS)


def test_random_and_foreign_files_are_not_key_files(tmp_path: Path) -> None:
    for name, data in (("random.key", os.urandom(300)), ("notes.txt", b"just some notes\n"), ("x", b"\x00")):
        path = write(tmp_path / name, data)
        with pytest.raises(WrongKeyFile, match="not a heagg key file") as err:
            open_keyfile(path, passphrase=PASS)
        assert_one_line(err.value, path)
    with pytest.raises(KeyFileCorrupted):
        open_keyfile(write(tmp_path / "empty.key", b""), passphrase=PASS)


def test_unsupported_format_version(tmp_path: Path, small_file: bytes) -> None:
    path = write(tmp_path / "v2.key", rechecksum(small_file[:8] + (2).to_bytes(2, "big") + small_file[10:]))
    with pytest.raises(KeyFileCorrupted, match="format version 2") as err:
        open_keyfile(path, passphrase=PASS)
    assert_one_line(err.value, path)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.key"
    with open(path, "wb") as f:
        f.write(MAGIC + (1).to_bytes(2, "big"))
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk space used
    path.chmod(0o600)
    with pytest.raises(KeyFileCorrupted, match="limit"):
        open_keyfile(path, passphrase=PASS)


@pytest.mark.parametrize(
    ("offset", "size", "value"),
    [(12, 4, 2**23), (12, 4, 3000), (12, 4, 0), (12, 4, 2**31), (12, 4, 2**21), (16, 2, 0), (16, 2, 33), (18, 2, 0)],
)
def test_absurd_kdf_parameters_are_refused(
    tmp_path: Path, small_file: bytes, offset: int, size: int, value: int
) -> None:
    data = small_file[:offset] + value.to_bytes(size, "big") + small_file[offset + size :]
    path = write(tmp_path / "kdf.key", rechecksum(data))
    with pytest.raises(KeyFileCorrupted, match="KDF"):
        open_keyfile(path, passphrase=PASS)
    with pytest.raises(KeyFileCorrupted, match="KDF"):
        inspect_keyfile(path)


def test_forged_insecure_flag_does_not_open(tmp_path: Path, small_file: bytes) -> None:
    """Setting the insecure flag on a protected file must not let it open without the passphrase."""
    data = bytearray(small_file)
    data[10] |= 1
    path = write(tmp_path / "forged.key", rechecksum(bytes(data)))
    with pytest.raises(WrongPassphrase):
        open_keyfile(path, passphrase=None)


# --- inspect ----------------------------------------------------------------------------------------------------------


def test_inspect_good_file(tmp_path: Path) -> None:
    path = tmp_path / "site.key"
    fingerprint = seal(path)
    info = inspect_keyfile(path)
    assert (info.kind, info.fingerprint, info.format_version) == ("site-share", fingerprint, 1)
    assert info.checksum_ok is True and info.decrypts is None and info.insecure is False
    assert info.mode == 0o600 and info.public == PUBLIC and info.size == path.stat().st_size
    assert inspect_keyfile(path, passphrase=PASS).decrypts is True
    assert inspect_keyfile(path, passphrase="incorrect horse").decrypts is False
    text = "\n".join(info.lines())
    assert fingerprint in text and "site-share" in text and "st-olav" in text and "not checked" in text


def test_inspect_insecure_file(tmp_path: Path) -> None:
    path = tmp_path / "demo.key"
    seal(path, passphrase=None)
    info = inspect_keyfile(path)
    assert info.insecure is True and info.decrypts is True and info.checksum_ok is True
    assert "insecure-no-passphrase" in "\n".join(info.lines())


def test_inspect_corrupted_file(tmp_path: Path, small_file: bytes) -> None:
    data = bytearray(small_file)
    data[-40] ^= 0x01  # inside the ciphertext: header intact, secret damaged
    path = write(tmp_path / "bad.key", bytes(data))
    info = inspect_keyfile(path, passphrase=PASS)
    assert info.checksum_ok is False and info.decrypts is False
    assert info.fingerprint == hashlib.sha256(small_file[: header_len(small_file)]).hexdigest()[:16]
    assert "MISMATCH" in "\n".join(info.lines())
    # damage in the checksum itself: the secret still decrypts, the checksum does not match
    data = bytearray(small_file)
    data[-1] ^= 0x01
    path = write(tmp_path / "badsum.key", bytes(data))
    info = inspect_keyfile(path, passphrase=PASS)
    assert info.checksum_ok is False and info.decrypts is True
    # a garbled header cannot be described
    data = bytearray(small_file)
    data[49] ^= 0xFF  # kind length
    path = write(tmp_path / "garbled.key", bytes(data))
    with pytest.raises(KeyFileCorrupted, match="checksum mismatch") as err:
        inspect_keyfile(path)
    assert_one_line(err.value, path)


def test_inspect_never_reveals_secret_values(tmp_path: Path) -> None:
    key = os.urandom(32)
    number = int.from_bytes(os.urandom(8), "big") | 2**62
    word = "hunter2-" + os.urandom(8).hex()
    secret = {"key": key, "number": number, "word": word, "list": [key[:16]]}
    forbidden = [
        key.hex(),
        key[:16].hex(),
        key.hex().upper(),
        base64.b64encode(key).decode(),
        repr(key),
        word,
        str(number),
        hex(number),
        key[:16].decode("latin-1"),
    ]
    for passphrase in (PASS, None):
        path = tmp_path / f"{passphrase is None}.key"
        seal(path, passphrase=passphrase, secret=secret)
        for given_passphrase in (None, PASS, "incorrect horse"):
            info = inspect_keyfile(path, passphrase=given_passphrase)
            rendered = "\n".join(info.lines()) + repr(info) + str(info)
            assert not [value for value in forbidden if value in rendered]
        assert not [value for value in forbidden if value in repr(open_keyfile(path, passphrase=passphrase))]


def test_inspect_renders_hostile_metadata_safely(tmp_path: Path) -> None:
    path = tmp_path / "site.key"
    seal(path, public={"note": "\x1b[2J\x1b[31mred\nsecond line", "blob": b"\x00" * 1000, "deep": [[[[["x"]]]]]})
    lines = inspect_keyfile(path).lines()
    assert not any("\x1b" in line or "\n" in line for line in lines)
    assert all(len(line) < 300 for line in lines)


# --- property ------------------------------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=64)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_dicts = st.dictionaries(st.text(max_size=10), _values, max_size=5)
_KIND = r"[a-z][a-z0-9-]{0,20}"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(public=_dicts, secret=_dicts, kind=st.from_regex(_KIND, fullmatch=True), insecure=st.booleans())
def test_round_trip_property(public: dict, secret: dict, kind: str, insecure: bool) -> None:
    passphrase = None if insecure else PASS
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prop.key"
        fingerprint = seal_keyfile(path, kind=kind, public=public, secret=secret, passphrase=passphrase, kdf_n=FAST_N)
        kf = open_keyfile(path, passphrase=passphrase, expect_kind=kind)
        got = (kf.kind, kf.public, kf.secret, kf.fingerprint, kf.insecure)
        assert got == (kind, public, secret, fingerprint, insecure)
        info = inspect_keyfile(path)
        assert info.public == public and info.checksum_ok and info.decrypts is (True if insecure else None)


# --- passphrase input ----------------------------------------------------------------------------------------------


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _answers(monkeypatch: pytest.MonkeyPatch, *answers: str) -> None:
    queue = list(answers)
    monkeypatch.setattr(sys, "stdin", _FakeTTY())
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": queue.pop(0))


def test_passphrase_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEAGG_TEST_PASSPHRASE", "from the environment")
    assert passphrase_from_env_or_prompt("HEAGG_TEST_PASSPHRASE", prompt="p: ", confirm=False) == "from the environment"
    assert passphrase_from_env_or_prompt("HEAGG_TEST_PASSPHRASE", prompt="p: ", confirm=True) == "from the environment"
    monkeypatch.setenv("HEAGG_TEST_PASSPHRASE", "short")
    with pytest.raises(UsageError, match="too short"):
        passphrase_from_env_or_prompt("HEAGG_TEST_PASSPHRASE", prompt="p: ", confirm=True)


@pytest.mark.parametrize("env_value", [None, ""])
def test_passphrase_without_tty_or_env_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, env_value: str | None) -> None:
    if env_value is None:
        monkeypatch.delenv("HEAGG_TEST_PASSPHRASE", raising=False)
    else:
        monkeypatch.setenv("HEAGG_TEST_PASSPHRASE", env_value)
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # not a terminal
    with pytest.raises(UsageError, match="HEAGG_TEST_PASSPHRASE") as err:
        passphrase_from_env_or_prompt("HEAGG_TEST_PASSPHRASE", prompt="p: ", confirm=False)
    assert "--insecure-no-passphrase" in str(err.value) and "\n" not in str(err.value)


def test_passphrase_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEAGG_TEST_PASSPHRASE", raising=False)
    _answers(monkeypatch, "typed passphrase")
    assert passphrase_from_env_or_prompt("HEAGG_TEST_PASSPHRASE", prompt="p: ", confirm=False) == "typed passphrase"
    _answers(monkeypatch, "new passphrase", "new passphrase")
    assert passphrase_from_env_or_prompt("HEAGG_TEST_PASSPHRASE", prompt="p: ", confirm=True) == "new passphrase"
    _answers(monkeypatch, "new passphrase", "typo passphrase")
    with pytest.raises(UsageError, match="differ"):
        passphrase_from_env_or_prompt("HEAGG_TEST_PASSPHRASE", prompt="p: ", confirm=True)
    _answers(monkeypatch, "short", "short")
    with pytest.raises(UsageError, match="too short"):
        passphrase_from_env_or_prompt("HEAGG_TEST_PASSPHRASE", prompt="p: ", confirm=True)
    _answers(monkeypatch, "")
    with pytest.raises(UsageError, match="empty"):
        passphrase_from_env_or_prompt("HEAGG_TEST_PASSPHRASE", prompt="p: ", confirm=False)
