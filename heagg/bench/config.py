"""What a benchmark run measures: the grid of settings, the threshold, the worker count, the seed."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from heagg.errors import UsageError
from heagg.params import PRESETS, get_preset

DEFAULT_PARAMS = (100_000, 1_000_000, 10_000_000)
DEFAULT_SITES = (3, 10, 30)
DEFAULT_THRESHOLD = 3


def parse_counts(text: str, *, what: str) -> tuple[int, ...]:
    """``"1e5,1e6,10000000"`` -> (100000, 1000000, 10000000): positive whole numbers, sorted, without repeats."""
    values = []
    for part in text.split(","):
        item = part.strip().replace("_", "")
        try:
            number = float(item)
        except ValueError:
            raise UsageError(f"{what}: {part.strip()!r} is not a number (write e.g. 1e5,1e6)") from None
        if not (math.isfinite(number) and number >= 1 and number == int(number)):
            raise UsageError(f"{what}: {part.strip()!r} is not a positive whole number")
        values.append(int(number))
    return tuple(sorted(set(values)))


def parse_presets(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not names:
        raise UsageError(f"--preset: name at least one of {', '.join(PRESETS)}")
    for name in names:
        get_preset(name)
    return names


@dataclass(frozen=True)
class BenchConfig:
    """The grid: every (preset, params, sites) setting, with the plaintext and single-key baselines per (params, sites).

    ``threshold`` None means min(3, sites) decryptors per setting; ``workers`` is the process count for
    heagg's encryption and partial decryption (the one-core figures are measured in the same run anyway).
    """

    params: tuple[int, ...] = DEFAULT_PARAMS
    sites: tuple[int, ...] = DEFAULT_SITES
    presets: tuple[str, ...] = tuple(PRESETS)
    threshold: int | None = None
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    seed: int = 0
    #: the baselines measured next to heagg; dropping one is only for quick experiments
    baselines: tuple[str, ...] = ("plaintext", "single-key")

    def validate(self) -> None:
        if not self.params or not self.sites or not self.presets:
            raise UsageError("give at least one parameter count, one site count and one preset")
        if min(self.params) < 1 or min(self.sites) < 2:
            raise UsageError("--params must be at least 1 and --sites at least 2")
        if self.workers < 1:
            raise UsageError("--workers must be at least 1")
        if self.threshold is not None and not 1 <= self.threshold <= min(self.sites):
            raise UsageError(f"--threshold must be between 1 and the smallest --sites ({min(self.sites)})")
        for name in self.presets:
            get_preset(name)
        unknown = set(self.baselines) - {"plaintext", "single-key"}
        if unknown:
            raise UsageError(f"unknown baseline(s) {', '.join(sorted(unknown))}")

    def threshold_for(self, sites: int) -> int:
        return self.threshold if self.threshold is not None else min(DEFAULT_THRESHOLD, sites)
