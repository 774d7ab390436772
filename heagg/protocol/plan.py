"""The training plan the aggregator announces, and the order of a run's steps. No torch here.

A run is a sequence of steps, each one encrypted aggregation and one threshold decryption:

    round 0 "scales"   sites' log-magnitudes of their feature means and spreads (for a public centre and spread)
    round 0 "moments"  sites' first and second moments of their features about that centre
    round 1.. R "train"  sites' weighted, clipped model deltas (FedAvg)

The two standardisation steps give every site the same feature scaling without pooling data (see
``heagg.standardize``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from heagg.errors import UsageError
from heagg.fedavg import TRAILER
from heagg.modelspec import ModelSpec, param_count

SETUP_STEPS = ("scales", "moments")


@dataclass(frozen=True)
class TrainingPlan:
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    rounds: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        ModelSpec.from_dict(self.model)
        if self.rounds < 1:
            raise UsageError("--rounds must be at least 1")

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.model)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> TrainingPlan:
        if not isinstance(data, dict) or set(data) != {"model", "train", "rounds", "seed"}:
            raise UsageError("a training plan needs exactly: model, train, rounds, seed")
        try:
            model, train = dict(data["model"]), dict(data["train"])
            rounds, seed = int(data["rounds"]), int(data["seed"])
        except (TypeError, ValueError) as exc:  # a plan read from the wire or a state file: say so, do not crash
            raise UsageError(f"a training plan has a malformed field ({exc})") from None
        return cls(model=model, train=train, rounds=rounds, seed=seed)

    def vector_length(self, step: str) -> int:
        """Length of what a site encrypts for a step, trailer (weight, count) included."""
        n_features = self.spec.n_features
        body = param_count(self.spec) if step == "train" else 2 * n_features
        return body + TRAILER


def first_step() -> tuple[int, str]:
    return (0, SETUP_STEPS[0])


def next_step(round_: int, step: str) -> tuple[int, str]:
    if step == "scales":
        return (0, "moments")
    if step == "moments":
        return (1, "train")
    return (round_ + 1, "train")


def is_finished(completed: tuple[int, str] | None, plan: TrainingPlan) -> bool:
    return completed is not None and completed[1] == "train" and completed[0] >= plan.rounds
