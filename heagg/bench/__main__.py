"""``python -m heagg.bench``: the ``heagg bench`` command, with heagg's one-line error handling."""

from __future__ import annotations

import sys

import click

from heagg.bench.command import bench_command
from heagg.errors import HeaggError


def main() -> None:
    try:
        bench_command.main(prog_name="python -m heagg.bench", standalone_mode=False)
    except HeaggError as exc:
        click.echo(f"heagg: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("heagg: interrupted", err=True)
        sys.exit(130)


# the guard matters: worker and aggregator processes are spawned, and spawning re-imports the main module
if __name__ == "__main__":
    main()
