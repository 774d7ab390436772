"""Encryption and partial decryption on several cores: independent ciphertext chunks in a process pool.

Every chunk of an encrypted vector is encrypted, and partially decrypted, on its own, so a vector splits
into contiguous ranges of chunks that workers handle independently; the parent puts the results back in
chunk order. SEAL objects cannot be pickled and TenSEAL's calls hold the GIL, hence processes, not threads:
each worker loads its own public ``CkksContext`` from the context's public bytes once, when the pool starts.

The results are what the serial functions return. Encryption and flooding noise are fresh randomness per
chunk either way (workers draw from ``os.urandom``, as the serial functions do by default), so results are
equal in distribution, not bit for bit; with ``sigma=0`` a partial decryption is deterministic and equal.

A secret share reaches a worker only through the pool's pipe: pickled in memory for the one call that uses
it, never written to a file, and not kept by the worker after that call returns.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType
from typing import Self

import numpy as np

from heagg.crypto.context import CkksContext
from heagg.crypto.threshold import KeyShare, PartialDecryption, partial_decrypt
from heagg.crypto.vectors import EncryptedVector, encrypt_vector
from heagg.errors import UsageError
from heagg.params import Preset

#: pieces per worker: a little more than one, so a worker slowed by a noisy neighbour does not hold up the rest
_PIECES_PER_WORKER = 4

_worker_ctx: CkksContext | None = None  # each worker process's own context (set by _load_context)


def _load_context(public: bytes, preset: Preset, scale: float) -> None:
    global _worker_ctx
    _worker_ctx = CkksContext.from_public_bytes(public, preset=preset, scale=scale)


def _context() -> CkksContext:
    if _worker_ctx is None:  # pragma: no cover - the pool's initializer always runs first
        raise RuntimeError("worker context not loaded")
    return _worker_ctx


def _ready() -> int:
    _context()
    return os.getpid()


def _encrypt_piece(values: np.ndarray) -> np.ndarray:
    return encrypt_vector(_context(), values).data


def _partial_piece(
    share: KeyShare, c1: np.ndarray, decrypting_set: tuple[int, ...], length: int, sigma: float
) -> np.ndarray:
    return partial_decrypt(_context(), share, c1, decrypting_set, length=length, sigma=sigma).data


def chunk_ranges(chunks: int, pieces: int) -> list[tuple[int, int]]:
    """Split ``chunks`` into at most ``pieces`` contiguous, non-empty, nearly equal (start, stop) ranges."""
    pieces = max(1, min(pieces, chunks))
    bounds = [chunks * k // pieces for k in range(pieces + 1)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


class CryptoPool:
    """``workers`` processes that encrypt and partially decrypt chunk ranges under one public context.

    With ``workers=1`` no process is started and every call runs the serial function in this process.
    Starting workers costs about a second (each imports TenSEAL and loads the context): keep a pool for as
    long as its context is in use, and call ``warm_up`` before timing anything.
    """

    def __init__(self, ctx: CkksContext, workers: int) -> None:
        if workers < 1:
            raise UsageError(f"workers must be at least 1, not {workers}")
        self.ctx = ctx
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        if workers > 1:
            self._executor = ProcessPoolExecutor(
                max_workers=workers,
                # spawn, not fork: the parent may hold ZeroMQ and TenSEAL threads that a fork would copy mid-state
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_load_context,
                initargs=(ctx.public_bytes(), ctx.preset, ctx.scale),
            )

    def warm_up(self) -> None:
        """Start every worker and load its context now, rather than inside the first timed call."""
        if self._executor is not None:
            for future in [self._executor.submit(_ready) for _ in range(self.workers)]:
                future.result()

    def encrypt_vector(self, values: np.ndarray) -> EncryptedVector:
        """What ``encrypt_vector(ctx, values)`` returns, with the chunks encrypted by the workers."""
        flat = np.asarray(values).reshape(-1)
        if self._executor is None:
            return encrypt_vector(self.ctx, flat)
        if not np.all(np.isfinite(flat)):
            raise ValueError("cannot encrypt NaN or infinite values")
        n = self.ctx.degree
        chunks = -(-flat.size // n)
        data = np.empty((chunks, 2, len(self.ctx.primes), n), dtype=np.uint64)
        ranges = chunk_ranges(chunks, self.workers * _PIECES_PER_WORKER)
        futures = [(a, b, self._executor.submit(_encrypt_piece, flat[a * n : b * n])) for a, b in ranges]
        self._collect(futures, data)
        return EncryptedVector(flat.size, data)

    def partial_decrypt(
        self,
        share: KeyShare,
        c1: np.ndarray,
        decrypting_set: Sequence[int],
        *,
        length: int,
        sigma: float,
    ) -> PartialDecryption:
        """What ``partial_decrypt(ctx, share, c1, ...)`` returns, chunk ranges done by the workers.

        The share is pickled to each worker through the pool's pipe (memory only, never a file).
        """
        members = tuple(sorted(decrypting_set))
        if self._executor is None:
            return partial_decrypt(self.ctx, share, c1, members, length=length, sigma=sigma)
        if share.index not in members:  # fail here, not once per worker
            partial_decrypt(self.ctx, share, c1[:0], members, length=0, sigma=0.0)
        data = np.empty(c1.shape, dtype=np.uint64)
        ranges = chunk_ranges(c1.shape[0], self.workers * _PIECES_PER_WORKER)
        n = self.ctx.degree
        futures = [
            (a, b, self._executor.submit(_partial_piece, share, c1[a:b], members, (b - a) * n, sigma))
            for a, b in ranges
        ]
        self._collect(futures, data)
        return PartialDecryption(share.index, members, length, data)

    @staticmethod
    def _collect(futures: list[tuple[int, int, Future[np.ndarray]]], out: np.ndarray) -> None:
        try:
            for a, b, future in futures:
                out[a:b] = future.result()
        finally:
            for _, _, future in futures:
                future.cancel()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def encrypt_vector_parallel(
    ctx: CkksContext, values: np.ndarray, workers: int, *, pool: CryptoPool | None = None
) -> EncryptedVector:
    """``encrypt_vector`` on ``workers`` cores (a pool started for this call unless one is given)."""
    if pool is not None:
        return pool.encrypt_vector(values)
    with CryptoPool(ctx, workers) as own:
        return own.encrypt_vector(values)


def partial_decrypt_parallel(
    ctx: CkksContext,
    share: KeyShare,
    c1: np.ndarray,
    decrypting_set: Sequence[int],
    *,
    length: int,
    sigma: float,
    workers: int,
    pool: CryptoPool | None = None,
) -> PartialDecryption:
    """``partial_decrypt`` on ``workers`` cores; the share travels to the workers in memory only (see the module)."""
    if pool is not None:
        return pool.partial_decrypt(share, c1, decrypting_set, length=length, sigma=sigma)
    with CryptoPool(ctx, workers) as own:
        return own.partial_decrypt(share, c1, decrypting_set, length=length, sigma=sigma)
