"""What a site computes for each step, and how it applies the decrypted average (the node's torch side).

    scales   -> location_summary of its features           -> public centre and spread
    moments  -> centred_moments about that centre          -> the pooled standardiser
    train    -> the model delta after local training       -> global model += averaged delta

Every vector is weighted and bounded by ``heagg.fedavg.site_vector`` before encryption: setup steps with a clip
of 1 (their values are within [-1, 1] by construction), training with the consortium's clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heagg.data import Dataset
from heagg.fedavg import AveragedUpdate, FedAvgSettings, site_vector
from heagg.model import build_model, flatten, load_flat
from heagg.protocol.plan import TrainingPlan
from heagg.protocol.state import SharedState
from heagg.standardize import Standardizer, centre_and_spread, centred_moments, location_summary
from heagg.training import Metrics, TrainConfig, evaluate, site_round_seed, train_local


def initial_model(plan: TrainingPlan) -> np.ndarray:
    """Every site builds the same initial model from the plan's seed: it never has to travel."""
    return flatten(build_model(plan.spec, seed=plan.seed))


def standardizer_of(shared: SharedState) -> Standardizer:
    if shared.mean is None or shared.std is None:
        raise ValueError("the consortium has not standardised its features yet")
    return Standardizer(shared.mean, shared.std)


@dataclass(frozen=True)
class SiteTask:
    """One site's data and the consortium's settings: turns each step into the vector the site encrypts."""

    train: Dataset
    plan: TrainingPlan
    site_index: int
    fedavg: FedAvgSettings

    def settings_for(self, step: str) -> FedAvgSettings:
        return self.fedavg if step == "train" else FedAvgSettings(1.0, self.fedavg.max_site_samples)

    def vector(self, round_: int, step: str, shared: SharedState) -> np.ndarray:
        """The weighted, clipped vector to encrypt, trailer (weight, count) included."""
        X = self.train.X
        if step == "scales":
            values = location_summary(X)
        elif step == "moments":
            values = centred_moments(X, shared.centre, shared.spread)
        else:
            model = build_model(self.plan.spec, seed=self.plan.seed)
            load_flat(model, shared.model if shared.model is not None else initial_model(self.plan))
            config = TrainConfig.from_dict({**self.plan.train, "seed": self.plan.seed})
            values = train_local(
                model,
                standardizer_of(shared).transform(X),
                self.train.y,
                config,
                seed=site_round_seed(round_, self.site_index),
            )
        return site_vector(values, len(self.train), self.settings_for(step))

    def apply(self, round_: int, step: str, shared: SharedState, averaged: AveragedUpdate) -> SharedState:
        """The consortium's state after this step, from the decrypted average."""
        n_features = self.plan.spec.n_features
        if step == "scales":
            centre, spread = centre_and_spread(averaged.update, n_features)
            return shared.evolve(round=round_, step=step, centre=centre, spread=spread)
        if step == "moments":
            standardizer = Standardizer.from_centred_moments(averaged.update, shared.centre, shared.spread)
            return shared.evolve(round=round_, step=step, mean=standardizer.mean, std=standardizer.std)
        model = shared.model if shared.model is not None else initial_model(self.plan)
        return shared.evolve(round=round_, step=step, model=model + averaged.update)

    def evaluate(self, shared: SharedState, test: Dataset) -> Metrics | None:
        """The current global model's metrics on a held-out set (None before the first training round)."""
        if shared.model is None or len(test) == 0:
            return None
        model = build_model(self.plan.spec, seed=self.plan.seed)
        load_flat(model, shared.model)
        return evaluate(model, standardizer_of(shared).transform(test.X), test.y)
