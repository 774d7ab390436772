"""Signatures that attribute contributions and partials, and the site group key's AEAD.

Contributions: every site signs (consortium, round attempt, site, vector length, chunk root) with its Ed25519
key from the ceremony, where the chunk root is SHA-256 over the SHA-256 of each ciphertext chunk's wire bytes
(``codec.chunk_digests``). A share
holder can then check that the aggregate it is asked to decrypt is a sum of at least min-sites contributions
from distinct registered sites, chunk by chunk, without trusting the aggregator.

Consent: before anything is decrypted, every contributor signs the exact contributor set and aggregate, and
signs at most one contributor set per round and step. Two decrypted sums over different sets of the same round
would reveal their difference (re-runs re-encrypt the same updates); with consent, two such sums can only
differ in sites that never consented to both, so an aggregator colluding with t-1 sites learns nothing about
one honest site's update that the sum itself does not reveal.

Group key: partial decryptions and the consortium's state (model, standardisation) travel through the
aggregator sealed with AES-256-GCM under the group key that only sites hold, bound by associated data to the
consortium, the round attempt, the sender and what they belong to, so the aggregator can relay them but can
neither read them nor move them to another round.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import msgpack
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from heagg.errors import BadSignature, MalformedMessage
from heagg.messages import RoundRef

_NONCE = 12


def chunk_root(digests: Sequence[bytes]) -> bytes:
    return hashlib.sha256(b"heagg-chunks-v1" + b"".join(digests)).digest()


def contribution_statement(consortium: str, ref: RoundRef, site: str, length: int, root: bytes) -> bytes:
    return msgpack.packb(
        ["heagg-contribution-v1", consortium, ref.round, ref.step, ref.attempt, site, length, root], use_bin_type=True
    )


def consent_statement(consortium: str, ref: RoundRef, contributors: Sequence[str], aggregate_root: bytes) -> bytes:
    return msgpack.packb(
        ["heagg-consent-v1", consortium, ref.round, ref.step, ref.attempt, sorted(contributors), aggregate_root],
        use_bin_type=True,
    )


def partial_statement(
    consortium: str, ref: RoundRef, index: int, decrypting_set: Sequence[int], aggregate_root: bytes, sealed: bytes
) -> bytes:
    digest = hashlib.sha256(sealed).digest()
    return msgpack.packb(
        [
            "heagg-partial-v1",
            consortium,
            ref.round,
            ref.step,
            ref.attempt,
            index,
            list(decrypting_set),
            aggregate_root,
            digest,
        ],
        use_bin_type=True,
    )


def sign(key: Ed25519PrivateKey, statement: bytes) -> bytes:
    return key.sign(statement)


def verify(public_hex: str, statement: bytes, signature: bytes, *, who: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(signature, statement)
    except (InvalidSignature, ValueError) as exc:
        raise BadSignature(f"signature of {who} does not verify") from exc


def _ad(kind: str, consortium: str, ref: RoundRef, extra: Sequence) -> bytes:
    return msgpack.packb([kind, consortium, ref.round, ref.step, ref.attempt, *extra], use_bin_type=True)


def seal(
    group_key: bytes, plaintext: bytes, *, kind: str, consortium: str, ref: RoundRef, extra: Sequence = ()
) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(group_key).encrypt(nonce, plaintext, _ad(kind, consortium, ref, extra))


def open_sealed(
    group_key: bytes, sealed: bytes, *, kind: str, consortium: str, ref: RoundRef, extra: Sequence = ()
) -> bytes:
    if len(sealed) < _NONCE + 16:
        raise MalformedMessage(f"sealed {kind} is too short")
    try:
        return AESGCM(group_key).decrypt(sealed[:_NONCE], sealed[_NONCE:], _ad(kind, consortium, ref, extra))
    except InvalidTag as exc:
        raise MalformedMessage(f"sealed {kind} does not open under the group key for {ref}") from exc
