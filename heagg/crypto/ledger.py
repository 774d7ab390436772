"""A share holder's ledger of partial decryptions: one per ciphertext, ever, and never beyond the budget.

Decrypting the same ciphertext twice, even with another decrypting set, leaks (Lattigo's security notes;
Okada et al. 2025): two partials of one c1 differ only in their noise. The ledger therefore keys on the
digest of each chunk's c1 (what a partial depends on), not on the batch, so reordering or re-wrapping
chunks does not get a chunk decrypted twice; it also refuses a label (a round attempt) seen before and any
request that would take the key past its budget tau.

The ledger is written ahead: a request is recorded and fsync'ed before the partial is computed, so a crash
can waste budget but can never release a second partial. File layout (append-only):

    b"HGLEDGER1\\n", then records: u32 length, msgpack {"label", "set", "digests"}, 8 bytes of its SHA-256

A torn last record (a crash mid-append) is dropped on load; any other damage refuses to load.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import msgpack

from heagg.errors import AlreadyDecrypted, BudgetExhausted, KeyFileCorrupted

MAGIC = b"HGLEDGER1\n"
_LEN = struct.Struct("<I")
_DIGEST_BYTES = 16
_CHECK_BYTES = 8


def _misplaced_record(tail: bytes, size: int) -> bool:
    """Whether ``tail``, after a length prefix declaring ``size`` payload bytes, holds a whole record of another size.

    An interrupted append leaves a prefix of its record, never a payload followed by its checksum. A whole
    record after a length that runs past the end means the length prefix itself is damaged: dropping the
    "torn tail" would then silently forget that record and every one after it.
    """
    unpacker = msgpack.Unpacker(max_buffer_size=len(tail) + 1)
    unpacker.feed(tail)
    try:
        unpacker.skip()
    except (ValueError, msgpack.UnpackException):  # OutOfData included: a prefix, as a torn append leaves
        return False
    n = unpacker.tell()
    return n != size and tail[n : n + _CHECK_BYTES] == hashlib.sha256(tail[:n]).digest()[:_CHECK_BYTES]


class DecryptionLedger:
    """What one share holder has partially decrypted; ``path=None`` keeps it in memory (tests, benchmarks)."""

    def __init__(self, path: Path | None, *, budget: int) -> None:
        self.path = path
        self.budget = budget
        self._seen: set[bytes] = set()
        self._labels: set[str] = set()
        if path is not None:
            if path.exists():
                self._load(path)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, MAGIC)
                    os.fsync(fd)
                finally:
                    os.close(fd)

    @property
    def used(self) -> int:
        """Chunks partially decrypted so far."""
        return len(self._seen)

    def _load(self, path: Path) -> None:
        data = path.read_bytes()
        if not data.startswith(MAGIC):
            raise KeyFileCorrupted(f"{path} is not a heagg decryption ledger")
        offset, end = len(MAGIC), len(data)
        while offset < end:
            if offset + _LEN.size > end:
                break  # torn length prefix: the last append did not finish
            (size,) = _LEN.unpack_from(data, offset)
            record_end = offset + _LEN.size + size + _CHECK_BYTES
            if record_end > end:
                if _misplaced_record(data[offset + _LEN.size :], size):
                    raise KeyFileCorrupted(
                        f"{path} is damaged at byte {offset} (a record length points past the end): "
                        "refusing to decrypt until it is restored"
                    )
                break  # torn record
            payload = data[offset + _LEN.size : offset + _LEN.size + size]
            if hashlib.sha256(payload).digest()[:_CHECK_BYTES] != data[record_end - _CHECK_BYTES : record_end]:
                raise KeyFileCorrupted(f"{path} is damaged at byte {offset}: refusing to decrypt until it is restored")
            try:
                record = msgpack.unpackb(payload, raw=False)
                label, digests = record["label"], record["digests"]
            except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
                raise KeyFileCorrupted(f"{path} holds a malformed record at byte {offset}") from exc
            if not (isinstance(label, str) and isinstance(digests, list) and all(type(d) is bytes for d in digests)):
                raise KeyFileCorrupted(f"{path} holds a malformed record at byte {offset}")
            self._labels.add(label)
            self._seen.update(digests)
            offset = record_end
        if offset < end:  # drop the torn tail so the next append starts on a record boundary
            with open(path, "r+b") as f:
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())

    def authorize(self, chunk_digests: Sequence[bytes], *, label: str, decrypting_set: Sequence[int]) -> None:
        """Record a request, or refuse it (AlreadyDecrypted, BudgetExhausted) without recording anything."""
        keys = [d[:_DIGEST_BYTES] for d in chunk_digests]
        if label in self._labels:
            raise AlreadyDecrypted(f"{label} was already partially decrypted: a round is decrypted once")
        if len(set(keys)) != len(keys):
            raise AlreadyDecrypted("the request repeats a ciphertext chunk")
        if any(k in self._seen for k in keys):
            raise AlreadyDecrypted("a ciphertext chunk in this request was partially decrypted before")
        if self.used + len(keys) > self.budget:
            raise BudgetExhausted(
                f"the key has served {self.used} of its {self.budget} chunk decryptions and this request needs "
                f"{len(keys)}: run a new key ceremony"
            )
        if self.path is not None:
            payload = msgpack.packb({"label": label, "set": list(decrypting_set), "digests": keys})
            record = _LEN.pack(len(payload)) + payload + hashlib.sha256(payload).digest()[:_CHECK_BYTES]
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, record)
                os.fsync(fd)
            finally:
                os.close(fd)
        self._labels.add(label)
        self._seen.update(keys)
