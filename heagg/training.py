"""Local training at a site, evaluation, and the centrally trained baseline heagg reports against.

A site trains the current global model on its own standardised rows for a few epochs and returns the parameter
delta (``train_local``); FedAvg (``heagg.fedavg``) averages the deltas. Training is deterministic for a given seed:
shuffling draws from a private ``torch.Generator``, and nothing here touches torch's global state unless the caller
asks for a thread count.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from heagg.data import Dataset
from heagg.errors import UsageError
from heagg.model import ModelSpec, build_model, flatten, predict_proba
from heagg.standardize import Standardizer

OPTIMIZERS = ("sgd", "adam")
LOSSES = ("bce", "weighted-bce")
#: probability at or above which a case is predicted malignant
DECISION_THRESHOLD = 0.5


@dataclass(frozen=True)
class TrainConfig:
    """How a site trains in one round.

    ``loss="weighted-bce"`` weights malignant rows by the site's own benign/malignant ratio (1 if the site has only
    one class). ``l2`` penalises ``l2/2 * ||W||^2`` over weight matrices, not biases. A fresh optimiser is made
    for every call of ``train_local``, so Adam's moments do not carry across rounds.
    """

    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 32
    optimizer: str = "sgd"
    loss: str = "bce"
    l2: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"training {name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"training seed must be a non-negative integer, got {self.seed!r}")
        for name, low_ok in (("lr", False), ("l2", True)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (value == 0 and not low_ok):
                raise UsageError(f"training {name} must be a {'non-negative' if low_ok else 'positive'} "
                                 f"number, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.loss not in LOSSES:
            raise UsageError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> TrainConfig:
        """Inverse of ``to_dict``; unknown keys or bad values are a ``UsageError``. Missing keys take defaults."""
        if not isinstance(data, dict):
            raise UsageError("training settings must be a mapping")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown training setting(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**data)


@dataclass(frozen=True)
class Metrics:
    """Held-out performance at threshold 0.5, malignant being the positive class.

    ``auc`` is NaN when the rows hold one class only (ROC AUC is undefined); likewise ``sensitivity`` with no
    malignant rows, ``specificity`` with no benign rows, and everything on an empty set.
    """

    accuracy: float
    auc: float
    sensitivity: float
    specificity: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def train_local(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    *,
    seed: int,
    num_threads: int | None = None,
) -> np.ndarray:
    """Train ``model`` in place on standardised ``X`` and 0/1 ``y``; return ``flatten(after) - flatten(before)``.

    ``config.seed`` is the run's seed and ``seed`` tells calls apart (say, one per site and round); together they
    fix the shuffling. ``num_threads``, if given, is passed to ``torch.set_num_threads`` (a process-wide setting).
    """
    features = torch.tensor(np.asarray(X, dtype=np.float32))  # a copy: dataset arrays are read-only
    labels = torch.tensor(np.asarray(y, dtype=np.float32))
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"X must be (n, d) and y (n,), got {tuple(features.shape)} and {tuple(labels.shape)}")
    if features.shape[0] == 0:
        raise ValueError("no training rows")
    if num_threads is not None:
        torch.set_num_threads(num_threads)

    before = flatten(model)
    generator = _generator(config.seed, seed)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=_pos_weight(labels) if config.loss == "weighted-bce" else None)
    optimizer: torch.optim.Optimizer
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    weights = [p for p in model.parameters() if p.ndim > 1]

    model.train()
    n = features.shape[0]
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = loss_fn(model(features[batch]).reshape(-1), labels[batch])
            if config.l2:
                loss = loss + 0.5 * config.l2 * sum(w.square().sum() for w in weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return flatten(model) - before


def evaluate(model: nn.Module, X: np.ndarray, y: np.ndarray) -> Metrics:
    """Accuracy, ROC AUC, sensitivity and specificity of ``model`` on standardised ``X`` with 0/1 labels ``y``."""
    from sklearn.metrics import roc_auc_score  # imported here: sklearn is slow to import

    labels = np.asarray(y, dtype=np.int64)
    if labels.size == 0:
        return Metrics(math.nan, math.nan, math.nan, math.nan)
    scores = predict_proba(model, X, None)
    predicted = (scores >= DECISION_THRESHOLD).astype(np.int64)
    positives, negatives = labels == 1, labels == 0
    both_classes = positives.any() and negatives.any()
    return Metrics(
        accuracy=float(np.mean(predicted == labels)),
        auc=float(roc_auc_score(labels, scores)) if both_classes else math.nan,
        sensitivity=float(np.mean(predicted[positives] == 1)) if positives.any() else math.nan,
        specificity=float(np.mean(predicted[negatives] == 0)) if negatives.any() else math.nan,
    )


def train_central(
    train: Dataset, spec: ModelSpec, config: TrainConfig, *, rounds: int, seed: int
) -> tuple[nn.Module, Standardizer]:
    """The baseline: one model trained on the pooled rows, standardised on them, for ``rounds * epochs`` epochs.

    Same model initialisation (``seed``), optimiser and loss as the sites use, so the comparison isolates what
    federation (and encryption) costs.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise UsageError(f"rounds must be a positive integer, got {rounds!r}")
    standardizer = Standardizer.fit(train.X)
    model = build_model(spec, seed=seed)
    train_local(model, standardizer.transform(train.X), train.y,
                dataclasses.replace(config, epochs=config.epochs * rounds), seed=seed)
    return model, standardizer


def _generator(*seeds: int) -> torch.Generator:
    """A private generator whose state depends on every seed given (mixed by numpy's ``SeedSequence``)."""
    mixed = np.random.SeedSequence([int(s) for s in seeds]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed >> np.uint64(1)))


def _pos_weight(labels: torch.Tensor) -> torch.Tensor:
    positives = float(labels.sum())
    negatives = float(labels.numel()) - positives
    ratio = negatives / positives if positives and negatives else 1.0
    return torch.tensor(ratio, dtype=torch.float32)


def site_round_seed(round_: int, site_index: int) -> int:
    """The per-call seed of ``train_local`` for a site in a round: the nodes and the plaintext baseline agree on it."""
    return round_ * 65_536 + site_index
