"""Persistent state of the aggregator and the nodes, written atomically (temp file, fsync, rename).

A state file is msgpack followed by the SHA-256 of it. Renames are atomic, so a reader sees the previous
state or the new one, never half of either; the checksum catches damage from anything else.

``SharedState`` is what every site agrees on after a step (the global model, the standardisation); it travels
between sites sealed under the group key, and its digest is what the aggregator announces.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from heagg.errors import KeyFileCorrupted, UsageError


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_record(path: Path, record: dict[str, Any]) -> None:
    payload = msgpack.packb(record, use_bin_type=True)
    write_atomic(path, payload + hashlib.sha256(payload).digest())


def load_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, None if there is none yet; a damaged file is an error, never silently reset."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    payload, check = data[:-32], data[-32:]
    if len(data) < 33 or hashlib.sha256(payload).digest() != check:
        raise KeyFileCorrupted(f"{path} is damaged (checksum mismatch): restore it or start with a new --state")
    try:
        record = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # TypeError: a list or map as a map key
        raise KeyFileCorrupted(f"{path} is damaged ({exc})") from exc
    if not isinstance(record, dict):
        raise KeyFileCorrupted(f"{path} is not a heagg state file")
    return record


def state_dir(path: Path | str) -> Path:
    """The state directory, created if need be, without the temp files a crash inside ``write_atomic`` left."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--state {path} is a file, not a directory")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    # A process killed between mkstemp and the rename leaves ".<name>.<random>.tmp": the write it belonged to
    # never happened (the old file is intact), so it is garbage. One process owns a state directory at a time.
    for tmp in path.rglob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def _arr(value: np.ndarray | None) -> bytes | None:
    return None if value is None else np.ascontiguousarray(value, dtype="<f8").tobytes()


def _unarr(value: bytes | None) -> np.ndarray | None:
    return None if value is None else np.frombuffer(value, dtype="<f8").astype(np.float64)


@dataclass(frozen=True, eq=False)
class SharedState:
    """What all sites hold after step (round, step): the global model and the standardisation."""

    round: int = 0
    step: str = ""
    model: np.ndarray | None = field(default=None, repr=False)
    centre: np.ndarray | None = field(default=None, repr=False)
    spread: np.ndarray | None = field(default=None, repr=False)
    mean: np.ndarray | None = field(default=None, repr=False)
    std: np.ndarray | None = field(default=None, repr=False)

    def to_bytes(self) -> bytes:
        return msgpack.packb(
            {
                "round": self.round,
                "step": self.step,
                "model": _arr(self.model),
                "centre": _arr(self.centre),
                "spread": _arr(self.spread),
                "mean": _arr(self.mean),
                "std": _arr(self.std),
            },
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SharedState:
        record = msgpack.unpackb(data, raw=False)
        return cls(
            round=int(record["round"]),
            step=str(record["step"]),
            **{k: _unarr(record[k]) for k in ("model", "centre", "spread", "mean", "std")},
        )

    def digest(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    def evolve(self, **changes: Any) -> SharedState:
        return replace(self, **changes)
