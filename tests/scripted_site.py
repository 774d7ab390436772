"""A registered site driven by a test: it holds a real share file and speaks the real protocol, but the test
decides what it sends — well-formed messages, or the attacks of a malicious site."""

from __future__ import annotations

import time

import msgpack
import numpy as np

from heagg.crypto import codec
from heagg.crypto.holder import ShareHolder
from heagg.crypto.ledger import DecryptionLedger
from heagg.crypto.vectors import EncryptedVector, encrypt_vector, layout_of
from heagg.fedavg import FedAvgSettings, site_vector
from heagg.messages import (
    Ack,
    Announce,
    Challenge,
    ChallengeResponse,
    Consent,
    ConsentRequest,
    DecryptRequest,
    Message,
    Partial,
    Result,
    RoundRef,
    Submit,
    decode,
)
from heagg.protocol.sealing import (
    chunk_root,
    consent_statement,
    contribution_statement,
    partial_statement,
    seal,
    sign,
)
from heagg.sitekeys import load_public_context, load_site_keys
from heagg.transport import CurveKeyPair, NodeEndpoint


class ScriptedSite:
    def __init__(self, local, site: str):
        self.keys = load_site_keys(local.keys_dir, site, passphrase=None)
        self.consortium = self.keys.consortium
        self.ctx = load_public_context(local.keys_dir, self.consortium)
        self.endpoint = NodeEndpoint(
            local.address,
            CurveKeyPair(self.keys.curve_public, self.keys.curve_secret),
            self.consortium.aggregator_curve_public.encode(),
        )
        self.holder = ShareHolder(
            self.ctx,
            self.keys.share,
            n_sites=self.consortium.n_sites,
            threshold=self.consortium.threshold,
            sigma=self.consortium.sigma,
            ledger=DecryptionLedger(None, budget=self.consortium.tau),
        )
        self.name = site
        self.pending: dict[RoundRef, DecryptRequest] = {}
        #: replace the sealed partial bytes before sending (to play a share holder with a malformed partial)
        self.corrupt_partial = None

    # raw sending ---------------------------------------------------------------------------------

    def send_frames(self, frames: list[bytes]) -> None:
        assert self.endpoint.send(frames)

    def message(self, cls, ref: RoundRef, *, sender: str | None = None, **fields) -> Message:
        return cls(consortium=self.consortium.consortium_id, ref=ref, sender=sender or self.name, **fields)

    def send(self, cls, ref: RoundRef, **fields) -> list[bytes]:
        frames = self.message(cls, ref, **fields).to_frames()
        self.send_frames(frames)
        return frames

    @staticmethod
    def envelope(frames: list[bytes], **changes) -> list[bytes]:
        """The same message with envelope fields changed (e.g. an unknown version or type)."""
        env = msgpack.unpackb(frames[0], raw=False)
        env.update(changes)
        return [msgpack.packb(env, use_bin_type=True), *frames[1:]]

    def recv(self, timeout: float) -> Message | None:
        frames = self.endpoint.recv(timeout)
        return decode(frames) if frames is not None else None

    def wait_for(self, cls, timeout: float = 60.0) -> Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(0.5)
            if isinstance(msg, cls):
                return msg
            if msg is not None:
                self.respond(msg)
        raise TimeoutError(f"{self.name}: no {cls.TYPE} within {timeout}s")

    # well-formed behaviour -----------------------------------------------------------------------

    def contribution(self, ref: RoundRef, length: int, *, data: np.ndarray | None = None) -> list[bytes]:
        """A signed submission; ``data`` overrides the ciphertext polynomials (to forge bad ones)."""
        vector = encrypt_vector(self.ctx, site_vector(np.zeros(length - 2), 50, FedAvgSettings(1.0, 100)))
        if data is not None:
            vector = EncryptedVector(vector.length, data)
        blob = codec.encode_batch(layout_of(self.ctx), codec.KIND_CIPHERTEXT, vector.length, vector.data)
        root = chunk_root(codec.chunk_digests(layout_of(self.ctx), blob))
        statement = contribution_statement(self.consortium.consortium_id, ref, self.name, vector.length, root)
        return self.message(
            Submit, ref, chunk_root=root, signature=sign(self.keys.signing_key, statement), payload=(blob,)
        ).to_frames()

    def respond(self, msg: Message) -> None:
        """Answer consent, decryption and results as an honest site would (acks report 'scripted')."""
        ref = msg.ref
        if isinstance(msg, ConsentRequest):
            statement = consent_statement(self.consortium.consortium_id, ref, msg.contributors, msg.aggregate_root)
            self.send(Consent, ref, signature=sign(self.keys.signing_key, statement))
        elif isinstance(msg, DecryptRequest):
            self.pending[ref] = msg
            aggregate = EncryptedVector.from_bytes(self.ctx, msg.payload[0], max_chunks=1 << 16)
            chunks = list(range(aggregate.chunks))
            self.send(Challenge, ref, chunks=chunks, contributor=0)  # it does not check the sum: one suffices
        elif isinstance(msg, ChallengeResponse):
            request = self.pending.pop(ref)
            aggregate = EncryptedVector.from_bytes(self.ctx, request.payload[0], max_chunks=1 << 16)
            members = tuple(request.decrypting_set)
            partial = self.holder.partial_decrypt(aggregate, members, label=ref.label)
            root = chunk_root(codec.chunk_digests(layout_of(self.ctx), request.payload[0]))
            raw = partial.to_bytes(self.ctx)
            if self.corrupt_partial is not None:
                raw = self.corrupt_partial(raw)
            sealed = seal(
                self.keys.group_key,
                raw,
                kind="partial",
                consortium=self.consortium.consortium_id,
                ref=ref,
                extra=[self.keys.site.index, list(members), root],
            )
            statement = partial_statement(
                self.consortium.consortium_id, ref, self.keys.site.index, members, root, sealed
            )
            self.send(Partial, ref, signature=sign(self.keys.signing_key, statement), payload=(sealed,))
        elif isinstance(msg, Result):
            self.send(Ack, ref, ok=False, state_digest=b"", reason="scripted site does not apply results")
        elif isinstance(msg, Announce):
            self.last_announce = msg

    def close(self) -> None:
        self.endpoint.close()
