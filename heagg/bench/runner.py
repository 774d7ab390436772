"""``run_bench``: every system on the same site updates, setting by setting, in one run.

For each (params, sites) the plaintext and single-key baselines run first, then heagg at each preset, all
on the same regenerated updates and back to back, so their ratios hold on a noisy shared machine. Each
system goes through a whole round: every site encrypts, serialises and sends its update over loopback
CurveZMQ to an aggregator process that sums it on arrival; then the sum is decrypted and compared with the
plaintext truth.

Row fields (seconds are medians over sites where a phase runs once per site; MB = 10^6 bytes):

- ``encrypt_s``, ``serialise_s``, ``transfer_s``: per site; ``to_wire_s`` = encrypt + serialise per site
- ``sum_s``: the aggregator's work for the whole round: wire decoding, validation and addition of every
  site's update, and completing the sum (heagg reduces its lazy additions once); ``sum_bound_s``: a numpy
  add of the same bytes in the same process, the memory-bandwidth bound (``sum_vs_bound`` = their ratio)
- ``decrypt_s``: from the summed bytes to the decrypted sum, every step one after another on this machine
- ``total_s``: the whole round on this machine (sites one after another): the sum of all the above
- ``round_latency_s``: the same round when sites and share holders run at the same time on their own
  machines: one site's encryption, every transfer and sum (the aggregator's link and core are shared),
  one share holder's partial decryption
- ``aggregator_peak_mb``: how far the aggregator process's resident memory rose above idle during the round
- ``max_abs_error``: of the decrypted average (sum / sites) against the float64 plaintext average
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import numpy as np

from heagg.bench.config import BenchConfig
from heagg.bench.loopback import Loopback
from heagg.bench.systems import HEAGG, PLAINTEXT, SINGLE_KEY, System
from heagg.bench.updates import site_updates, true_sum

T = TypeVar("T")

#: figures shown with their ratio to the plaintext baseline
RATIO_FIELDS = (
    "bytes_per_param",
    "to_wire_s",
    "transfer_s",
    "sum_s",
    "decrypt_s",
    "total_s",
    "round_latency_s",
    "aggregator_peak_mb",
)


class Progress(Protocol):
    """Where ``run_bench`` reports what it is doing: a total of steps, then a label and an advance per step."""

    def start(self, total: int) -> None: ...

    def step(self, label: str) -> None: ...

    def advance(self) -> None: ...


class _Silent:
    def start(self, total: int) -> None:
        pass

    def step(self, label: str) -> None:
        pass

    def advance(self) -> None:
        pass


def _timed(fn: Callable[..., T], *args: object) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def _label(system: System, params: int, sites: int) -> str:
    preset = f" {system.preset}" if system.preset else ""
    return f"{system.name}{preset}, {params:.0e} params x {sites} sites"


def measure(system: System, *, params: int, sites: int, seed: int, truth: np.ndarray, progress: Progress) -> dict:
    """One full round of ``system`` on the setting's updates; returns its result row."""
    label = _label(system, params, sites)
    encrypt_s, serialise_s, to_wire_s, transfer_s = [], [], [], []
    extra: dict[str, float] = {}
    wire_bytes = 0
    load = os.getloadavg()[0]
    with Loopback(system.aggregator_spec(), sites) as link:
        for site, update in enumerate(site_updates(seed, params, sites), start=1):
            progress.step(f"{label}: site {site} encrypts and sends")
            if site == 1:
                extra.update(system.calibrate(update))
            encrypted, t_encrypt = _timed(system.encrypt, update)
            frames, t_serialise = _timed(system.serialise, encrypted)
            del encrypted
            wire_bytes = sum(len(frame) for frame in frames)
            transfer_s.append(link.send(site, frames))
            del frames
            encrypt_s.append(0.0 if system.name == PLAINTEXT else t_encrypt)
            serialise_s.append(t_serialise)
            to_wire_s.append(encrypt_s[-1] + t_serialise)
            progress.advance()
        progress.step(f"{label}: aggregator reports")
        report = link.finish()
    progress.step(f"{label}: decrypt")
    decrypted = system.decrypt(report.aggregate)
    progress.advance()
    error = float(np.max(np.abs(decrypted.total / sites - truth / sites))) if params else 0.0
    sum_s = sum(report.sum_s) + report.finish_s
    decrypt_s = decrypted.seconds["decrypt_s"]
    row: dict = {
        "system": system.name,
        "preset": system.preset,
        "params": params,
        "sites": sites,
        "bytes_per_param": wire_bytes / params,
        "wire_bytes_per_site": wire_bytes,
        **system.facts(),
        "encrypt_s": statistics.median(encrypt_s),
        "serialise_s": statistics.median(serialise_s),
        "to_wire_s": statistics.median(to_wire_s),
        "transfer_s": statistics.median(transfer_s),
        "sum_s": sum_s,
        "sum_per_site_s": statistics.median(report.sum_s),
        "sum_bound_s": report.bound_s_per_update * sites,
        "sum_vs_bound": sum_s / (report.bound_s_per_update * sites),
        "sum_per_site_vs_bound": statistics.median(report.sum_s) / report.bound_s_per_update,
        **decrypted.seconds,
        "decrypt_s": decrypt_s,
        "total_s": sum(to_wire_s) + sum(transfer_s) + sum_s + decrypt_s,
        "round_latency_s": statistics.median(to_wire_s) + sum(transfer_s) + sum_s + decrypted.latency_s,
        "max_abs_error": error,
        "aggregator_peak_mb": report.peak_bytes / 1e6,
        "load_average_1m": round(load, 2),
        "memory_method": report.memory_method,
        **extra,
    }
    one_core = row.get("encrypt_1core_s", row["encrypt_s"] if system.name == SINGLE_KEY else None)
    if one_core is not None:  # TenSEAL's single-key encryption runs on one core as shipped
        row["to_wire_us_per_param_1core"] = (one_core + row["serialise_s"]) / params * 1e6
    if "encrypt_1core_s" in row:
        row["encrypt_speedup"] = row["encrypt_1core_s"] / row["encrypt_s"]
        row["partial_decrypt_speedup"] = row["partial_decrypt_1core_s"] / row["partial_decrypt_s"]
    return row


def add_ratios(rows: list[dict]) -> None:
    """Give every row of one (params, sites) setting its figures divided by the plaintext row's."""
    plain = next((r for r in rows if r["system"] == PLAINTEXT), None)
    for row in rows:
        row["vs_plaintext"] = {
            name: (row[name] / plain[name] if plain is not None and plain[name] > 0 else None) for name in RATIO_FIELDS
        }


def _systems(config: BenchConfig, params: int, sites: int) -> list[Callable[[], System]]:
    from heagg.bench.systems.plaintext import PlaintextSystem
    from heagg.bench.systems.singlekey import SingleKeySystem
    from heagg.bench.systems.threshold import ThresholdSystem

    makers: list[Callable[[], System]] = []
    if PLAINTEXT in config.baselines:
        makers.append(lambda: PlaintextSystem(params, sites))
    if SINGLE_KEY in config.baselines:
        makers.append(lambda: SingleKeySystem(params, sites))
    for preset in config.presets:
        makers.append(
            lambda preset=preset: ThresholdSystem(
                preset, params, sites, threshold=config.threshold_for(sites), workers=config.workers
            )
        )
    return makers


def _machine() -> dict:
    model = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115 - read a few lines of a small pseudo-file
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import tenseal

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tenseal": tenseal.__version__,
    }


def run_bench(config: BenchConfig, *, progress: Progress | None = None) -> dict:
    """Measure every system at every setting of ``config``; return ``{"results": [row, ...], "meta": {...}}``."""
    config.validate()
    sink = progress or _Silent()
    settings = [(params, sites) for params in config.params for sites in config.sites]
    systems_per_setting = len(config.baselines) + len(config.presets)
    sink.start(sum(systems_per_setting * (sites + 1) for _, sites in settings))
    started = datetime.now(UTC)
    rows: list[dict] = []
    for params, sites in settings:
        truth = true_sum(config.seed, params, sites)
        setting_rows = []
        for make in _systems(config, params, sites):
            system = make()
            try:
                row = measure(system, params=params, sites=sites, seed=config.seed, truth=truth, progress=sink)
                setting_rows.append(row)
            finally:
                system.close()
        add_ratios(setting_rows)
        rows.extend(setting_rows)
    return {
        "results": rows,
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
            "config": {
                "params": list(config.params),
                "sites": list(config.sites),
                "presets": list(config.presets),
                "threshold": config.threshold,
                "workers": config.workers,
                "seed": config.seed,
            },
            "machine": _machine(),
            "memory_method": rows[0]["memory_method"] if rows else "",
            "systems": [HEAGG, PLAINTEXT, SINGLE_KEY],
        },
    }
