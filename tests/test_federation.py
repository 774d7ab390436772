"""The encrypted federation end to end: real aggregator and node processes over CurveZMQ on 127.0.0.1."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from heagg.baselines import fedavg_round
from heagg.consortium import AGGREGATOR_KEY_FILE, MANIFEST_FILE, PUBLIC_CONTEXT_FILE, Consortium
from heagg.fedavg import FedAvgSettings
from heagg.localrun import LocalConsortium
from heagg.model import build_model, flatten
from heagg.protocol.plan import TrainingPlan
from heagg.protocol.state import SharedState
from heagg.standardize import Standardizer

pytestmark = pytest.mark.slow


def round_models(local: LocalConsortium, site: str, rounds: int) -> list[np.ndarray]:
    return [np.load(local.node_state(site) / "rounds" / f"round-{r:04d}.npy") for r in range(1, rounds + 1)]


def test_five_nodes_threshold_three_match_plaintext_fedavg_every_round(tmp_path, consortia):
    local = consortia(tmp_path, 5, 3, fedavg=FedAvgSettings(clip=1.0, max_site_samples=100))
    rounds = 3
    local.start_aggregator(rounds, extra=["--round-timeout", "60"])
    local.start_nodes()
    codes = local.wait_all(timeout=240)
    assert codes == dict.fromkeys(codes, 0), {n: local.log(n)[-3000:] for n in codes}

    consortium = Consortium.load(local.keys_dir)
    record = local.aggregator_record()
    assert [(h["round"], h["step"]) for h in record["history"]] == [
        (0, "scales"),
        (0, "moments"),
        (1, "train"),
        (2, "train"),
        (3, "train"),
    ]
    assert all(h["contributors"] == local.site_names for h in record["history"])
    # every site ends with the same global model and standardisation
    shared = [SharedState.from_bytes(local.node_record(s)["shared"]) for s in local.site_names]
    for other in shared[1:]:
        assert other.digest() == shared[0].digest()
    plan = TrainingPlan.from_dict(record["plan"])
    standardizer = Standardizer(shared[0].mean, shared[0].std)
    sites = [s.train for s in local.federation.sites]
    total_weight = sum(consortium.fedavg.weight(len(d)) for d in sites)
    tolerance = consortium.sum_error_bound() / total_weight  # on each averaged value
    # the federated standardisation equals the pooled one within CKKS error (z^2 is about 1/16, see standardize)
    pooled = Standardizer.fit(local.federation.train_pool.X)
    assert np.max(np.abs(standardizer.mean - pooled.mean) / pooled.std) < 64 * tolerance
    np.testing.assert_allclose(standardizer.std, pooled.std, rtol=64 * tolerance)

    # replay each round in the clear from the encrypted run's previous model: the same within CKKS error
    torch.set_num_threads(1)
    models = round_models(local, local.site_names[0], rounds)
    for site in local.site_names[1:]:
        for mine, theirs in zip(models, round_models(local, site, rounds), strict=True):
            np.testing.assert_array_equal(mine, theirs)
    previous = flatten(build_model(plan.spec, seed=plan.seed))
    for r, encrypted in enumerate(models, start=1):
        expected = fedavg_round(previous, sites, range(1, 6), standardizer, plan, consortium.fedavg, r)
        error = np.max(np.abs(encrypted - expected))
        assert error <= tolerance, (r, error, tolerance)
        assert np.max(np.abs(encrypted - previous)) > 100 * tolerance  # the round did move the model
        previous = encrypted
    # each node exported the final model with its card
    assert (local.node_state("site-1") / "model.pt").is_file()
    assert (local.node_state("site-1") / "model.json").is_file()


def test_the_aggregator_runs_without_any_share_or_group_key(tmp_path, consortia):
    """Give the aggregator only the public files and its own key file: the federation still completes."""
    local = consortia(tmp_path, 3, 2)
    public_keys = tmp_path / "aggregator-keys"
    public_keys.mkdir()
    for name in (MANIFEST_FILE, PUBLIC_CONTEXT_FILE, AGGREGATOR_KEY_FILE):
        shutil.copy2(local.keys_dir / name, public_keys / name)
    local.start_aggregator(1, keys_dir=public_keys)
    local.start_nodes()
    codes = local.wait_all(timeout=180)
    assert codes == dict.fromkeys(codes, 0), {n: local.log(n)[-3000:] for n in codes}
    assert not (public_keys / "sites").exists()
    # nothing the aggregator persisted opens without the group key: its state holds the sealed consortium
    # state only, and the model is not in it in the clear
    record = local.aggregator_record()
    shared = SharedState.from_bytes(local.node_record("site-1")["shared"])
    assert shared.model.tobytes() not in record["sealed_state"]
    assert shared.model.astype("<f4").tobytes() not in record["sealed_state"]
