"""heagg simulate end to end: real processes, the report, the accuracy targets, and predict on its model."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys

import numpy as np
import pytest

from heagg.data import load_table
from heagg.model import load_model, predict_proba
from heagg.simulate import METRICS, SimulationConfig, run_simulation
from heagg.standardize import Standardizer

pytestmark = pytest.mark.slow


def heagg(*args, cwd=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "heagg", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def check_metrics(metrics):
    assert set(METRICS) <= set(metrics)
    for name in METRICS:
        assert 0.0 <= metrics[name] <= 1.0, (name, metrics[name])


def test_simulate_as_a_subprocess_writes_the_documented_json_and_plot(tmp_path):
    out, plot = tmp_path / "report.json", tmp_path / "acc.png"
    result = heagg(
        "simulate",
        "--sites",
        "3",
        "--threshold",
        "2",
        "--rounds",
        "2",
        "--json",
        str(out),
        "--plot",
        str(plot),
        "--workdir",
        str(tmp_path / "work"),
        "-q",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for row in report["rounds"]:
        check_metrics(row)
        assert row["seconds"] > 0 and row["bytes"] > 0
        assert row["max_param_diff_vs_plaintext"] < 1e-2
    final = report["final"]
    for key in ("encrypted", "plaintext_fedavg", "central"):
        check_metrics(final[key])
    assert [e["site"] for e in final["local_only"]] == ["site-1", "site-2", "site-3"]
    for entry in final["local_only"]:
        check_metrics(entry)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Held-out test set" in result.stdout and "encrypted FedAvg (heagg)" in result.stdout

    # heagg predict scores new patients with a node's exported model, as the model itself does
    model_file = tmp_path / "work" / "state" / "site-1" / "model.pt"
    patients = tmp_path / "work" / "data" / "site-2-test.csv"
    scored = tmp_path / "scored.csv"
    result = heagg("predict", "--model", str(model_file), "--data", str(patients), "--out", str(scored))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(scored.open()))
    model, _, card = load_model(model_file)
    data = load_table(patients, target="diagnosis", features=card["features"])
    expected = predict_proba(model, data.X, Standardizer.from_dict(card["standardizer"]))
    assert len(rows) == len(data)
    np.testing.assert_allclose([float(r["probability"]) for r in rows], expected, atol=1e-6)
    assert [int(r["prediction"]) for r in rows] == [int(p >= 0.5) for p in expected]
    assert card["rounds"] == 2 and card["sites"] == 3 and card["privacy"]["threshold"] == 2
    # it never overwrites
    again = heagg("predict", "--model", str(model_file), "--data", str(patients), "--out", str(scored))
    assert again.returncode != 0 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_default_run_is_within_one_point_of_central_and_matches_plaintext_fedavg():
    report = run_simulation(SimulationConfig(), progress=False)
    final = report["final"]
    assert final["encrypted"]["accuracy"] >= 0.95
    assert final["encrypted"]["accuracy"] >= final["central"]["accuracy"] - 0.01
    # encrypted and plaintext FedAvg follow the same trajectory
    for row in report["rounds"]:
        assert abs(row["accuracy"] - row["plaintext_accuracy"]) <= 1 / report["settings"]["test_rows"] + 1e-9
        assert row["max_param_diff_vs_plaintext"] < 1e-2
    assert report["seconds"]["encrypted_federation"] < 120


def test_label_skewed_federation_beats_the_median_site_alone():
    report = run_simulation(SimulationConfig(split="dirichlet:0.3", rounds=5), progress=False)
    alone = statistics.median(e["accuracy"] for e in report["final"]["local_only"])
    assert report["final"]["encrypted"]["accuracy"] > alone
