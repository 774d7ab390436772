"""Plaintext FedAvg, the reference: float32 updates on the wire, summed into float64, nothing to decrypt."""

from __future__ import annotations

import numpy as np

from heagg.bench.systems import PLAINTEXT, AggregatorSpec, Decrypted
from heagg.errors import BadShape


class PlaintextSystem:
    name = PLAINTEXT
    preset = None

    def __init__(self, params: int, sites: int) -> None:
        self.params = params
        self.sites = sites

    def aggregator_spec(self) -> AggregatorSpec:
        return AggregatorSpec(PLAINTEXT, self.params, max_update_bytes=4 * self.params)

    def facts(self) -> dict[str, object]:
        return {"floor_bytes_per_param": 4.0, "error_bound": 0.0}

    def calibrate(self, update: np.ndarray) -> dict[str, float]:
        return {}

    def encrypt(self, update: np.ndarray) -> np.ndarray:
        return update  # nothing to do: the update already is float32

    def serialise(self, encrypted: object) -> list[bytes]:
        assert isinstance(encrypted, np.ndarray)
        return [encrypted.astype("<f4", copy=False).tobytes()]

    def decrypt(self, aggregate: list[bytes]) -> Decrypted:
        total = np.frombuffer(aggregate[0], dtype="<f8").astype(np.float64)
        return Decrypted(total, {"decrypt_s": 0.0}, 0.0)

    def close(self) -> None:
        pass


class PlaintextSummer:
    def __init__(self, spec: AggregatorSpec) -> None:
        self._total = np.zeros(spec.params, dtype=np.float64)

    def add(self, frames: list[bytes]) -> None:
        if len(frames) != 1 or len(frames[0]) != 4 * self._total.size:
            raise BadShape(f"expected one frame of {4 * self._total.size} bytes")
        np.add(self._total, np.frombuffer(frames[0], dtype="<f4"), out=self._total)

    def finish(self) -> None:
        pass

    def result(self) -> list[bytes]:
        return [self._total.tobytes()]
