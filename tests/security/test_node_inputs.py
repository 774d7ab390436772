"""A malicious aggregator cannot crash a node: whatever decodable message it sends, the node refuses or ignores it.

A real ``Node`` (its key file, data, state directory, share holder and ledger) is fed hypothesis-generated
messages of every type an aggregator sends, each field valid, slightly off or nonsense (sites outside the
consortium, digests that do not match, payloads of junk or of real ciphertexts, unusable training plans). The node
must handle each without an exception escaping its message loop, and its state file must still load. (Before
this campaign, a result naming a site outside the consortium raised KeyError, and a plan with an unknown training
setting raised UsageError, out of the loop: one message stopped the node.) The node's socket is replaced by a
recorder; everything else is the node's own code.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heagg.crypto.vectors import encrypt_vector
from heagg.errors import ProtocolError
from heagg.fedavg import FedAvgSettings
from heagg.localrun import TARGET
from heagg.messages import (
    AGGREGATOR,
    STEPS,
    Announce,
    ChallengeResponse,
    ConsentRequest,
    DecryptRequest,
    Finish,
    Reject,
    Result,
    RoundRef,
    decode,
)
from heagg.protocol.node import STATE_FILE, Node, NodeConfig
from heagg.protocol.state import load_record
from heagg.sitekeys import load_site_keys

from .campaign import CAMPAIGN
from .harness import campaign_consortium

#: messages handled without an exception escaping, by type, for the campaign summary
HANDLED: Counter = Counter()


class Recorder:
    """Stands in for the node's socket: keeps what the node sends."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def send(self, frames) -> bool:
        self.sent.append(list(frames))
        return True

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    local = campaign_consortium(tmp_path_factory.mktemp("node-inputs"), 3, 2, fedavg=FedAvgSettings(1.0, 200))
    keys = load_site_keys(local.keys_dir, "site-1", passphrase=None)
    config = NodeConfig(
        site="site-1",
        keys_dir=local.keys_dir,
        connect=local.address,  # nothing listens there: the socket is replaced below
        data=local.train_csv("site-1"),
        target=TARGET,
        state=local.node_state("site-1"),
        test_data=local.test_csv("site-1"),
    )
    node = Node(config, keys)
    node.endpoint.close()
    node.endpoint = Recorder()
    aggregate = encrypt_vector(node.ctx, np.zeros(62)).to_bytes(node.ctx)
    yield node, aggregate
    node.endpoint.close()


PLAN = {"model": {"kind": "logreg", "n_features": 30, "hidden": []}, "train": {}, "rounds": 2, "seed": 0}
ANYTHING = st.none() | st.booleans() | st.integers(-3, 10**6) | st.text(max_size=8) | st.binary(max_size=8)
INDICES = st.lists(st.integers(1, 6), max_size=4)
NAMES = st.lists(st.sampled_from(["site-1", "site-2", "site-3", "site-9", ""]), max_size=4)
SIGNATURES = st.lists(st.binary(min_size=64, max_size=64), max_size=4)


@st.composite
def plans(draw):
    plan = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PLAN.items()}
    for _ in range(draw(st.integers(0, 2))):
        what = draw(st.sampled_from(["model", "train", "rounds", "seed", "run_id", "drop"]))
        if what == "model":
            plan["model"] = draw(
                st.sampled_from(
                    [
                        {"kind": "mlp", "n_features": 30, "hidden": [4]},
                        {"kind": "logreg", "n_features": 7},
                        {"kind": "tree", "n_features": 30},
                        {"kind": "mlp", "n_features": 30, "hidden": "wide"},
                        "logreg",
                    ]
                )
            )
        elif what == "train":
            trains = [{"epochs": 1}, {"epochs": "many"}, {"bogus": 1}, {"optimizer": "none"}, [], {"lr": -1}]
            plan["train"] = draw(st.sampled_from(trains))
        elif what == "drop":
            plan.pop(draw(st.sampled_from(sorted(plan))), None)
        else:
            plan[what] = draw(ANYTHING)
    if draw(st.booleans()):
        plan["run_id"] = draw(st.sampled_from(["run-a", "run-b"]))
    return plan


@st.composite
def messages(draw, aggregate: bytes, node_digest: bytes):
    ref = RoundRef(draw(st.integers(0, 2)), draw(st.sampled_from(STEPS)), draw(st.integers(0, 3)))
    blob = draw(st.sampled_from([aggregate, aggregate[:100], b"junk"]))
    frames = st.lists(st.binary(max_size=64) | st.just(aggregate), max_size=3)
    kind = draw(st.sampled_from(["announce", "consent", "decrypt", "challenge", "result", "reject", "finish"]))
    common = {"consortium": None, "ref": ref, "sender": AGGREGATOR}
    if kind == "announce":
        return Announce(
            **common,
            deadline_s=5.0,
            min_sites=draw(st.integers(1, 4)),
            plan=draw(plans()),
            state_digest=draw(st.sampled_from([b"", node_digest, bytes(32)])),
            vector_length=draw(st.sampled_from([62, 33, 1])),
            payload=tuple(draw(st.lists(st.binary(max_size=64), max_size=1))),
        )
    if kind == "consent":
        root = draw(st.binary(min_size=32, max_size=32))
        return ConsentRequest(**common, contributors=draw(NAMES), aggregate_root=root)
    if kind == "decrypt":
        contributors = draw(NAMES)
        return DecryptRequest(
            **common,
            decrypting_set=draw(INDICES),
            contributors=contributors,
            signatures=draw(SIGNATURES),
            consents=draw(SIGNATURES),
            payload=(blob, *draw(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=3))),
        )
    if kind == "challenge":
        return ChallengeResponse(**common, chunks=draw(st.lists(st.integers(0, 3), max_size=2)), payload=(blob,))
    if kind == "result":
        members = draw(INDICES)
        return Result(
            **common,
            decrypting_set=members,
            senders=draw(st.permutations(members)) if draw(st.booleans()) else draw(INDICES),
            signatures=draw(SIGNATURES),
            payload=(blob, *draw(frames)),
        )
    if kind == "reject":
        return Reject(**common, reason=draw(st.text(max_size=20)), rejected_type="submit")
    return Finish(**common, rounds=2, payload=tuple(draw(st.lists(st.binary(max_size=48), max_size=2))))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_message_from_the_aggregator_crashes_a_node(node, data):
    site, aggregate = node
    msg = data.draw(messages(aggregate, site.shared.digest()))
    msg = type(msg)(**{**msg.__dict__, "consortium": site.consortium.consortium_id})
    try:
        msg = decode(msg.to_frames())  # exactly what the node's loop would hand on
    except ProtocolError:
        return  # the loop logs and ignores it (fuzzed in tests/test_fuzz_decoders.py)
    if isinstance(msg, Finish):
        site._adopt_final_state(msg)  # what the loop does before it writes the final model and exits
    else:
        site._dispatch(msg)
    assert load_record(site.dir / STATE_FILE) is not None or not (site.dir / STATE_FILE).exists()
    HANDLED[msg.TYPE] += 1
    CAMPAIGN.fuzz["node, messages from the aggregator (hypothesis)"] = f"{sum(HANDLED.values())} handled: " + ", ".join(
        f"{kind} {n}" for kind, n in sorted(HANDLED.items())
    )
