"""Every message of the wire protocol: one versioned msgpack envelope plus raw payload frames.

A message is a list of ZeroMQ frames. Frame 0 is the envelope, a msgpack map:

    {"v": 1, "type": str, "consortium": str, "round": int, "step": str, "attempt": int, "sender": str, "body": map}

and frames 1.. are byte payloads (ciphertext batches, sealed partials), never re-encoded. Each message type is a
frozen dataclass with ``to_frames()`` / ``from_frames()``, registered in ``MESSAGE_TYPES``; decoding checks the
version, the type, every field's type and range and the number of payload frames, and raises a named
``ProtocolError``. Whether a message fits the receiver's state (its consortium, round, sender) is the receiver's
check, not this module's.

    node -> aggregator:  hello, submit, consent, challenge, partial, refuse, ack
    aggregator -> node:  announce, consent-request, decrypt-request, challenge-response, result, reject, finish
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack

from heagg.errors import MalformedMessage, OversizedMessage, UnknownMessageType, UnsupportedVersion

PROTOCOL_VERSION = 1
MAX_ENVELOPE_BYTES = 1 << 20
STEPS = ("scales", "moments", "train")
AGGREGATOR = "aggregator"


@dataclass(frozen=True, order=True)
class RoundRef:
    """One attempt of one step of one round: what every message after ``hello`` belongs to."""

    round: int
    step: str
    attempt: int

    @property
    def label(self) -> str:
        """The share holder's ledger label: a round attempt is partially decrypted at most once."""
        return f"{self.round}/{self.step}/{self.attempt}"

    def __str__(self) -> str:
        return f"round {self.round} {self.step} (attempt {self.attempt})"


NO_ROUND = RoundRef(0, "scales", 0)


# field checkers ----------------------------------------------------------------------------------


def _int(lo: int = 0, hi: int = 2**62):
    def check(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    return check


def _float(v: Any) -> bool:
    return isinstance(v, float | int) and not isinstance(v, bool) and v == v and abs(v) < 1e300


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _str(max_len: int = 256):
    return lambda v: isinstance(v, str) and len(v) <= max_len


def _bytes(size: int | None = None, max_len: int = 4096):
    return lambda v: isinstance(v, bytes) and (len(v) == size if size is not None else len(v) <= max_len)


def _list(item, max_len: int = 1024):
    return lambda v: isinstance(v, list) and len(v) <= max_len and all(item(x) for x in v)


def _map(max_len: int = 64):
    return lambda v: isinstance(v, dict) and len(v) <= max_len and all(isinstance(k, str) for k in v)


_SITE_INDEX = _int(1, 1 << 16)
_DIGEST = _bytes(32)
_SIGNATURE = _bytes(64)


@dataclass(frozen=True)
class Message:
    """Base of every message: the routing metadata every envelope carries."""

    TYPE: ClassVar[str] = ""
    #: field name -> checker, for the body
    BODY: ClassVar[dict[str, Any]] = {}
    #: allowed numbers of payload frames
    FRAMES: ClassVar[tuple[int, int]] = (0, 0)

    consortium: str
    ref: RoundRef
    sender: str
    payload: tuple[bytes, ...] = field(default=(), repr=False)

    def body(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in self.BODY}

    def to_frames(self) -> list[bytes]:
        envelope = {
            "v": PROTOCOL_VERSION,
            "type": self.TYPE,
            "consortium": self.consortium,
            "round": self.ref.round,
            "step": self.ref.step,
            "attempt": self.ref.attempt,
            "sender": self.sender,
            "body": self.body(),
        }
        return [msgpack.packb(envelope, use_bin_type=True), *self.payload]

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.payload)


MESSAGE_TYPES: dict[str, type[Message]] = {}


def message(cls):
    cls = dataclass(frozen=True)(cls)
    MESSAGE_TYPES[cls.TYPE] = cls
    return cls


@message
class Hello(Message):
    """A node (re)connects or is idle: tells the aggregator what it last applied."""

    TYPE = "hello"
    BODY = {"applied_round": _int(), "applied_step": _str(16)}
    applied_round: int = 0
    applied_step: str = ""


@message
class Announce(Message):
    """Open a round attempt. Payload: the sealed consortium state (model, standardisation), if any yet."""

    TYPE = "announce"
    BODY = {
        "deadline_s": _float,
        "min_sites": _int(1, 1 << 16),
        "plan": _map(),
        "state_digest": _bytes(max_len=32),
        "vector_length": _int(1, 1 << 34),
    }
    FRAMES = (0, 1)
    deadline_s: float = 0.0
    min_sites: int = 2
    plan: dict = field(default_factory=dict)
    state_digest: bytes = b""
    vector_length: int = 1


@message
class Submit(Message):
    """A site's encrypted vector for the attempt. Payload: the ciphertext batch."""

    TYPE = "submit"
    BODY = {"chunk_root": _DIGEST, "signature": _SIGNATURE}
    FRAMES = (1, 1)
    chunk_root: bytes = b""
    signature: bytes = b""


@message
class ConsentRequest(Message):
    """Ask each contributor to approve the contributor set and the aggregate about to be decrypted."""

    TYPE = "consent-request"
    BODY = {"contributors": _list(_str(64)), "aggregate_root": _DIGEST}
    contributors: list = field(default_factory=list)
    aggregate_root: bytes = b""


@message
class Consent(Message):
    """A contributor's signature over (round attempt, contributor set, aggregate root)."""

    TYPE = "consent"
    BODY = {"signature": _SIGNATURE}
    signature: bytes = b""


@message
class DecryptRequest(Message):
    """Ask a share holder for a partial decryption of the aggregate of signed contributions.

    Payload: the aggregate batch, then one frame per contribution with its chunk digests (32 bytes each).
    """

    TYPE = "decrypt-request"
    BODY = {
        "decrypting_set": _list(_SITE_INDEX),
        "contributors": _list(_str(64)),
        "signatures": _list(_SIGNATURE),
        "consents": _list(_SIGNATURE),
    }
    FRAMES = (2, 1 + 4096)
    decrypting_set: list = field(default_factory=list)
    contributors: list = field(default_factory=list)
    signatures: list = field(default_factory=list)
    consents: list = field(default_factory=list)


@message
class Challenge(Message):
    """The share holder picks which chunks of one contribution it wants to see next, to check the sum.

    ``contributor`` is a position in the decryption request's contributor list; a share holder asks for the
    contributions one at a time, so neither side ever holds more than one contribution's chunks.
    """

    TYPE = "challenge"
    BODY = {"chunks": _list(_int(0, 1 << 32), max_len=1 << 20), "contributor": _int(0, 1 << 16)}
    chunks: list = field(default_factory=list)
    contributor: int = 0


@message
class ChallengeResponse(Message):
    """Payload: one ciphertext batch holding just the challenged chunks of the named contribution."""

    TYPE = "challenge-response"
    BODY = {"chunks": _list(_int(0, 1 << 32), max_len=1 << 20), "contributor": _int(0, 1 << 16)}
    FRAMES = (1, 1)
    chunks: list = field(default_factory=list)
    contributor: int = 0


@message
class Partial(Message):
    """A partial decryption sealed under the site group key. Payload: the sealed bytes."""

    TYPE = "partial"
    BODY = {"signature": _SIGNATURE}
    FRAMES = (1, 1)
    signature: bytes = b""


@message
class Refuse(Message):
    """A share holder refuses a decryption request; ``reason`` says why (also logged at the node)."""

    TYPE = "refuse"
    BODY = {"reason": _str(512)}
    reason: str = ""


@message
class Result(Message):
    """The partials, relayed to every site. Payload: the aggregate batch, then one sealed partial per decryptor."""

    TYPE = "result"
    BODY = {"decrypting_set": _list(_SITE_INDEX), "senders": _list(_SITE_INDEX), "signatures": _list(_SIGNATURE)}
    FRAMES = (2, 1 + 4096)
    decrypting_set: list = field(default_factory=list)
    senders: list = field(default_factory=list)
    signatures: list = field(default_factory=list)


@message
class Ack(Message):
    """A site applied (or could not apply) the result. Payload: the new state sealed under the group key."""

    TYPE = "ack"
    BODY = {"ok": _bool, "state_digest": _bytes(max_len=32), "reason": _str(512), "blame": _list(_SITE_INDEX)}
    FRAMES = (0, 1)
    ok: bool = True
    state_digest: bytes = b""
    reason: str = ""
    #: sites whose partial decryption was provably malformed (signed by them, but not a valid partial)
    blame: list = field(default_factory=list)


@message
class Reject(Message):
    """The aggregator rejected a message from this site, and why."""

    TYPE = "reject"
    BODY = {"reason": _str(512), "rejected_type": _str(32)}
    reason: str = ""
    rejected_type: str = ""


@message
class Finish(Message):
    """All rounds are done: nodes save their state and exit.

    Payload: the final consortium state's digest and the state sealed under the group key, if there is one, so
    a node that missed the last step (it was down) ends with everyone's model.
    """

    TYPE = "finish"
    BODY = {"rounds": _int()}
    FRAMES = (0, 2)
    rounds: int = 0


def decode(frames: list[bytes], *, max_envelope_bytes: int = MAX_ENVELOPE_BYTES) -> Message:
    """Decode and type-check one message; raise MalformedMessage, UnsupportedVersion, UnknownMessageType, ..."""
    if not frames:
        raise MalformedMessage("empty message")
    raw = frames[0]
    if len(raw) > max_envelope_bytes:
        raise OversizedMessage(f"envelope of {len(raw)} bytes exceeds {max_envelope_bytes}")
    try:
        env = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            max_bin_len=max_envelope_bytes,
            max_str_len=1 << 16,
            max_array_len=1 << 20,
            max_map_len=1 << 10,
            max_ext_len=0,
        )
    except msgpack.ExtraData as exc:
        raise MalformedMessage("trailing bytes after the envelope") from exc
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise MalformedMessage(f"envelope is not valid msgpack ({type(exc).__name__})") from exc
    if not isinstance(env, dict):
        raise MalformedMessage("envelope is not a map")
    if type(env.get("v")) is not int or env["v"] != PROTOCOL_VERSION:  # True == 1 in Python: not a version
        raise UnsupportedVersion(f"protocol version {env.get('v')!r}, this heagg speaks {PROTOCOL_VERSION}")
    kind = env.get("type")
    # a list or map there is unhashable: look it up only if it is a string (else the TypeError escapes the tree)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise UnknownMessageType(f"unknown message type {str(env.get('type'))[:32]!r}")
    expected = {"v", "type", "consortium", "round", "step", "attempt", "sender", "body"}
    if set(env) != expected:
        raise MalformedMessage(f"{cls.TYPE}: envelope fields {sorted(map(str, env))} are not {sorted(expected)}")
    if not (
        _str(64)(env["consortium"])
        and _int()(env["round"])
        and env["step"] in STEPS
        and _int()(env["attempt"])
        and _str(64)(env["sender"])
        and isinstance(env["body"], dict)
    ):
        raise MalformedMessage(f"{cls.TYPE}: malformed envelope metadata")
    body = env["body"]
    if set(body) != set(cls.BODY):
        raise MalformedMessage(f"{cls.TYPE}: body fields {sorted(map(str, body))} are not {sorted(cls.BODY)}")
    for name, check in cls.BODY.items():
        if not check(body[name]):
            raise MalformedMessage(f"{cls.TYPE}: field {name!r} has a bad type or value")
    lo, hi = cls.FRAMES
    if not lo <= len(frames) - 1 <= hi:
        raise MalformedMessage(f"{cls.TYPE}: {len(frames) - 1} payload frames, expected {lo} to {hi}")
    ref = RoundRef(env["round"], env["step"], env["attempt"])
    return cls(
        consortium=env["consortium"], ref=ref, sender=env["sender"], payload=tuple(bytes(f) for f in frames[1:]), **body
    )
