"""Fault injection: kill -9, restarts and stalls at random points of real runs; nothing is lost, nothing half-written.

Each trial runs a small consortium (3 sites, threshold 2, 2 training rounds, local training slowed with --epochs)
and injects one seeded fault when the aggregator logs a randomly chosen event of a randomly chosen step, after a
random delay: the aggregator killed and restarted, a node killed and restarted, both, or a node or the aggregator
stopped (SIGSTOP) and continued seconds later. After each trial the run must have finished, every node must hold
the same state, the final model must be what a plaintext replay of the recorded participants gives (within the
error bound), and every state file must load with no temp file left. ``HEAGG_CAMPAIGN_TRIALS`` sets the number
of trials (default 20). Processes are forked from a pre-imported server (``_preload``) so that 20 trials take
about a minute; ``HEAGG_CAMPAIGN_EXEC=1`` starts fresh interpreters instead.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from heagg.fedavg import FedAvgSettings
from heagg.protocol.state import load_record, save_record, state_dir

from .campaign import CAMPAIGN
from .harness import campaign_consortium, finish_run, replay_problems, state_file_problems

pytestmark = pytest.mark.slow

TRIALS = int(os.environ.get("HEAGG_CAMPAIGN_TRIALS", "20"))
ROUNDS = 2
STEPS = [(0, "scales"), (0, "moments"), (1, "train"), (2, "train")]
#: aggregator log events a fault is timed from: inside collect, decrypt, publish/confirm, between steps
EVENTS = ["announced to", "accepted submission from", "partial decryptions from", "result relayed to", "done in"]
KINDS = ["kill-aggregator", "kill-node", "stop-node", "kill-aggregator-and-node", "stop-aggregator"]
AGGREGATOR_ARGS = ["--round-timeout", "3", "--decrypt-timeout", "3", "--max-attempts", "40", "--epochs", "60"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    local = campaign_consortium(tmp_path_factory.mktemp("faults"), 3, 2, fedavg=FedAvgSettings(1.0, 200))
    yield local
    local.stop_all()


def _wait_for_event(local, round_: int, step: str, event: str, timeout: float) -> bool:
    """True once the aggregator logged ``event`` for (round, step); False if the run ended first."""
    pattern = re.compile(rf"round {round_} {step} \(attempt \d+\): {event}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = local.log("aggregator")
        if pattern.search(log):
            return True
        if "rounds done" in log or local.procs["aggregator"].poll() is not None:
            return False
        time.sleep(0.005)
    raise TimeoutError(f"no '{event}' for round {round_} {step} within {timeout}s:\n{log[-3000:]}")


def _inject(local, kind: str, rng) -> str:
    victim = rng.choice(local.site_names)
    if kind == "kill-aggregator":
        local.kill("aggregator")
        time.sleep(rng.uniform(0, 1.0))
        local.start_aggregator(ROUNDS, extra=AGGREGATOR_ARGS)
        return "aggregator killed and restarted"
    if kind == "kill-node":
        local.kill(victim)
        time.sleep(rng.uniform(0, 1.5))
        local.start_node(victim)
        return f"{victim} killed and restarted"
    if kind == "stop-node":
        pause = rng.uniform(1.0, 4.0)
        local.signal(victim, signal.SIGSTOP)
        time.sleep(pause)
        local.signal(victim, signal.SIGCONT)
        return f"{victim} stopped for {pause:.1f}s"
    if kind == "stop-aggregator":  # every connection delayed at once
        pause = rng.uniform(1.0, 4.0)
        local.signal("aggregator", signal.SIGSTOP)
        time.sleep(pause)
        local.signal("aggregator", signal.SIGCONT)
        return f"aggregator stopped for {pause:.1f}s"
    local.kill("aggregator")
    local.kill(victim)
    time.sleep(rng.uniform(0, 1.0))
    local.start_aggregator(ROUNDS, extra=AGGREGATOR_ARGS)
    local.start_node(victim)
    return f"aggregator and {victim} killed and restarted"


@pytest.mark.parametrize("seed", range(TRIALS))
def test_a_fault_at_a_random_point_loses_nothing(base, tmp_path, seed):
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    round_, step = rng.choice(STEPS)
    event = rng.choice(EVENTS)
    delay = rng.uniform(0, 0.3)
    run_trial(base.trial(tmp_path / "trial"), kind, round_, step, event, delay, rng, label=f"seed {seed}")


def run_trial(local, kind, round_, step, event, delay, rng, *, label) -> None:
    """One run with one fault, then every check; records the outcome in the campaign's tally."""
    try:
        local.start_aggregator(ROUNDS, extra=AGGREGATOR_ARGS)
        local.start_nodes()
        fired = _wait_for_event(local, round_, step, event, timeout=60)
        time.sleep(delay)
        what = _inject(local, kind, rng) if fired else "none (the run ended first)"
        CAMPAIGN.fault(kind if fired else "none")
        codes = finish_run(local, ROUNDS)
    finally:
        local.stop_all()
    where = f"{label}: {what} at '{event}' of round {round_} {step} + {delay:.3f}s"
    logs = "\n".join(f"--- {name}\n{local.log(name)[-2500:]}" for name in ["aggregator", *local.site_names])
    assert all(code == 0 for name, code in codes.items() if name != "aggregator"), (where, codes, logs)
    problems = replay_problems(local)
    files = state_file_problems(local)
    CAMPAIGN.run(correct=not problems)
    if files:
        CAMPAIGN.lose("state files", len(files))
    if problems:
        CAMPAIGN.lose("runs off the correct model")
    assert not problems, (where, problems, logs)
    assert not files, (where, files)
    assert "Traceback" not in logs, (where, logs)


def test_a_write_killed_midway_leaves_the_old_state_and_no_temp_file(tmp_path):
    """kill -9 inside ``write_atomic``: the state file is the old one, whole, and the next start removes the temp."""
    directory = state_dir(tmp_path / "state")
    path = directory / "aggregator.state"
    save_record(path, {"version": "old"})
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from heagg.protocol.state import save_record\n"
            "save_record(Path(sys.argv[1]), {'version': 'new', 'blob': b'x' * 200_000_000})",
            str(path),
        ]
    )
    try:
        deadline = time.monotonic() + 60
        while not list(directory.glob(".*.tmp")) and time.monotonic() < deadline and writer.poll() is None:
            time.sleep(0.001)
        assert list(directory.glob(".*.tmp")), "the writer never started its temp file"
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=30)
    CAMPAIGN.fault("kill-9-inside-an-atomic-write")
    assert load_record(path) == {"version": "old"}  # never half of the new one
    assert list(directory.glob(".*.tmp"))  # what the kill left behind ...
    state_dir(directory)  # ... a process starting on this directory removes
    assert not list(directory.glob(".*.tmp"))
    assert load_record(path) == {"version": "old"}


def test_the_aggregator_killed_before_recording_the_first_step_re_runs_it(base, tmp_path):
    """The window between the sites applying the first step and the aggregator saving it, made deterministic.

    The aggregator's state file is copied when all partials of round 0 scales are in (nothing of the step is
    recorded yet); once every node has applied the step, the aggregator is killed and that copy put back: the
    very state a kill inside the window leaves. The restarted aggregator runs the first step again, announcing
    an empty consortium state; the nodes, which applied it already, must start over rather than stall.
    """
    local = base.trial(tmp_path / "trial")
    state = local.aggregator_state / "aggregator.state"
    try:
        local.start_aggregator(ROUNDS, extra=AGGREGATOR_ARGS)
        local.start_nodes()
        assert _wait_for_event(local, 0, "scales", "partial decryptions from", timeout=60)
        before = state.read_bytes()
        assert load_record(state)["completed"] is None
        applied = "round 0 scales (attempt 1): applied the average"
        local.wait_for(lambda: all(applied in local.log(s) for s in local.site_names), 30, "the nodes to apply it")
        local.kill("aggregator")
        state.write_bytes(before)
        CAMPAIGN.fault("kill-aggregator-before-it-records-a-step")
        local.start_aggregator(ROUNDS, extra=AGGREGATOR_ARGS)
        codes = finish_run(local, ROUNDS)
    finally:
        local.stop_all()
    assert all(code == 0 for code in codes.values()), {n: local.log(n)[-2000:] for n in local.procs}
    assert all("the aggregator re-runs the first step" in local.log(s) for s in local.site_names)
    problems = replay_problems(local) + state_file_problems(local)
    CAMPAIGN.run(correct=not problems)
    assert not problems, problems


def test_a_node_down_for_the_last_round_ends_with_the_final_model(base, tmp_path):
    """A node stopped before the last round, killed after it and restarted: the finish message brings it the
    consortium's final state (before, it ended one round behind and wrote that stale model as its final one)."""
    local = base.trial(tmp_path / "trial")
    victim = "site-3"
    try:
        local.start_aggregator(ROUNDS, extra=AGGREGATOR_ARGS)
        local.start_nodes()
        assert _wait_for_event(local, ROUNDS, "train", "announced to", timeout=60)
        local.signal(victim, signal.SIGSTOP)  # before it trains: the last round runs without it
        local.wait_for(lambda: "rounds done" in local.log("aggregator"), 60, "the run to end")
        local.kill(victim)
        CAMPAIGN.fault("node-down-for-the-last-round")
        local.start_node(victim)
        codes = finish_run(local, ROUNDS)
    finally:
        local.stop_all()
    assert all(code == 0 for code in codes.values()), {n: local.log(n)[-2000:] for n in local.procs}
    history = local.aggregator_record()["history"]
    assert victim not in history[-1]["contributors"]
    assert f"caught up to round {ROUNDS} train" in local.log(victim)
    assert (local.node_state(victim) / "model.pt").is_file()
    problems = replay_problems(local) + state_file_problems(local)
    CAMPAIGN.run(correct=not problems)
    assert not problems, problems
