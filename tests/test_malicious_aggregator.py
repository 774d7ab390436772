"""The test plays a malicious aggregator against real node processes: no share holder helps it cheat.

It holds exactly what an aggregator holds (the manifest, the public context, its CurveZMQ key) and speaks the
real protocol over CurveZMQ, but asks for what an honest aggregator never would: one site's ciphertext
passed off as the sum, a sum of fewer than min-sites contributions, the same round decrypted twice. It also
shows that everything an aggregator receives in an honest round does not give it the sum.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from heagg.consortium import Consortium
from heagg.crypto import codec
from heagg.crypto.threshold import PartialDecryption
from heagg.crypto.vectors import EncryptedVector, RunningSum, layout_of
from heagg.errors import CryptoError, MalformedMessage
from heagg.fedavg import FedAvgSettings, site_vector
from heagg.messages import (
    AGGREGATOR,
    Announce,
    Challenge,
    ChallengeResponse,
    Consent,
    ConsentRequest,
    DecryptRequest,
    Partial,
    Refuse,
    RoundRef,
    Submit,
    decode,
)
from heagg.protocol.plan import TrainingPlan
from heagg.protocol.sealing import chunk_root, open_sealed
from heagg.sitekeys import load_aggregator_keys, load_public_context
from heagg.standardize import location_summary
from heagg.transport import AggregatorEndpoint, CurveKeyPair

pytestmark = pytest.mark.slow


class EvilAggregator:
    def __init__(self, local):
        self.local = local
        keys = load_aggregator_keys(local.keys_dir, passphrase=None)
        self.consortium: Consortium = keys.consortium
        self.ctx = load_public_context(local.keys_dir, self.consortium)
        allowed = {s.name: s.curve_public.encode() for s in self.consortium.sites}
        self.endpoint = AggregatorEndpoint(local.address, CurveKeyPair(keys.curve_public, keys.curve_secret), allowed)
        plan = TrainingPlan(model={"kind": "logreg", "n_features": 30, "hidden": []}, rounds=1)
        self.plan = {**plan.to_dict(), "run_id": "evil-run"}
        self.length = plan.vector_length("scales")

    def send(self, site, cls, ref, **fields):
        msg = cls(consortium=self.consortium.consortium_id, ref=ref, sender=AGGREGATOR, **fields)
        assert self.endpoint.send(site, msg.to_frames()), f"could not reach {site}"

    def expect(self, types, timeout=60.0) -> tuple[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            incoming = self.endpoint.recv(0.5)
            if incoming is None:
                continue
            msg = decode(incoming.frames)
            if isinstance(msg, types):
                return incoming.site, msg
        raise TimeoutError(f"no {types} within {timeout}s")

    def announce(self, ref, sites) -> dict[str, Submit]:
        for site in sites:
            self.send(
                site,
                Announce,
                ref,
                deadline_s=60.0,
                min_sites=2,
                plan=self.plan,
                state_digest=b"",
                vector_length=self.length,
            )
        submissions = {}
        while len(submissions) < len(sites):
            site, msg = self.expect(Submit)
            submissions[site] = msg
        return submissions

    def consent(self, ref, contributors, root) -> list[bytes]:
        for site in contributors:
            self.send(site, ConsentRequest, ref, contributors=sorted(contributors), aggregate_root=root)
        got = {}
        while len(got) < len(contributors):
            site, msg = self.expect((Consent, Refuse))
            assert isinstance(msg, Consent), msg
            got[site] = msg.signature
        return [got[s] for s in sorted(contributors)]

    def request(self, ref, decryptors, aggregate_blob, contributors, submissions, consents, answer_with=None):
        """Send a decryption request; answer challenges with the named contributions; return replies per site."""
        names = sorted(contributors)
        vectors = {s: submissions[s].payload[0] for s in names}
        digests = [b"".join(codec.chunk_digests(layout_of(self.ctx), vectors[s])) for s in names]
        for index in decryptors:
            self.send(
                self.consortium.site_by_index(index).name,
                DecryptRequest,
                ref,
                decrypting_set=list(decryptors),
                contributors=names,
                signatures=[submissions[s].signature for s in names],
                consents=consents,
                payload=(aggregate_blob, *digests),
            )
        replies = {}
        while len(replies) < len(decryptors):
            site, msg = self.expect((Challenge, Partial, Refuse))
            if isinstance(msg, Challenge):
                source = answer_with or names
                frame = codec.select_chunks(layout_of(self.ctx), vectors[source[msg.contributor]], list(msg.chunks))
                self.send(site, ChallengeResponse, ref, chunks=list(msg.chunks), contributor=msg.contributor,
                          payload=(frame,))
                continue
            replies[site] = msg
        return replies

    def close(self):
        self.endpoint.close()


def wait_for_hellos(evil, sites):
    seen = set()
    deadline = time.monotonic() + 90
    while seen != set(sites) and time.monotonic() < deadline:
        incoming = evil.endpoint.recv(0.5)
        if incoming is not None:
            seen.add(incoming.site)
    assert seen == set(sites)


def test_share_holders_refuse_every_cheating_request(tmp_path, consortia):
    local = consortia(tmp_path, 3, 2, min_sites=2, fedavg=FedAvgSettings(1.0, 200))
    evil = EvilAggregator(local)
    try:
        local.start_nodes()
        wait_for_hellos(evil, local.site_names)
        ref = RoundRef(0, "scales", 1)
        submissions = evil.announce(ref, local.site_names)
        one_site = submissions["site-1"].payload[0]
        pair = ["site-1", "site-2"]

        # 1. site-1's ciphertext passed off as the sum of site-1 and site-2 (the consents are real: the sites
        #    cannot check the root they approve, but they check the sum before decrypting)
        consents = evil.consent(ref, pair, chunk_root(codec.chunk_digests(layout_of(evil.ctx), one_site)))
        replies = evil.request(ref, (1, 2), one_site, pair, submissions, consents)
        assert all(isinstance(r, Refuse) for r in replies.values()), replies
        assert all("not the sum of the signed contributions" in r.reason for r in replies.values())

        # 2. a "sum" of a single contribution: below min-sites
        replies = evil.request(ref, (1, 2), one_site, ["site-1"], submissions, consents[:1])
        assert all(isinstance(r, Refuse) and "fewer than min-sites" in r.reason for r in replies.values())

        # 3. lying in the challenge response: site-1's chunks presented as site-2's
        total = RunningSum(evil.ctx)
        for s in pair:
            total.add(EncryptedVector.from_bytes(evil.ctx, submissions[s].payload[0], max_chunks=8))
        aggregate = total.total.to_bytes(evil.ctx)
        consents = evil.consent(ref, pair, chunk_root(codec.chunk_digests(layout_of(evil.ctx), aggregate)))
        replies = evil.request(ref, (1, 2), aggregate, pair, submissions, consents, answer_with=["site-1", "site-1"])
        assert all(isinstance(r, Refuse) and "does not match what site-2 signed" in r.reason for r in replies.values())
        # consents name the aggregate: the old ones do not cover this one
        stale = evil.consent(ref, pair, b"\1" * 32)
        replies = evil.request(ref, (1, 2), aggregate, pair, submissions, stale)
        assert all(isinstance(r, Refuse) and "did not approve" in r.reason for r in replies.values())

        # the honest request for the same round, approved for this aggregate, is served once ...
        ref2 = RoundRef(0, "scales", 2)
        submissions = evil.announce(ref2, local.site_names)
        total = RunningSum(evil.ctx)
        for s in pair:
            total.add(EncryptedVector.from_bytes(evil.ctx, submissions[s].payload[0], max_chunks=8))
        aggregate_vector = total.total
        aggregate = aggregate_vector.to_bytes(evil.ctx)
        consents = evil.consent(ref2, pair, chunk_root(codec.chunk_digests(layout_of(evil.ctx), aggregate)))
        honest = evil.request(ref2, (1, 3), aggregate, pair, submissions, consents)
        assert all(isinstance(r, Partial) for r in honest.values()), honest

        # ... and refused the second time, even by another decrypting set
        replies = evil.request(ref2, (1, 3), aggregate, pair, submissions, consents)
        assert all(isinstance(r, Refuse) and "already" in r.reason for r in replies.values()), replies
        replies = evil.request(ref2, (2, 3), aggregate, pair, submissions, consents)
        assert isinstance(replies["site-3"], Refuse) and "already" in replies["site-3"].reason
        # old contributions under a new attempt number: their signatures bind the attempt
        ref3 = RoundRef(0, "scales", 3)
        replies = evil.request(ref3, (2, 3), aggregate, pair, submissions, consents)
        assert all(isinstance(r, Refuse) and "does not verify" in r.reason for r in replies.values()), replies
        # a contributor refuses to approve a different contributor set for a round it already approved
        for site in ("site-1", "site-2"):
            evil.send(site, ConsentRequest, ref2, contributors=[*pair, "site-3"], aggregate_root=b"\0" * 32)
        refusals = [evil.expect((Refuse,))[1] for _ in range(2)]
        assert all("already approved" in r.reason for r in refusals)

        # what the aggregator holds after an honest decryption does not give it the sum
        truth = sum(
            site_vector(location_summary(d.train.X), len(d.train), FedAvgSettings(1.0, 200))
            for d in local.federation.sites[:2]
        )
        for site, partial in honest.items():
            index = evil.consortium.site(site).index
            with pytest.raises(MalformedMessage):  # sealed under the group key, which it lacks
                open_sealed(
                    os.urandom(32),
                    partial.payload[0],
                    kind="partial",
                    consortium=evil.consortium.consortium_id,
                    ref=ref2,
                    extra=[index, [1, 3], b""],
                )
            with pytest.raises(CryptoError):  # and not a partial decryption in the clear
                PartialDecryption.from_bytes(
                    evil.ctx, partial.payload[0], index=index, decrypting_set=(1, 3), max_chunks=8
                )
        # decoding c0 alone (as if no key were needed) yields values unrelated to the sum
        garbage = evil.ctx.decode_reals(aggregate_vector.c0[0])[: truth.size]
        assert abs(np.corrcoef(garbage, truth)[0, 1]) < 0.3
        assert np.max(np.abs(garbage - truth)) > 1e3 * evil.consortium.sum_error_bound()
    finally:
        evil.close()
        local.stop_all()
    for site in local.site_names[:2]:
        assert "refused" in local.log(site)
