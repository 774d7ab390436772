"""What the campaign's tests share: a consortium of real processes, a rogue site's loop, and the checks of a run.

- ``CampaignConsortium``: ``heagg.localrun.LocalConsortium`` whose aggregator and nodes are forked from a
  pre-imported server (see ``_preload``), so that a node is up in under a second instead of several; trials can
  share one ceremony and one set of data files (``trial``).
- ``drive``: a ``ScriptedSite`` taking part like an honest (zero-update) site while a test makes it misbehave.
- ``rejections`` / ``rejection_counter``: the aggregator's log lines ``rejected <type> from <site>: <reason>:`` and
  its final ``rejected messages by reason: {...}`` line.
- ``replay_problems`` / ``state_file_problems``: a finished run reached the model a plaintext replay of the same
  participants gives, every node holds the same state, and every state file loads with no temp file left.
"""

from __future__ import annotations

import ast
import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from heagg.baselines import fedavg_round
from heagg.consortium import Consortium
from heagg.crypto.ledger import DecryptionLedger
from heagg.data import load_wdbc
from heagg.errors import HeaggError
from heagg.localrun import LocalConsortium
from heagg.messages import Announce, Hello, Message, RoundRef
from heagg.model import build_model, flatten, load_model
from heagg.protocol.aggregator import STATE_FILE as AGGREGATOR_STATE
from heagg.protocol.node import LEDGER_FILE, MODEL_FILE, ROUNDS_DIR
from heagg.protocol.node import STATE_FILE as NODE_STATE
from heagg.protocol.plan import TrainingPlan
from heagg.protocol.state import SharedState, load_record
from heagg.splits import split_sites
from heagg.standardize import Standardizer

from ..conftest import TEST_KDF_N
from ..scripted_site import ScriptedSite

#: bound on any wait for a run to finish; runs take seconds, so hitting it means something is stuck
RUN_TIMEOUT = 120.0


# processes ------------------------------------------------------------------------------------------------------


class ForkedProcess:
    """The part of ``subprocess.Popen`` that ``LocalConsortium`` uses, for a process from the fork server."""

    #: every process started, so that none outlives the test session (``kill_leftovers``)
    started: ClassVar[list[ForkedProcess]] = []

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process
        self.pid = process.pid
        ForkedProcess.started.append(self)

    @classmethod
    def kill_leftovers(cls) -> None:
        """SIGKILL what a failed test left running (multiprocessing would wait for it forever at exit)."""
        for proc in cls.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc._process.join(10)

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)


_CONTEXT = None
_PRELOAD = f"{__package__}._preload"


def _preloaded(path: str) -> None:
    """Run in a forked child: record whether the fork server imported ``_preload``."""
    Path(path).write_text(str(_PRELOAD in sys.modules))


def _fork_server():
    """The fork server, started once: it imports ``_preload`` (whatever the working directory) or this fails."""
    global _CONTEXT
    if _CONTEXT is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([_PRELOAD])
        # the server is a fresh interpreter that finds this package through PYTHONPATH only
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), saved]))
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
        with tempfile.TemporaryDirectory() as tmp:
            probe = context.Process(target=_preloaded, args=(f"{tmp}/probe",))
            probe.start()
            probe.join(60)
            if Path(f"{tmp}/probe").read_text() != "True":
                raise RuntimeError(f"the fork server could not import {_PRELOAD}")
        _CONTEXT = context
    return _CONTEXT


class CampaignConsortium(LocalConsortium):
    """A ``LocalConsortium`` whose processes are forked from the campaign's pre-imported server."""

    def _spawn(self, name: str, args: Sequence[str]):
        if os.environ.get("HEAGG_CAMPAIGN_EXEC"):
            return super()._spawn(name, args)
        from . import _preload

        log = str(self.logs_dir / f"{name}.log")
        process = _fork_server().Process(
            target=_preload.run_cli, args=(list(args), log, str(self.workdir)), name=f"heagg-{name}", daemon=False
        )
        process.start()
        proc = ForkedProcess(process)
        self.procs[name] = proc
        return proc

    def trial(self, workdir: Path) -> CampaignConsortium:
        """Another run of the same consortium (same keys, same data files), with its own state, logs and port."""
        other = replace(self, workdir=workdir, procs={}, port=_free_port())
        other.keys_dir, other.data_dir = self.keys_dir, self.data_dir
        other.logs_dir.mkdir(parents=True)
        return other

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def restart(self, name: str, start: Callable[[], object]) -> None:
        """Start ``name`` again after a kill: the new process appends to the same log."""
        assert self.procs[name].poll() is not None, f"{name} is still running"
        start()


def _free_port() -> int:
    from heagg.localrun import free_port

    return free_port()


def campaign_consortium(tmp_path: Path, n: int, t: int, **kwargs) -> CampaignConsortium:
    federation = split_sites(load_wdbc(), n, kwargs.pop("split", "iid"), seed=kwargs.pop("seed", 0))
    local = CampaignConsortium(tmp_path / "run", federation, threshold=t, kdf_n=TEST_KDF_N, **kwargs)
    local.setup()
    return local


def finish_run(
    local: LocalConsortium, rounds: int, timeout: float = RUN_TIMEOUT, *, nodes: Sequence[str] | None = None
) -> dict[str, int]:
    """Wait for every node to exit, then stop the aggregator once it has logged the end of the run.

    The aggregator lingers ``finish_grace`` (5 s) answering late hellos; every node is gone by then, so it is
    stopped rather than waited for (its state was saved before it told the nodes to finish).
    """
    nodes = list(nodes or local.site_names)
    deadline = time.monotonic() + timeout
    while any(local.procs[name].poll() is None for name in nodes):
        code = local.procs["aggregator"].poll()
        if code not in (None, 0):  # it crashed: no node will ever be told to finish
            raise AssertionError(f"the aggregator exited with code {code}:\n{local.log('aggregator')[-4000:]}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{local.log(n)[-2000:]}" for n in ["aggregator", *nodes])
            raise TimeoutError(f"the nodes did not finish within {timeout:.0f}s\n{logs}")
        time.sleep(0.05)
    codes = {name: local.procs[name].poll() for name in nodes}
    done = f"all {rounds} rounds done"
    local.wait_for(lambda: done in local.log("aggregator") or local.procs["aggregator"].poll() is not None, 30, done)
    assert done in local.log("aggregator"), local.log("aggregator")[-3000:]
    if local.procs["aggregator"].poll() is None:
        local.kill("aggregator")
    else:
        codes["aggregator"] = local.procs["aggregator"].poll()
    return codes


# a rogue site -----------------------------------------------------------------------------------------------------


def join(rogue: ScriptedSite) -> None:
    """Say hello, so the aggregator can route messages to the rogue (and re-sends an open announcement)."""
    rogue.send(Hello, RoundRef(0, "scales", 0), applied_round=0, applied_step="")


def drive(
    rogue: ScriptedSite,
    local: LocalConsortium,
    *,
    on_message: Callable[[Message], bool] | None = None,
    timeout: float = RUN_TIMEOUT,
) -> None:
    """Take part until the aggregator exits or has logged the end of the run: submit on every announcement,
    answer consent, decryption and results as ``ScriptedSite.respond`` does. ``on_message`` sees every message
    first (each announcement once) and returns True if it has answered it itself (with its attacks)."""
    deadline = time.monotonic() + timeout
    aggregator = local.procs["aggregator"]
    seen: set[RoundRef] = set()
    while aggregator.poll() is None and "rounds done" not in local.log("aggregator"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the run did not finish within {timeout:.0f}s:\n{local.log('aggregator')[-3000:]}")
        msg = rogue.recv(0.2)
        if msg is None:
            continue
        if isinstance(msg, Announce):
            if msg.ref in seen:
                continue  # a repeated announcement (after a hello): already submitted
            seen.add(msg.ref)
        if on_message is not None and on_message(msg):
            continue
        if isinstance(msg, Announce):
            rogue.send_frames(rogue.contribution(msg.ref, msg.vector_length))
        else:
            rogue.respond(msg)


# the aggregator's log ---------------------------------------------------------------------------------------------

_REJECTED = re.compile(r"rejected (\S+) from (\S+): ([a-z-]+): ")


def rejections(log: str, site: str) -> list[tuple[str, str]]:
    """(message type, reason) of every rejection of ``site``'s messages, in order."""
    return [(m[1], m[3]) for m in _REJECTED.finditer(log) if m[2] == site]


def rejection_counter(log: str) -> dict[str, int]:
    """The aggregator's final ``rejected messages by reason: {...}`` counter."""
    line = next(line for line in log.splitlines() if "rejected messages by reason:" in line)
    text = line.split("rejected messages by reason:", 1)[1].strip()
    return {} if text == "none" else ast.literal_eval(text)


# checks of a finished run -----------------------------------------------------------------------------------------


def final_states(local: LocalConsortium, sites: Sequence[str] | None = None) -> dict[str, SharedState]:
    return {site: SharedState.from_bytes(local.node_record(site)["shared"]) for site in sites or local.site_names}


def replay_problems(local: LocalConsortium, *, honest: Sequence[str] | None = None) -> list[str]:
    """What is wrong with a finished run, compared with a plaintext replay of the same participants.

    Every honest node must hold the same consortium state (digest). Round by round, the global model must be
    what plaintext FedAvg of that round's contributors (from the aggregator's history) gives from the previous
    round's model, within the consortium's error bound on the average. A node that missed a round's result
    (it was down) has no model file for that round, and a node that applied an attempt whose completion the
    aggregator never saved (it was killed) keeps that attempt's file; so for each round the check looks for a
    file among the nodes' that continues the chain. The last link is the final model every node holds.
    """
    import torch

    torch.set_num_threads(1)
    honest = list(honest or local.site_names)
    problems: list[str] = []
    consortium = Consortium.load(local.keys_dir)
    record = local.aggregator_record()
    plan = TrainingPlan.from_dict(record["plan"])
    states = {site: SharedState.from_bytes(local.node_record(site)["shared"]) for site in honest}
    digests = {site: state.digest().hex()[:12] for site, state in states.items()}
    if len(set(digests.values())) != 1:
        problems.append(f"nodes end with different states: {digests}")
    final = states[honest[0]]
    if (final.round, final.step) != (plan.rounds, "train"):
        problems.append(f"{honest[0]} ends at round {final.round} {final.step}, not round {plan.rounds} train")
        return problems
    history = {(h["round"], h["step"]): h for h in record["history"]}
    standardizer = Standardizer(final.mean, final.std)
    data = {site.name: site.train for site in local.federation.sites}
    previous = flatten(build_model(plan.spec, seed=plan.seed))
    for round_ in range(1, plan.rounds + 1):
        contributors = history[(round_, "train")]["contributors"]
        indices = [consortium.site(name).index for name in contributors]
        sites = [data[name] for name in contributors]
        expected = fedavg_round(previous, sites, indices, standardizer, plan, consortium.fedavg, round_)
        tolerance = consortium.sum_error_bound() / sum(consortium.fedavg.weight(len(d)) for d in sites)
        if round_ == plan.rounds:
            candidates = [final.model]
        else:
            candidates = [
                np.load(path, allow_pickle=False)
                for site in honest
                if (path := local.node_state(site) / ROUNDS_DIR / f"round-{round_:04d}.npy").is_file()
            ]
        if not candidates:
            problems.append(f"no node kept the model of round {round_}")
            return problems
        errors = [float(np.max(np.abs(c - expected))) for c in candidates]
        best = int(np.argmin(errors))
        if errors[best] > tolerance:
            problems.append(f"round {round_}: model off the plaintext replay by {errors[best]:.3g} > {tolerance:.3g}")
        previous = candidates[best]
    return problems


def state_file_problems(local: LocalConsortium, sites: Sequence[str] | None = None) -> list[str]:
    """Every state file loads; no temp file of an atomic write and no spool file is left behind."""
    problems = []
    sites = list(sites or local.site_names)
    directories = [local.aggregator_state] + [local.node_state(site) for site in sites]
    for directory in directories:
        problems += [f"temp file left: {p}" for p in directory.rglob("*.tmp")]
    spool = local.aggregator_state / "spool"
    if spool.exists() and any(spool.iterdir()):
        problems.append(f"spooled submissions left in {spool}")
    consortium = Consortium.load(local.keys_dir)

    def check(what: str, load: Callable[[], object]) -> None:
        try:
            if load() is None:
                problems.append(f"{what} is missing")
        except (HeaggError, OSError, ValueError) as exc:
            problems.append(f"{what} does not load: {exc}")

    check(AGGREGATOR_STATE, lambda: load_record(local.aggregator_state / AGGREGATOR_STATE))
    for site in sites:
        directory = local.node_state(site)
        check(f"{site} {NODE_STATE}", lambda d=directory: load_record(d / NODE_STATE))
        check(
            f"{site} {LEDGER_FILE}",
            lambda d=directory: (
                DecryptionLedger(d / LEDGER_FILE, budget=consortium.tau) if (d / LEDGER_FILE).exists() else True
            ),
        )
        for path in sorted((directory / ROUNDS_DIR).glob("*.npy")):
            check(f"{site} {path.name}", lambda p=path: np.load(p, allow_pickle=False))
        if (directory / MODEL_FILE).exists():
            check(f"{site} {MODEL_FILE}", lambda d=directory: load_model(d / MODEL_FILE))
    return problems


@contextlib.contextmanager
def closing_all(*closables):
    try:
        yield
    finally:
        for item in closables:
            with contextlib.suppress(Exception):
                item.close()
