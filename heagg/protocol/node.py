"""A hospital's node: trains locally, submits encrypted updates, helps decrypt the sum, applies the result.

The node trusts the aggregator for nothing but delivery: it checks every decryption request (``verify``),
consents to one contributor set per step, keeps a ledger so it never partially decrypts a ciphertext twice,
seals its partials for the other sites, and applies a result only when it decrypts to something in range.
Its state (the consortium's model and standardisation, its consents, its history) is written atomically after
every change, so a killed node resumes where it stopped.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heagg.consortium import Consortium
from heagg.crypto import codec
from heagg.crypto.holder import ShareHolder
from heagg.crypto.ledger import DecryptionLedger
from heagg.crypto.threshold import PartialDecryption, combine
from heagg.crypto.vectors import EncryptedVector, encrypt_vector, layout_of
from heagg.data import Dataset, load_table
from heagg.errors import CryptoError, DecryptionFailed, HeaggError, ProtocolError, RequestRefused, UsageError
from heagg.fedavg import average
from heagg.messages import (
    AGGREGATOR,
    NO_ROUND,
    Ack,
    Announce,
    Challenge,
    ChallengeResponse,
    Consent,
    ConsentRequest,
    DecryptRequest,
    Finish,
    Hello,
    Message,
    Partial,
    Refuse,
    Reject,
    Result,
    RoundRef,
    Submit,
    decode,
)
from heagg.model import build_model, load_flat, save_model
from heagg.protocol import verify as checks
from heagg.protocol.plan import TrainingPlan, first_step, next_step
from heagg.protocol.sealing import (
    chunk_root,
    consent_statement,
    contribution_statement,
    open_sealed,
    partial_statement,
    seal,
    sign,
    verify,
)
from heagg.protocol.state import SharedState, load_record, save_record, state_dir, write_atomic
from heagg.protocol.tasks import SiteTask, standardizer_of
from heagg.sitekeys import SiteKeys, load_public_context
from heagg.splits import holdout_split
from heagg.training import TrainConfig
from heagg.transport import CurveKeyPair, NodeEndpoint

logger = logging.getLogger("heagg.node")
STATE_FILE = "node.state"
LEDGER_FILE = "decryption.ledger"
MODEL_FILE = "model.pt"
ROUNDS_DIR = "rounds"


def _warm_up(data: Dataset) -> None:
    """Load torch's and scikit-learn's lazy parts now, so the first round's timings are the round's own."""
    from heagg.modelspec import ModelSpec
    from heagg.training import TrainConfig, evaluate, train_local

    model = build_model(ModelSpec("logreg", data.n_features), seed=0)
    train_local(model, data.X[:2], data.y[:2], TrainConfig(epochs=1), seed=0)
    evaluate(model, data.X[:4], data.y[:4])


class MalformedPartial(DecryptionFailed):
    """A partial decryption its own signer sent malformed: attributable, so the aggregator can avoid it."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class NodeConfig:
    site: str
    keys_dir: Path
    connect: str
    data: Path
    target: str
    state: Path
    test_data: Path | None = None
    holdout: float = 0.2
    full_verify_max_chunks: int = 256
    spot_checks: int = 64
    hello_interval: float = 2.0
    #: keep the global model after every round in STATE/rounds/ (for audits and per-round evaluation)
    keep_round_models: bool = True


def load_site_data(config: NodeConfig, consortium: Consortium, site_index: int) -> tuple[Dataset, Dataset]:
    """The node's training rows and its own held-out rows (from --test-data, or a --holdout split)."""
    data = load_table(config.data, target=config.target, features=consortium.features)
    if config.test_data is not None:
        return data, load_table(config.test_data, target=config.target, features=consortium.features)
    if config.holdout <= 0:
        return data, data.take(np.zeros(0, dtype=np.int64), f"{data.name} (no holdout)")
    if not 0 < config.holdout < 1:
        raise UsageError(f"--holdout must be in [0, 1), got {config.holdout}")
    return holdout_split(data, config.holdout, seed=site_index)


class Node:
    def __init__(self, config: NodeConfig, keys: SiteKeys) -> None:
        self.config = config
        self.keys = keys
        self.consortium = keys.consortium
        self.site = keys.site
        self.ctx = load_public_context(config.keys_dir, self.consortium)
        self.train_data, self.test_data = load_site_data(config, self.consortium, self.site.index)
        _warm_up(self.train_data)

        self.dir = state_dir(config.state)
        self.holder = ShareHolder(
            self.ctx,
            keys.share,
            n_sites=self.consortium.n_sites,
            threshold=self.consortium.threshold,
            sigma=self.consortium.sigma,
            ledger=DecryptionLedger(self.dir / LEDGER_FILE, budget=self.consortium.tau),
        )
        self.plan: TrainingPlan | None = None
        self._load_state()
        self.task: SiteTask | None = None
        self.submitted: RoundRef | None = None
        self.verified: checks.VerifiedRequest | None = None
        self.challenge: list[int] = []
        self.sum_check: checks.SumCheck | None = None
        # the largest message a node receives is one model-sized batch (a result, a challenged contribution):
        # the transport's default limit (1 GiB) covers 10^7-parameter models with either preset
        self.endpoint = NodeEndpoint(
            config.connect,
            CurveKeyPair(keys.curve_public, keys.curve_secret),
            self.consortium.aggregator_curve_public.encode(),
        )

    # persistence --------------------------------------------------------------------------------

    def _load_state(self) -> None:
        record = load_record(self.dir / STATE_FILE)
        if record is None:
            self.run_id = ""
            self.shared = SharedState()
            self.consents: dict[str, list[str]] = {}
            self.history: list[dict] = []
            return
        if record.get("consortium_id") != self.consortium.consortium_id or record.get("site") != self.site.name:
            raise UsageError(f"{self.dir} holds the state of another site or consortium: use a new --state directory")
        self.run_id = record["run_id"]
        # the plan is kept so that a node restarted after the last step can still write its final model
        self.plan = TrainingPlan.from_dict(record["plan"]) if record.get("plan") else None
        self.shared = SharedState.from_bytes(record["shared"])
        self.consents = dict(record["consents"])
        self.history = list(record["history"])
        logger.info(
            "%s: resuming from %s at round %d %s", self.site.name, self.dir, self.shared.round, self.shared.step or "-"
        )

    def _save(self) -> None:
        save_record(
            self.dir / STATE_FILE,
            {
                "format": "heagg-node-state/1",
                "consortium_id": self.consortium.consortium_id,
                "site": self.site.name,
                "run_id": self.run_id,
                "plan": self.plan.to_dict() if self.plan else None,
                "shared": self.shared.to_bytes(),
                "consents": self.consents,
                "history": self.history,
            },
        )

    # messaging ----------------------------------------------------------------------------------

    def _send(self, cls, ref: RoundRef, **fields) -> None:
        msg = cls(consortium=self.consortium.consortium_id, ref=ref, sender=self.site.name, **fields)
        self.endpoint.send(msg.to_frames())

    def _hello(self) -> None:
        self._send(Hello, NO_ROUND, applied_round=self.shared.round, applied_step=self.shared.step)

    def run(self) -> int:
        """Serve the consortium until the aggregator says finish. Returns the process exit code."""
        logger.info(
            "%s (site %d of %d) connecting to %s; %d training rows, %d held out",
            self.site.name,
            self.site.index,
            self.consortium.n_sites,
            self.config.connect,
            len(self.train_data),
            len(self.test_data),
        )
        try:
            self._hello()
            while True:
                frames = self.endpoint.recv(self.config.hello_interval)
                if frames is None:
                    self._hello()
                    continue
                try:
                    msg = decode(frames)
                    if msg.consortium != self.consortium.consortium_id or msg.sender != AGGREGATOR:
                        raise ProtocolError(f"message from {msg.sender!r} for consortium {msg.consortium!r}")
                except ProtocolError as exc:
                    logger.warning("%s: ignored a malformed message from the aggregator: %s", self.site.name, exc)
                    continue
                if isinstance(msg, Finish):
                    self._adopt_final_state(msg)
                    self._finish()
                    return 0
                self._dispatch(msg)
        finally:
            self.endpoint.close()

    def _dispatch(self, msg: Message) -> None:
        handlers = {
            Announce: self.on_announce,
            ConsentRequest: self.on_consent_request,
            DecryptRequest: self.on_decrypt_request,
            ChallengeResponse: self.on_challenge_response,
            Result: self.on_result,
            Reject: self.on_reject,
        }
        handler = handlers.get(type(msg))
        if handler is None:
            logger.warning("%s: ignored unexpected %s from the aggregator", self.site.name, msg.TYPE)
            return
        handler(msg)

    # announce: sync, train, encrypt, submit ------------------------------------------------------

    def _expected_next(self) -> tuple[int, str]:
        return first_step() if not self.shared.step else next_step(self.shared.round, self.shared.step)

    def _sync(self, msg: Announce) -> bool:
        """Adopt the consortium state the aggregator relays if ours differs (we missed a step)."""
        plan = dict(msg.plan)
        run_id = str(plan.pop("run_id", ""))
        try:
            self.plan = TrainingPlan.from_dict(plan)
            TrainConfig.from_dict({**self.plan.train, "seed": self.plan.seed})  # refused now, not mid-step
        except HeaggError as exc:
            logger.error("%s: the aggregator announced an unusable plan: %s", self.site.name, exc)
            return False
        if self.plan.spec.n_features != len(self.consortium.features):
            logger.error("%s: the announced model has the wrong number of inputs", self.site.name)
            return False
        self.task = SiteTask(self.train_data, self.plan, self.site.index, self.consortium.fedavg)
        if run_id != self.run_id:
            if self.run_id:
                logger.warning("%s: the aggregator started a new run (%s): starting over", self.site.name, run_id)
            self.run_id, self.shared, self.consents = run_id, SharedState(), {}
            self._save()
        if msg.state_digest == b"" and self.shared.step:
            # The aggregator was killed after the sites applied its first step but before it recorded that step,
            # and runs it again: start over from the empty state, as from any older state it relays.
            logger.warning(
                "%s: the aggregator re-runs the first step: dropping round %d %s",
                self.site.name,
                self.shared.round,
                self.shared.step,
            )
            self.shared = SharedState()
            self._save()
        if msg.state_digest in (b"", self.shared.digest()):
            return msg.state_digest == self.shared.digest() or not self.shared.step
        if not msg.payload:
            logger.error("%s: out of sync and no consortium state was relayed", self.site.name)
            return False
        return self._adopt_state(msg.state_digest, msg.payload[0])

    def _adopt_state(self, digest: bytes, sealed: bytes) -> bool:
        """Take the consortium state the aggregator relays (sealed by a site under the group key)."""
        try:
            raw = open_sealed(
                self.keys.group_key,
                sealed,
                kind="state",
                consortium=self.consortium.consortium_id,
                ref=NO_ROUND,
                extra=[digest],
            )
            shared = SharedState.from_bytes(raw)
        except (ProtocolError, ValueError, KeyError) as exc:
            logger.error("%s: the relayed consortium state does not open: %s", self.site.name, exc)
            return False
        if shared.digest() != digest:
            logger.error("%s: the relayed consortium state does not match its digest", self.site.name)
            return False
        logger.info("%s: caught up to round %d %s from the consortium state", self.site.name, shared.round, shared.step)
        self.shared = shared
        self._save()
        return True

    def _adopt_final_state(self, msg: Finish) -> None:
        """A node that missed the last step (it was down) takes the final state the finish message carries."""
        if len(msg.payload) == 2 and msg.payload[0] != self.shared.digest():
            self._adopt_state(msg.payload[0], msg.payload[1])

    def on_announce(self, msg: Announce) -> None:
        ref = msg.ref
        if self.submitted == ref:
            return  # a repeated announcement (we said hello): already submitted
        if not self._sync(msg):
            return
        if (ref.round, ref.step) != self._expected_next():
            logger.error(
                "%s: %s announced, but this site expects round %d %s next", self.site.name, ref, *self._expected_next()
            )
            return
        if msg.vector_length != self.plan.vector_length(ref.step):
            logger.error("%s: announced vector length %d does not match the plan", self.site.name, msg.vector_length)
            return
        start = time.perf_counter()
        values = self.task.vector(ref.round, ref.step, self.shared)
        trained = time.perf_counter()
        vector = encrypt_vector(self.ctx, values)
        blob = vector.to_bytes(self.ctx)
        root = chunk_root(codec.chunk_digests(layout_of(self.ctx), blob))
        statement = contribution_statement(self.consortium.consortium_id, ref, self.site.name, vector.length, root)
        self._send(Submit, ref, chunk_root=root, signature=sign(self.keys.signing_key, statement), payload=(blob,))
        self.submitted = ref
        logger.info(
            "%s: %s: computed in %.2fs, encrypted %d chunks in %.2fs, sent %d bytes",
            self.site.name,
            ref,
            trained - start,
            vector.chunks,
            time.perf_counter() - trained,
            len(blob),
        )

    # consent and decryption ----------------------------------------------------------------------

    def _refuse(self, ref: RoundRef, reason: str) -> None:
        logger.warning("%s: %s: refused: %s", self.site.name, ref, reason)
        self._send(Refuse, ref, reason=reason[:500])

    def on_consent_request(self, msg: ConsentRequest) -> None:
        ref = msg.ref
        contributors = sorted(msg.contributors)
        key = f"{self.run_id}/{ref.round}/{ref.step}"
        if self.submitted != ref or self.site.name not in contributors:
            return self._refuse(ref, "this site did not contribute to this attempt")
        if len(set(contributors)) != len(contributors) or len(contributors) < self.consortium.min_sites:
            return self._refuse(ref, f"contributor set {contributors} is too small or repeats a site")
        if key in self.consents and self.consents[key] != contributors:
            return self._refuse(
                ref,
                f"this site already approved the contributors {self.consents[key]} for round {ref.round} {ref.step}; "
                "decrypting another set of the same round would reveal the difference",
            )
        self.consents[key] = contributors
        self._save()  # written before the signature leaves: a restart cannot approve a second set
        statement = consent_statement(self.consortium.consortium_id, ref, contributors, msg.aggregate_root)
        self._send(Consent, ref, signature=sign(self.keys.signing_key, statement))

    def on_decrypt_request(self, msg: DecryptRequest) -> None:
        ref = msg.ref
        try:
            if self.plan is None:
                raise RequestRefused("no round has been announced to this site yet")
            self.verified = checks.check_request(
                msg,
                consortium=self.consortium,
                ctx=self.ctx,
                expected_ref=ref if (ref.round, ref.step) == self._expected_next() else NO_ROUND,
                expected_length=self.plan.vector_length(ref.step),
                min_sites=self.consortium.min_sites,
                self_index=self.site.index,
            )
        except RequestRefused as exc:
            return self._refuse(ref, str(exc))
        self.challenge = checks.choose_challenge(
            self.verified.aggregate.chunks,
            full_max_chunks=self.config.full_verify_max_chunks,
            spot_checks=self.config.spot_checks,
        )
        self.sum_check = checks.SumCheck(self.verified, self.ctx, self.challenge)
        self._send(Challenge, ref, chunks=self.challenge, contributor=0)

    def on_challenge_response(self, msg: ChallengeResponse) -> None:
        ref = msg.ref
        verified = self.verified
        if verified is None or verified.ref != ref or self.sum_check is None:
            return self._refuse(ref, "no decryption request of this site is pending")
        try:
            self.sum_check.add(msg)
            if not self.sum_check.done:
                self._send(Challenge, ref, chunks=self.challenge, contributor=self.sum_check.next)
                return None
            self.verified = self.sum_check = None
            start = time.perf_counter()
            partial = self.holder.partial_decrypt(
                verified.aggregate, verified.decrypting_set, label=f"{self.run_id}/{ref.label}"
            )
        except (RequestRefused, CryptoError) as exc:
            self.verified = self.sum_check = None
            return self._refuse(ref, str(exc))
        root = verified.aggregate_root
        sealed = seal(
            self.keys.group_key,
            partial.to_bytes(self.ctx),
            kind="partial",
            consortium=self.consortium.consortium_id,
            ref=ref,
            extra=[self.site.index, list(verified.decrypting_set), root],
        )
        statement = partial_statement(
            self.consortium.consortium_id, ref, self.site.index, verified.decrypting_set, root, sealed
        )
        self._send(Partial, ref, signature=sign(self.keys.signing_key, statement), payload=(sealed,))
        logger.info(
            "%s: %s: checked %d of %d chunks of %d contributions, partial decryption in %.2fs",
            self.site.name,
            ref,
            len(self.challenge),
            verified.aggregate.chunks,
            len(verified.contributors),
            time.perf_counter() - start,
        )

    # result: combine, apply, acknowledge ---------------------------------------------------------

    def _open_partials(self, msg: Result, aggregate: EncryptedVector) -> list[PartialDecryption]:
        root = chunk_root(codec.chunk_digests(layout_of(self.ctx), msg.payload[0]))
        members = tuple(msg.decrypting_set)
        if sorted(msg.senders) != list(members) or len(msg.payload) - 1 != len(members):
            raise DecryptionFailed("the relayed partials do not match the decrypting set")
        if not all(1 <= index <= self.consortium.n_sites for index in members):  # else a KeyError below
            raise DecryptionFailed(f"the relayed decrypting set {list(members)} names a site outside the consortium")
        partials = []
        for index, signature, sealed in zip(msg.senders, msg.signatures, msg.payload[1:], strict=True):
            who = self.consortium.site_by_index(index)
            statement = partial_statement(self.consortium.consortium_id, msg.ref, index, members, root, sealed)
            # a bad signature means the relay altered it; past this point the bytes are the signer's own
            verify(who.signing_public, statement, signature, who=f"{who.name}'s partial")
            try:
                raw = open_sealed(
                    self.keys.group_key,
                    sealed,
                    kind="partial",
                    consortium=self.consortium.consortium_id,
                    ref=msg.ref,
                    extra=[index, list(members), root],
                )
                partials.append(
                    PartialDecryption.from_bytes(
                        self.ctx, raw, index=index, decrypting_set=members, max_chunks=aggregate.chunks
                    )
                )
            except (CryptoError, ProtocolError) as exc:
                raise MalformedPartial(index, f"the partial decryption of {who.name} is malformed: {exc}") from exc
        return partials

    def on_result(self, msg: Result) -> None:
        ref = msg.ref
        if (ref.round, ref.step) != self._expected_next() or self.plan is None or self.task is None:
            return  # a result for a step this site cannot apply; it catches up at the next announcement
        start = time.perf_counter()
        try:
            aggregate = EncryptedVector.from_bytes(
                self.ctx, msg.payload[0], max_chunks=layout_of(self.ctx).chunks_for(self.plan.vector_length(ref.step))
            )
            if aggregate.length != self.plan.vector_length(ref.step):
                raise DecryptionFailed("the aggregate has the wrong length")
            partials = self._open_partials(msg, aggregate)
            summed = combine(
                self.ctx,
                aggregate,
                partials,
                threshold=self.consortium.threshold,
                value_bound=2 * self.consortium.slot_bound,
            )
            averaged = average(summed)
            count = averaged.participants
            if abs(count - round(count)) > 0.05 or round(count) < self.consortium.min_sites:
                raise DecryptionFailed(f"the decrypted participant count {count:.4f} is not a plausible count")
            shared = self.task.apply(ref.round, ref.step, self.shared, averaged)
        except (HeaggError, ValueError) as exc:
            logger.warning("%s: %s: could not apply the result: %s", self.site.name, ref, exc)
            blame = [exc.index] if isinstance(exc, MalformedPartial) else []
            self._send(Ack, ref, ok=False, state_digest=b"", reason=str(exc)[:500], blame=blame)
            return
        self.shared = shared
        entry: dict = {"round": ref.round, "step": ref.step, "participants": round(averaged.participants)}
        metrics = self.task.evaluate(shared, self.test_data) if ref.step == "train" else None
        if metrics is not None:
            entry["local_test"] = metrics.to_dict()
        self.history.append(entry)
        if ref.step == "train" and self.config.keep_round_models:
            buffer = io.BytesIO()
            np.save(buffer, shared.model)
            write_atomic(self.dir / ROUNDS_DIR / f"round-{ref.round:04d}.npy", buffer.getvalue())
        self._save()
        digest = shared.digest()
        sealed = seal(
            self.keys.group_key,
            shared.to_bytes(),
            kind="state",
            consortium=self.consortium.consortium_id,
            ref=NO_ROUND,
            extra=[digest],
        )
        self._send(Ack, ref, ok=True, state_digest=digest, reason="", blame=[], payload=(sealed,))
        logger.info(
            "%s: %s: applied the average of %d sites in %.2fs%s",
            self.site.name,
            ref,
            round(averaged.participants),
            time.perf_counter() - start,
            f"; local held-out accuracy {metrics.accuracy:.3f}, AUC {metrics.auc:.3f}" if metrics else "",
        )

    def on_reject(self, msg: Reject) -> None:
        logger.warning("%s: the aggregator rejected our %s: %s", self.site.name, msg.rejected_type, msg.reason)

    def _finish(self) -> None:
        logger.info("%s: the aggregator says all rounds are done", self.site.name)
        if self.shared.model is None or self.plan is None:
            return
        model = build_model(self.plan.spec, seed=self.plan.seed)
        load_flat(model, self.shared.model)
        card = {
            "features": list(self.consortium.features),
            "target": self.config.target,
            "standardizer": standardizer_of(self.shared).to_dict(),
            "rounds": self.shared.round,
            "sites": self.consortium.n_sites,
            "consortium_id": self.consortium.consortium_id,
            "trained_by": "heagg threshold-CKKS federated averaging",
            "privacy": {
                "preset": self.consortium.preset,
                "threshold": self.consortium.threshold,
                "min_sites": self.consortium.min_sites,
                "clip": self.consortium.fedavg.clip,
                "max_site_samples": self.consortium.fedavg.max_site_samples,
                "flooding_sigma": self.consortium.sigma,
            },
            "local_test_metrics": self.history[-1].get("local_test") if self.history else None,
        }
        save_model(self.dir / MODEL_FILE, model, self.plan.spec, card)
        logger.info("%s: final global model written to %s", self.site.name, self.dir / MODEL_FILE)
