"""A registered but misbehaving site, and an outsider: every bad message is rejected with its named reason,
counted, and the round completes for the honest sites."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from heagg.crypto.context import CkksContext
from heagg.crypto.vectors import encrypt_vector
from heagg.fedavg import FedAvgSettings
from heagg.messages import Announce, Hello, RoundRef
from heagg.params import get_preset
from heagg.transport import NodeEndpoint, generate_curve_keypair

from .scripted_site import ScriptedSite

pytestmark = pytest.mark.slow


def test_bad_messages_from_a_registered_site_are_rejected_and_the_round_completes(tmp_path, consortia):
    local = consortia(tmp_path, 5, 3, fedavg=FedAvgSettings(1.0, 100))
    local.start_aggregator(1, extra=["--round-timeout", "30"])
    local.start_nodes(["site-1", "site-2", "site-3", "site-4"])
    local.wait_for(lambda: local.log("aggregator").count("says hello") >= 4, 120, "the honest nodes to connect")
    rogue = ScriptedSite(local, "site-5")
    outsider = NodeEndpoint(local.address, generate_curve_keypair(), rogue.consortium.aggregator_curve_public.encode())
    try:
        rogue.send(Hello, RoundRef(0, "scales", 0), applied_round=0, applied_step="")
        announce = rogue.wait_for(Announce)
        ref, length = announce.ref, announce.vector_length
        good = rogue.contribution(ref, length)
        other = CkksContext.generate_key(get_preset("precise"), scale=2.0**40)[0]
        foreign = encrypt_vector(other, np.zeros(length)).to_bytes(other)
        bad_coefficient = encrypt_vector(rogue.ctx, np.zeros(length)).data.copy()
        bad_coefficient[0, 1, 0, 5] = rogue.ctx.primes[0]
        attacks = [
            [os.urandom(64)],  # random bytes
            rogue.envelope(good, v=99),  # unknown protocol version
            rogue.envelope(good, type="exfiltrate"),  # unknown message type
            rogue.envelope(good, round=7),  # a round that is not open
            rogue.envelope(good, sender="site-1"),  # claims to be another site
            [good[0], foreign],  # a ciphertext of other parameters
            rogue.contribution(ref, length, data=bad_coefficient),  # a coefficient >= q
            [good[0], good[1][:-100]],  # truncated
            [good[0], *[good[1]] * 40],  # oversized: 40 frames, each small, together over the message limit
            good,  # finally a valid submission ...
            good,  # ... sent twice
        ]
        for frames in attacks:
            rogue.send_frames(frames)
        outsider.send(rogue.message(Hello, RoundRef(0, "scales", 0)).to_frames())
        # from here on the rogue takes part like an honest site (zero updates), except that it replays its
        # first submission into the next step
        replayed = False
        while local.procs["aggregator"].poll() is None:
            msg = rogue.recv(0.5)
            if isinstance(msg, Announce):
                if not replayed:
                    rogue.send_frames(good)
                    replayed = True
                rogue.send_frames(rogue.contribution(msg.ref, msg.vector_length))
            elif msg is not None:
                rogue.respond(msg)
    finally:
        outsider.close()
    codes = {}
    try:
        codes = {name: local.wait(name, 240) for name in ("aggregator", "site-1", "site-2", "site-3", "site-4")}
    finally:
        rogue.close()
    assert codes == dict.fromkeys(codes, 0), {n: local.log(n)[-3000:] for n in codes}
    log = local.log("aggregator")
    for reason in (
        "malformed",
        "unsupported-version",
        "unknown-type",
        "wrong-round",
        "unknown-sender",
        "bad-shape",
        "coefficient-out-of-range",
        "truncated",
        "duplicate",
    ):
        assert re.search(rf"rejected \S+ from site-5: {reason}:", log), reason
    assert re.search(r"dropped a \d+-byte message: over the \d+-byte limit", log)  # the oversized one
    assert "refused a CURVE client with key" in log  # the outsider never got past the handshake
    history = local.aggregator_record()["history"]
    assert [h["contributors"] for h in history] == [local.site_names] * 3  # nothing lost to the attacks
    summary = next(line for line in log.splitlines() if "rejected messages by reason" in line)
    for reason in ("malformed", "wrong-round", "duplicate", "bad-shape"):
        assert f"'{reason}'" in summary
