"""What model a consortium trains, described without torch: the aggregator needs its size, not its layers."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from heagg.errors import UsageError

MODEL_KINDS = ("logreg", "mlp")


@dataclass(frozen=True)
class ModelSpec:
    """Which model: ``"logreg"`` (one linear layer to a logit) or ``"mlp"`` (Linear/ReLU layers of widths ``hidden``).

    ``hidden`` means nothing for logistic regression and is normalised to ``()`` there, so equal models compare equal.
    """

    kind: str
    n_features: int
    hidden: tuple[int, ...] = (16,)

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise UsageError(f"unknown model kind {self.kind!r}; choose one of {', '.join(MODEL_KINDS)}")
        if not _is_count(self.n_features):
            raise UsageError(f"n_features must be a positive integer, got {self.n_features!r}")
        hidden = tuple(self.hidden) if self.kind == "mlp" else ()
        if self.kind == "mlp" and (not hidden or not all(_is_count(h) for h in hidden)):
            raise UsageError(f"an mlp needs one or more positive hidden widths, got {self.hidden!r}")
        object.__setattr__(self, "hidden", hidden)

    def layer_widths(self) -> tuple[int, ...]:
        """Input width, hidden widths, output width (1 logit)."""
        return (self.n_features, *self.hidden, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_features": self.n_features, "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        if not isinstance(data, dict) or not {"kind", "n_features"} <= set(data) <= {"kind", "n_features", "hidden"}:
            raise UsageError("a model spec must be a mapping with keys 'kind', 'n_features' and optionally 'hidden'")
        hidden = data.get("hidden", (16,))
        if not isinstance(hidden, (list, tuple)):
            raise UsageError(f"model spec 'hidden' must be a list of widths, got {hidden!r}")
        return cls(data["kind"], data["n_features"], tuple(hidden))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def param_count(spec: ModelSpec) -> int:
    """Length of the flat parameter vector of a model built from ``spec``."""
    widths = spec.layer_widths()
    return sum((w_in + 1) * w_out for w_in, w_out in itertools.pairwise(widths))
