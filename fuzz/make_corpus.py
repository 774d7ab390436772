"""Write the envelope fuzzer's seed corpus: one input per message type, from the golden wire vectors.

    python fuzz/make_corpus.py DIR

Each seed is ``bytes([payload frames]) + envelope``, the input format of ``fuzz/envelope_fuzz.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgpack

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "messages"


def write_corpus(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for vector in sorted(VECTORS.glob("*.msgpack")):
        frames = msgpack.unpackb(vector.read_bytes(), raw=False)
        seed = directory / f"seed-{vector.stem}"
        seed.write_bytes(bytes([len(frames) - 1]) + frames[0])
        written.append(seed)
    if not written:
        raise SystemExit(f"no golden vectors in {VECTORS}")
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python fuzz/make_corpus.py DIR")
    print(f"wrote {len(write_corpus(Path(sys.argv[1])))} seeds to {sys.argv[1]}")
