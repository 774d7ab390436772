"""The three systems a benchmark compares, each in three parts: a site side, an aggregator side, a decryptor.

- ``plaintext``: FedAvg without encryption, float32 updates summed into float64 (the reference).
- ``single-key``: the common approach: every client holds one TenSEAL secret context and sends a
  ``ts.ckks_vector`` per 4096 values (N=8192, primes 60/40/40 + 60, scale 2^40).
- ``heagg``: threshold CKKS at one of heagg's presets, t-of-n decryption with noise flooding.

The site side encrypts and serialises one update (timed separately); the aggregator side (``Summer``) runs in
the aggregator's process and sums the wire frames as they arrive; the decryptor turns the summed frames back
into the float64 sum and reports its own phase times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from heagg.params import Preset

PLAINTEXT = "plaintext"
SINGLE_KEY = "single-key"
HEAGG = "heagg"


@dataclass(frozen=True)
class AggregatorSpec:
    """What the aggregator process needs to sum one system's updates; picklable (public bytes only)."""

    system: str
    params: int
    public_context: bytes = field(default=b"", repr=False)
    preset: Preset | None = None
    scale: float = 0.0
    #: an upper bound on one update's wire size, for the transport's message limit
    max_update_bytes: int = 0


class Summer(Protocol):
    """The aggregator's running sum for one system: O(model) memory whatever the number of sites."""

    def add(self, frames: list[bytes]) -> None: ...

    def finish(self) -> None:
        """Whatever the sum still owes once every update is in (timed as part of the sum)."""
        ...

    def result(self) -> list[bytes]: ...


@dataclass
class Decrypted:
    """The decrypted float64 sum and the decryption's phase times (seconds)."""

    total: np.ndarray
    #: ``decrypt_s`` (everything, run one after another on this machine) and system-specific parts
    seconds: dict[str, float]
    #: decryption on the critical path when share holders work at the same time on their own machines
    latency_s: float


class System(Protocol):
    """One system's site side and decryptor, for one setting (params, sites)."""

    name: str
    preset: str | None

    def aggregator_spec(self) -> AggregatorSpec: ...

    def facts(self) -> dict[str, object]:
        """Figures known without measuring: floor bytes per parameter, the error bound, parameters."""
        ...

    def calibrate(self, update: np.ndarray) -> dict[str, float]:
        """Extra one-off measurements on the first site's update (e.g. one-core encryption), untimed otherwise."""
        ...

    def encrypt(self, update: np.ndarray) -> object: ...

    def serialise(self, encrypted: object) -> list[bytes]: ...

    def decrypt(self, aggregate: list[bytes]) -> Decrypted: ...

    def close(self) -> None: ...


def make_summer(spec: AggregatorSpec) -> Summer:
    """The aggregator side of ``spec.system`` (imported here, in the aggregator's process)."""
    if spec.system == PLAINTEXT:
        from heagg.bench.systems.plaintext import PlaintextSummer

        return PlaintextSummer(spec)
    if spec.system == SINGLE_KEY:
        from heagg.bench.systems.singlekey import SingleKeySummer

        return SingleKeySummer(spec)
    if spec.system == HEAGG:
        from heagg.bench.systems.threshold import ThresholdSummer

        return ThresholdSummer(spec)
    raise ValueError(f"unknown system {spec.system!r}")
