"""What a share holder checks before it releases a partial decryption.

Decryption is the dangerous step: an aggregator that asks share holders to "decrypt the sum" could hand them
one hospital's ciphertext instead. A share holder therefore partially decrypts only an aggregate that it has
verified to be the sum of at least min-sites signed contributions from distinct registered sites:

1. ``check_request``: the decrypting set is valid and holds this site; the contributors are distinct members,
   at least min-sites of them; each contribution's chunk digests hash to a root its site signed for this very
   round attempt; every contributor consented to this contributor set and this aggregate (``sealing``); the
   aggregate has the expected length.
2. ``choose_challenge``: the share holder (not the aggregator) picks which chunks to see: all of them up to a
   configurable size (full recomputation), otherwise a random sample (spot checks).
3. ``SumCheck``: the contributions' challenged chunks, asked for one contribution at a time, each match their
   signed digests and, chunk by chunk, add up to the aggregate exactly (modular addition is exact).

Each failure raises ``RequestRefused`` with the reason; the node logs it and tells the aggregator.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np

from heagg.consortium import Consortium
from heagg.crypto import codec
from heagg.crypto.context import CkksContext
from heagg.crypto.modarith import add_mod
from heagg.crypto.threshold import check_decrypting_set
from heagg.crypto.vectors import EncryptedVector, layout_of
from heagg.errors import BadSignature, HeaggError, InvalidCiphertext, RequestRefused
from heagg.messages import ChallengeResponse, DecryptRequest, RoundRef
from heagg.protocol.sealing import chunk_root, consent_statement, contribution_statement, verify


@dataclass(frozen=True)
class VerifiedRequest:
    ref: RoundRef
    aggregate: EncryptedVector = field(repr=False)
    aggregate_root: bytes
    decrypting_set: tuple[int, ...]
    contributors: tuple[str, ...]
    digests: tuple[tuple[bytes, ...], ...] = field(repr=False)


def _refuse(reason: str) -> RequestRefused:
    return RequestRefused(reason)


def check_request(
    request: DecryptRequest,
    *,
    consortium: Consortium,
    ctx: CkksContext,
    expected_ref: RoundRef,
    expected_length: int,
    min_sites: int,
    self_index: int,
) -> VerifiedRequest:
    ref = request.ref
    if ref != expected_ref:
        raise _refuse(f"request is for {ref}, this site is at {expected_ref}")
    try:
        members = check_decrypting_set(
            request.decrypting_set, threshold=consortium.threshold, n_sites=consortium.n_sites
        )
    except HeaggError as exc:
        raise _refuse(f"bad decrypting set: {exc}") from exc
    if self_index not in members:
        raise _refuse(f"this site (index {self_index}) is not in the decrypting set {list(members)}")
    contributors = tuple(request.contributors)
    if len(set(contributors)) != len(contributors):
        raise _refuse("a contributor appears twice")
    if len(contributors) < min_sites:
        raise _refuse(f"only {len(contributors)} contributions, fewer than min-sites {min_sites}")
    if not (len(request.signatures) == len(request.consents) == len(contributors) == len(request.payload) - 1):
        raise _refuse("contributors, signatures, consents and digest lists do not line up")
    chunks = layout_of(ctx).chunks_for(expected_length)
    try:
        aggregate = EncryptedVector.from_bytes(ctx, request.payload[0], max_chunks=chunks)
    except InvalidCiphertext as exc:
        raise _refuse(f"the aggregate is not a valid ciphertext: {exc}") from exc
    if aggregate.length != expected_length:
        raise _refuse(f"the aggregate holds {aggregate.length} values, expected {expected_length}")
    digests = []
    for site, signature, frame in zip(contributors, request.signatures, request.payload[1:], strict=True):
        try:
            entry = consortium.site(site)
        except HeaggError as exc:
            raise _refuse(f"contributor {site!r} is not a member of the consortium") from exc
        if len(frame) != 32 * chunks:
            raise _refuse(f"contribution of {site} lists {len(frame) // 32} chunk digests, expected {chunks}")
        site_digests = tuple(frame[i : i + 32] for i in range(0, len(frame), 32))
        statement = contribution_statement(
            consortium.consortium_id, ref, site, expected_length, chunk_root(site_digests)
        )
        try:
            verify(entry.signing_public, statement, signature, who=f"{site}'s contribution")
        except BadSignature as exc:
            raise _refuse(str(exc)) from exc
        digests.append(site_digests)
    aggregate_root = chunk_root(codec.chunk_digests(layout_of(ctx), request.payload[0]))
    consent = consent_statement(consortium.consortium_id, ref, contributors, aggregate_root)
    for site, signature in zip(contributors, request.consents, strict=True):
        try:
            verify(consortium.site(site).signing_public, consent, signature, who=f"{site}'s consent")
        except BadSignature as exc:
            raise _refuse(f"{exc}: {site} did not approve this contributor set and aggregate") from exc
    return VerifiedRequest(ref, aggregate, aggregate_root, members, contributors, tuple(digests))


def choose_challenge(chunks: int, *, full_max_chunks: int, spot_checks: int) -> list[int]:
    """All chunks for models up to ``full_max_chunks``, else ``spot_checks`` distinct random ones."""
    if chunks <= full_max_chunks or spot_checks >= chunks:
        return list(range(chunks))
    picked: set[int] = set()
    while len(picked) < spot_checks:
        picked.add(secrets.randbelow(chunks))
    return sorted(picked)


class SumCheck:
    """Recomputes the challenged chunks of the aggregate one contribution at a time (memory: one contribution).

    Every returned chunk must match the digest its site signed; once all contributions are in, their sum must
    equal the aggregate's chunks exactly (modular addition is exact).
    """

    def __init__(self, verified: VerifiedRequest, ctx: CkksContext, challenge: list[int]) -> None:
        self.verified = verified
        self.ctx = ctx
        self.challenge = challenge
        self.next = 0  # position of the contribution asked for next
        self.total = np.zeros((len(challenge), *verified.aggregate.data.shape[1:]), dtype=np.uint64)

    @property
    def done(self) -> bool:
        return self.next == len(self.verified.contributors)

    def add(self, response: ChallengeResponse) -> None:
        verified, challenge = self.verified, self.challenge
        if response.ref != verified.ref or list(response.chunks) != challenge or response.contributor != self.next:
            raise _refuse("the challenge response does not answer this site's challenge")
        site, site_digests = verified.contributors[self.next], verified.digests[self.next]
        frame = response.payload[0]
        try:
            part = EncryptedVector.from_bytes(self.ctx, frame, max_chunks=len(challenge))
        except InvalidCiphertext as exc:
            raise _refuse(f"contribution of {site} is not a valid ciphertext: {exc}") from exc
        if part.chunks != len(challenge):
            raise _refuse(f"contribution of {site} returned {part.chunks} chunks, expected {len(challenge)}")
        returned = codec.chunk_digests(layout_of(self.ctx), frame)
        for position, index in enumerate(challenge):
            if returned[position] != site_digests[index]:
                raise _refuse(f"chunk {index} of {site}'s contribution does not match what {site} signed")
        add_mod(self.total, part.data, self.ctx.moduli, out=self.total)
        self.next += 1
        if self.done:
            for position, index in enumerate(challenge):
                if not np.array_equal(self.total[position], verified.aggregate.data[index]):
                    raise _refuse(f"the aggregate is not the sum of the signed contributions (chunk {index})")
