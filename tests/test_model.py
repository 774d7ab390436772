"""Models, their flat parameter vector, and the exported model file with its card."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heagg.data import load_wdbc
from heagg.errors import UsageError
from heagg.model import (
    ModelSpec,
    build_model,
    card_path,
    flatten,
    load_flat,
    load_model,
    param_count,
    predict_proba,
    save_model,
)
from heagg.standardize import Standardizer

specs = st.builds(
    ModelSpec,
    kind=st.sampled_from(["logreg", "mlp"]),
    n_features=st.integers(1, 40),
    hidden=st.lists(st.integers(1, 24), min_size=1, max_size=3).map(tuple),
)


@settings(max_examples=40, deadline=None)
@given(spec=specs, seed_a=st.integers(0, 2**31), seed_b=st.integers(0, 2**31))
def test_flatten_load_flat_round_trip_is_exact(spec, seed_a, seed_b):
    source, target = build_model(spec, seed=seed_a), build_model(spec, seed=seed_b)
    flat = flatten(source)
    assert flat.dtype == np.float64 and flat.shape == (param_count(spec),)
    load_flat(target, flat)
    assert np.array_equal(flatten(target), flat)
    for (name_a, a), (name_b, b) in zip(source.state_dict().items(), target.state_dict().items(), strict=True):
        assert name_a == name_b and torch.equal(a, b)


@settings(max_examples=25, deadline=None)
@given(spec=specs, seed=st.integers(0, 2**31))
def test_any_float32_vector_survives_load_then_flatten(spec, seed):
    values = np.random.default_rng(seed).normal(scale=3.0, size=param_count(spec)).astype(np.float32)
    model = build_model(spec, seed=0)
    load_flat(model, values.astype(np.float64))
    assert np.array_equal(flatten(model), values.astype(np.float64))


def test_flatten_follows_state_dict_order():
    spec = ModelSpec("mlp", 3, (4, 2))
    model = build_model(spec, seed=1)
    expected = np.concatenate([t.numpy().ravel() for t in model.state_dict().values()])
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert np.array_equal(flatten(model), expected)
    assert param_count(spec) == 4 * 3 + 4 + 2 * 4 + 2 + 2 + 1 == flatten(model).size


def test_logreg_is_one_linear_layer():
    model = build_model(ModelSpec("logreg", 30), seed=0)
    assert param_count(ModelSpec("logreg", 30)) == 31
    assert [type(m).__name__ for m in model] == ["Linear"]
    assert model(torch.zeros(5, 30)).shape == (5, 1)


def test_build_model_is_deterministic_and_leaves_global_rng_alone():
    spec = ModelSpec("mlp", 30, (16,))
    state = torch.get_rng_state()
    a, b, c = build_model(spec, seed=5), build_model(spec, seed=5), build_model(spec, seed=6)
    assert torch.equal(state, torch.get_rng_state())
    assert np.array_equal(flatten(a), flatten(b))
    assert not np.array_equal(flatten(a), flatten(c))
    # PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.abs(a[0].weight.detach().numpy()).max() <= 1 / np.sqrt(30)


def test_load_flat_rejects_wrong_length_and_non_finite():
    model = build_model(ModelSpec("logreg", 4), seed=0)
    before = flatten(model)
    with pytest.raises(ValueError, match="needs 5 values"):
        load_flat(model, np.zeros(6))
    with pytest.raises(ValueError, match="NaN"):
        load_flat(model, np.array([0.0, 1.0, np.nan, 0.0, 0.0]))
    assert np.array_equal(flatten(model), before)


def test_spec_dict_round_trip_and_validation():
    for spec in (ModelSpec("logreg", 30), ModelSpec("mlp", 30, (32, 8))):
        assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert ModelSpec("logreg", 30, hidden=(8,)) == ModelSpec("logreg", 30)
    for bad in (
        lambda: ModelSpec("svm", 3),
        lambda: ModelSpec("mlp", 0),
        lambda: ModelSpec("mlp", 3, ()),
        lambda: ModelSpec("mlp", 3, (4, -1)),
        lambda: ModelSpec.from_dict({"kind": "mlp"}),
        lambda: ModelSpec.from_dict({"kind": "mlp", "n_features": 3, "depth": 2}),
    ):
        with pytest.raises(UsageError):
            bad()


@pytest.fixture
def trained(tmp_path):
    data = load_wdbc()
    spec = ModelSpec("mlp", data.n_features, (8,))
    model = build_model(spec, seed=3)
    standardizer = Standardizer.fit(data.X)
    card = {
        "features": list(data.features),
        "standardizer": standardizer.to_dict(),
        "rounds": 7,
        "metrics": {"accuracy": 0.97, "auc": 0.99},
        "sites": ["site-1", "site-2"],
        "privacy": {"clip": 1.0, "threshold": 2},
    }
    path = tmp_path / "model.pt"
    save_model(path, model, spec, card)
    return path, model, spec, card, standardizer, data


def test_export_import_round_trip(trained):
    path, model, spec, card, standardizer, data = trained
    loaded, loaded_spec, loaded_card = load_model(path)
    assert loaded_spec == spec and loaded_card == card
    assert np.array_equal(flatten(loaded), flatten(model))
    reloaded_standardizer = Standardizer.from_dict(loaded_card["standardizer"])
    assert np.array_equal(
        predict_proba(loaded, data.X, reloaded_standardizer), predict_proba(model, data.X, standardizer)
    )
    document = json.loads(card_path(path).read_text())
    assert document["format_version"] == 1 and document["spec"] == spec.to_dict()


def test_predict_proba_is_a_probability(trained):
    _, model, _, _, standardizer, data = trained
    p = predict_proba(model, data.X, standardizer)
    assert p.shape == (len(data),) and p.dtype == np.float64 and ((p > 0) & (p < 1)).all()
    assert np.array_equal(p, predict_proba(model, standardizer.transform(data.X), None))


def test_card_nan_is_written_as_null_and_numpy_is_converted(tmp_path):
    path = tmp_path / "m.pt"
    spec = ModelSpec("logreg", 2)
    save_model(path, build_model(spec, seed=0), spec, {"auc": float("nan"), "n": np.int64(3), "v": np.ones(2)})
    assert load_model(path)[2] == {"auc": None, "n": 3, "v": [1.0, 1.0]}
    with pytest.raises(ValueError, match="written by save_model"):
        save_model(path, build_model(spec, seed=0), spec, {"spec": "mine"})


def test_missing_model_file(tmp_path):
    with pytest.raises(UsageError, match="no such model file"):
        load_model(tmp_path / "absent.pt")


def test_missing_card(trained):
    path = trained[0]
    card_path(path).unlink()
    with pytest.raises(UsageError, match="model card not found"):
        load_model(path)


def test_garbled_weights(trained):
    path = trained[0]
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UsageError, match="not a readable model weights file") as info:
        load_model(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_weights(trained):
    path = trained[0]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UsageError, match="not a readable model weights file"):
        load_model(path)


def test_garbled_card(trained):
    path = trained[0]
    card_path(path).write_text("{not json")
    with pytest.raises(UsageError, match="not a readable model card"):
        load_model(path)


def test_card_from_a_newer_version(trained):
    path = trained[0]
    document = json.loads(card_path(path).read_text())
    document["format_version"] = 99
    card_path(path).write_text(json.dumps(document))
    with pytest.raises(UsageError, match="version 99"):
        load_model(path)


def test_weights_that_do_not_match_the_spec(trained):
    path = trained[0]
    document = json.loads(card_path(path).read_text())
    document["spec"]["hidden"] = [9]
    card_path(path).write_text(json.dumps(document))
    with pytest.raises(UsageError, match="do not match"):
        load_model(path)
