"""``heagg simulate``: the whole consortium on this machine, on the bundled breast-cancer data.

The Wisconsin Diagnostic Breast Cancer data (569 patients, 30 features, shipped with scikit-learn) is split
across N simulated hospitals; the key ceremony, the aggregator and one node per site then run as separate
processes over CurveZMQ on 127.0.0.1 with real threshold-CKKS encryption (``heagg.localrun``). Each round's
global model is scored on a held-out test set that no site trains on, next to three baselines computed with
the same seeds and splits: plaintext FedAvg (the same protocol without encryption), one centrally trained
model (all training rows pooled), and each site training alone.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from heagg.baselines import local_only, plaintext_fedavg, train_central
from heagg.data import Dataset, load_wdbc
from heagg.errors import HeaggError, UsageError
from heagg.fedavg import FedAvgSettings
from heagg.localrun import LocalConsortium
from heagg.model import build_model, load_flat
from heagg.protocol.plan import TrainingPlan
from heagg.protocol.state import SharedState
from heagg.splits import Federation, parse_split, split_sites
from heagg.standardize import Standardizer
from heagg.training import Metrics, evaluate

METRICS = ("accuracy", "auc", "sensitivity", "specificity")


@dataclass(frozen=True)
class SimulationConfig:
    sites: int = 5
    threshold: int = 3
    rounds: int = 10
    split: str = "iid"
    model: str = "logreg"
    hidden: tuple[int, ...] = (16,)
    train: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    preset: str = "compact"
    clip: float = 1.0
    workdir: Path | None = None
    round_timeout: float = 60.0
    timeout: float = 900.0

    def plan(self, n_features: int) -> TrainingPlan:
        hidden = list(self.hidden) if self.model == "mlp" else []
        return TrainingPlan(
            model={"kind": self.model, "n_features": n_features, "hidden": hidden},
            train=dict(self.train),
            rounds=self.rounds,
            seed=self.seed,
        )


def score(model_flat: np.ndarray, standardizer: Standardizer, plan: TrainingPlan, test: Dataset) -> Metrics:
    model = build_model(plan.spec, seed=plan.seed)
    load_flat(model, model_flat)
    return evaluate(model, standardizer.transform(test.X), test.y)


class Progress:
    """A rich progress bar on a terminal, plain lines otherwise."""

    def __init__(self, total_steps: int, enabled: bool) -> None:
        self.enabled = enabled
        self._progress = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} steps"),
                TimeElapsedColumn(),
                transient=True,
            )
            self._task = self._progress.add_task("starting the consortium", total=total_steps)
            self._progress.start()

    def update(self, done: int, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, description=description)
        elif self.enabled:
            print(f"heagg simulate: {description}", file=sys.stderr, flush=True)

    def line(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text)
        elif self.enabled:
            print(text, file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _round_model(local: LocalConsortium, site: str, round_: int) -> np.ndarray:
    return np.load(local.node_state(site) / "rounds" / f"round-{round_:04d}.npy")


def run_simulation(config: SimulationConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the encrypted federation and the baselines; return the report (the ``--json`` document)."""
    if not 2 <= config.sites <= 40:
        raise UsageError("--sites must be between 2 and 40 for the bundled data set (569 patients)")
    if not 1 <= config.threshold <= config.sites:
        raise UsageError(f"--threshold must be between 1 and --sites ({config.sites})")
    parse_split(config.split)
    started = time.monotonic()
    data = load_wdbc()
    federation: Federation = split_sites(data, config.sites, config.split, seed=config.seed)
    plan = config.plan(data.n_features)
    fedavg = FedAvgSettings(config.clip, max(len(s.train) for s in federation.sites))
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix="heagg-simulate-"))
    local = LocalConsortium(workdir, federation, threshold=config.threshold, preset=config.preset, fedavg=fedavg)
    bar = Progress(2 + config.rounds, progress)
    try:
        local.setup()
        train_args = [f"--{k.replace('_', '-')}={v}" for k, v in config.train.items()]
        local.start_aggregator(
            config.rounds,
            extra=[
                "--round-timeout", str(config.round_timeout),
                "--model", config.model,
                "--hidden", ",".join(map(str, config.hidden)),
                "--seed", str(config.seed),
                *train_args,
            ],
        )  # fmt: skip
        local.start_nodes()
        rounds = _follow(local, plan, federation, bar, config)
        codes = local.wait_all(timeout=60)
        if any(codes.values()):
            failed = next(name for name, code in codes.items() if code)
            raise HeaggError(f"{failed} exited with code {codes[failed]}; its log: {local.logs_dir / failed}.log")
        encrypted_seconds = time.monotonic() - started
        bar.update(2 + config.rounds, "baselines")
        report = _report(config, local, plan, federation, fedavg, rounds, encrypted_seconds)
    finally:
        bar.stop()
        local.stop_all()
        if config.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def _follow(local: LocalConsortium, plan, federation, bar: Progress, config: SimulationConfig) -> list[dict]:
    """Watch the aggregator's state until every round is done, scoring each round's model as it lands."""
    deadline = time.monotonic() + config.timeout
    scored: list[dict] = []
    site = local.site_names[0]
    while len(scored) < config.rounds:
        if time.monotonic() > deadline:
            raise HeaggError(f"the simulation did not finish within {config.timeout:.0f}s; logs in {local.logs_dir}")
        for name, proc in local.procs.items():
            if proc.poll() not in (None, 0):
                raise HeaggError(f"{name} failed (exit {proc.returncode}): {local.log(name).strip().splitlines()[-1]}")
        record = local.aggregator_record()
        history = record["history"] if record else []
        bar.update(len(history), f"round {len(scored) + 1 if history else 0} of {config.rounds}")
        node = local.node_record(site)
        done_rounds = {h["round"] for h in history if h["step"] == "train"}
        for entry in history:
            r = entry["round"]
            if entry["step"] != "train" or r <= len(scored) or r not in done_rounds:
                continue
            path = local.node_state(site) / "rounds" / f"round-{r:04d}.npy"
            if not path.exists() or node is None:
                break
            shared = SharedState.from_bytes(node["shared"])
            metrics = score(_round_model(local, site, r), Standardizer(shared.mean, shared.std), plan, federation.test)
            row = {
                "round": r,
                **metrics.to_dict(),
                "seconds": entry["seconds"]["total"],
                "bytes": entry["bytes_in"] + entry["bytes_out"],
            }
            scored.append(row)
            bar.line(
                f"round {r:>3}: accuracy {row['accuracy']:.3f}  AUC {row['auc']:.3f}  "
                f"sensitivity {row['sensitivity']:.3f}  specificity {row['specificity']:.3f}  "
                f"{row['seconds']:.2f}s  {row['bytes'] / 1e3:.0f} kB"
            )
        time.sleep(0.1)
    return scored


def _report(config, local, plan, federation, fedavg, rounds, encrypted_seconds) -> dict[str, Any]:
    site = local.site_names[0]
    shared = SharedState.from_bytes(local.node_record(site)["shared"])
    encrypted_standardizer = Standardizer(shared.mean, shared.std)
    test = federation.test
    t0 = time.monotonic()
    plain = plaintext_fedavg(federation, plan, fedavg)
    plain_seconds = time.monotonic() - t0
    for row, model in zip(rounds, plain.models, strict=True):
        encrypted = _round_model(local, site, row["round"])
        row["plaintext_accuracy"] = score(model, plain.standardizer, plan, test).accuracy
        row["max_param_diff_vs_plaintext"] = float(np.max(np.abs(encrypted - model)))
    central_model, central_std = train_central(federation.train_pool, plan)
    final = {
        "encrypted": score(shared.model, encrypted_standardizer, plan, test).to_dict(),
        "plaintext_fedavg": score(plain.models[-1], plain.standardizer, plan, test).to_dict(),
        "central": score(central_model, central_std, plan, test).to_dict(),
        "local_only": [
            {"site": name, **score(model, std, plan, test).to_dict()}
            for name, model, std in local_only(federation, plan)
        ],
    }
    return {
        "settings": {
            "sites": config.sites,
            "threshold": config.threshold,
            "rounds": config.rounds,
            "split": config.split,
            "model": plan.model,
            "train": plan.train,
            "seed": config.seed,
            "preset": config.preset,
            "clip": fedavg.clip,
            "max_site_samples": fedavg.max_site_samples,
            "test_rows": len(test),
            "site_train_rows": [len(s.train) for s in federation.sites],
        },
        "rounds": rounds,
        "final": final,
        "seconds": {"encrypted_federation": encrypted_seconds, "plaintext_fedavg": plain_seconds},
    }


def render(report: dict[str, Any]) -> None:
    """Print the per-round table and the side-by-side comparison with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    s = report["settings"]
    per_round = Table(title=f"Encrypted federation: {s['sites']} sites, threshold {s['threshold']}, split {s['split']}")
    for column in (
        "round",
        "accuracy",
        "AUC",
        "sensitivity",
        "specificity",
        "seconds",
        "kB",
        "plaintext accuracy",
        "max |Δ| vs plaintext",
    ):
        per_round.add_column(column, justify="right")
    for r in report["rounds"]:
        per_round.add_row(
            str(r["round"]),
            f"{r['accuracy']:.3f}",
            f"{r['auc']:.3f}",
            f"{r['sensitivity']:.3f}",
            f"{r['specificity']:.3f}",
            f"{r['seconds']:.2f}",
            f"{r['bytes'] / 1e3:.0f}",
            f"{r['plaintext_accuracy']:.3f}",
            f"{r['max_param_diff_vs_plaintext']:.1e}",
        )
    console.print(per_round)
    final = report["final"]
    table = Table(title=f"Held-out test set ({s['test_rows']} patients), after {s['rounds']} rounds")
    table.add_column("model")
    for m in METRICS:
        table.add_column(m, justify="right")
    rows = [
        ("encrypted FedAvg (heagg)", final["encrypted"]),
        ("plaintext FedAvg", final["plaintext_fedavg"]),
        ("central (pooled data)", final["central"]),
    ]
    rows += [(f"{entry['site']} alone", entry) for entry in final["local_only"]]
    for name, metrics in rows:
        table.add_row(name, *(_fmt(metrics[m]) for m in METRICS))
    console.print(table)
    secs = report["seconds"]
    console.print(
        f"encrypted federation wall time {secs['encrypted_federation']:.1f}s, key ceremony and process start-up "
        f"included (plaintext FedAvg in one process: {secs['plaintext_fedavg']:.1f}s)"
    )


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def write_json(report: dict[str, Any], path: Path) -> None:
    def clean(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(report), indent=2) + "\n")


def write_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in report["rounds"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(rounds, [r["accuracy"] for r in report["rounds"]], marker="o", label="encrypted FedAvg (heagg)")
    ax.plot(
        rounds,
        [r["plaintext_accuracy"] for r in report["rounds"]],
        marker="x",
        linestyle="--",
        label="plaintext FedAvg",
    )
    ax.axhline(report["final"]["central"]["accuracy"], color="grey", linestyle=":", label="central (pooled data)")
    ax.set_xlabel("round")
    ax.set_ylabel("held-out accuracy")
    s = report["settings"]
    ax.set_title(f"WDBC, {s['sites']} sites, split {s['split']}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
