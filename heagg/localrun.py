"""A whole consortium on one machine: the ceremony, per-site data files, and one real process per party.

``heagg simulate`` runs the federation this way, and the integration tests use it to start, kill and restart
aggregators and nodes: real ``heagg aggregator`` / ``heagg node`` processes, real CurveZMQ sockets on
127.0.0.1, real key files and state directories on disk. Nothing is mocked.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from heagg.ceremony import CeremonyConfig, run_ceremony
from heagg.consortium import Consortium
from heagg.data import write_csv
from heagg.errors import UsageError
from heagg.fedavg import FedAvgSettings
from heagg.protocol.aggregator import STATE_FILE as AGGREGATOR_STATE
from heagg.protocol.node import STATE_FILE as NODE_STATE
from heagg.protocol.state import load_record
from heagg.splits import Federation

TARGET = "diagnosis"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalConsortium:
    """Key ceremony output, data files and processes of a consortium run in ``workdir``."""

    workdir: Path
    federation: Federation
    threshold: int
    preset: str = "compact"
    min_sites: int | None = None
    fedavg: FedAvgSettings = field(default_factory=FedAvgSettings)
    kdf_n: int | None = None
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.keys_dir = self.workdir / "keys"
        self.data_dir = self.workdir / "data"
        self.logs_dir = self.workdir / "logs"

    @property
    def site_names(self) -> list[str]:
        return [site.name for site in self.federation.sites]

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def setup(self) -> Consortium:
        """Run the ceremony (key files without passphrases: a local demo) and write each site's data files."""
        if self.workdir.exists() and any(self.workdir.iterdir()):
            raise UsageError(f"{self.workdir} is not empty: choose a new --workdir")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir()
        config = CeremonyConfig(
            sites=tuple(self.site_names),
            threshold=self.threshold,
            out=self.keys_dir,
            preset=self.preset,
            features=self.federation.test.features,
            fedavg=self.fedavg,
            min_sites=self.min_sites,
        )
        extra = {"kdf_n": self.kdf_n} if self.kdf_n else {}
        result = run_ceremony(config, dict.fromkeys((*self.site_names, "aggregator")), **extra)
        self.data_dir.mkdir()
        for site in self.federation.sites:
            write_csv(site.train, self.train_csv(site.name), target=TARGET)
            write_csv(site.test, self.test_csv(site.name), target=TARGET)
        return result.consortium

    def train_csv(self, site: str) -> Path:
        return self.data_dir / f"{site}-train.csv"

    def test_csv(self, site: str) -> Path:
        return self.data_dir / f"{site}-test.csv"

    def node_state(self, site: str) -> Path:
        return self.workdir / "state" / site

    @property
    def aggregator_state(self) -> Path:
        return self.workdir / "state" / "aggregator"

    # processes ----------------------------------------------------------------------------------

    def _spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen:
        log = open(self.logs_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "heagg", *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start_aggregator(
        self, rounds: int, *, keys_dir: Path | None = None, extra: Sequence[str] = ()
    ) -> subprocess.Popen:
        args = [
            "aggregator",
            "--keys", str(keys_dir or self.keys_dir),
            "--bind", self.address,
            "--rounds", str(rounds),
            "--state", str(self.aggregator_state),
            *extra,
        ]  # fmt: skip
        return self._spawn("aggregator", args)

    def start_node(self, site: str, *, extra: Sequence[str] = ()) -> subprocess.Popen:
        args = [
            "node",
            "--site", site,
            "--keys", str(self.keys_dir),
            "--connect", self.address,
            "--data", str(self.train_csv(site)),
            "--test-data", str(self.test_csv(site)),
            "--target", TARGET,
            "--state", str(self.node_state(site)),
            *extra,
        ]  # fmt: skip
        return self._spawn(site, args)

    def start_nodes(self, sites: Sequence[str] | None = None, *, extra: Sequence[str] = ()) -> None:
        for site in sites if sites is not None else self.site_names:
            self.start_node(site, extra=extra)

    def kill(self, name: str) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)

    def wait(self, name: str, timeout: float) -> int:
        try:
            return self.procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{name} did not exit within {timeout:.0f}s; its log:\n{self.log(name)[-4000:]}"
            ) from None

    def wait_all(self, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        return {name: self.wait(name, max(deadline - time.monotonic(), 0.1)) for name in list(self.procs)}

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def log(self, name: str) -> str:
        path = self.logs_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for(self, condition, timeout: float, what: str, *, poll: float = 0.1) -> None:
        """Poll ``condition()`` until true; fail with ``what`` and the logs after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(poll)
        logs = "\n".join(f"--- {n}\n{self.log(n)[-2000:]}" for n in self.procs)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")

    # state --------------------------------------------------------------------------------------

    def aggregator_record(self) -> dict | None:
        return load_record(self.aggregator_state / AGGREGATOR_STATE)

    def node_record(self, site: str) -> dict | None:
        return load_record(self.node_state(site) / NODE_STATE)

    def completed(self) -> tuple[int, str] | None:
        record = self.aggregator_record()
        return tuple(record["completed"]) if record and record["completed"] else None  # type: ignore[return-value]
