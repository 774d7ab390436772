"""Crashes, missing share holders and restarts: real processes, SIGKILL, and the consortium carries on."""

from __future__ import annotations

import numpy as np
import pytest

from heagg.fedavg import FedAvgSettings
from heagg.protocol.state import SharedState

pytestmark = pytest.mark.slow


def applied(local, site) -> list[tuple[int, str]]:
    record = local.node_record(site)
    return [(h["round"], h["step"]) for h in record["history"]] if record else []


def test_a_node_killed_mid_round_rejoins_the_next_round(tmp_path, consortia):
    local = consortia(tmp_path, 5, 3, fedavg=FedAvgSettings(1.0, 100))
    # slow local training (many epochs) so the kill lands while site-5 trains round 2, before it submits
    local.start_aggregator(3, extra=["--round-timeout", "10", "--epochs", "150"])
    local.start_nodes()
    local.wait_for(lambda: (1, "train") in applied(local, "site-5"), 120, "site-5 to apply round 1")
    local.kill("site-5")
    local.wait_for(lambda: local.completed() == (2, "train"), 120, "round 2 to complete without site-5")
    local.start_node("site-5")
    codes = local.wait_all(timeout=180)
    assert codes == dict.fromkeys(codes, 0), {n: local.log(n)[-3000:] for n in codes}
    history = {(h["round"], h["step"]): h for h in local.aggregator_record()["history"]}
    assert history[(2, "train")]["contributors"] == ["site-1", "site-2", "site-3", "site-4"]
    assert history[(3, "train")]["contributors"] == local.site_names  # site-5 is back
    # site-5 caught up from the relayed consortium state and ends with everyone's model
    assert "caught up to round 2 train" in local.log("site-5")
    digests = {SharedState.from_bytes(local.node_record(s)["shared"]).digest() for s in local.site_names}
    assert len(digests) == 1


def test_the_aggregator_killed_between_rounds_resumes_at_the_same_round(tmp_path, consortia):
    local = consortia(tmp_path, 3, 2)
    args = ["--round-timeout", "20", "--epochs", "150"]  # rounds of about a second: time to kill between them
    local.start_aggregator(4, extra=args)
    local.start_nodes()
    local.wait_for(lambda: local.completed() == (2, "train"), 120, "round 2 to complete")
    local.kill("aggregator")
    before = local.aggregator_record()
    assert tuple(before["completed"]) == (2, "train")
    local.start_aggregator(4, extra=args)
    codes = local.wait_all(timeout=180)
    assert codes == dict.fromkeys(codes, 0), {n: local.log(n)[-3000:] for n in codes}
    after = local.aggregator_record()
    steps = [(h["round"], h["step"]) for h in after["history"]]
    assert steps == [(0, "scales"), (0, "moments"), (1, "train"), (2, "train"), (3, "train"), (4, "train")]
    assert after["history"][:4] == before["history"]  # nothing lost, nothing redone
    assert "resuming from" in local.log("aggregator") and "round 2 train completed" in local.log("aggregator")
    for site in local.site_names:
        # every node applied each step exactly once and holds the same final model
        assert applied(local, site) == steps
    models = [SharedState.from_bytes(local.node_record(s)["shared"]).model for s in local.site_names]
    for model in models[1:]:
        np.testing.assert_array_equal(model, models[0])


def test_fewer_than_t_share_holders_fail_the_round_until_they_are_back(tmp_path, consortia):
    local = consortia(tmp_path, 3, 3, min_sites=2)
    local.start_aggregator(1, extra=["--round-timeout", "4", "--max-attempts", "50"])
    local.start_nodes(["site-1", "site-2"])
    local.wait_for(
        lambda: "fewer than 3 responsive share holders" in local.log("aggregator"), 120, "the share-holder failure"
    )
    # the failed attempts changed nothing at the sites
    assert applied(local, "site-1") == [] and applied(local, "site-2") == []
    assert local.procs["aggregator"].poll() is None  # still retrying, not given up
    local.start_node("site-3")
    codes = local.wait_all(timeout=180)
    assert codes == dict.fromkeys(codes, 0), {n: local.log(n)[-3000:] for n in codes}
    scales = next(h for h in local.aggregator_record()["history"] if h["step"] == "scales")
    assert scales["contributors"] == ["site-1", "site-2"]  # the re-run kept the approved contributors
    assert scales["decrypting_set"] == [1, 2, 3]
    assert applied(local, "site-3")[-1] == (1, "train")
