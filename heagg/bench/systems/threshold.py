"""heagg itself: threshold CKKS at one preset, encrypted and partially decrypted on ``workers`` cores.

The key ceremony runs in memory (untimed, as it happens once per consortium): a fresh key at the scale
``heagg.params.choose_scale`` picks for the setting, Shamir-shared t-of-n. Sites encrypt with the public
context through a ``CryptoPool``; the aggregator validates and adds the wire bytes block by block
(``RunningSum.add_bytes``); sites 1..t partially decrypt with noise flooding at the consortium's sigma and
the result is combined and decoded. One-core encryption and partial decryption are timed as well, on the
first site's update and the first share, so the speed-up is measured in the same run.

These keys exist only for the benchmark: partially decrypting the same aggregate twice (parallel, then one
core) would leak in a real consortium, and the ledger that forbids it is deliberately not involved here.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np

from heagg.bench.systems import HEAGG, AggregatorSpec, Decrypted
from heagg.bench.updates import BOUND
from heagg.ceremony import data_primes
from heagg.crypto.context import CkksContext
from heagg.crypto.parallel import CryptoPool
from heagg.crypto.threshold import combine, partial_decrypt, share_secret
from heagg.crypto.vectors import EncryptedVector, RunningSum, encrypt_vector
from heagg.errors import BadShape
from heagg.params import choose_scale, flooding_sigma, get_preset, sum_error_bound


class ThresholdSystem:
    name = HEAGG

    def __init__(self, preset: str, params: int, sites: int, *, threshold: int, workers: int) -> None:
        self.preset = preset
        self.params = params
        self.sites = sites
        self.threshold = threshold
        self.workers = workers
        self._preset = get_preset(preset)
        # every coordinate of an update is within BOUND, so any slot of the sum is within sites * BOUND
        self.slot_bound = sites * BOUND
        scale = choose_scale(self._preset, data_primes(preset), n_sites=sites, slot_bound=self.slot_bound)
        self.ctx, key = CkksContext.generate_key(self._preset, scale=scale)
        try:
            self._shares = share_secret(key.limbs, self.ctx.primes, n=sites, t=threshold)
        finally:
            key.wipe()
        self.sigma = flooding_sigma(self._preset, sites)
        self.chunks = -(-params // self.ctx.degree)
        self._pool = CryptoPool(self.ctx, workers)
        self._pool.warm_up()

    def aggregator_spec(self) -> AggregatorSpec:
        return AggregatorSpec(
            HEAGG,
            self.params,
            public_context=self.ctx.public_bytes(),
            preset=self._preset,
            scale=self.ctx.scale,
            max_update_bytes=math.ceil(self._preset.bytes_per_param * self.chunks * self.ctx.degree) + 4096,
        )

    def error_bound(self) -> float:
        """Bound on the error of the decrypted average: the preset's bound on the sum, divided by the sites."""
        bound = sum_error_bound(
            self._preset, n_sites=self.sites, threshold=self.threshold, scale=self.ctx.scale, slot_bound=self.slot_bound
        )
        return bound / self.sites

    def facts(self) -> dict[str, object]:
        return {
            "floor_bytes_per_param": self._preset.bytes_per_param,
            "error_bound": self.error_bound(),
            "threshold": self.threshold,
            "workers": self.workers,
            "scale_log2": round(math.log2(self.ctx.scale), 2),
            "sigma_log2": round(math.log2(self.sigma), 2),
            "ckks": f"N={self.ctx.degree}, data primes {'/'.join(map(str, self._preset.data_bits))} "
            f"+ special {self._preset.special_bits}, two reals per slot",
        }

    def calibrate(self, update: np.ndarray) -> dict[str, float]:
        start = time.perf_counter()
        encrypt_vector(self.ctx, update)
        return {"encrypt_1core_s": time.perf_counter() - start}

    def encrypt(self, update: np.ndarray) -> EncryptedVector:
        return self._pool.encrypt_vector(update)

    def serialise(self, encrypted: object) -> list[bytes]:
        assert isinstance(encrypted, EncryptedVector)
        return [encrypted.to_bytes(self.ctx)]

    def decrypt(self, aggregate: list[bytes]) -> Decrypted:
        start = time.perf_counter()
        total = EncryptedVector.from_bytes(self.ctx, aggregate[0], max_chunks=self.chunks)
        decode_s = time.perf_counter() - start
        members = tuple(range(1, self.threshold + 1))
        partials, partial_s = [], []
        for index in members:
            start = time.perf_counter()
            partials.append(
                self._pool.partial_decrypt(
                    self._shares[index - 1], total.c1, members, length=total.length, sigma=self.sigma
                )
            )
            partial_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        partial_decrypt(self.ctx, self._shares[0], total.c1, members, length=total.length, sigma=self.sigma)
        partial_1core_s = time.perf_counter() - start
        start = time.perf_counter()
        values = combine(self.ctx, total, partials, threshold=self.threshold, value_bound=4 * self.slot_bound)
        combine_s = time.perf_counter() - start
        seconds = {
            "aggregate_decode_s": decode_s,
            "partial_decrypt_s": statistics.median(partial_s),
            "partial_decrypt_1core_s": partial_1core_s,
            "combine_s": combine_s,
            "decrypt_s": decode_s + sum(partial_s) + combine_s,
        }
        return Decrypted(values, seconds, decode_s + max(partial_s) + combine_s)

    def close(self) -> None:
        self._pool.close()
        for share in self._shares:
            share.limbs.fill(0)


class ThresholdSummer:
    """The aggregator's side: ``RunningSum.add_bytes`` under the public context (no key, no share)."""

    def __init__(self, spec: AggregatorSpec) -> None:
        assert spec.preset is not None
        self._ctx = CkksContext.from_public_bytes(spec.public_context, preset=spec.preset, scale=spec.scale)
        self._chunks = -(-spec.params // self._ctx.degree)
        self._sum = RunningSum(self._ctx)

    def add(self, frames: list[bytes]) -> None:
        if len(frames) != 1:
            raise BadShape(f"expected one ciphertext batch, got {len(frames)} frames")
        self._sum.add_bytes(frames[0], max_chunks=self._chunks)

    def finish(self) -> None:
        self._sum.total  # noqa: B018 - reading the total reduces the lazy additions modulo q

    def result(self) -> list[bytes]:
        return [self._sum.total.to_bytes(self._ctx)]
