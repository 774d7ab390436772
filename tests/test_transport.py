"""The CurveZMQ transport over real sockets on 127.0.0.1: authentication, attribution, limits, reconnects, fairness."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from heagg.errors import UsageError
from heagg.transport import (
    DEFAULT_HWM,
    AggregatorEndpoint,
    CurveKeyPair,
    Incoming,
    NodeEndpoint,
    generate_curve_keypair,
)

ANY_PORT = "tcp://127.0.0.1:*"
WAIT = 5.0  # upper bound for anything that should happen "soon"; tests pass far quicker
QUIET = 0.5  # how long "nothing arrives" is watched for


class Resources:
    """Everything a test opens, closed in reverse order at teardown."""

    def __init__(self) -> None:
        self._cleanups: list[Callable[[], None]] = []

    def add(self, cleanup: Callable[[], None]) -> None:
        self._cleanups.append(cleanup)

    def aggregator(
        self, bind: str, keypair: CurveKeyPair, allowed: dict[str, bytes], **kw: object
    ) -> AggregatorEndpoint:
        agg = AggregatorEndpoint(bind, keypair, allowed, **kw)
        self.add(agg.close)
        return agg

    def node(self, connect: str, keypair: CurveKeyPair, server_public: bytes, **kw: object) -> NodeEndpoint:
        node = NodeEndpoint(connect, keypair, server_public, **kw)
        self.add(node.close)
        return node

    def raw_dealer(
        self,
        connect: str,
        *,
        keypair: CurveKeyPair | None = None,
        server_public: bytes | None = None,
        routing_id: bytes | None = None,
    ) -> zmq.Socket:
        """A DEALER configured by hand, as an attacker or a misconfigured client would."""
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.rcvtimeo = sock.sndtimeo = 1000
        if keypair is not None:
            assert server_public is not None
            sock.curve_serverkey = server_public
            sock.curve_publickey = keypair.public
            sock.curve_secretkey = keypair.secret
        if routing_id is not None:
            sock.routing_id = routing_id
        sock.connect(connect)

        def cleanup() -> None:
            sock.close(linger=0)
            ctx.term()

        self.add(cleanup)
        return sock

    def close_all(self) -> None:
        while self._cleanups:
            self._cleanups.pop()()


@pytest.fixture
def res() -> Iterator[Resources]:
    before = set(threading.enumerate())
    resources = Resources()
    try:
        yield resources
    finally:
        resources.close_all()
    # pyzmq starts one process-wide thread, on the first zero-copy send, to release sent buffers: not a leak
    leaked = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and type(t).__name__ != "GarbageCollectorThread"
    ]
    assert not leaked, f"threads left behind: {leaked}"


@pytest.fixture
def keys() -> dict[str, CurveKeyPair]:
    return {name: generate_curve_keypair() for name in ("aggregator", "a", "b", "stranger")}


def allow(keys: dict[str, CurveKeyPair], *sites: str) -> dict[str, bytes]:
    return {site: keys[site].public for site in sites}


def recv_all(agg: AggregatorEndpoint, count: int, timeout: float = WAIT) -> list[Incoming]:
    """Exactly ``count`` messages, waiting at most ``timeout`` seconds in total."""
    deadline = time.monotonic() + timeout
    got: list[Incoming] = []
    while len(got) < count:
        msg = agg.recv(max(0.0, deadline - time.monotonic()))
        assert msg is not None, f"only {len(got)} of {count} messages arrived within {timeout} s: {got}"
        got.append(msg)
    return got


def test_keypair_is_z85_and_hides_its_secret() -> None:
    pair = generate_curve_keypair()
    assert len(pair.public) == len(pair.secret) == 40
    assert zmq.curve_public(pair.secret) == pair.public
    assert pair.secret.decode() not in repr(pair) and pair.public.decode() in repr(pair)
    with pytest.raises(UsageError, match="does not match"):
        CurveKeyPair(public=generate_curve_keypair().public, secret=pair.secret)
    with pytest.raises(UsageError, match="z85"):
        CurveKeyPair(public=b"too short", secret=pair.secret)


def test_two_sites_round_trip_multipart_messages_both_ways(res: Resources, keys: dict[str, CurveKeyPair]) -> None:
    agg = res.aggregator(ANY_PORT, keys["aggregator"], allow(keys, "a", "b"))
    assert not agg.endpoint.endswith(":*")
    node_a = res.node(agg.endpoint, keys["a"], keys["aggregator"].public)
    node_b = res.node(agg.endpoint, keys["b"], keys["aggregator"].public)
    payload = os.urandom(1 << 20)  # a ciphertext-sized raw frame travels unchanged

    assert node_a.send([b"meta-a", payload, b""])
    assert node_b.send([b"meta-b"])
    got = {m.site: m.frames for m in recv_all(agg, 2)}
    assert got == {"a": [b"meta-a", payload, b""], "b": [b"meta-b"]}

    assert agg.send("a", [b"to-a", payload])
    assert agg.send("b", [b"to-b", b"2"])
    assert node_a.recv(WAIT) == [b"to-a", payload]
    assert node_b.recv(WAIT) == [b"to-b", b"2"]
    assert node_a.recv(0.1) is None and node_b.recv(0.1) is None

    assert agg.send("nobody", [b"x"]) is False  # not in the allow-list


def test_site_that_never_connected_is_unreachable(res: Resources, keys: dict[str, CurveKeyPair]) -> None:
    agg = res.aggregator("tcp://127.0.0.1:0", keys["aggregator"], allow(keys, "a", "b"))
    assert int(agg.endpoint.rsplit(":", 1)[1]) > 0  # port 0 asks for a free port; the real one is reported
    assert agg.send("a", [b"hello"]) is False
    assert agg.recv(0.1) is None


def test_unauthenticated_clients_get_nothing_through(
    res: Resources, keys: dict[str, CurveKeyPair], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    agg = res.aggregator(ANY_PORT, keys["aggregator"], allow(keys, "a", "b"))
    impostor_server = generate_curve_keypair()

    no_curve = res.raw_dealer(agg.endpoint, routing_id=b"a")
    wrong_server = res.node(agg.endpoint, keys["a"], impostor_server.public)  # a's real key, wrong pinned server
    stranger = res.node(agg.endpoint, keys["stranger"], keys["aggregator"].public, send_timeout=0.1)
    legit = res.node(agg.endpoint, keys["b"], keys["aggregator"].public)
    # if the client side notices the mechanism mismatch first, libzmq drops its only peer and the send finds none
    with contextlib.suppress(zmq.Again):
        no_curve.send_multipart([b"claims to be a"], zmq.NOBLOCK)
    assert wrong_server.send([b"from wrong server key"])
    # once refused (ZAP 400), libzmq gives the connection up for good, so this send may already find no peer
    stranger.send([b"from stranger"])
    assert legit.send([b"from b"])

    # Keep reading until all three refusals have been logged: the bad clients did try, and nothing came through.
    # (A client without CURVE fails either on the mechanism mismatch or with a broken pipe, whichever side notices
    # first; the wrong server key always fails CURVE decryption on the server.)
    def refusals_logged() -> bool:
        failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("handshake failed")]
        return (
            any("CURVE decryption failed" in f for f in failures)
            and any("CURVE decryption failed" not in f for f in failures)
            and f"key {keys['stranger'].public[:8].decode()}…: not in the allow-list" in caplog.text
        )

    received: list[Incoming] = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and not refusals_logged():
        msg = agg.recv(0.05)
        if msg is not None:
            received.append(msg)
    assert refusals_logged(), caplog.text
    assert agg.recv(QUIET) is None
    assert received == [Incoming(site="b", frames=[b"from b"])]

    assert agg.send("a", [b"secret for a"]) is False  # a never authenticated, so it has no route
    assert agg.send("b", [b"reply"]) and legit.recv(WAIT) == [b"reply"]
    assert wrong_server.recv(0.1) is None and stranger.recv(0.1) is None
    assert "refused this site's CURVE key" in caplog.text  # the stranger's own log says why
    assert no_curve.poll(100) == 0

    for pair in (*keys.values(), impostor_server):
        assert pair.secret.decode() not in caplog.text


def test_routing_id_cannot_claim_another_sites_name(res: Resources, keys: dict[str, CurveKeyPair]) -> None:
    agg = res.aggregator(ANY_PORT, keys["aggregator"], allow(keys, "a", "b"))
    node_a = res.node(agg.endpoint, keys["a"], keys["aggregator"].public)
    # b authenticates with its own key but names its connection "a"
    liar = res.raw_dealer(agg.endpoint, keypair=keys["b"], server_public=keys["aggregator"].public, routing_id=b"a")
    liar.send_multipart([b"I am a"])
    assert node_a.send([b"I am a too"])
    got = {m.frames[0]: m.site for m in recv_all(agg, 2)}
    assert got == {b"I am a": "b", b"I am a too": "a"}

    assert agg.send("a", [b"for a"]) and agg.send("b", [b"for b"])
    assert node_a.recv(WAIT) == [b"for a"]
    assert liar.recv_multipart() == [b"for b"]
    assert node_a.recv(0.1) is None and liar.poll(100) == 0


def test_oversized_messages_are_not_delivered(
    res: Resources, keys: dict[str, CurveKeyPair], caplog: pytest.LogCaptureFixture
) -> None:
    limit = 64 * 1024
    agg = res.aggregator(ANY_PORT, keys["aggregator"], allow(keys, "a", "b"), max_message_bytes=limit)
    big = res.node(agg.endpoint, keys["a"], keys["aggregator"].public)
    normal = res.node(agg.endpoint, keys["b"], keys["aggregator"].public)

    assert big.send([b"x" * limit])  # exactly at the limit: delivered
    assert recv_all(agg, 1)[0] == Incoming(site="a", frames=[b"x" * limit])

    caplog.set_level(logging.INFO, logger="heagg.transport")
    assert big.send([b"y" * (limit + 1)])  # one byte over: libzmq drops the connection
    assert normal.send([b"still fine"])
    assert recv_all(agg, 1)[0] == Incoming(site="b", frames=[b"still fine"])
    assert agg.recv(QUIET) is None
    assert "over the" not in caplog.text  # refused by libzmq before allocation, never reassembled for recv
    assert big.recv(0.1) is None and "disconnected" in caplog.text  # the node saw its connection dropped

    # a reconnects on its own; probe until it is back (messages written to the dropped connection are lost)
    deadline = time.monotonic() + WAIT
    back = None
    while back is None and time.monotonic() < deadline:
        assert big.send([b"probe"])
        back = agg.recv(0.2)
    assert back == Incoming(site="a", frames=[b"probe"])
    while (extra := agg.recv(0.2)) is not None:
        assert extra.frames == [b"probe"]

    # frames under the limit that add up to more: dropped by recv, the next message still comes through
    assert big.send([b"z" * (limit // 2 + 1), b"z" * (limit // 2)])
    assert big.send([b"after"])
    assert recv_all(agg, 1)[0] == Incoming(site="a", frames=[b"after"])
    assert f"over the {limit}-byte limit" in caplog.text

    # the node's own inbound limit
    small_node = res.node(agg.endpoint, keys["b"], keys["aggregator"].public, max_message_bytes=1024)
    assert small_node.send([b"hello"]) and recv_all(agg, 1)[0].site == "b"
    assert agg.send("b", [b"w" * 2048])
    assert small_node.recv(QUIET) is None


def test_node_reconnects_to_a_restarted_aggregator(res: Resources, keys: dict[str, CurveKeyPair]) -> None:
    first = AggregatorEndpoint(ANY_PORT, keys["aggregator"], allow(keys, "a"))
    res.add(first.close)
    endpoint = first.endpoint
    node = res.node(endpoint, keys["a"], keys["aggregator"].public)
    assert node.send([b"before"])
    assert recv_all(first, 1)[0] == Incoming(site="a", frames=[b"before"])
    first.close()

    second = res.aggregator(endpoint, keys["aggregator"], allow(keys, "a"))
    assert second.endpoint == endpoint
    assert node.send([b"after"])
    assert recv_all(second, 1)[0] == Incoming(site="a", frames=[b"after"])
    assert second.send("a", [b"welcome back"])
    assert node.recv(WAIT) == [b"welcome back"]


def test_port_in_use_is_a_usage_error(res: Resources, keys: dict[str, CurveKeyPair]) -> None:
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        port = other_program.getsockname()[1]
        with pytest.raises(UsageError, match="in use") as err:
            AggregatorEndpoint(f"tcp://127.0.0.1:{port}", keys["aggregator"], allow(keys, "a"))
    message = str(err.value)
    assert message.startswith(f"cannot bind tcp://127.0.0.1:{port}: address already in use")
    assert "\n" not in message


@pytest.mark.parametrize("bad", ["tcp://127.0.0.1:notaport", "nonsense", "bogus://127.0.0.1:5555"])
def test_invalid_endpoint_is_a_usage_error(res: Resources, keys: dict[str, CurveKeyPair], bad: str) -> None:
    with pytest.raises(UsageError, match="cannot bind"):
        AggregatorEndpoint(bad, keys["aggregator"], allow(keys, "a"))
    with pytest.raises(UsageError, match="cannot connect"):
        NodeEndpoint(bad, keys["a"], keys["aggregator"].public)


def test_allow_list_with_a_shared_key_is_refused(res: Resources, keys: dict[str, CurveKeyPair]) -> None:
    with pytest.raises(UsageError, match="same CURVE public key"):
        AggregatorEndpoint(ANY_PORT, keys["aggregator"], {"a": keys["a"].public, "b": keys["a"].public})


def test_a_flooding_site_does_not_starve_another(res: Resources, keys: dict[str, CurveKeyPair]) -> None:
    agg = res.aggregator(ANY_PORT, keys["aggregator"], allow(keys, "a", "b"))
    quiet = res.node(agg.endpoint, keys["a"], keys["aggregator"].public)
    flood = res.node(agg.endpoint, keys["b"], keys["aggregator"].public, send_timeout=0.05)
    assert quiet.send([b"hello"]) and flood.send([b"hello"])
    recv_all(agg, 2)  # both connections are up

    sent = 0
    while sent < 5000 and flood.send([b"flood", b"f" * 1024]):
        sent += 1
    assert sent > 4 * DEFAULT_HWM  # a real backlog, far beyond what one connection may queue
    assert quiet.send([b"urgent"])
    time.sleep(0.2)  # let "urgent" reach the aggregator while the backlog is still there

    start = time.monotonic()
    flood_before = 0
    while (msg := agg.recv(WAIT)) is not None and msg.site != "a":
        flood_before += 1
    assert msg == Incoming(site="a", frames=[b"urgent"])
    assert time.monotonic() - start < 1.0
    assert flood_before <= 4, f"{flood_before} flood messages were delivered before the other site's message"
    assert (after := agg.recv(WAIT)) is not None and after.site == "b"  # the flood was still queued
