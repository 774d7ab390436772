"""The campaign's tally: what was tried against heagg and what held, printed at the end of the test run.

Tests record only what they have just asserted (an attack counts as rejected once the aggregator's log shows the
named rejection; a run counts as correct once its final model was checked against the plaintext replay).
``conftest.py`` prints the tally in pytest's terminal summary.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Campaign:
    attacks_tried: Counter = field(default_factory=Counter)
    attacks_stopped: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    runs: int = 0
    runs_correct: int = 0
    #: anything an attack or a fault cost: honest contributions dropped, runs off the correct model, state files
    #: that do not load or were left half-written. Must stay 0.
    lost: Counter = field(default_factory=Counter)
    fuzz: dict[str, str] = field(default_factory=dict)
    measurements: dict[str, str] = field(default_factory=dict)

    def tried(self, kind: str, count: int = 1) -> None:
        self.attacks_tried[kind] += count

    def stopped(self, kind: str, count: int = 1) -> None:
        self.attacks_stopped[kind] += count

    def fault(self, kind: str) -> None:
        self.faults[kind] += 1

    def run(self, *, correct: bool) -> None:
        self.runs += 1
        self.runs_correct += bool(correct)

    def lose(self, what: str, count: int = 1) -> None:
        self.lost[what] += count

    def lines(self) -> list[str]:
        if not (self.attacks_tried or self.faults or self.runs or self.fuzz or self.measurements):
            return []
        out = [
            f"attacks tried: {sum(self.attacks_tried.values())}, rejected or detected: "
            f"{sum(self.attacks_stopped.values())}"
        ]
        out += [f"  {kind}: {self.attacks_stopped[kind]}/{n}" for kind, n in sorted(self.attacks_tried.items())]
        out.append(f"faults injected: {sum(self.faults.values())} ({_counts(self.faults)})")
        out.append(f"runs that reached the correct model: {self.runs_correct} of {self.runs}")
        out.append(f"lost: {sum(self.lost.values())}" + (f" ({_counts(self.lost)})" if self.lost else ""))
        out += [f"fuzzing {name}: {text}" for name, text in sorted(self.fuzz.items())]
        out += [f"{name}: {text}" for name, text in sorted(self.measurements.items())]
        return out


def _counts(counter: Counter) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counter.items())) or "none"


CAMPAIGN = Campaign()
