"""What heagg does not withstand, shown so that it stays documented (SECURITY.md, "Out of scope").

- A registered site's well-formed ciphertext under another key, or of values far beyond the consortium's bound,
  makes the decryption of every sum it is in fail, whichever sites decrypt: detected (the result is out of range)
  but attributable to no one, since nothing proves what a ciphertext encrypts.
- Consent's liveness cost: once the aggregator has asked the contributors to approve a contributor set, a re-run
  of that step needs every one of them. A contributor that vanishes after submitting stalls the step until it
  comes back: the aggregator gives up after --max-attempts (exit 3, state kept) and resumes once restarted.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from heagg.crypto.context import CkksContext
from heagg.crypto.modarith import add_mod
from heagg.crypto.threshold import combine, partial_decrypt
from heagg.crypto.vectors import EncryptedVector, encrypt_vector, sum_encrypted
from heagg.errors import DecryptionFailed
from heagg.fedavg import FedAvgSettings
from heagg.messages import DecryptRequest
from heagg.params import get_preset

from ..scripted_site import ScriptedSite
from .campaign import CAMPAIGN
from .harness import campaign_consortium, drive, final_states, finish_run, join


def _decrypt_with_every_set(c, aggregate):
    outcomes = []
    for members in itertools.combinations(range(1, c.consortium.n_sites + 1), c.consortium.threshold):
        partials = [
            partial_decrypt(
                c.ctx, c.shares[i], aggregate.c1, members, length=aggregate.length, sigma=c.consortium.sigma
            )
            for i in members
        ]
        try:
            combine(
                c.ctx, aggregate, partials, threshold=c.consortium.threshold, value_bound=2 * c.consortium.slot_bound
            )  # what a node checks before applying a result
            outcomes.append("applied")
        except DecryptionFailed:
            outcomes.append("out of range")
    return outcomes


@pytest.mark.parametrize("forgery", ["another key", "huge values"])
def test_a_well_formed_bad_ciphertext_fails_every_decryption_and_names_no_one(ceremony, forgery):
    c = ceremony(3, 2)
    rng = np.random.default_rng(3)
    honest = [encrypt_vector(c.ctx, rng.uniform(-1, 1, 500)) for _ in range(2)]
    if forgery == "another key":  # same preset and scale, so the same parms_id: it passes every wire check
        other, _ = CkksContext.generate_key(get_preset(c.consortium.preset), scale=c.ctx.scale)
        assert other.parms_id == c.ctx.parms_id
        bad = encrypt_vector(other, rng.uniform(-1, 1, 500))
    else:  # TenSEAL refuses to encode such values: add a constant polynomial of about q / 3 to c0 itself
        bad = encrypt_vector(c.ctx, np.zeros(500))
        data = bad.data.copy()
        constant = np.asarray([q // 3 for q in c.ctx.primes], dtype=np.uint64)[:, None]
        add_mod(data[:, 0], np.broadcast_to(constant, data[:, 0].shape).copy(), c.ctx.moduli, out=data[:, 0])
        bad = EncryptedVector(bad.length, data)
    bad = EncryptedVector.from_bytes(c.ctx, bad.to_bytes(c.ctx), max_chunks=1)  # it passes every wire check
    CAMPAIGN.tried(f"well-formed ciphertext with {forgery}")
    aggregate = sum_encrypted(c.ctx, [*honest, bad])
    assert _decrypt_with_every_set(c, aggregate) == ["out of range"] * 3  # every decrypting set fails alike
    assert _decrypt_with_every_set(c, sum_encrypted(c.ctx, honest)) == ["applied"] * 3
    CAMPAIGN.stopped(f"well-formed ciphertext with {forgery}")


@pytest.mark.slow
def test_a_contributor_lost_after_submitting_stalls_its_step_until_it_returns(tmp_path):
    """site-3 (scripted) submits first in round 1, so it is asked to decrypt, then vanishes. The re-run needs
    every approved contributor, so the aggregator cannot finish the step with the two sites that remain."""
    local = campaign_consortium(tmp_path, 3, 2, fedavg=FedAvgSettings(1.0, 200))
    args = ["--round-timeout", "2", "--decrypt-timeout", "2", "--max-attempts", "3", "--epochs", "100"]
    local.start_aggregator(1, extra=args)
    local.start_nodes(["site-1", "site-2"])
    rogue = ScriptedSite(local, "site-3")
    vanished = []

    def on_message(msg) -> bool:
        if isinstance(msg, DecryptRequest) and msg.ref.step == "train":
            vanished.append(msg.ref)
        return bool(vanished)  # from its first training decryption request on, it answers nothing

    try:
        try:
            join(rogue)
            drive(rogue, local, on_message=on_message)
        finally:
            rogue.close()
        CAMPAIGN.fault("contributor lost after submitting")
        assert local.wait("aggregator", 60) == 3, local.log("aggregator")[-3000:]  # RoundFailed: gave up
        log = local.log("aggregator")
        assert "no partial decryption from site-3 in time" in log
        assert log.count("failed: re-run needs every contributor of the first attempt; missing site-3") == 2
        assert local.aggregator_record()["locked"] == ["site-1", "site-2", "site-3"]  # its state is kept
        # restarted with site-3 back (honest this time), it resumes the locked step and finishes
        local.start_aggregator(1, extra=args)
        rogue = ScriptedSite(local, "site-3")
        try:
            join(rogue)
            drive(rogue, local)
            codes = finish_run(local, 1, nodes=["site-1", "site-2"])
        finally:
            rogue.close()
    finally:
        local.stop_all()
    assert codes == {"site-1": 0, "site-2": 0}, {n: local.log(n)[-2000:] for n in local.procs}
    history = local.aggregator_record()["history"]
    assert history[-1]["contributors"] == ["site-1", "site-2", "site-3"]
    assert len({s.digest() for s in final_states(local, ["site-1", "site-2"]).values()}) == 1
