"""Sites and an aggregator process on one machine, over heagg's real CurveZMQ transport on 127.0.0.1.

The aggregator runs in its own (spawned) process so that its peak memory is its own: it binds a CURVE
ROUTER (``AggregatorEndpoint``) that admits only the sites' keys, sums each update as it arrives with the
system's ``Summer`` and reports, at the end, how long each sum took, how far its resident memory rose above
idle, and the time of a plain numpy add of the same byte count (the memory-bandwidth bound).

Each site connects with its own ``NodeEndpoint`` and key pair, completes the CURVE handshake with a small
message first, then sends its update: the transfer time runs from the send until the aggregator confirms
receipt, before summing. The site then waits until the sum is done, so that phases never overlap and each
is timed alone (sites on separate machines would overlap encryption with the previous site's sum).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import statistics
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Self

import numpy as np

from heagg.bench.memory import PeakMeter
from heagg.bench.systems import AggregatorSpec, make_summer
from heagg.errors import HeaggError
from heagg.transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    AggregatorEndpoint,
    CurveKeyPair,
    NodeEndpoint,
    generate_curve_keypair,
)

HELLO, READY, UPDATE, RECEIVED, SUMMED = b"hello", b"ready", b"update", b"received", b"summed"
#: generous bounds: a large single-key update takes seconds to load; these only catch a dead peer
_HANDSHAKE_TIMEOUT = 30.0
_STEP_TIMEOUT = 1800.0


class LoopbackError(HeaggError):
    """The benchmark's aggregator process failed or stopped answering."""


@dataclass
class AggregatorReport:
    """What the aggregator measured in its own process."""

    #: per update, as it arrived
    sum_s: list[float]
    #: completing the sum once every update is in (heagg: reducing its lazy additions modulo q)
    finish_s: float
    peak_bytes: int
    memory_method: str
    #: seconds of one numpy add of an update's byte count (uint64, warm arrays, median of 5)
    bound_s_per_update: float
    aggregate: list[bytes] = field(repr=False)


def _bandwidth_bound(nbytes: int) -> float:
    count = max(1, nbytes // 8)
    x = np.ones(count, dtype=np.uint64)
    y = np.ones(count, dtype=np.uint64)
    np.add(x, y, out=x)  # first touch of every page happens here, not in the timed adds
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        np.add(x, y, out=x)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)  # a median, like the per-site sums it is compared with


def _message_limit(spec: AggregatorSpec) -> int:
    return max(DEFAULT_MAX_MESSAGE_BYTES, 2 * spec.max_update_bytes + (1 << 20))


def serve(
    conn: Connection, spec: AggregatorSpec, keypair: CurveKeyPair, allowed: dict[str, bytes], updates: int
) -> None:
    """The aggregator process: sum ``updates`` updates, then report. Runs until done or told to stop."""
    try:
        summer = make_summer(spec)
        meter = PeakMeter()
        endpoint = AggregatorEndpoint("tcp://127.0.0.1:*", keypair, allowed, max_message_bytes=_message_limit(spec))
    except Exception as exc:
        conn.send(("error", f"aggregator setup failed: {exc}"))
        return
    with endpoint:
        meter.start()
        conn.send(("ready", endpoint.endpoint))
        sums: list[float] = []
        update_bytes = 0
        while len(sums) < updates:
            if conn.poll():  # the parent gave up
                return
            incoming = endpoint.recv(timeout=0.2)
            if incoming is None:
                continue
            site, frames = incoming.site, incoming.frames
            del incoming
            if frames[0] == HELLO:
                endpoint.send(site, [READY])
                continue
            endpoint.send(site, [RECEIVED])
            payload = frames[1:]
            del frames
            update_bytes = sum(len(f) for f in payload)
            try:
                start = time.perf_counter()
                summer.add(payload)
                sums.append(time.perf_counter() - start)
            except Exception as exc:
                conn.send(("error", f"the aggregator could not add {site}'s update: {exc}"))
                return
            del payload
            endpoint.send(site, [SUMMED])
        start = time.perf_counter()
        summer.finish()
        finish_s = time.perf_counter() - start
        peak = meter.growth()
    bound = _bandwidth_bound(update_bytes)
    conn.send(("done", AggregatorReport(sums, finish_s, peak, meter.method, bound, summer.result())))


class Loopback:
    """An aggregator process for one system and ``sites`` site connections to it."""

    def __init__(self, spec: AggregatorSpec, sites: int) -> None:
        self._spec = spec
        self._server = generate_curve_keypair()
        self._sites = {f"site-{i}": generate_curve_keypair() for i in range(1, sites + 1)}
        allowed = {name: pair.public for name, pair in self._sites.items()}
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=serve, args=(child, spec, self._server, allowed, sites), name="heagg-bench-aggregator", daemon=True
        )
        self._process.start()
        child.close()
        status, value = self._receive(_HANDSHAKE_TIMEOUT)
        if status != "ready":
            self.close()
            raise LoopbackError(str(value))
        self.endpoint: str = value

    def _receive(self, timeout: float) -> tuple[str, object]:
        if not self._conn.poll(timeout):
            raise LoopbackError(f"the aggregator process did not answer within {timeout:.0f}s")
        try:
            return self._conn.recv()
        except EOFError:
            raise LoopbackError("the aggregator process exited unexpectedly") from None

    def send(self, site: int, frames: list[bytes]) -> float:
        """Send site ``site``'s update; return the transfer time; return once the aggregator has summed it."""
        keypair = self._sites[f"site-{site}"]
        with NodeEndpoint(
            self.endpoint, keypair, self._server.public, max_message_bytes=_message_limit(self._spec), send_timeout=60
        ) as node:
            self._exchange(node, [HELLO], READY, _HANDSHAKE_TIMEOUT)
            start = time.perf_counter()
            self._exchange(node, [UPDATE, *frames], RECEIVED, _STEP_TIMEOUT)
            seconds = time.perf_counter() - start
            self._await(node, SUMMED)
        return seconds

    def _exchange(self, node: NodeEndpoint, frames: list[bytes], expect: bytes, timeout: float) -> None:
        if not node.send(frames):
            raise LoopbackError("the site could not queue its message")
        self._await(node, expect, timeout)

    def _await(self, node: NodeEndpoint, expect: bytes, timeout: float = _STEP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = node.recv(timeout=0.5)
            if reply == [expect]:
                return
            if reply is None and self._conn.poll():
                status, value = self._receive(0)
                raise LoopbackError(str(value) if status == "error" else f"unexpected {status} from the aggregator")
            if not self._process.is_alive():
                raise LoopbackError("the aggregator process exited unexpectedly")
        raise LoopbackError(f"no {expect.decode()} from the aggregator within {timeout:.0f}s")

    def finish(self) -> AggregatorReport:
        status, value = self._receive(_STEP_TIMEOUT)
        if status != "done" or not isinstance(value, AggregatorReport):
            raise LoopbackError(str(value))
        self._process.join(timeout=30)
        return value

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send("stop")
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=5)
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
