"""What the campaign's fork server imports once, and the entry point of every process it forks.

A node spends seconds importing torch, scikit-learn and torch's lazily loaded optimiser machinery; on two cores,
three of them starting at once take over ten seconds, which would put 20 fault-injection trials far beyond the CI
budget. The campaign therefore starts ``heagg aggregator`` and ``heagg node`` as children of a fork server that has
imported these modules already: each child is a real, separate process running the real CLI entry point with the
real arguments, its own sockets, key files and state directory; only the module imports are shared. The server
imports modules and runs nothing (no torch op, no zmq context), so forking it is safe. ``HEAGG_CAMPAIGN_EXEC=1``
makes the campaign start fresh interpreters instead (``python -m heagg``, as ``heagg.localrun`` does).
"""

from __future__ import annotations

import os
import sys

import sklearn.metrics  # noqa: F401
import torch
import torch._dynamo
import torch.optim  # noqa: F401

import heagg.cli
import heagg.data
import heagg.model
import heagg.protocol.aggregator
import heagg.protocol.node
import heagg.training


def run_cli(argv: list[str], log_path: str, cwd: str) -> None:
    """``heagg ARGV`` in this (forked) process, its output appended to ``log_path``, like ``LocalConsortium``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(cwd)
    os.environ["PYTHONUNBUFFERED"] = "1"
    sys.argv = ["heagg", *argv]
    heagg.cli.main()
