"""The security campaign's summary, printed after the test results (``pytest -q tests/security ...``)."""

from __future__ import annotations

from .campaign import CAMPAIGN
from .harness import ForkedProcess


def pytest_sessionfinish(session, exitstatus):
    ForkedProcess.kill_leftovers()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = CAMPAIGN.lines()
    if not lines:
        return
    terminalreporter.section("heagg security campaign")
    for line in lines:
        terminalreporter.write_line(line)
