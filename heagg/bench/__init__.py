"""Benchmarks of encrypted aggregation: heagg against plaintext FedAvg and single-key TenSEAL, in one run.

``run_bench(BenchConfig(...))`` is the library entry point; ``bench_command`` is the ``heagg bench`` click
command (also ``python -m heagg.bench``). See ``heagg.bench.runner`` for what every figure means.
"""

from heagg.bench.command import bench_command
from heagg.bench.config import BenchConfig, parse_counts
from heagg.bench.runner import Progress, run_bench

__all__ = ["BenchConfig", "Progress", "bench_command", "parse_counts", "run_bench"]
