"""CurveZMQ "ironhouse" transport between the aggregator (one ROUTER) and the sites (one DEALER each).

Every connection is CURVE-encrypted and mutually authenticated: a site pins the aggregator's server key, and the
aggregator admits only the site keys of the consortium manifest, through a ZAP handler that runs before its socket
binds. Each inbound message is attributed to the site whose key authenticated the connection (the ZAP ``User-Id``
that libzmq attaches to every frame), never to the ZMQ routing id, which a peer chooses freely.

What libzmq guarantees and what it does not, on the aggregator:

- Fairness: the ROUTER fair-queues inbound messages per connection (round robin over connections that have a
  message ready), so a site sending at full speed delays another site's message by about one message, not by its
  whole backlog.
- Memory: each connection's inbound queue holds at most ``hwm`` *messages* (the high-water mark counts messages, not
  bytes); once full, libzmq stops reading that TCP connection and the sender is pushed back by TCP. A frame larger
  than ``max_message_bytes`` makes libzmq drop the connection before it allocates the frame; the peer reconnects on
  its own and the dropped message is lost without the application being told. libzmq checks each *frame*, not the
  whole multipart message, so ``recv`` also drops (and logs) messages whose frames add up to more than the limit.
- Not guaranteed: a bound on the number of frames in one message (an authenticated site could send one endless
  multipart message), on the number of connections one site key opens, or on memory in bytes (``hwm`` times
  ``max_message_bytes`` per connection in the worst case). These need an authenticated, misbehaving site; an
  unauthenticated peer never gets past the handshake.

Routing back to a site uses the routing id of the site's latest authenticated message, so a site is reachable once it
has sent something. ``NodeEndpoint`` picks a random 128-bit routing id that only it and the aggregator know, and the
ROUTER hands a routing id over to its newest connection (``ROUTER_HANDOVER``): a site that reconnects after a network
loss is reachable again at once, and no other site can guess the id to steal its replies.

The aggregator owns its zmq.Context: libzmq allows one ZAP handler per context (``inproc://zeromq.zap.01``).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from heagg.errors import UsageError

__all__ = [
    "DEFAULT_HWM",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "AggregatorEndpoint",
    "CurveKeyPair",
    "Incoming",
    "NodeEndpoint",
    "generate_curve_keypair",
]

log = logging.getLogger("heagg.transport")

DEFAULT_MAX_MESSAGE_BYTES = 1 << 30
#: messages queued per connection and direction before a sender is pushed back (inbound) or a send fails (outbound)
DEFAULT_HWM = 64

ZAP_DOMAIN = "heagg"
# Under CURVE each frame travels as a MESSAGE command, 33 bytes longer than its payload, and libzmq applies
# MAXMSGSIZE to that wire frame; adding the overhead makes max_message_bytes a limit on the payload.
_CURVE_FRAME_OVERHEAD = 33
_HANDSHAKE_IVL_MS = 10_000
# A peer is declared dead after HEARTBEAT_TIMEOUT without traffic. A single frame must cross the link within that
# time (the PONG waits behind it), so keep it generous: 1 GiB at 20 MB/s takes about 50 s.
_HEARTBEAT_IVL_MS = 10_000
_HEARTBEAT_TIMEOUT_MS = 60_000
_RECONNECT_IVL_MS = 250
_RECONNECT_IVL_MAX_MS = 10_000  # back-off cap while the aggregator is unreachable
_CONNECT_TIMEOUT_MS = 10_000  # a TCP connect to a black-holed address is abandoned, then retried
_LINGER_MS = 500  # close() waits at most this long to flush queued messages
_REFUSAL_LOG_INTERVAL_S = 60.0  # a misconfigured client may retry every few hundred ms: log it once a minute

_EVENT_NAMES = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused by the ZAP handler",
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "CURVE handshake succeeded",
    zmq.EVENT_DISCONNECTED: "disconnected",
}
_PROTOCOL_ERRORS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "the peer does not speak CURVE",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "CURVE decryption failed (the client pins another server key?)",
    zmq.PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE: "CURVE key exchange failed",
}


@dataclass(frozen=True)
class CurveKeyPair:
    """A CurveZMQ key pair, both halves z85-encoded (40 ASCII bytes). ``secret`` never appears in a repr."""

    public: bytes
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_key(self.public, "public key")
        _check_key(self.secret, "secret key")
        if zmq.curve_public(self.secret) != self.public:
            raise UsageError(
                f"CURVE key pair {fingerprint(self.public)}…: the public key does not match the secret key"
            )


def generate_curve_keypair() -> CurveKeyPair:
    """A fresh CurveZMQ key pair from libzmq's CSPRNG (what the key ceremony hands each site and the aggregator)."""
    public, secret = zmq.curve_keypair()
    return CurveKeyPair(public=public, secret=secret)


def fingerprint(public_key: bytes) -> str:
    """The first 8 z85 characters of a public key: enough to tell keys apart in a log, never a secret."""
    return public_key[:8].decode("ascii", "replace")


@dataclass(frozen=True)
class Incoming:
    """One message received by the aggregator, attributed to the site whose CURVE key sent it."""

    site: str
    frames: list[bytes]


def _check_key(key: object, what: str) -> None:
    if not isinstance(key, bytes) or len(key) != 40 or any(c not in z85.Z85CHARS for c in key):
        raise UsageError(f"the {what} is not a 40-character z85 CurveZMQ key")


class _Throttle:
    """Says whether to log an event of a given kind now, and how many were suppressed since the last one."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()  # the ZAP thread and the caller's thread both log refusals
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def check(self, kind: str) -> tuple[bool, int]:
        now = time.monotonic()
        with self._lock:
            if len(self._last) > 1000:  # one entry per refused key: an attacker must not grow it without bound
                self._last = {k: t for k, t in self._last.items() if now - t < self._interval}
                self._suppressed = {k: n for k, n in self._suppressed.items() if k in self._last}
            last = self._last.get(kind)
            if last is not None and now - last < self._interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return False, 0
            self._last[kind] = now
            return True, self._suppressed.pop(kind, 0)


class _AllowList:
    """The ZAP credentials provider: admits exactly the CURVE public keys of the consortium's sites."""

    def __init__(self, keys: Mapping[bytes, str], throttle: _Throttle) -> None:
        self._keys = keys
        self._throttle = throttle

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._keys:
            return True
        show, suppressed = self._throttle.check(f"zap:{key!r}")
        if show:
            more = f" ({suppressed} more attempts since last logged)" if suppressed else ""
            log.warning("refused a CURVE client with key %s…: not in the allow-list%s", fingerprint(key), more)
        return False


class _Endpoint:
    """What both ends share: an owned context, one socket, a monitor that logs handshake failures, bounded waits.

    Like the ZMQ socket inside it, an endpoint must be used from one thread at a time.
    """

    _role = "endpoint"
    _envelope_frames = 0  # leading frames added by the socket itself (a ROUTER's routing id), not by the peer

    def __init__(self) -> None:
        self._context: zmq.Context | None = zmq.Context()
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._throttle = _Throttle(_REFUSAL_LOG_INTERVAL_S)
        self._max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
        self._endpoint = ""

    def _open_socket(self, kind: int, *, max_message_bytes: int, hwm: int, send_timeout: float) -> zmq.Socket:
        if max_message_bytes <= 0 or hwm <= 0 or send_timeout < 0:
            raise ValueError("max_message_bytes and hwm must be positive, send_timeout non-negative")
        assert self._context is not None
        self._max_message_bytes = max_message_bytes
        sock = self._context.socket(kind)
        self._socket = sock
        sock.setsockopt(zmq.LINGER, _LINGER_MS)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes + _CURVE_FRAME_OVERHEAD)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.SNDTIMEO, round(send_timeout * 1000))
        sock.setsockopt(zmq.HANDSHAKE_IVL, _HANDSHAKE_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_IVL, _HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TTL, _HEARTBEAT_TIMEOUT_MS)
        events = 0
        for event in _EVENT_NAMES:
            events |= event
        self._monitor = sock.get_monitor_socket(events)
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        return sock

    @property
    def endpoint(self) -> str:
        """The endpoint bound (with the actual port when ``*`` or 0 was asked for) or connected to."""
        return self._endpoint

    def _deadline(self, timeout: float) -> float:
        if self._socket is None:
            raise RuntimeError(f"the {self._role} endpoint is closed")
        if not timeout >= 0:  # also refuses NaN
            raise ValueError("timeout must be a non-negative number of seconds")
        return time.monotonic() + timeout

    def _poll(self, deadline: float) -> list[zmq.Frame] | None:
        """Wait until ``deadline`` for one message within the size limit; log monitor events meanwhile."""
        assert self._socket is not None
        while True:
            remaining_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            ready = dict(self._poller.poll(remaining_ms))
            if self._monitor in ready:
                self._drain_monitor()
            if self._socket in ready:
                try:
                    frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    frames = None
                if frames is not None and self._size_ok(frames):
                    return frames
            if time.monotonic() >= deadline:
                return None

    def _size_ok(self, frames: list[zmq.Frame]) -> bool:
        # libzmq limits each frame; the whole message is checked here, after reassembly
        total = sum(len(f) for f in frames[self._envelope_frames :])
        if total <= self._max_message_bytes:
            return True
        log.warning("dropped a %d-byte message: over the %d-byte limit", total, self._max_message_bytes)
        return False

    def _drain_monitor(self) -> None:
        assert self._monitor is not None
        while True:
            try:
                header, address = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event, value = struct.unpack("=HI", header[:6])
            self._log_event(event, value, address.decode("utf-8", "replace"))

    def _log_event(self, event: int, value: int, address: str) -> None:
        what = _EVENT_NAMES.get(event, f"event {event}")
        if event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                reason = _PROTOCOL_ERRORS.get(value, f"protocol error {value:#x}")
            else:
                reason = f"{os.strerror(value)} (a client without CURVE, or a connection lost mid-handshake)"
            show, suppressed = self._throttle.check(f"monitor:{event}:{value}")
            if show:
                more = f" ({suppressed} more since last logged)" if suppressed else ""
                log.warning("%s on %s: %s%s", what, address, reason, more)
        else:
            log.debug("%s on %s", what, address)

    def close(self) -> None:
        """Close the socket (dropping what cannot be sent within the linger time) and the context."""
        if self._monitor is not None:
            if self._socket is not None:
                self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._close_extra()
        if self._context is not None:
            self._context.term()
            self._context = None

    def _close_extra(self) -> None:
        """Hook for what must be released after the socket and before the context."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _endpoint_error(action: str, endpoint: str, exc: zmq.ZMQError) -> UsageError:
    if exc.errno == zmq.EADDRINUSE:
        return UsageError(
            f"cannot bind {endpoint}: address already in use — choose another --bind port or stop the program using it"
        )
    return UsageError(f"cannot {action} {endpoint}: {os.strerror(exc.errno)} — expected e.g. tcp://127.0.0.1:5555")


def _check_frames(frames: Sequence[bytes]) -> None:
    if isinstance(frames, bytes | bytearray | memoryview) or len(frames) == 0:
        raise ValueError("frames must be a non-empty sequence of byte strings")


class AggregatorEndpoint(_Endpoint):
    """The aggregator's end: a CURVE-server ROUTER that admits only the allow-listed site keys.

    ``allowed`` maps each site name to its z85 CurveZMQ public key. ``max_message_bytes`` bounds an inbound message
    (a larger frame makes libzmq disconnect the peer). ``hwm`` bounds each connection's queue in each direction.
    ``send_timeout`` (seconds) is how long ``send`` waits for room in a site's queue before dropping the message.
    """

    _role = "aggregator"
    _envelope_frames = 1

    def __init__(
        self,
        bind: str,
        keypair: CurveKeyPair,
        allowed: Mapping[str, bytes],
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        hwm: int = DEFAULT_HWM,
        send_timeout: float = 1.0,
    ) -> None:
        keys: dict[bytes, str] = {}
        for site, key in allowed.items():
            if not isinstance(site, str) or not site:
                raise UsageError(f"site names must be non-empty strings, not {site!r}")
            _check_key(key, f"public key of site {site}")
            if key in keys:
                raise UsageError(f"sites {keys[key]} and {site} have the same CURVE public key")
            keys[key] = site
        super().__init__()
        self._auth: ThreadAuthenticator | None = None
        self._route_of_site: dict[str, bytes] = {}
        self._site_of_route: dict[bytes, str] = {}
        self._site_of_key = {key.decode("ascii"): site for key, site in keys.items()}
        self._allowed_sites = frozenset(allowed)
        try:
            self._start_authenticator(keys)
            sock = self._open_socket(
                zmq.ROUTER, max_message_bytes=max_message_bytes, hwm=hwm, send_timeout=send_timeout
            )
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret)
            sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
            # Without a ZAP handler a CURVE server admits every client key; enforcing the domain fails closed instead.
            sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable sends raise EHOSTUNREACH instead of vanishing
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting site takes its (secret) routing id back at once
            try:
                sock.bind(bind)
            except zmq.ZMQError as exc:
                raise _endpoint_error("bind", bind, exc) from None
            self._endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException:
            self.close()
            raise
        log.info("aggregator listening on %s for %d sites", self._endpoint, len(keys))

    def _start_authenticator(self, keys: Mapping[bytes, str]) -> None:
        # pyzmq's ThreadAuthenticator rather than a hand-written handler: it is the maintained ZAP implementation of
        # the ironhouse example; ours is only the allow-list callback. It must run before bind (see ZAP_ENFORCE_DOMAIN).
        assert self._context is not None
        self._auth = ThreadAuthenticator(self._context, log=logging.getLogger("heagg.transport.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=_AllowList(keys, self._throttle))

    def _close_extra(self) -> None:
        # Stopped only after the socket is closed, so no connection is ever accepted without the handler.
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def recv(self, timeout: float) -> Incoming | None:
        """The next message from any site, or None after ``timeout`` seconds; invalid ones are logged and skipped."""
        deadline = self._deadline(timeout)
        while True:
            frames = self._poll(deadline)
            if frames is None:
                return None
            incoming = self._attribute(frames)
            if incoming is not None:
                return incoming

    def _attribute(self, frames: list[zmq.Frame]) -> Incoming | None:
        route, payload = frames[0].bytes, frames[1:]
        if not payload:
            log.debug("skipped a message with no payload frame")
            return None
        try:
            # libzmq copies the ZAP User-Id (pyzmq's default: the client's z85 public key) onto every frame read
            # from an authenticated connection; the peer cannot set it.
            user_id = payload[0].get("User-Id")
        except zmq.ZMQError:
            user_id = None
        site = self._site_of_key.get(user_id) if isinstance(user_id, str) else None
        if site is None:
            log.error("dropped a message from a connection without an allow-listed CURVE key")
            return None
        if self._route_of_site.get(site) != route:
            old_route = self._route_of_site.pop(site, None)
            if old_route is not None:
                self._site_of_route.pop(old_route, None)
            previous_owner = self._site_of_route.get(route)
            if previous_owner is not None:
                # the id moved to another site's connection: never send the previous owner's messages there
                log.warning("site %s now uses the routing id of site %s's connection", site, previous_owner)
                self._route_of_site.pop(previous_owner, None)
            self._route_of_site[site] = route
            self._site_of_route[route] = site
        return Incoming(site=site, frames=[f.bytes for f in payload])

    def send(self, site: str, frames: Sequence[bytes]) -> bool:
        """Queue one multipart message for ``site``. False (and a log line) if it cannot be delivered now.

        That is: the site is unknown, has sent nothing since this endpoint started, is disconnected, or its queue
        stayed full for ``send_timeout``.
        """
        _check_frames(frames)
        if self._socket is None:
            raise RuntimeError("the aggregator endpoint is closed")
        route = self._route_of_site.get(site)
        if route is None:
            if site in self._allowed_sites:  # expected until the site's first message: the caller decides
                log.debug("no message to site %s: it has not connected yet", site)
            else:
                log.warning("dropped a message to site %s: not in the allow-list", site)
            return False
        try:
            self._socket.send_multipart([route, *frames], copy=False)
        except zmq.Again:
            log.warning("dropped a message to site %s: its queue stayed full (a slow or stalled site)", site)
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            log.warning("dropped a message to site %s: it has disconnected", site)
            del self._route_of_site[site]
            self._site_of_route.pop(route, None)
            return False
        return True


class NodeEndpoint(_Endpoint):
    """A site's end: a CURVE-client DEALER that pins the aggregator's public key and reconnects on its own.

    While disconnected, up to ``hwm`` messages are queued and sent after the next handshake; a further ``send`` waits
    ``send_timeout`` seconds, then fails. Messages already handed to a connection that then breaks are lost: the
    protocol above must tolerate that.
    """

    _role = "node"

    def __init__(
        self,
        connect: str,
        keypair: CurveKeyPair,
        server_public: bytes,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        hwm: int = DEFAULT_HWM,
        send_timeout: float = 1.0,
    ) -> None:
        _check_key(server_public, "aggregator's public key")
        super().__init__()
        try:
            sock = self._open_socket(
                zmq.DEALER, max_message_bytes=max_message_bytes, hwm=hwm, send_timeout=send_timeout
            )
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret)
            # Unguessable, so no other site can take over this connection's replies (see ROUTER_HANDOVER).
            # libzmq reserves ids that start with a zero byte.
            sock.setsockopt(zmq.ROUTING_ID, b"n" + secrets.token_bytes(16))
            sock.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_IVL_MAX_MS)
            sock.setsockopt(zmq.CONNECT_TIMEOUT, _CONNECT_TIMEOUT_MS)
            try:
                sock.connect(connect)
            except zmq.ZMQError as exc:
                raise _endpoint_error("connect to", connect, exc) from None
            self._endpoint = connect
        except BaseException:
            self.close()
            raise

    def _log_event(self, event: int, value: int, address: str) -> None:
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            log.warning("the aggregator at %s refused this site's CURVE key (not in its allow-list)", address)
        elif event in (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_DISCONNECTED):
            log.info("%s: %s", address, _EVENT_NAMES[event])
        else:
            super()._log_event(event, value, address)

    def send(self, frames: Sequence[bytes]) -> bool:
        """Queue one multipart message for the aggregator. False (and a log line) if the queue stayed full."""
        _check_frames(frames)
        if self._socket is None:
            raise RuntimeError("the node endpoint is closed")
        try:
            self._socket.send_multipart(list(frames), copy=False)
        except zmq.Again:
            log.warning("dropped a message to the aggregator: the queue stayed full (aggregator slow or unreachable)")
            return False
        return True

    def recv(self, timeout: float) -> list[bytes] | None:
        """The next message from the aggregator, or None after ``timeout`` seconds."""
        frames = self._poll(self._deadline(timeout))
        return None if frames is None else [f.bytes for f in frames]
