"""Replays, duplicates and impersonation by a registered site, against a running aggregator and real nodes.

The rogue takes part in every step (its own contributions, consents and partials are accepted), and around them
replays what it sent before: a submission captured in one step and replayed verbatim into a later one, the same
submission re-addressed to the later step, the same submission twice, a submission in another site's name, an
earlier consent replayed and re-addressed, an acknowledgement twice, a message for another consortium, and an
envelope whose type is a list (which used to crash the aggregator with a TypeError). Each is rejected with its
named reason in the aggregator's log line and final counter, and every step completes with every site's
contribution: nothing honest is lost.
"""

from __future__ import annotations

from collections import Counter

import pytest

from heagg.fedavg import FedAvgSettings
from heagg.messages import Ack, Announce, Consent, ConsentRequest, Result
from heagg.protocol.sealing import consent_statement, sign

from ..scripted_site import ScriptedSite
from .campaign import CAMPAIGN
from .harness import campaign_consortium, drive, final_states, finish_run, join, rejection_counter, rejections

pytestmark = pytest.mark.slow

HONEST = ["site-1", "site-2"]
ROGUE = "site-3"
ROUNDS = 2


def test_replayed_duplicated_and_impersonating_messages_are_rejected_by_name(tmp_path):
    local = campaign_consortium(tmp_path, 3, 2, fedavg=FedAvgSettings(1.0, 200))
    local.start_aggregator(ROUNDS, extra=["--round-timeout", "10", "--epochs", "20"])
    local.start_nodes(HONEST)
    rogue = ScriptedSite(local, ROGUE)
    expected: Counter = Counter()
    kept: dict[str, list[bytes]] = {}
    steps = Counter()

    def attack(frames: list[bytes], reason: str) -> None:
        rogue.send_frames(frames)
        expected[reason] += 1
        CAMPAIGN.tried(f"{reason} (replay, duplicate, impersonation)")

    def on_message(msg) -> bool:
        ref = msg.ref
        if isinstance(msg, Announce):
            steps["announce"] += 1
            real = rogue.contribution(ref, msg.vector_length)
            if steps["announce"] == 1:
                rogue.send_frames(real)
                kept["submission"] = real
                attack(real, "duplicate")  # the same submission twice
                attack(rogue.envelope(real, sender="site-1"), "unknown-sender")  # in another site's name
                attack(rogue.envelope(real, type=["submit"]), "unknown-type")  # an unhashable type
                attack(rogue.envelope(real, consortium="c-another-one"), "wrong-consortium")
                return True
            if steps["announce"] == 2:  # round 0 moments: the same vector length as round 0 scales
                old = kept["submission"]
                attack(old, "wrong-round")  # captured in the first step, replayed verbatim
                readdressed = rogue.envelope(old, round=ref.round, step=ref.step, attempt=ref.attempt)
                attack(readdressed, "bad-signature")  # its signature binds the step it was made for
                rogue.send_frames(real)
                return True
            return False
        if isinstance(msg, ConsentRequest):
            steps["consent"] += 1
            if steps["consent"] == 2:
                old = kept["consent"]
                attack(old, "wrong-round")  # the first step's consent, verbatim
                attack(rogue.envelope(old, round=ref.round, step=ref.step, attempt=ref.attempt), "bad-signature")
            statement = consent_statement(rogue.consortium.consortium_id, ref, msg.contributors, msg.aggregate_root)
            frames = rogue.send(Consent, ref, signature=sign(rogue.keys.signing_key, statement))
            kept.setdefault("consent", frames)
            return True
        if isinstance(msg, Result):
            steps["result"] += 1
            frames = rogue.send(Ack, ref, ok=False, state_digest=b"", reason="scripted site does not apply results")
            if steps["result"] == 3:  # round 1 train: a second acknowledgement
                attack(frames, "wrong-round")
            return True
        return False

    try:
        join(rogue)
        drive(rogue, local, on_message=on_message)
        codes = finish_run(local, ROUNDS, nodes=HONEST)
    finally:
        rogue.close()
        local.stop_all()
    assert codes == dict.fromkeys(HONEST, 0), {n: local.log(n)[-3000:] for n in local.procs}
    log = local.log("aggregator")
    logged = Counter(reason for _, reason in rejections(log, ROGUE))
    counter = rejection_counter(log)
    for reason, count in expected.items():
        assert logged[reason] >= count, (reason, logged, log[-4000:])
        assert counter.get(reason, 0) >= count, (reason, counter)
        CAMPAIGN.stopped(f"{reason} (replay, duplicate, impersonation)", count)
    assert sum(logged.values()) == sum(expected.values()), (logged, expected)  # nothing else was rejected
    # every step completed with every site's contribution, the rogue's own real ones included
    history = local.aggregator_record()["history"]
    assert [(h["round"], h["step"]) for h in history] == [(0, "scales"), (0, "moments"), (1, "train"), (2, "train")]
    assert all(h["contributors"] == ["site-1", "site-2", "site-3"] for h in history)
    states = final_states(local, HONEST)
    assert len({state.digest() for state in states.values()}) == 1
