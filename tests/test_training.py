"""Local training, evaluation, the central baseline, and plaintext FedAvg on real WDBC data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from heagg.data import load_wdbc
from heagg.errors import UsageError
from heagg.fedavg import FedAvgSettings, average, site_vector
from heagg.model import ModelSpec, build_model, flatten, load_flat
from heagg.splits import Federation, split_sites
from heagg.standardize import Standardizer, federated_standardizer
from heagg.training import Metrics, TrainConfig, evaluate, train_central, train_local

ROUNDS = 10


@pytest.fixture(scope="module")
def wdbc():
    return load_wdbc()


def plaintext_fedavg(fed: Federation, spec: ModelSpec, config: TrainConfig, rounds: int) -> Metrics:
    """The federation without encryption: summed moments, then rounds of summed site vectors via heagg.fedavg."""
    standardizer = federated_standardizer([s.train.X for s in fed.sites], [len(s.train) for s in fed.sites])
    settings = FedAvgSettings()
    global_model = build_model(spec, seed=0)
    for round_no in range(rounds):
        summed = np.zeros(flatten(global_model).size + 2)
        for k, site in enumerate(fed.sites):
            local = build_model(spec, seed=0)
            load_flat(local, flatten(global_model))
            delta = train_local(
                local, standardizer.transform(site.train.X), site.train.y, config, seed=1000 * round_no + k
            )
            summed += site_vector(delta, len(site.train), settings)
        averaged = average(summed)
        assert averaged.participants == len(fed.sites)
        load_flat(global_model, flatten(global_model) + averaged.update)
    return evaluate(global_model, standardizer.transform(fed.test.X), fed.test.y)


# --- TrainConfig -----------------------------------------------------------------------------------------------------


def test_config_dict_round_trip():
    config = TrainConfig(epochs=3, lr=0.01, batch_size=16, optimizer="adam", loss="weighted-bce", l2=1e-3, seed=9)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({}) == TrainConfig()


@pytest.mark.parametrize(
    "data",
    [
        {"epoch": 3},
        {"epochs": 0},
        {"epochs": 2.5},
        {"epochs": True},
        {"lr": 0},
        {"lr": float("nan")},
        {"batch_size": -1},
        {"optimizer": "rmsprop"},
        {"loss": "hinge"},
        {"l2": -1.0},
        {"seed": -1},
        {"lr": "0.1"},
    ],
)
def test_config_rejects_unknown_keys_and_bad_values(data):
    with pytest.raises(UsageError):
        TrainConfig.from_dict(data)


# --- train_local -----------------------------------------------------------------------------------------------------


def standardized_site(wdbc):
    fed = split_sites(wdbc, 3, "iid", seed=0)
    site = fed.sites[0].train
    return Standardizer.fit(site.X).transform(site.X), site.y


def test_train_local_is_deterministic_and_returns_the_delta(wdbc):
    X, y = standardized_site(wdbc)
    spec = ModelSpec("mlp", X.shape[1], (8,))
    config = TrainConfig(epochs=2)
    runs = []
    for seed in (4, 4, 5):
        model = build_model(spec, seed=1)
        before = flatten(model)
        delta = train_local(model, X, y, config, seed=seed)
        assert np.array_equal(flatten(model), before + delta)  # the model is left at the trained weights
        runs.append(delta)
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    assert np.abs(runs[0]).max() > 0


def test_config_seed_also_changes_the_shuffle(wdbc):
    X, y = standardized_site(wdbc)
    spec = ModelSpec("logreg", X.shape[1])
    deltas = [train_local(build_model(spec, seed=0), X, y, TrainConfig(seed=s), seed=1) for s in (0, 1)]
    assert not np.array_equal(*deltas)


def test_train_local_leaves_global_rng_alone(wdbc):
    X, y = standardized_site(wdbc)
    state = torch.get_rng_state()
    train_local(build_model(ModelSpec("logreg", X.shape[1]), seed=0), X, y, TrainConfig(), seed=0)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize(
    "config", [TrainConfig(optimizer="adam", lr=0.01), TrainConfig(loss="weighted-bce"), TrainConfig(l2=0.5)]
)
def test_variants_train_and_differ_from_the_default(wdbc, config):
    X, y = standardized_site(wdbc)
    spec = ModelSpec("logreg", X.shape[1])
    default = build_model(spec, seed=0)
    variant = build_model(spec, seed=0)
    train_local(default, X, y, TrainConfig(), seed=0)
    train_local(variant, X, y, config, seed=0)
    assert not np.array_equal(flatten(default), flatten(variant))
    assert evaluate(variant, X, y).accuracy > 0.9


def test_l2_shrinks_the_weights(wdbc):
    X, y = standardized_site(wdbc)
    spec = ModelSpec("logreg", X.shape[1])
    norms = []
    for l2 in (0.0, 0.5):
        model = build_model(spec, seed=0)
        train_local(model, X, y, TrainConfig(epochs=20, l2=l2), seed=0)
        norms.append(float(model[0].weight.detach().norm()))
    assert norms[1] < 0.7 * norms[0]


def test_weighted_bce_raises_sensitivity_on_a_benign_heavy_site(wdbc):
    benign_heavy = np.concatenate([np.flatnonzero(wdbc.y == 0)[:200], np.flatnonzero(wdbc.y == 1)[:20]])
    site = wdbc.take(benign_heavy, "skewed")
    rest = wdbc.take(np.setdiff1d(np.arange(len(wdbc)), benign_heavy), "rest")
    standardizer = Standardizer.fit(site.X)
    spec = ModelSpec("logreg", site.n_features)
    sensitivity = {}
    for loss in ("bce", "weighted-bce"):
        model = build_model(spec, seed=0)
        train_local(model, standardizer.transform(site.X), site.y, TrainConfig(epochs=3, lr=0.02, loss=loss), seed=0)
        sensitivity[loss] = evaluate(model, standardizer.transform(rest.X), rest.y).sensitivity
    assert sensitivity["weighted-bce"] > sensitivity["bce"]


def test_train_local_rejects_empty_and_mismatched_data():
    model = build_model(ModelSpec("logreg", 2), seed=0)
    with pytest.raises(ValueError, match="no training rows"):
        train_local(model, np.zeros((0, 2)), np.zeros(0), TrainConfig(), seed=0)
    with pytest.raises(ValueError, match="X must be"):
        train_local(model, np.zeros((3, 2)), np.zeros(2), TrainConfig(), seed=0)


# --- evaluate --------------------------------------------------------------------------------------------------------


def fixed_model(weight: float) -> torch.nn.Module:
    """A one-feature logistic model predicting malignant exactly when x > 0."""
    model = build_model(ModelSpec("logreg", 1), seed=0)
    load_flat(model, np.array([weight, 0.0]))
    return model


def test_evaluate_counts_the_confusion_matrix():
    X = np.array([[1.0], [2.0], [-1.0], [3.0], [-2.0], [-3.0]])
    y = np.array([1, 1, 1, 0, 0, 0])  # one malignant case missed, one benign flagged
    metrics = evaluate(fixed_model(1.0), X, y)
    assert metrics.accuracy == pytest.approx(4 / 6)
    assert metrics.sensitivity == pytest.approx(2 / 3) and metrics.specificity == pytest.approx(2 / 3)
    assert metrics.auc == pytest.approx(6 / 9)  # of 9 (malignant, benign) pairs, 6 are ranked right
    assert set(metrics.to_dict()) == {"accuracy", "auc", "sensitivity", "specificity"}


def test_evaluate_with_one_class_gives_nan_auc():
    metrics = evaluate(fixed_model(1.0), np.array([[1.0], [-1.0]]), np.array([0, 0]))
    assert metrics.accuracy == 0.5 and metrics.specificity == 0.5
    assert math.isnan(metrics.auc) and math.isnan(metrics.sensitivity)
    assert all(math.isnan(v) for v in evaluate(fixed_model(1.0), np.zeros((0, 1)), np.zeros(0)).to_dict().values())


# --- accuracy on WDBC ------------------------------------------------------------------------------------------------


def test_central_logreg_reaches_95_percent(wdbc):
    fed = split_sites(wdbc, 5, "iid", seed=0)
    spec = ModelSpec("logreg", wdbc.n_features)
    model, standardizer = train_central(fed.train_pool, spec, TrainConfig(), rounds=ROUNDS, seed=0)
    metrics = evaluate(model, standardizer.transform(fed.test.X), fed.test.y)
    print(f"central logreg: {metrics}")
    assert metrics.accuracy >= 0.95 and metrics.auc >= 0.98


def test_central_baseline_is_deterministic(wdbc):
    fed = split_sites(wdbc, 5, "iid", seed=0)
    spec = ModelSpec("mlp", wdbc.n_features)
    a, _ = train_central(fed.train_pool, spec, TrainConfig(epochs=1), rounds=2, seed=0)
    b, _ = train_central(fed.train_pool, spec, TrainConfig(epochs=1), rounds=2, seed=0)
    assert np.array_equal(flatten(a), flatten(b))
    with pytest.raises(UsageError):
        train_central(fed.train_pool, spec, TrainConfig(), rounds=0, seed=0)


@pytest.mark.parametrize("split", ["iid", "dirichlet:0.3"])
@pytest.mark.parametrize(("kind", "rounds"), [("logreg", ROUNDS), ("mlp", 2 * ROUNDS)])  # the mlp converges slower
def test_plaintext_fedavg_of_five_sites_reaches_95_percent(wdbc, split, kind, rounds):
    fed = split_sites(wdbc, 5, split, seed=0)
    metrics = plaintext_fedavg(fed, ModelSpec(kind, wdbc.n_features), TrainConfig(), rounds)
    print(f"fedavg {kind} {split} {rounds} rounds: {metrics}")
    assert metrics.accuracy >= 0.95 and metrics.auc >= 0.98
