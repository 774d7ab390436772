"""Coverage-guided fuzzing of the wire-envelope decoder, ``heagg.messages.decode``, with atheris (libFuzzer).

    python fuzz/make_corpus.py fuzz-corpus                         # one seed per message type (golden vectors)
    python fuzz/envelope_fuzz.py fuzz-corpus -max_total_time=60    # or -runs=N; any libFuzzer flag

An input is one byte giving the number of payload frames (modulo 8), then the envelope frame (frame 0) itself.
The property is the one the aggregator and the nodes rely on: ``decode`` returns a message, which re-encodes to
itself, or raises a ``ProtocolError``. Anything else is a crash: libFuzzer writes the input (``crash-*``, see
``-artifact_prefix``) and the process exits non-zero. CI runs it for a bounded time through
``tests/security/test_fuzz_envelope.py``.

``HEAGG_FUZZ_PLANTED_BUG=<type>`` plants a bug (a ValueError after decoding a message of that type), so a test can
check that the harness does fail when the decoder misbehaves.
"""

from __future__ import annotations

import os
import sys

import atheris

with atheris.instrument_imports():
    from heagg import messages
    from heagg.errors import ProtocolError

_PLANTED = os.environ.get("HEAGG_FUZZ_PLANTED_BUG", "")


def decode(frames: list[bytes]) -> messages.Message:
    msg = messages.decode(frames)
    if _PLANTED and msg.TYPE == _PLANTED:
        raise ValueError(f"planted bug: a {_PLANTED} message")
    return msg


def test_one_input(data: bytes) -> None:
    if not data:
        return
    frames = [data[1:], *(b"payload-%d" % i for i in range(data[0] % 8))]
    try:
        msg = decode(frames)
    except ProtocolError:
        return
    again = decode(msg.to_frames())
    if again != msg or again.payload != msg.payload:
        raise AssertionError(f"a decoded {msg.TYPE} message does not re-encode to itself")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
