"""The aggregator: runs each step of the federation as a sequence of stages over a ``RoundState``.

    for stage in (announce, collect, consent, decrypt, publish, confirm):
        if not stage(state): break

It holds the public context, the manifest and its CurveZMQ key; never a share or the group key. It adds
ciphertexts it cannot read, asks share holders for partial decryptions they seal for the sites, relays them,
and persists its progress after every step so a restart resumes where it stopped. A step that cannot complete
(too few sites, too few share holders, a refusal) fails with a reason and is re-run with fresh encryptions.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from heagg.crypto import codec
from heagg.crypto.context import CkksContext
from heagg.crypto.vectors import RunningSum, layout_of
from heagg.errors import (
    BadShape,
    DuplicateMessage,
    HeaggError,
    InvalidCiphertext,
    MalformedMessage,
    ProtocolError,
    RoundFailed,
    UnknownSender,
    UsageError,
    WrongConsortium,
    WrongRound,
)
from heagg.messages import (
    AGGREGATOR,
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
from heagg.protocol.plan import TrainingPlan, first_step, is_finished, next_step
from heagg.protocol.sealing import (
    chunk_root,
    consent_statement,
    contribution_statement,
    partial_statement,
    verify,
)
from heagg.protocol.state import load_record, save_record, state_dir
from heagg.sitekeys import AggregatorKeys, load_public_context
from heagg.transport import AggregatorEndpoint, CurveKeyPair

logger = logging.getLogger("heagg.aggregator")
STATE_FILE = "aggregator.state"


@dataclass(frozen=True)
class AggregatorConfig:
    keys_dir: Path
    bind: str
    plan: TrainingPlan
    state: Path
    min_sites: int | None = None
    round_timeout: float = 60.0
    decrypt_timeout: float | None = None
    max_attempts: int = 10
    finish_grace: float = 5.0
    retry_delay: float = 2.0


@dataclass
class Contribution:
    """A verified, summed submission; its bytes wait in the spool for the share holders' challenges."""

    site: str
    spool: Path
    root: bytes
    digests: list[bytes] = field(repr=False)
    signature: bytes

    def chunks(self, layout: codec.BatchLayout, indices: list[int]) -> bytes:
        """A batch of just these chunks, read from the spool (nothing else of the submission is loaded)."""
        with open(self.spool, "rb") as f:
            return codec.select_chunks(layout, f, indices)


@dataclass
class RoundState:
    """Everything one attempt of one step accumulates; dropped when the attempt ends."""

    ref: RoundRef
    length: int
    started: float
    deadline: float = 0.0
    contributions: dict[str, Contribution] = field(default_factory=dict)
    total: RunningSum | None = None
    aggregate_blob: bytes = b""
    aggregate_root: bytes = b""
    consents: dict[str, bytes] = field(default_factory=dict)
    decrypting_set: tuple[int, ...] = ()
    challenges: dict[int, dict[int, list[int]]] = field(default_factory=dict)
    partials: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    acks: dict[str, Ack] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    failure: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0

    def fail(self, reason: str) -> bool:
        self.failure = reason
        return False


class Aggregator:
    def __init__(self, config: AggregatorConfig, keys: AggregatorKeys, *, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.keys = keys
        self.consortium = keys.consortium
        self.clock = clock
        manifest_min = self.consortium.min_sites
        self.min_sites = config.min_sites if config.min_sites is not None else manifest_min
        if not manifest_min <= self.min_sites <= self.consortium.n_sites:
            raise UsageError(
                f"--min-sites must be between the consortium's minimum ({manifest_min}) "
                f"and its number of sites ({self.consortium.n_sites})"
            )
        self.ctx: CkksContext = load_public_context(config.keys_dir, self.consortium)
        self.layout = layout_of(self.ctx)
        self.decrypt_timeout = config.decrypt_timeout or config.round_timeout
        self.dir = state_dir(config.state)
        self.spool = self.dir / "spool"
        self._load_state()
        self.suspects: set[str] = set()
        self.last_seen: dict[str, float] = {}
        #: sites whose partial decryptions were reported malformed, and decrypting sets whose result failed
        self.blamed: set[str] = set()
        self.failed_sets: set[tuple[int, ...]] = set()
        self.rejections: Counter[str] = Counter()
        self._quiet_counts()
        allowed = {s.name: s.curve_public.encode() for s in self.consortium.sites}
        longest = max(self.plan.vector_length(step) for step in ("scales", "train"))
        chunks = self.layout.chunks_for(longest)
        # the largest legitimate message a site sends is one submission; leave room for the envelope
        self.max_message = codec.HEADER.size + self.layout.payload_bytes(codec.KIND_CIPHERTEXT, chunks) + (1 << 20)
        self.endpoint = AggregatorEndpoint(
            config.bind,
            CurveKeyPair(keys.curve_public, keys.curve_secret),
            allowed,
            max_message_bytes=self.max_message,
        )

    # persistence --------------------------------------------------------------------------------

    def _load_state(self) -> None:
        record = load_record(self.dir / STATE_FILE)
        if record is None:
            self.run_id = secrets.token_hex(8)
            self.plan = self.config.plan
            self.completed: tuple[int, str] | None = None
            self.attempt = 0
            self.locked: list[str] = []
            self.history: list[dict] = []
            self.sealed_state = b""
            self.state_digest = b""
            self._save()
            return
        if record.get("consortium_id") != self.consortium.consortium_id:
            raise UsageError(f"{self.dir} holds the state of another consortium: use a new --state directory")
        plan = TrainingPlan.from_dict(record["plan"])
        if plan.to_dict() != self.config.plan.to_dict():
            raise UsageError(
                f"{self.dir} was started with another training plan ({plan.to_dict()}): rerun with the same options "
                "or use a new --state directory"
            )
        self.run_id = record["run_id"]
        self.plan = plan
        self.completed = tuple(record["completed"]) if record["completed"] else None  # type: ignore[assignment]
        self.attempt = int(record["attempt"])
        self.locked = list(record["locked"])
        self.history = list(record["history"])
        self.sealed_state = bytes(record["sealed_state"])
        self.state_digest = bytes(record["state_digest"])
        logger.info("resuming from %s: %s completed", self.dir, self._describe_completed())

    def _save(self) -> None:
        save_record(
            self.dir / STATE_FILE,
            {
                "format": "heagg-aggregator-state/1",
                "consortium_id": self.consortium.consortium_id,
                "run_id": self.run_id,
                "plan": self.plan.to_dict(),
                "completed": list(self.completed) if self.completed else None,
                "attempt": self.attempt,
                "locked": self.locked,
                "history": self.history,
                "sealed_state": self.sealed_state,
                "state_digest": self.state_digest,
            },
        )

    def _describe_completed(self) -> str:
        return "nothing" if self.completed is None else f"round {self.completed[0]} {self.completed[1]}"

    # messaging ----------------------------------------------------------------------------------

    def _send(self, site: str, msg: Message, state: RoundState | None = None) -> bool:
        frames = msg.to_frames()
        if state is not None:
            state.bytes_out += sum(len(f) for f in frames)
        return self.endpoint.send(site, frames)

    def _msg(self, cls, ref: RoundRef, **fields) -> Message:
        return cls(consortium=self.consortium.consortium_id, ref=ref, sender=AGGREGATOR, **fields)

    # A flooding site must not cost a log line and a reply per message: once the site stops reading, its queue
    # fills and every reply blocks the aggregator for the send timeout (1 s), starving every other site. Each
    # attempt, a site's first rejections are logged and answered, later ones only counted; a site whose queue
    # is full gets no more replies, and a site is sent the open announcement again at most a few times.
    _ANSWERED_REJECTIONS = 16
    _ANSWERED_HELLOS = 5

    def _quiet_counts(self) -> None:
        """Start counting each site's rejections and hellos afresh (at every attempt)."""
        self._rejected_by_site: Counter[str] = Counter()
        self._hellos_by_site: Counter[str] = Counter()
        self._unreachable: set[str] = set()

    def _reject(self, site: str, rejected_type: str, exc: HeaggError, state: RoundState | None) -> None:
        reason = exc.reason
        self.rejections[reason] += 1
        where = str(state.ref) if state else "between rounds"
        if state is not None:
            state.rejected[site] = f"{reason}: {exc}"
        self._rejected_by_site[site] += 1
        if self._rejected_by_site[site] > self._ANSWERED_REJECTIONS:
            if self._rejected_by_site[site] == self._ANSWERED_REJECTIONS + 1:
                logger.warning("%s: %s keeps sending rejected messages: counting, not logging them", where, site)
            return
        logger.warning("%s: rejected %s from %s: %s: %s", where, rejected_type, site, reason, exc)
        if site in self._unreachable:
            return
        ref = state.ref if state else RoundRef(0, "scales", 0)
        reply = self._msg(Reject, ref, reason=f"{reason}: {exc}"[:500], rejected_type=rejected_type[:32])
        if not self._send(site, reply):
            self._unreachable.add(site)

    def _receive(self, until: float, state: RoundState | None) -> tuple[str, Message] | None:
        """The next valid message for this attempt, handling hellos on the way; None at ``until``."""
        while True:
            remaining = until - self.clock()
            if remaining <= 0:
                return None
            incoming = self.endpoint.recv(min(remaining, 0.5))
            if incoming is None:
                continue
            site = incoming.site
            self.suspects.discard(site)
            self.last_seen[site] = self.clock()
            if state is not None:
                state.bytes_in += sum(len(f) for f in incoming.frames)
            try:
                msg = decode(incoming.frames, max_envelope_bytes=1 << 20)
                if msg.consortium != self.consortium.consortium_id:
                    raise WrongConsortium(f"message for consortium {msg.consortium!r}")
                if msg.sender != site:
                    raise UnknownSender(f"authenticated as {site} but claims to be {msg.sender!r}")
            except ProtocolError as exc:
                self._reject(site, "message", exc, state)
                continue
            if isinstance(msg, Hello):
                self._on_hello(site, msg, state)
                continue
            if state is None or msg.ref != state.ref:
                stale = "no round is open" if state is None else f"the open step is {state.ref}"
                self._reject(site, msg.TYPE, WrongRound(f"{msg.TYPE} for {msg.ref}, but {stale}"), state)
                continue
            if isinstance(msg, Submit) and site in state.contributions:
                self._reject(site, msg.TYPE, DuplicateMessage(f"{site} already submitted for {state.ref}"), state)
                continue
            return site, msg

    def _on_hello(self, site: str, hello: Hello, state: RoundState | None) -> None:
        self._hellos_by_site[site] += 1
        if self._hellos_by_site[site] > self._ANSWERED_HELLOS:
            return  # a node idle for long says hello every few seconds: it has had its answer
        logger.info("%s says hello (applied round %s %s)", site, hello.applied_round, hello.applied_step or "-")
        if self._finished_now:
            self._send(site, self._finish_message())
        elif state is not None and self._collecting and site not in state.contributions:
            self._send(site, self._announcement(state), state)

    # the run ------------------------------------------------------------------------------------

    _collecting = False
    _finished_now = False

    def run(self) -> int:
        """Run every remaining step, then tell the nodes to finish. Returns the process exit code."""
        logger.info(
            "aggregator for consortium %s on %s: %d sites, threshold %d, min-sites %d, %d rounds; %s completed",
            self.consortium.consortium_id,
            self.endpoint.endpoint,
            self.consortium.n_sites,
            self.consortium.threshold,
            self.min_sites,
            self.plan.rounds,
            self._describe_completed(),
        )
        try:
            failures = 0
            while not is_finished(self.completed, self.plan):
                round_, step = first_step() if self.completed is None else next_step(*self.completed)
                state = self._run_attempt(round_, step)
                if state.failure:
                    failures += 1
                    logger.warning("%s failed: %s", state.ref, state.failure)
                    if failures >= self.config.max_attempts:
                        raise RoundFailed(
                            f"round {round_} {step} failed {failures} times, last: {state.failure}; "
                            f"state is saved in {self.dir}: fix the cause and restart to resume"
                        )
                    # wait before retrying, still answering hellos (a share holder coming back says hello)
                    self._receive(self.clock() + self.config.retry_delay, None)
                    continue
                failures = 0
            self._finish()
            return 0
        finally:
            self.endpoint.close()

    def _run_attempt(self, round_: int, step: str) -> RoundState:
        self.attempt += 1
        self._save()  # an attempt number is never reused, even across a crash
        self._quiet_counts()
        now = self.clock()
        state = RoundState(RoundRef(round_, step, self.attempt), self.plan.vector_length(step), started=now)
        for stage in (self.announce, self.collect, self.consent, self.decrypt, self.publish, self.confirm):
            if not stage(state):
                break
        self._collecting = False
        shutil.rmtree(self.spool, ignore_errors=True)
        return state

    def _announcement(self, state: RoundState) -> Announce:
        return self._msg(
            Announce,
            state.ref,
            deadline_s=max(state.deadline - self.clock(), 0.0),
            min_sites=self.min_sites,
            plan={**self.plan.to_dict(), "run_id": self.run_id},
            state_digest=self.state_digest,
            vector_length=state.length,
            payload=(self.sealed_state,) if self.sealed_state else (),
        )

    # stages -------------------------------------------------------------------------------------

    def announce(self, state: RoundState) -> bool:
        state.deadline = self.clock() + self.config.round_timeout
        self._collecting = True
        reached = [s.name for s in self.consortium.sites if self._send(s.name, self._announcement(state), state)]
        logger.info(
            "%s: announced to %d connected sites (%s), deadline %.0fs",
            state.ref,
            len(reached),
            ", ".join(reached) or "none yet",
            self.config.round_timeout,
        )
        return True

    def collect(self, state: RoundState) -> bool:
        expected = self.locked or [s.name for s in self.consortium.sites]
        state.total = RunningSum(self.ctx)
        chunks = self.layout.chunks_for(state.length)
        while len(state.contributions) < len(expected):
            got = self._receive(state.deadline, state)
            if got is None:
                break
            site, msg = got
            try:
                if not isinstance(msg, Submit):
                    raise WrongRound(f"{msg.TYPE} while collecting submissions")
                if site not in expected:
                    raise WrongRound(f"{state.ref} re-runs the contributors {', '.join(self.locked)} only")
                state.contributions[site] = self._accept_submission(site, msg, state, chunks)
            except (ProtocolError, InvalidCiphertext) as exc:
                self._reject(site, msg.TYPE, exc, state)
                continue
            logger.info("%s: accepted submission from %s (%d bytes)", state.ref, site, len(msg.payload[0]))
        self._collecting = False
        state.seconds["collect"] = self.clock() - state.started
        late = [s for s in expected if s not in state.contributions]
        logger.info(
            "%s: %d of %d sites submitted in %.2fs; late or absent: %s; rejected: %s",
            state.ref,
            len(state.contributions),
            len(expected),
            state.seconds["collect"],
            ", ".join(late) or "none",
            ", ".join(f"{s} ({r})" for s, r in state.rejected.items()) or "none",
        )
        if self.locked and late:
            return state.fail(f"re-run needs every contributor of the first attempt; missing {', '.join(late)}")
        if len(state.contributions) < self.min_sites:
            return state.fail(f"only {len(state.contributions)} sites submitted, min-sites is {self.min_sites}")
        state.aggregate_blob = state.total.total.to_bytes(self.ctx)
        state.aggregate_root = chunk_root(codec.chunk_digests(self.layout, state.aggregate_blob))
        return True

    def _accept_submission(self, site: str, msg: Submit, state: RoundState, chunks: int) -> Contribution:
        """Check the header and the signature (cheap, before any unpacking), then add it to the running sum
        chunk block by chunk block (which checks every coefficient) and spool its bytes to disk."""
        blob = msg.payload[0]
        length, _ = codec.check_header(self.layout, blob, kind=codec.KIND_CIPHERTEXT, max_chunks=chunks)
        if length != state.length:
            raise BadShape(f"submission holds {length} values, expected {state.length}")
        digests = codec.chunk_digests(self.layout, blob)
        root = chunk_root(digests)
        if root != msg.chunk_root:
            raise MalformedMessage("chunk root does not match the ciphertext")
        statement = contribution_statement(self.consortium.consortium_id, state.ref, site, state.length, root)
        verify(self.consortium.site(site).signing_public, statement, msg.signature, who=f"{site}'s submission")
        assert state.total is not None
        start = self.clock()
        state.total.add_bytes(blob, max_chunks=chunks)
        state.seconds["sum"] = state.seconds.get("sum", 0.0) + self.clock() - start
        self.spool.mkdir(parents=True, exist_ok=True)
        path = self.spool / f"{site}.bin"
        path.write_bytes(blob)
        return Contribution(site, path, root, digests, msg.signature)

    def consent(self, state: RoundState) -> bool:
        contributors = sorted(state.contributions)
        if not self.locked:
            self.locked = contributors
            self._save()
        request = self._msg(ConsentRequest, state.ref, contributors=contributors, aggregate_root=state.aggregate_root)
        statement = consent_statement(self.consortium.consortium_id, state.ref, contributors, state.aggregate_root)
        for site in contributors:
            self._send(site, request, state)
        until = self.clock() + self.decrypt_timeout
        while len(state.consents) < len(contributors):
            got = self._receive(until, state)
            if got is None:
                missing = [s for s in contributors if s not in state.consents]
                self.suspects.update(missing)
                return state.fail(f"no consent from {', '.join(missing)} in time")
            site, msg = got
            if isinstance(msg, Refuse) and site in contributors:
                return state.fail(f"{site} refused consent: {msg.reason}")
            try:
                if not isinstance(msg, Consent) or site not in contributors or site in state.consents:
                    raise WrongRound(f"unexpected {msg.TYPE} while collecting consents")
                verify(self.consortium.site(site).signing_public, statement, msg.signature, who=f"{site}'s consent")
            except ProtocolError as exc:
                self._reject(site, msg.TYPE, exc, state)
                continue
            state.consents[site] = msg.signature
        return True

    def _responsive(self, state: RoundState) -> list[str]:
        """Sites likely to answer now: this attempt's contributors first, then sites heard from recently."""
        recent = self.clock() - max(3 * self.config.round_timeout, 30.0)
        ranked = [s for s in state.contributions if s not in self.suspects]
        ranked += [
            s.name
            for s in self.consortium.sites
            if s.name not in ranked and s.name not in self.suspects and self.last_seen.get(s.name, -1e18) >= recent
        ]
        return ranked

    def _choose_decryptors(self, state: RoundState) -> tuple[int, ...] | None:
        """t responsive, unblamed share holders, in order of preference, avoiding sets whose result failed.

        A wrong but well-formed partial cannot be attributed (it only shows as an out-of-range result), so
        after such a failure the next attempt tries another decrypting set.
        """
        t = self.consortium.threshold
        ranked = [name for name in self._responsive(state) if name not in self.blamed]
        # among any len(failed_sets) + 1 distinct sets at least one has not failed
        for names in itertools.islice(itertools.combinations(ranked, t), len(self.failed_sets) + 1):
            chosen = tuple(sorted(self.consortium.site(name).index for name in names))
            if chosen not in self.failed_sets:
                return chosen
        return None

    def decrypt(self, state: RoundState) -> bool:
        start = self.clock()
        chosen = self._choose_decryptors(state)
        if chosen is None:
            online = self._responsive(state)
            return state.fail(
                f"fewer than {self.consortium.threshold} responsive share holders "
                f"(responsive: {', '.join(online) or 'none'}; the threshold needs {self.consortium.threshold})"
            )
        state.decrypting_set = chosen
        contributors = sorted(state.contributions)
        request = self._msg(
            DecryptRequest,
            state.ref,
            decrypting_set=list(chosen),
            contributors=contributors,
            signatures=[state.contributions[s].signature for s in contributors],
            consents=[state.consents[s] for s in contributors],
            payload=(state.aggregate_blob, *(b"".join(state.contributions[s].digests) for s in contributors)),
        )
        names = {i: self.consortium.site_by_index(i).name for i in chosen}
        for index in chosen:
            self._send(names[index], request, state)
        until = self.clock() + self.decrypt_timeout
        chunks = state.total.total.chunks if state.total else 0
        while len(state.partials) < len(chosen):
            got = self._receive(until, state)
            if got is None:
                missing = [names[i] for i in chosen if i not in state.partials]
                self.suspects.update(missing)
                return state.fail(f"no partial decryption from {', '.join(missing)} in time")
            site, msg = got
            index = self.consortium.site(site).index
            if isinstance(msg, Refuse) and index in chosen:
                logger.warning("%s: %s refused to decrypt: %s", state.ref, site, msg.reason)
                return state.fail(f"{site} refused to decrypt: {msg.reason}")
            try:
                if index not in chosen:
                    raise WrongRound(f"{site} is not in the decrypting set")
                if isinstance(msg, Challenge):
                    self._answer_challenge(site, index, msg, state, chunks)
                elif isinstance(msg, Partial):
                    if index in state.partials:
                        raise DuplicateMessage(f"{site} already sent its partial decryption")
                    statement = partial_statement(
                        self.consortium.consortium_id, state.ref, index, chosen, state.aggregate_root, msg.payload[0]
                    )
                    verify(self.consortium.site(site).signing_public, statement, msg.signature, who=f"{site}'s partial")
                    state.partials[index] = (msg.payload[0], msg.signature)
                else:
                    raise WrongRound(f"unexpected {msg.TYPE} while decrypting")
            except ProtocolError as exc:
                self._reject(site, msg.TYPE, exc, state)
        state.seconds["decrypt"] = self.clock() - start
        logger.info(
            "%s: partial decryptions from %s in %.2fs",
            state.ref,
            ", ".join(names[i] for i in chosen),
            state.seconds["decrypt"],
        )
        return True

    def _answer_challenge(self, site: str, index: int, msg: Challenge, state: RoundState, chunks: int) -> None:
        """Send the challenged chunks of one contribution, read from the spool: memory stays one contribution."""
        wanted = list(msg.chunks)
        contributors = sorted(state.contributions)
        asked = state.challenges.setdefault(index, {})
        if not 0 <= msg.contributor < len(contributors):
            raise MalformedMessage(f"challenge names contributor {msg.contributor} of {len(contributors)}")
        if msg.contributor in asked:
            raise DuplicateMessage(f"{site} already challenged contribution {msg.contributor}")
        if len(set(wanted)) != len(wanted) or not wanted or any(not 0 <= k < chunks for k in wanted):
            raise MalformedMessage(f"challenge names chunks outside 0..{chunks - 1} or repeats one")
        asked[msg.contributor] = wanted
        frame = state.contributions[contributors[msg.contributor]].chunks(self.layout, wanted)
        response = self._msg(ChallengeResponse, state.ref, chunks=wanted, contributor=msg.contributor, payload=(frame,))
        self._send(site, response, state)

    def publish(self, state: RoundState) -> bool:
        start = self.clock()
        senders = sorted(state.partials)
        result = self._msg(
            Result,
            state.ref,
            decrypting_set=list(state.decrypting_set),
            senders=senders,
            signatures=[state.partials[i][1] for i in senders],
            payload=(state.aggregate_blob, *(state.partials[i][0] for i in senders)),
        )
        reached = [s.name for s in self.consortium.sites if self._send(s.name, result, state)]
        state.seconds["publish"] = self.clock() - start
        logger.info("%s: result relayed to %s", state.ref, ", ".join(reached))
        state.acks = {}
        self._awaiting_acks = set(reached)
        return True

    def confirm(self, state: RoundState) -> bool:
        start = self.clock()
        until = start + self.config.round_timeout
        waiting = set(self._awaiting_acks)
        sealed: dict[bytes, bytes] = {}
        while waiting:
            got = self._receive(until, state)
            if got is None:
                break
            site, msg = got
            if not isinstance(msg, Ack) or site in state.acks:
                self._reject(site, msg.TYPE, WrongRound(f"unexpected {msg.TYPE} while collecting acks"), state)
                continue
            state.acks[site] = msg
            waiting.discard(site)
            if msg.ok and msg.payload:
                sealed.setdefault(msg.state_digest, msg.payload[0])
        ok = Counter(a.state_digest for a in state.acks.values() if a.ok and a.state_digest in sealed)
        failed = {s: a.reason for s, a in state.acks.items() if not a.ok}
        for site, reason in failed.items():
            logger.warning("%s: %s could not apply the result: %s", state.ref, site, reason)
        if not ok:
            self.failed_sets.add(state.decrypting_set)
            blamed = Counter(
                i for a in state.acks.values() if not a.ok for i in set(a.blame) if i in state.decrypting_set
            )
            for index, votes in blamed.items():
                name = self.consortium.site_by_index(index).name
                # one site's word must not exclude another: a site is blamed by most of the others that answered
                voters = sum(1 for site in state.acks if site != name)
                if 2 * votes <= voters:
                    logger.warning(
                        "%s: %s blamed by %d of %d sites: not a majority, ignored", state.ref, name, votes, voters
                    )
                    continue
                logger.warning(
                    "%s: %d sites report a malformed partial from %s: not asked to decrypt again",
                    state.ref,
                    votes,
                    name,
                )
                self.blamed.add(name)
            return state.fail(
                "no site applied the result: " + ("; ".join(f"{s}: {r}" for s, r in failed.items()) or "no acks")
            )
        digest, votes = ok.most_common(1)[0]
        state.seconds["confirm"] = self.clock() - start
        state.seconds["total"] = self.clock() - state.started
        self.completed = (state.ref.round, state.ref.step)
        self.attempt = 0
        self.locked = []
        self.sealed_state = sealed[digest]
        self.state_digest = digest
        self.history.append(
            {
                "round": state.ref.round,
                "step": state.ref.step,
                "attempt": state.ref.attempt,
                "contributors": sorted(state.contributions),
                "decrypting_set": list(state.decrypting_set),
                "rejected": state.rejected,
                "acks_ok": votes,
                "acks_failed": failed,
                "seconds": {k: round(v, 4) for k, v in state.seconds.items()},
                "bytes_in": state.bytes_in,
                "bytes_out": state.bytes_out,
            }
        )
        self._save()
        logger.info(
            "%s: done in %.2fs; %d sites applied it (%d failed, %d silent); in %d bytes, out %d bytes",
            state.ref,
            state.seconds["total"],
            votes,
            len(failed),
            len(waiting),
            state.bytes_in,
            state.bytes_out,
        )
        return True

    _awaiting_acks: set[str] = set()  # noqa: RUF012 - set per attempt in publish()

    def _finish_message(self) -> Finish:
        # the final state travels with it: a node that missed the last step still ends with everyone's model
        payload = (self.state_digest, self.sealed_state) if self.sealed_state else ()
        return self._msg(Finish, RoundRef(self.plan.rounds, "train", 0), rounds=self.plan.rounds, payload=payload)

    def _finish(self) -> None:
        self._finished_now = True
        self._quiet_counts()  # every node that says hello from now on is told to finish
        for site in self.consortium.sites:
            self._send(site.name, self._finish_message())
        logger.info(
            "all %d rounds done; told the sites to finish; rejected messages by reason: %s",
            self.plan.rounds,
            dict(self.rejections) or "none",
        )
        # late or restarted nodes say hello; answer them with finish for a grace period
        self._receive(self.clock() + self.config.finish_grace, None)
