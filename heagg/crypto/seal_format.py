"""SEAL's own serialisation, read and written with numpy, and in-memory I/O for SEAL's file-only API.

TenSEAL's ``sealapi`` saves and loads SEAL objects through file paths only, and reads single coefficients
one Python call at a time. heagg instead moves whole polynomials as bytes: SEAL writes to an anonymous
in-memory file (``memfd_create``), heagg parses the bytes with numpy, and builds bytes for SEAL to load the
same way. Nothing passes through a file system, which matters because some of these bytes are secret
(flooding noise, the ceremony's secret key in tests).

Layout (SEAL 4.3, as saved by TenSEAL 0.3.18), all little-endian:

    header (16 bytes): magic 0xA15E (u16), header size 16 (u8), version major (u8), minor (u8),
                       compression mode (u8: 0 none, 1 zlib, 2 zstd), reserved (u16), total size (u64)
    Ciphertext body:   parms_id (4 x u64), is_ntt_form (u8), size (u64), poly_modulus_degree (u64),
                       coeff_modulus_size (u64), scale (f64), correction_factor (u64), DynArray
    Plaintext body:    parms_id (4 x u64), coeff_count (u64), scale (f64), DynArray
    DynArray:          its own uncompressed 16-byte header, count (u64), count x u64 values

SEAL's loader accepts some invalid ciphertexts (NTT flag off, an absurd scale), so ``parse_ciphertext``
checks those itself when told what to expect.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np
import zstandard

from heagg.errors import BadHeader, BadShape, CoefficientOutOfRange, ParmsMismatch, TooLarge, Truncated

MAGIC = 0xA15E
HEADER = struct.Struct("<HBBBBHQ")
COMPR_NONE, COMPR_ZSTD = 0, 2
#: SEAL 4.3 refuses files of any other minor version
VERSION = (4, 3)

_CT_META = struct.Struct("<32sB3QdQ")  # parms_id, ntt flag, size, degree, limbs, scale, correction factor
_PT_META = struct.Struct("<32sQd")  # parms_id, coeff_count, scale
_COUNT = struct.Struct("<Q")


def _header(body_len: int) -> bytes:
    return HEADER.pack(MAGIC, HEADER.size, VERSION[0], VERSION[1], COMPR_NONE, 0, HEADER.size + body_len)


def _dynarray(values: np.ndarray) -> bytes:
    raw = np.ascontiguousarray(values, dtype="<u8").tobytes()
    return _header(_COUNT.size + len(raw)) + _COUNT.pack(values.size) + raw


def _body(blob: bytes, *, max_bytes: int) -> memoryview:
    """Check the outer header and return the (decompressed) body."""
    if len(blob) < HEADER.size:
        raise Truncated(f"SEAL object is {len(blob)} bytes, shorter than its header")
    magic, hsize, major, minor, mode, reserved, total = HEADER.unpack_from(blob)
    if magic != MAGIC or hsize != HEADER.size or reserved != 0:
        raise BadHeader("not a SEAL object (bad magic, header size or reserved field)")
    if (major, minor) != VERSION:
        raise BadHeader(f"SEAL version {major}.{minor}, expected {VERSION[0]}.{VERSION[1]}")
    if total > max_bytes:
        raise TooLarge(f"SEAL object declares {total} bytes, limit {max_bytes}")
    if total != len(blob):
        raise Truncated(f"SEAL object declares {total} bytes but has {len(blob)}")
    if mode == COMPR_NONE:
        return memoryview(blob)[HEADER.size :]
    if mode == COMPR_ZSTD:
        try:
            return memoryview(zstandard.ZstdDecompressor().decompress(blob[HEADER.size :], max_output_size=max_bytes))
        except zstandard.ZstdError as exc:
            raise BadHeader(f"SEAL object does not decompress: {exc}") from exc
    raise BadHeader(f"unsupported SEAL compression mode {mode}")


def _values(body: memoryview, offset: int, expected: int) -> np.ndarray:
    if len(body) < offset + HEADER.size + _COUNT.size:
        raise Truncated("SEAL object ends before its coefficient array")
    magic, hsize, *_ = HEADER.unpack_from(body, offset)
    if magic != MAGIC or hsize != HEADER.size:
        raise BadHeader("bad coefficient array header")
    (count,) = _COUNT.unpack_from(body, offset + HEADER.size)
    if count != expected:
        raise BadShape(f"coefficient array holds {count} values, expected {expected}")
    start = offset + HEADER.size + _COUNT.size
    if len(body) != start + 8 * count:
        raise Truncated(f"coefficient array needs {8 * count} bytes, has {len(body) - start}")
    return np.frombuffer(body, dtype="<u8", count=count, offset=start).astype(np.uint64, copy=True)


@dataclass(frozen=True)
class SealCiphertext:
    parms_id: bytes
    is_ntt_form: bool
    scale: float
    data: np.ndarray  # (size, limbs, degree) uint64


def _parse_ct(blob: bytes, *, max_bytes: int) -> tuple[tuple, np.ndarray]:
    body = _body(blob, max_bytes=max_bytes)
    if len(body) < _CT_META.size:
        raise Truncated("SEAL ciphertext ends inside its metadata")
    meta = _CT_META.unpack_from(body)
    _pid, _ntt, size, deg, limbs, _scale, _correction = meta
    if not (2 <= size <= 16 and 1 <= limbs <= 64 and deg <= 1 << 17):
        raise BadShape(f"ciphertext shape ({size}, {limbs}, {deg}) is out of range")
    return meta, _values(body, _CT_META.size, size * limbs * deg).reshape(size, limbs, deg)


def parse_ciphertext(
    blob: bytes,
    *,
    primes: tuple[int, ...],
    degree: int,
    parms_id: bytes | None = None,
    scale: float | None = None,
    max_bytes: int = 1 << 26,
) -> SealCiphertext:
    """Parse and validate a saved SEAL ciphertext against the expected parameters."""
    (pid, ntt, size, deg, limbs, ct_scale, correction), data = _parse_ct(blob, max_bytes=max_bytes)
    if parms_id is not None and pid != parms_id:
        raise ParmsMismatch("ciphertext parms_id is not the consortium's")
    if ntt != 1:
        raise ParmsMismatch("ciphertext is not in NTT form")
    if scale is not None and ct_scale != scale:
        raise ParmsMismatch(f"ciphertext scale {ct_scale!r} is not the consortium's {scale!r}")
    if correction != 1:
        raise ParmsMismatch(f"ciphertext correction factor {correction} is not 1")
    if size != 2 or deg != degree or limbs != len(primes):
        raise BadShape(f"ciphertext shape ({size}, {limbs}, {deg}), expected (2, {len(primes)}, {degree})")
    check_below_primes(data, primes)
    return SealCiphertext(pid, True, ct_scale, data)


def parse_ciphertext_any(blob: bytes, *, primes: tuple[int, ...], degree: int, size: int) -> np.ndarray:
    """The polynomials of a ciphertext SEAL itself just saved (any NTT flag or scale), shape checked."""
    (_pid, _ntt, got_size, deg, limbs, _scale, _corr), data = _parse_ct(blob, max_bytes=1 << 30)
    if (got_size, limbs, deg) != (size, len(primes), degree):
        raise BadShape(f"ciphertext shape ({got_size}, {limbs}, {deg}), expected ({size}, {len(primes)}, {degree})")
    return data


def build_ciphertext(parms_id: bytes, data: np.ndarray, *, ntt: bool, scale: float) -> bytes:
    size, limbs, degree = data.shape
    body = _CT_META.pack(parms_id, int(ntt), size, degree, limbs, scale, 1) + _dynarray(data)
    return _header(len(body)) + body


def build_plaintext(parms_id: bytes, data: np.ndarray, *, scale: float) -> bytes:
    """An NTT-form CKKS plaintext (``data`` of shape (limbs, degree))."""
    body = _PT_META.pack(parms_id, data.size, scale) + _dynarray(data)
    return _header(len(body)) + body


def parse_plaintext(blob: bytes, *, max_bytes: int = 1 << 26) -> tuple[bytes, float, np.ndarray]:
    """Return (parms_id, scale, flat coefficients) of a saved plaintext."""
    body = _body(blob, max_bytes=max_bytes)
    if len(body) < _PT_META.size:
        raise Truncated("SEAL plaintext ends inside its metadata")
    pid, count, scale = _PT_META.unpack_from(body)
    return pid, scale, _values(body, _PT_META.size, count)


def check_below_primes(data: np.ndarray, primes: tuple[int, ...]) -> None:
    """Every coefficient of limb j must be below prime j (``data[..., j, :]``)."""
    bounds = np.asarray(primes, dtype=np.uint64)[:, None]
    if np.any(data >= bounds):
        raise CoefficientOutOfRange("a coefficient is not below its prime")


class MemFile:
    """An anonymous in-memory file that SEAL's path-based save/load can use (never on a file system)."""

    def __init__(self) -> None:
        self._fd = os.memfd_create("heagg-seal", os.MFD_CLOEXEC)
        self.path = f"/proc/self/fd/{self._fd}"

    def save(self, obj) -> bytes:
        os.ftruncate(self._fd, 0)
        obj.save(self.path)
        blob = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
        os.ftruncate(self._fd, 0)  # do not keep a copy of what was saved
        return blob

    def load(self, obj, context, blob: bytes):
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, blob, 0)
        obj.load(context, self.path)
        os.ftruncate(self._fd, 0)  # do not keep a copy of what was loaded
        return obj

    def close(self) -> None:
        if self._fd >= 0:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()
