"""What the encrypted federation is measured against, computed in the clear with the same seeds and splits.

- ``plaintext_fedavg``: the very same protocol arithmetic (federated standardisation, clipped weighted
  updates, the same per-site training seeds) without encryption. The encrypted run must match it within
  CKKS error at every round.
- ``train_central``: one model trained on the pooled training rows (the ceiling a consortium hopes to reach).
- ``local_only``: each site alone, on its own rows with its own standardisation (what a site has without
  the consortium).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from heagg.data import Dataset
from heagg.fedavg import FedAvgSettings, average, site_vector
from heagg.model import build_model, flatten, load_flat
from heagg.protocol.plan import TrainingPlan
from heagg.splits import Federation
from heagg.standardize import Standardizer, federated_standardizer
from heagg.training import TrainConfig, site_round_seed, train_local


def train_config(plan: TrainingPlan) -> TrainConfig:
    return TrainConfig.from_dict({**plan.train, "seed": plan.seed})


def fedavg_round(
    model: np.ndarray,
    sites: Sequence[Dataset],
    indices: Sequence[int],
    standardizer: Standardizer,
    plan: TrainingPlan,
    fedavg: FedAvgSettings,
    round_: int,
) -> np.ndarray:
    """One plaintext FedAvg round from ``model``: what the encrypted round computes, minus the encryption."""
    summed = None
    config = train_config(plan)
    for data, index in zip(sites, indices, strict=True):
        local = build_model(plan.spec, seed=plan.seed)
        load_flat(local, model)
        delta = train_local(local, standardizer.transform(data.X), data.y, config, seed=site_round_seed(round_, index))
        vector = site_vector(delta, len(data), fedavg)
        summed = vector if summed is None else summed + vector
    return model + average(summed).update


@dataclass(frozen=True)
class FedAvgRun:
    standardizer: Standardizer
    models: list[np.ndarray]  # the global model after each round (index 0 = after round 1)


def plaintext_fedavg(federation: Federation, plan: TrainingPlan, fedavg: FedAvgSettings) -> FedAvgRun:
    sites = [site.train for site in federation.sites]
    standardizer = federated_standardizer(
        [d.X for d in sites], [FedAvgSettings(1.0, fedavg.max_site_samples).weight(len(d)) for d in sites]
    )
    model = flatten(build_model(plan.spec, seed=plan.seed))
    models = []
    for round_ in range(1, plan.rounds + 1):
        model = fedavg_round(model, sites, range(1, len(sites) + 1), standardizer, plan, fedavg, round_)
        models.append(model)
    return FedAvgRun(standardizer, models)


def train_central(train: Dataset, plan: TrainingPlan) -> tuple[np.ndarray, Standardizer]:
    """The pooled-data model: the same optimiser for as many epochs as a site trains in the whole run."""
    from heagg.training import train_central as central

    model, standardizer = central(train, plan.spec, train_config(plan), rounds=plan.rounds, seed=plan.seed)
    return flatten(model), standardizer


def local_only(federation: Federation, plan: TrainingPlan) -> list[tuple[str, np.ndarray, Standardizer]]:
    """Every site on its own: its own standardisation, the same total epochs as in the federation."""
    out = []
    for site in federation.sites:
        model, standardizer = train_central(site.train, plan)
        out.append((site.name, model, standardizer))
    return out
