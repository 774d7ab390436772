"""Thin wrapper: ``python bench/run.py [options]`` is ``heagg bench [options]`` (see bench/README.md)."""

from heagg.bench.__main__ import main

if __name__ == "__main__":  # needed: the benchmark spawns worker processes, which re-import this file
    main()
