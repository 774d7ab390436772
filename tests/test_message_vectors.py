"""Golden encodings of every wire message: the format cannot drift unnoticed.

Regenerate deliberately (and bump PROTOCOL_VERSION if peers would disagree) with HEAGG_REGEN_VECTORS=1.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heagg.errors import MalformedMessage, ProtocolError, UnknownMessageType, UnsupportedVersion
from heagg.messages import MESSAGE_TYPES, RoundRef, decode

VECTORS = Path(__file__).parent / "vectors" / "messages"
REF = RoundRef(3, "train", 2)
SIG = bytes(range(64))
DIGEST = bytes(range(32))

EXAMPLES = {
    "hello": {"applied_round": 2, "applied_step": "train"},
    "announce": {
        "deadline_s": 59.5,
        "min_sites": 3,
        "plan": {"model": {"kind": "logreg", "n_features": 30, "hidden": []}, "run_id": "0123abcd"},
        "state_digest": DIGEST,
        "vector_length": 33,
        "payload": (b"sealed-state",),
    },
    "submit": {"chunk_root": DIGEST, "signature": SIG, "payload": (b"ciphertext-batch",)},
    "consent-request": {"contributors": ["site-1", "site-2"], "aggregate_root": DIGEST},
    "consent": {"signature": SIG},
    "decrypt-request": {
        "decrypting_set": [1, 2, 3],
        "contributors": ["site-1", "site-2"],
        "signatures": [SIG, SIG],
        "consents": [SIG, SIG],
        "payload": (b"aggregate", DIGEST, DIGEST),
    },
    "challenge": {"chunks": [0, 5, 9], "contributor": 1},
    "challenge-response": {"chunks": [0, 5, 9], "contributor": 1, "payload": (b"chunks-of-site-2",)},
    "partial": {"signature": SIG, "payload": (b"sealed-partial",)},
    "refuse": {"reason": "only 1 contributions, fewer than min-sites 2"},
    "result": {
        "decrypting_set": [1, 2, 3],
        "senders": [1, 2, 3],
        "signatures": [SIG, SIG, SIG],
        "payload": (b"aggregate", b"p1", b"p2", b"p3"),
    },
    "ack": {"ok": False, "state_digest": b"", "reason": "bad partial", "blame": [2], "payload": ()},
    "reject": {"reason": "duplicate: site-2 already submitted", "rejected_type": "submit"},
    "finish": {"rounds": 10},
}


def build(kind: str):
    fields = dict(EXAMPLES[kind])
    payload = fields.pop("payload", ())
    return MESSAGE_TYPES[kind](consortium="c-0011223344556677", ref=REF, sender="site-2", payload=payload, **fields)


def test_every_message_type_has_a_golden_example():
    assert set(EXAMPLES) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_golden_encoding(kind):
    frames = build(kind).to_frames()
    path = VECTORS / f"{kind}.msgpack"
    if os.environ.get("HEAGG_REGEN_VECTORS"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(msgpack.packb(frames, use_bin_type=True))
    golden = msgpack.unpackb(path.read_bytes(), raw=False)
    assert frames == golden, f"the {kind} encoding changed"
    assert decode(golden) == build(kind)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(EXAMPLES)), data=st.data())
def test_mutated_envelopes_decode_or_raise_a_protocol_error(kind, data):
    frames = build(kind).to_frames()
    raw = bytearray(frames[0])
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ProtocolError):  # anything else escapes and fails the test
        decode([bytes(raw), *frames[1:]])


def test_version_type_and_shape_errors_are_named():
    frames = build("submit").to_frames()
    env = msgpack.unpackb(frames[0], raw=False)
    for change, error in [({"v": 2}, UnsupportedVersion), ({"type": "nope"}, UnknownMessageType),
                          ({"step": "bake"}, MalformedMessage), ({"body": {"chunk_root": DIGEST}}, MalformedMessage)]:
        with pytest.raises(error):
            decode([msgpack.packb({**env, **change}, use_bin_type=True), *frames[1:]])
    with pytest.raises(MalformedMessage):
        decode([frames[0]])  # a submit without its ciphertext frame
    with pytest.raises(MalformedMessage):
        decode([frames[0] + b"\x00", frames[1]])  # trailing bytes
