"""Peak resident memory of this process, measured from a chosen moment on (Linux).

Writing "5" to /proc/self/clear_refs resets the kernel's high-water mark of this process's resident set
(``VmHWM`` in /proc/self/status), so the peak read after ``PeakMeter.start`` is the peak of what came after.
``getrusage(RUSAGE_SELF).ru_maxrss`` is no use here: in a process started by fork and exec (a spawned
multiprocessing child) it also carries the parent's high-water mark from before the exec, and clear_refs
does not reset that part. Where clear_refs is not writable, the baseline is the high-water mark when idle,
and the growth is only seen once the peak rises above it; ``PeakMeter.method`` says which was used.
"""

from __future__ import annotations

from pathlib import Path

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _status_bytes(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise OSError(f"{field} not in {_STATUS}")


def current_rss() -> int:
    """Resident set size now, in bytes."""
    return _status_bytes("VmRSS")


def peak_rss() -> int:
    """The resident set's high-water mark (VmHWM), in bytes."""
    return _status_bytes("VmHWM")


class PeakMeter:
    """Peak resident memory above an idle baseline: ``start()`` when idle, ``growth()`` after the work."""

    def __init__(self) -> None:
        self.method = ""
        self._baseline = 0

    def start(self) -> None:
        try:
            _CLEAR_REFS.write_text("5")
            self.method = "peak RSS (VmHWM, reset through /proc/self/clear_refs when idle) minus idle RSS"
            self._baseline = current_rss()
        except OSError:
            self.method = "peak RSS (VmHWM) minus the idle process's VmHWM (clear_refs not writable)"
            self._baseline = peak_rss()

    def growth(self) -> int:
        """Bytes the peak rose above the idle baseline since ``start``."""
        return max(0, peak_rss() - self._baseline)
