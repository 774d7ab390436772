"""``heagg bench``: a thin click command over ``run_bench`` (cli.py adds it; ``python -m heagg.bench`` runs it)."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from types import TracebackType
from typing import Self

import click

from heagg.bench.config import BenchConfig, parse_counts, parse_presets
from heagg.bench.report import markdown_table, rich_table, target_lines
from heagg.bench.runner import run_bench
from heagg.errors import UsageError


class RichProgress:
    """A progress bar on stderr (``run_bench``'s ``Progress``)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._progress.add_task("starting", total=None)

    def start(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def step(self, label: str) -> None:
        self._progress.update(self._task, description=label)

    def advance(self) -> None:
        self._progress.advance(self._task)

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()


def _counts(what: str) -> object:
    def convert(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
        try:
            return parse_counts(value, what=what)
        except UsageError as exc:
            raise click.BadParameter(str(exc)) from None

    return convert


def _presets(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    try:
        return parse_presets(value)
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--params",
    default="1e5,1e6,1e7",
    show_default=True,
    callback=_counts("--params"),
    help="Model sizes (parameters per update), comma-separated; 1e5 style is fine.",
)
@click.option(
    "--sites",
    default="3,10,30",
    show_default=True,
    callback=_counts("--sites"),
    help="Consortium sizes, comma-separated; every site sends its own distinct update.",
)
@click.option(
    "--preset",
    "presets",
    default="compact,precise",
    show_default=True,
    callback=_presets,
    help="heagg presets to measure, comma-separated.",
)
@click.option(
    "--threshold",
    type=click.IntRange(min=1),
    default=None,
    help="Share holders that decrypt each sum (t of the t-of-n key) [default: min(3, sites)].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=os.cpu_count() or 1,
    show_default=True,
    help="Processes for heagg's encryption and partial decryption (one-core figures are measured too).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the site updates.")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write every figure to this file."
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the table and the target checks as Markdown (the format of bench/README.md).",
)
def bench_command(
    params: tuple[int, ...],
    sites: tuple[int, ...],
    presets: tuple[str, ...],
    threshold: int | None,
    workers: int,
    seed: int,
    json_path: Path | None,
    markdown_path: Path | None,
) -> None:
    """Benchmark encrypted aggregation against plaintext FedAvg and single-key TenSEAL, side by side.

    For every (params, sites) setting, each system runs a full round on the same site updates, one after
    another in the same run: every site encrypts and serialises its update and sends it over loopback
    CurveZMQ to an aggregator process that sums it on arrival; the sum is then decrypted (t-of-n with noise
    flooding for heagg) and compared with the plaintext average. Figures: seconds per phase (medians over
    sites), bytes per parameter on the wire against the physical floor, the aggregator's sum against a
    numpy add of the same bytes, its peak memory above idle, the error of the average, and every figure's
    ratio to plaintext.

    \b
    Quick check (under a minute):   heagg bench --params 1e5 --sites 3
    The README table (~30 minutes): heagg bench --json bench/results.json --markdown bench/results.md

    Run it on an otherwise idle machine: other work on the same cores shows up in every figure.
    """
    config = BenchConfig(params=params, sites=sites, presets=presets, threshold=threshold, workers=workers, seed=seed)
    config.validate()
    if sys.stderr.isatty():
        with RichProgress() as progress:
            result = run_bench(config, progress=progress)
    else:
        result = run_bench(config)
    result["meta"]["command"] = command_line(config, json_path, markdown_path)
    if sys.stdout.isatty():
        from rich.console import Console

        console = Console()
        console.print(rich_table(result))
        for line in target_lines(result):
            console.print(line, highlight=False)
    else:  # a pipe or a file gets Markdown, which does not depend on a terminal's width
        click.echo(markdown_report(result), nl=False)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    if markdown_path is not None:
        markdown_path.write_text(markdown_report(result))


def _count(value: int) -> str:
    """1000000 -> "1e6", 2500000 -> "25e5", 1234 -> "1234": exact, and as short as the user would write it."""
    zeros = len(str(value)) - len(str(value).rstrip("0"))
    return f"{value // 10**zeros}e{zeros}" if zeros >= 3 else str(value)


def command_line(config: BenchConfig, json_path: Path | None, markdown_path: Path | None) -> str:
    """The ``heagg bench`` command that reproduces ``config``, every option spelled out."""
    argv = ["heagg", "bench", "--params", ",".join(map(_count, config.params))]
    argv += ["--sites", ",".join(map(str, config.sites)), "--preset", ",".join(config.presets)]
    if config.threshold is not None:
        argv += ["--threshold", str(config.threshold)]
    argv += ["--workers", str(config.workers), "--seed", str(config.seed)]
    if json_path is not None:
        argv += ["--json", str(json_path)]
    if markdown_path is not None:
        argv += ["--markdown", str(markdown_path)]
    return shlex.join(argv)


def markdown_report(result: dict) -> str:
    meta = result["meta"]
    machine = meta["machine"]
    lines = [
        markdown_table(result),
        "",
        *(f"- {line}" for line in target_lines(result)),
        "",
        f"Command: `{meta.get('command', '')}`; {machine['cpu']}, {machine['cores']} cores; Python "
        f"{machine['python']}, numpy {machine['numpy']}, TenSEAL {machine['tenseal']}; started {meta['started']}, "
        f"{meta['seconds']:.0f} s. Aggregator memory: {meta['memory_method']}.",
    ]
    return "\n".join(lines) + "\n"
