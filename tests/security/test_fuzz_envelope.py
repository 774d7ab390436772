"""The coverage-guided fuzz run of the envelope decoder (fuzz/envelope_fuzz.py), for a bounded time, as CI runs it.

``HEAGG_FUZZ_SECONDS`` sets the run's length (default 20). The harness is a separate process (atheris owns the
interpreter it runs in); it starts from the seed corpus ``fuzz/make_corpus.py`` writes from the golden vectors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .campaign import CAMPAIGN

ROOT = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("HEAGG_FUZZ_SECONDS", "20"))


def fuzz(tmp_path: Path, seconds: int, **env: str) -> subprocess.CompletedProcess:
    corpus = tmp_path / "corpus"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "make_corpus.py"), str(corpus)], check=True, env=environment, timeout=60
    )
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / "envelope_fuzz.py"),
            str(corpus),
            f"-max_total_time={seconds}",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=seconds + 120,
    )


def test_the_envelope_decoder_survives_coverage_guided_fuzzing(tmp_path):
    run = fuzz(tmp_path, SECONDS)
    assert run.returncode == 0, run.stderr[-4000:]
    assert not list(tmp_path.glob("crash-*")), run.stderr[-4000:]
    executions = int(re.search(r"stat::number_of_executed_units: (\d+)", run.stderr)[1])
    coverage = re.findall(r"cov: (\d+)", run.stderr)
    assert executions > 0
    assert coverage and int(coverage[-1]) > 0  # the decoder is instrumented: coverage guides the search
    CAMPAIGN.fuzz["envelope (atheris)"] = (
        f"{executions} executions in {SECONDS}s, {coverage[-1]} edges covered, no crash"
    )


def test_the_fuzz_run_fails_when_the_decoder_raises_outside_the_protocol_error_tree(tmp_path):
    """A planted ValueError (after decoding a finish message, which a seed is) must fail the run with a crash file."""
    run = fuzz(tmp_path, 60, HEAGG_FUZZ_PLANTED_BUG="finish")
    assert run.returncode != 0
    assert "planted bug: a finish message" in run.stdout + run.stderr  # atheris prints the traceback
    assert list(tmp_path.glob("crash-*"))
