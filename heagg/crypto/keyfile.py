"""Sealed key files: one passphrase-encrypted container per site for the secrets a key ceremony hands out.

A ceremony seals each site's secrets (Shamir share, Ed25519 and CurveZMQ secret keys, group key) into one file;
``heagg node`` opens it at start-up and ``heagg keys inspect`` describes it without decrypting anything.
Every failure is one line naming the file and saying what to do (see ``heagg.errors``).

Format version 1 (all integers unsigned big-endian)::

    offset      size  field
    0           8     magic b"HEAGGKEY"
    8           2     format version = 1
    10          1     flags: bit 0 = insecure (sealed with --insecure-no-passphrase); other bits must be 0
    11          1     KDF id: 1 = scrypt (the only one)
    12          4     scrypt n: a power of two, 2**10 .. 2**22 (default 2**15)
    16          2     scrypt r: 1 .. 32 (8)
    18          2     scrypt p: 1 .. 16 (1); also 128 * n * r (scrypt's memory) <= 1 GiB
    20          16    scrypt salt, random
    36          12    AES-GCM nonce, random
    48          2     K = length of kind
    50          K     kind, ASCII [a-z][a-z0-9-]{0,63}, e.g. "site-share", "aggregator-key"
    50+K        4     P = length of the public metadata (<= 1 MiB)
    54+K        P     public metadata: a msgpack map with str keys, readable without the passphrase
    H = 54+K+P  4     C = length of the sealed secret (>= 16)
    H+4         C     AES-256-GCM(key, nonce, msgpack(secret), associated data = bytes [0, H)):
                      ciphertext || 16-byte tag
    H+4+C       32    SHA-256 of bytes [0, H+4+C)

The file is exactly H + 36 + C bytes and at most 64 MiB. key = scrypt(UTF-8 of the NFC-normalised passphrase, salt,
n, r, p, length 32); an insecure file uses the empty passphrase, so it is encrypted but not protected.

Why: bytes [0, H) -- the "header" -- are the AEAD's associated data, so no header byte (kind, metadata, KDF
parameters, insecure flag) can change without the tag failing. The trailing checksum needs no key, so corruption
("checksum mismatch") can be told apart from a wrong passphrase (checksum fine, tag fails). The KDF parameters are
stored so new files can raise them; absurd ones are refused before any work is done.

Fingerprint: the first 16 hex digits of SHA-256(bytes [0, H)). It names one sealed file (it changes when the file is
re-sealed, since salt and nonce are fresh) and reveals nothing secret: the header is public.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import struct
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from heagg.errors import KeyFileCorrupted, KeyFileError, UsageError, WrongKeyFile, WrongPassphrase

logger = logging.getLogger("heagg.keyfile")

MAGIC = b"HEAGGKEY"
FORMAT_VERSION = 1
DEFAULT_KDF_N = 2**15
MIN_PASSPHRASE_LEN = 8
MAX_FILE_BYTES = 64 * 2**20
MAX_PUBLIC_BYTES = 2**20

_FLAG_INSECURE = 0x01
_KDF_SCRYPT = 1
_KDF_R, _KDF_P = 8, 1
_MIN_N, _MAX_N, _MAX_KDF_MEMORY = 2**10, 2**22, 2**30
_MAX_ITEMS = 2**20  # per msgpack array or map
_CHECKSUM_LEN, _TAG_LEN = 32, 16
_PRELUDE = struct.Struct(">8sHBBIHH16s12sH")  # magic .. kind length: 50 bytes
_U32 = struct.Struct(">I")
_MIN_FILE = _PRELUDE.size + 4 + 4 + _TAG_LEN + _CHECKSUM_LEN
_KIND_RE = re.compile(r"[a-z][a-z0-9-]{0,63}")


@dataclass(frozen=True)
class KeyFile:
    """An opened key file. ``secret`` is kept out of ``repr`` so it never lands in a log or a traceback."""

    kind: str
    public: dict[str, Any]
    secret: dict[str, Any] = field(repr=False)
    fingerprint: str
    insecure: bool


@dataclass(frozen=True)
class KeyFileInfo:
    """What ``inspect_keyfile`` learns about a file; it never holds secret values."""

    path: str
    kind: str
    public: dict[str, Any]
    fingerprint: str
    format_version: int
    insecure: bool
    mode: int
    size: int
    kdf: dict[str, int]
    checksum_ok: bool
    decrypts: bool | None

    def lines(self) -> list[str]:
        """Human-readable description for ``heagg keys inspect``."""
        kdf = self.kdf
        protection = (
            "NONE - sealed with --insecure-no-passphrase (demo only: anyone who can read the file has the secrets)"
            if self.insecure
            else f"passphrase (scrypt n=2**{kdf['n'].bit_length() - 1} r={kdf['r']} p={kdf['p']}, AES-256-GCM)"
        )
        perms = f"{self.mode:04o}"
        if self.mode & 0o002:
            perms += " - WORLD-WRITABLE: heagg refuses to open it; check it was not replaced, then chmod 600"
        elif self.mode & 0o077:
            perms += " - readable or writable by group/others: chmod 600"
        checksum = (
            "ok"
            if self.checksum_ok
            else "MISMATCH - the file is corrupted: restore it from backup or re-run the ceremony"
        )
        if self.decrypts is None:
            sealed = "not checked (no passphrase given)"
        elif self.insecure:
            sealed = "decrypts - but without a passphrase anyone could have forged this file"
        elif self.decrypts:
            sealed = "decrypts - AEAD tag verified, header authenticated"
        else:
            sealed = "does NOT decrypt - " + (
                "the file is damaged" if not self.checksum_ok else "wrong passphrase, or the file was tampered with"
            )
        out = [
            f"{self.path}: heagg key file, kind {self.kind}, format version {self.format_version}, {self.size} bytes",
            f"  fingerprint:  {self.fingerprint}",
            f"  protection:   {protection}",
            f"  permissions:  {perms}",
            f"  checksum:     {checksum}",
            f"  secret:       {sealed}",
            "  public metadata" + ("" if self.decrypts and not self.insecure else " (not authenticated)") + ":",
        ]
        out += [f"    {_render(key)}: {_render(self.public[key])}" for key in sorted(self.public)] or ["    (none)"]
        return out


class _Malformed(Exception):
    """Internal: a structural problem, turned into KeyFileCorrupted with the path by the caller."""


@dataclass(frozen=True)
class _Parsed:
    version: int
    insecure: bool
    n: int
    r: int
    p: int
    salt: bytes
    nonce: bytes
    kind: str
    public: dict[str, Any]
    header: bytes
    sealed: bytes


def seal_keyfile(
    path: str | os.PathLike[str],
    *,
    kind: str,
    public: dict[str, Any],
    secret: dict[str, Any],
    passphrase: str | None,
    kdf_n: int = DEFAULT_KDF_N,
) -> str:
    """Write a new key file atomically (mode 0600, never overwriting) and return its fingerprint.

    ``passphrase=None`` is the demo mode ``--insecure-no-passphrase``: the header says so and tools warn.
    ``kdf_n`` exists so tests can use a cheap scrypt; production code keeps the default.
    """
    path = Path(path)
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise UsageError(f"key-file kind {kind!r} is invalid: use lower-case letters, digits and '-'")
    if passphrase is not None and len(passphrase) < MIN_PASSPHRASE_LEN:
        raise UsageError(
            f"passphrase for {path} is too short: use at least {MIN_PASSPHRASE_LEN} characters "
            "(or --insecure-no-passphrase for a demo)"
        )
    try:
        _check_kdf(kdf_n, _KDF_R, _KDF_P)
    except _Malformed as exc:
        raise UsageError(f"cannot seal {path}: {exc}") from None
    public_raw = _pack(public, "public metadata", MAX_PUBLIC_BYTES)
    secret_raw = _pack(secret, "secret", MAX_FILE_BYTES)
    _refuse_existing(path)

    salt, nonce = os.urandom(16), os.urandom(12)
    kind_raw = kind.encode("ascii")
    flags = _FLAG_INSECURE if passphrase is None else 0
    header = (
        _PRELUDE.pack(MAGIC, FORMAT_VERSION, flags, _KDF_SCRYPT, kdf_n, _KDF_R, _KDF_P, salt, nonce, len(kind_raw))
        + kind_raw
        + _U32.pack(len(public_raw))
        + public_raw
    )
    key = _derive_key(passphrase or "", salt, kdf_n, _KDF_R, _KDF_P)
    sealed = AESGCM(key).encrypt(nonce, secret_raw, header)
    body = header + _U32.pack(len(sealed)) + sealed
    data = body + hashlib.sha256(body).digest()
    if len(data) > MAX_FILE_BYTES:
        raise UsageError(f"cannot seal {path}: {len(data)} bytes is over the {MAX_FILE_BYTES}-byte key-file limit")
    _write_new(path, data)
    if passphrase is None:
        logger.info("%s was sealed WITHOUT a passphrase (--insecure-no-passphrase): demo use only", path)
    return _fingerprint(header)


def open_keyfile(path: str | os.PathLike[str], *, passphrase: str | None, expect_kind: str | None = None) -> KeyFile:
    """Read, verify and decrypt a key file. Raises a one-line ``KeyFileError`` or ``UsageError`` naming the file."""
    path = Path(path)
    data, mode = _read(path)
    _check_magic_and_version(data, path)
    if mode & 0o002:
        raise KeyFileError(
            f"{path} is world-writable (mode {mode:04o}): anyone could have replaced it; "
            "check it, then run chmod 600 on it"
        )
    if mode & 0o077:
        logger.warning("%s is accessible by group/others (mode %04o): run chmod 600 on it", path, mode)
    if not _checksum_ok(data):
        raise KeyFileCorrupted(_corrupted(path, "checksum mismatch"))
    parsed = _parse_or_raise(data, path)
    if expect_kind is not None and parsed.kind != expect_kind:
        raise WrongKeyFile(f"{path} is {_a(parsed.kind)} file, expected {_a(expect_kind)} file: check the path")
    if parsed.insecure and passphrase is not None:
        raise WrongPassphrase(f"{path} was sealed without a passphrase (--insecure-no-passphrase): open it without one")
    if not parsed.insecure and passphrase is None:
        raise WrongPassphrase(f"{path} is protected by a passphrase and none was given: provide its passphrase")
    plaintext = _unseal(parsed, passphrase or "")
    if plaintext is None:
        raise WrongPassphrase(
            f"wrong passphrase for {path} (or the file was tampered with): try again, or restore it from backup"
        )
    try:
        secret = _unpack(plaintext, MAX_FILE_BYTES)
    except _Malformed as exc:
        raise KeyFileCorrupted(_corrupted(path, f"sealed secret is malformed: {exc}")) from None
    if not isinstance(secret, dict):
        raise KeyFileCorrupted(_corrupted(path, "sealed secret is not a map"))
    if parsed.insecure:
        logger.warning("%s has no passphrase (--insecure-no-passphrase): demo use only", path)
    return KeyFile(parsed.kind, parsed.public, secret, _fingerprint(parsed.header), parsed.insecure)


def inspect_keyfile(path: str | os.PathLike[str], *, passphrase: str | None = None) -> KeyFileInfo:
    """Describe a key file and check its integrity; with a passphrase (or for an insecure file) also check the tag.

    For an insecure file the tag is checked with the empty passphrase (its real key) whatever ``passphrase`` is.
    Raises only when the file cannot be described at all (missing, not a key file, unparseable header).
    """
    path = Path(path)
    data, mode = _read(path)
    _check_magic_and_version(data, path)
    checksum_ok = _checksum_ok(data)
    try:
        parsed = _parse(data)
    except _Malformed as exc:
        raise KeyFileCorrupted(_corrupted(path, "checksum mismatch" if not checksum_ok else str(exc))) from None
    decrypts: bool | None = None
    if parsed.insecure or passphrase is not None:
        decrypts = _unseal(parsed, "" if parsed.insecure else (passphrase or "")) is not None
    return KeyFileInfo(
        path=str(path),
        kind=parsed.kind,
        public=parsed.public,
        fingerprint=_fingerprint(parsed.header),
        format_version=parsed.version,
        insecure=parsed.insecure,
        mode=mode,
        size=len(data),
        kdf={"n": parsed.n, "r": parsed.r, "p": parsed.p},
        checksum_ok=checksum_ok,
        decrypts=decrypts,
    )


def passphrase_from_env_or_prompt(env_var: str, *, prompt: str, confirm: bool) -> str:
    """Passphrase from ``env_var`` if set, else typed at a terminal (hidden). ``confirm=True`` is for a new one:
    asked twice and at least ``MIN_PASSPHRASE_LEN`` characters."""
    value = os.environ.get(env_var, "")
    if not value:
        if not sys.stdin.isatty():
            raise UsageError(
                f"no passphrase: set {env_var} (stdin is not a terminal, so heagg cannot ask), "
                "or use --insecure-no-passphrase for a demo"
            )
        try:
            value = getpass.getpass(prompt)
            if confirm and len(value) >= MIN_PASSPHRASE_LEN and getpass.getpass("Repeat it: ") != value:
                raise UsageError("the two passphrases differ: try again")
        except EOFError:
            raise UsageError(f"no passphrase entered: type one, or set {env_var}") from None
    if not value:
        raise UsageError(f"empty passphrase: type one, or set {env_var}")
    if confirm and len(value) < MIN_PASSPHRASE_LEN:
        raise UsageError(f"passphrase too short: use at least {MIN_PASSPHRASE_LEN} characters")
    return value


# --- reading and parsing -------------------------------------------------------------------------------------------


def _read(path: Path) -> tuple[bytes, int]:
    """The file's bytes (at most MAX_FILE_BYTES) and permission bits; O_NONBLOCK so a FIFO cannot hang us."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist: check the path (key files are written by the key ceremony)") from None
    except OSError as exc:
        raise UsageError(f"cannot open {path}: {exc.strerror}: check the path and its permissions") from None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"{path} is not a regular file: give the path of a key file")
            if st.st_size > MAX_FILE_BYTES:
                raise KeyFileCorrupted(_too_large(path))
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}: check the disk and the file") from None
    if len(data) > MAX_FILE_BYTES:
        raise KeyFileCorrupted(_too_large(path))
    return data, stat.S_IMODE(st.st_mode)


def _check_magic_and_version(data: bytes, path: Path) -> None:
    if data[: len(MAGIC)] != MAGIC:
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            raise KeyFileCorrupted(_corrupted(path, f"truncated to {len(data)} bytes"))
        raise WrongKeyFile(f"{path} is not a heagg key file (bad magic): check the path")
    if len(data) < len(MAGIC) + 2:
        raise KeyFileCorrupted(_corrupted(path, f"truncated to {len(data)} bytes"))
    version = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 2], "big")
    if version != FORMAT_VERSION:
        raise KeyFileCorrupted(
            f"{path} has key-file format version {version}, but this heagg reads only version {FORMAT_VERSION}: "
            "use a matching heagg, or restore the file from backup"
        )


def _checksum_ok(data: bytes) -> bool:
    if len(data) < _MIN_FILE:
        return False
    return hmac.compare_digest(hashlib.sha256(data[:-_CHECKSUM_LEN]).digest(), data[-_CHECKSUM_LEN:])


def _parse_or_raise(data: bytes, path: Path) -> _Parsed:
    try:
        return _parse(data)
    except _Malformed as exc:
        raise KeyFileCorrupted(_corrupted(path, str(exc))) from None


def _parse(data: bytes) -> _Parsed:
    """Split a file (magic and version already checked) into its fields; raise _Malformed on any inconsistency."""
    body = data[:-_CHECKSUM_LEN]
    if len(data) < _MIN_FILE:
        raise _Malformed(f"truncated to {len(data)} bytes")
    _, version, flags, kdf_id, n, r, p, salt, nonce, kind_len = _PRELUDE.unpack_from(body)
    if flags & ~_FLAG_INSECURE:
        raise _Malformed(f"unknown flags 0x{flags:02x}")
    if kdf_id != _KDF_SCRYPT:
        raise _Malformed(f"unknown KDF id {kdf_id}")
    _check_kdf(n, r, p)
    pos = _PRELUDE.size

    def take(size: int, what: str) -> bytes:
        nonlocal pos
        if pos + size > len(body):
            raise _Malformed(f"truncated {what}")
        pos += size
        return body[pos - size : pos]

    kind = take(kind_len, "kind").decode("ascii", "replace")
    if not _KIND_RE.fullmatch(kind):
        raise _Malformed("invalid kind")
    (public_len,) = _U32.unpack(take(4, "header"))
    if public_len > MAX_PUBLIC_BYTES:
        raise _Malformed(f"public metadata of {public_len} bytes is over the limit")
    public = _unpack(take(public_len, "public metadata"), MAX_PUBLIC_BYTES)
    if not isinstance(public, dict) or not all(isinstance(k, str) for k in public):
        raise _Malformed("public metadata is not a map with str keys")
    header = body[:pos]
    (sealed_len,) = _U32.unpack(take(4, "header"))
    sealed = take(sealed_len, "sealed secret")
    if sealed_len < _TAG_LEN:
        raise _Malformed("sealed secret shorter than its tag")
    if pos != len(body):
        raise _Malformed(f"{len(body) - pos} unexpected trailing bytes")
    return _Parsed(version, bool(flags & _FLAG_INSECURE), n, r, p, salt, nonce, kind, public, header, sealed)


def _check_kdf(n: int, r: int, p: int) -> None:
    if not (_MIN_N <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        raise _Malformed(f"absurd KDF parameters n={n} r={r} p={p}")
    if 128 * n * r > _MAX_KDF_MEMORY:
        raise _Malformed(f"absurd KDF parameters n={n} r={r}: over 1 GiB of memory")


def _unpack(raw: bytes, max_len: int) -> Any:
    try:
        return msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            max_bin_len=max_len,
            max_str_len=max_len,
            max_array_len=_MAX_ITEMS,
            max_map_len=_MAX_ITEMS,
            max_ext_len=0,
        )
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        raise _Malformed(f"bad msgpack ({type(exc).__name__})") from None


def _unseal(parsed: _Parsed, passphrase: str) -> bytes | None:
    """The decrypted secret, or None if the AEAD tag does not verify."""
    key = _derive_key(passphrase, parsed.salt, parsed.n, parsed.r, parsed.p)
    try:
        return AESGCM(key).decrypt(parsed.nonce, parsed.sealed, parsed.header)
    except InvalidTag:
        return None


# --- writing ---------------------------------------------------------------------------------------------------------


def _pack(obj: Any, what: str, limit: int) -> bytes:
    """msgpack ``obj``, and check it reads back under the same limits ``open_keyfile`` applies."""
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise UsageError(f"key-file {what} must be a dict with str keys")
    try:
        raw = msgpack.packb(obj, use_bin_type=True)
        if len(raw) > limit:
            raise _Malformed(f"{len(raw)} bytes is over the {limit}-byte limit")
        _unpack(raw, limit)
    except (TypeError, ValueError, OverflowError, _Malformed) as exc:
        # type name only: a message could quote a secret value
        raise UsageError(
            f"key-file {what} cannot be stored ({type(exc).__name__}): use str keys and "
            "str/bytes/int/float/bool/None/list/dict values"
        ) from None
    return raw


def _refuse_existing(path: Path) -> None:
    if os.path.lexists(path):
        raise UsageError(_exists(path))


def _write_new(path: Path, data: bytes) -> None:
    """Temp file (created 0600) in the same directory, fsync, hard-link to ``path`` (fails if it exists), fsync dir."""
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}: check the directory exists and is writable") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _link_no_replace(tmp, path)
        os.unlink(tmp)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except FileExistsError:
        raise UsageError(_exists(path)) from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}: check disk space and permissions") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _link_no_replace(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # a filesystem without hard links: check-then-rename, with a small race window
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.rename(tmp, path)


# --- small helpers ---------------------------------------------------------------------------------------------------


def _derive_key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # NFC so the same passphrase typed on another keyboard/OS gives the same key; surrogateescape keeps non-UTF-8
    # bytes from an environment variable as they were.
    secret = unicodedata.normalize("NFC", passphrase).encode("utf-8", "surrogateescape")
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(secret)


def _fingerprint(header: bytes) -> str:
    return hashlib.sha256(header).hexdigest()[:16]


def _corrupted(path: Path, why: str) -> str:
    return f"{path} is corrupted ({why}): restore it from backup or re-run the ceremony"


def _too_large(path: Path) -> str:
    return _corrupted(path, f"larger than the {MAX_FILE_BYTES}-byte key-file limit")


def _exists(path: Path) -> str:
    return f"{path} already exists: refusing to overwrite key material (move it away first to replace it)"


def _a(kind: str) -> str:
    return ("an " if kind[:1] in "aeiou" else "a ") + kind


def _render(value: Any, depth: int = 0) -> str:
    """A short, terminal-safe rendering of public metadata (which a hostile file controls)."""
    if isinstance(value, bytes):
        text = value.hex() if len(value) <= 64 else f"{value[:32].hex()}... ({len(value)} bytes)"
    elif isinstance(value, str):
        text = value if value.isprintable() else repr(value)
    elif isinstance(value, dict | list):
        if depth >= 3:
            return "..."
        items = value.items() if isinstance(value, dict) else enumerate(value)
        parts = [
            (f"{_render(k, depth + 1)}: " if isinstance(value, dict) else "") + _render(v, depth + 1)
            for _, (k, v) in zip(range(20), items, strict=False)
        ]
        more = ", ..." if len(value) > 20 else ""
        text = ("{%s}" if isinstance(value, dict) else "[%s]") % (", ".join(parts) + more)
    else:
        text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
