"""The faust worker: Kafka micro-batches through the screener into Redis and Kafka.

Per batch, in this order, so that an offset is committed only once what its
event produced is durable:

1. look up each event's recorded outcome in Redis (duplicates are skipped,
   an event id reused for other content is dead-lettered);
2. screen the fresh messages in a worker thread (the model must not block the
   event loop, or heartbeats stop and the group rebalances);
3. admit alerts to the triage queue (one idempotent Lua script each: dedup per
   patient and task, the site's rate limit, the audit entry);
4. publish the admitted alerts (new, held, or the updated open alert; not the
   suppressed duplicates), verdicts and dead letters, and wait for the broker's acks;
5. record each event's outcome in Redis;
6. return, and only then ``take_events`` acks the batch for commit.

A batch that fails in screening is screened again record by record, so only
the record that fails is dead-lettered; duplicates and conflicts are sorted out
before, so no failure gives an event whose outcome is recorded a second one.

Write faults are transient (retried with backoff) or permanent (a record that
will not encode, a script error, an ACL refusal: the batch is stored record by
record and the record concerned is dead-lettered, never retried in a loop). A
transient fault that outlasts ``durable_write_timeout_s`` stops the process
without returning (exit 75): faust's ``take_events`` acks in ``finally``, so an
exception escaping the loop body would lose the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import faust
from aiokafka.errors import (
    BrokerNotAvailableError,
    KafkaError,
    KafkaTimeoutError,
    KafkaUnavailableError,
    ProducerClosed,
)
from faust.exceptions import ProducerSendError
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import AuthorizationError as RedisAuthorizationError
from redis.exceptions import ClusterDownError, NoPermissionError, ReadOnlyError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schemas.codec import encode_alert, encode_deadletter, encode_verdict
from schemas.errors import ECGScreenError
from schemas.messages import Alert, DeadLetterReason
from schemas.waveform import pack_waveform
from workers.faust_transport import use_transport
from workers.kafka_auth import faust_credentials
from workers.metrics import WorkerMetrics
from workers.pipeline import Outcome, ProcessingError, RawMessage, Screener, classify, dead
from workers.pipelined import PipelinedLoop
from workers.prep import Prepared
from workers.prep_pool import PrepPool
from workers.settings import Settings, Topics
from workers.triage import Admitted, RecordedOutcome, TriageStore

log = logging.getLogger("ecgscreen.worker")
T = TypeVar("T")
EX_TEMPFAIL = 75  # a transient fault outlasted its deadline: restart, the batch is redelivered
EX_CONFIG = 78  # a permanent fault no record explains (e.g. Redis ACL): a person must look


class PermanentFault(Exception):
    """A write that fails the same way however often it is retried (see :func:`is_transient`)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@dataclass(frozen=True, slots=True)
class Scored:
    """A batch between its two steps: outcomes decided, not yet durable."""

    messages: Sequence[RawMessage]
    outcomes: list[Outcome]
    duplicates: int
    conflicts: int
    started: float  # perf_counter at the start of the batch's first step


class BatchRunner:
    """Takes one batch from faust to durable outcomes; returns only once they are durable.

    Faults in a write are sorted by :func:`is_transient`: a transient one (network, timeout,
    a Redis still loading, a broker without a leader) is retried with backoff until
    ``durable_write_timeout_s``, then the process exits 75 without acking; a permanent one
    (a message that will not encode, a script error, an ACL refusal) is never retried as a
    batch: the batch is stored record by record and a record whose outcome cannot be
    stored gets a dead letter instead. Only a fault no record explains stops the process.
    """

    def __init__(self, app: faust.App, settings: Settings, screener: Screener,
                 metrics: WorkerMetrics | None = None, *, triage: TriageStore | None = None,
                 exit_process: Callable[[int], Any] = os._exit) -> None:
        self._app = app
        self._settings = settings
        self._screener = screener
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="screen")
        self._triage = triage
        self._exit_process = exit_process
        self.stopping = False  # set on SIGTERM: a failing write then exits at once, without ack
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0  # steps in progress (score or store)
        # (digest, kind) of outcomes scored but not yet durable: the pipelined loop scores batch N+1
        # while batch N is being stored, and N+1's duplicate check must see N's outcomes.
        self._pending: dict[str, tuple[str, str]] = {}

    @property
    def triage(self) -> TriageStore:
        if self._triage is None:
            self._triage = TriageStore.from_settings(self._settings.redis, self._settings.policy)
        return self._triage

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._triage is not None:
            await self._triage.close()

    async def wait_idle(self) -> None:
        """Until no batch is in flight (SIGTERM lets the current one become durable first)."""
        await self._idle.wait()

    def abandon(self) -> NoReturn:
        """A batch was taken but will not become durable (cancelled by shutdown, or a bug escaped
        handle): exit now, before faust's ``take_events`` can ack it in its ``finally``."""
        self._exit(EX_TEMPFAIL, "batch abandoned before it was durable; stopping without ack", "batch")

    async def handle(self, messages: Sequence[RawMessage], prepared: Prepared | None = None) -> None:
        """Both steps of a batch; returns once its outcomes are durable."""
        await self.store(await self.score(messages, prepared))

    async def score(self, messages: Sequence[RawMessage], prepared: Prepared | None = None) -> Scored:
        """Step 1: sort out duplicates and conflicts, then screen the fresh messages.

        ``prepared``: the batch's decode/gate/preprocess already done by the pipelined loop's pool.
        Batches are stored in the order they were scored (the pipelined loop scores the next one
        while this one is stored).
        """
        with self._step():
            started = time.perf_counter()
            pending = dict(self._pending)  # taken before the read: a batch stored meanwhile is in one of them
            recorded = await self._read_outcomes(messages)
            fresh, dups, conflicts = classify(messages, [
                (r.digest, r.kind) if r else pending.get(m.key) for m, r in zip(messages, recorded, strict=True)])
            # Duplicates and conflicts are sorted out before screening, so no failure below can
            # give an event whose outcome is already recorded a second one.
            part = prepared.select(fresh) if prepared is not None else None
            outcomes = await self._screen([messages[i] for i in fresh], part)
            outcomes += [self._conflict(messages[i]) for i in conflicts]
            self._pending.update((o.message.key, (o.message.digest, o.kind)) for o in outcomes)
            return Scored(messages, outcomes, len(dups), len(conflicts), started)

    async def store(self, scored: Scored) -> None:
        """Step 2: make the batch's outcomes durable (triage, topics, outcome ledger)."""
        with self._step():
            persist_started = time.perf_counter()
            outcomes, admitted = await self._persist(scored.outcomes, scored.duplicates)
            persist_s = time.perf_counter() - persist_started
            for o in scored.outcomes:  # durable now (or the process has exited); a later batch's entry stays
                if self._pending.get(o.message.key) == (o.message.digest, o.kind):
                    del self._pending[o.message.key]
            if self._metrics is not None:
                self._metrics.observe_batch(scored.messages, outcomes, scored.duplicates, admitted, persist_s)
            self._log_batch(scored, outcomes, persist_s)

    @contextlib.contextmanager
    def _step(self) -> Iterator[None]:
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    def _log_batch(self, scored: Scored, outcomes: Sequence[Outcome], persist_s: float) -> None:
        stages = next((o.verdict.timings_ms for o in outcomes if o.verdict is not None), {})
        log.info("batch done", extra={
            **{k: v for k, v in stages.items() if k.endswith("_ms") and k != "queue_ms"},
            "persist_ms": round(persist_s * 1000, 1),
            "batch_size": len(scored.messages), "duplicates": scored.duplicates, "conflicts": scored.conflicts,
            "verdicts": sum(o.kind == "verdict" for o in outcomes),
            "deadletters": sum(o.kind == "deadletter" for o in outcomes),
            "alerts": sum(len(o.alerts) for o in outcomes),
            "elapsed_ms": round((time.perf_counter() - scored.started) * 1000, 1)})

    async def _read_outcomes(self, messages: Sequence[RawMessage]) -> list[RecordedOutcome | None]:
        try:
            return await self._durably("read outcomes", lambda: self.triage.recorded_outcomes(
                [m.key for m in messages]))
        except PermanentFault:
            # No record explains a refused read (an ACL without GET on outcome keys): without
            # it duplicates cannot be told apart, so stop for a person rather than guess.
            return self._exit(EX_CONFIG, "outcome ledger unreadable; stopping without ack", "read outcomes")

    async def _screen(self, batch: Sequence[RawMessage], prepared: Prepared | None = None) -> list[Outcome]:
        """One outcome per message; a batch that fails is screened again record by record."""
        if not batch:
            return []
        try:
            return await self._in_thread(batch, prepared)
        except Exception:
            # A bug, not bad input (bad input is a dead letter inside the screener): find the
            # record that triggers it rather than dead-letter its neighbours.
            log.exception("batch failed; screening its records one by one", extra={"batch_size": len(batch)})
        return [await self._screen_one(m) for m in batch]

    async def _screen_one(self, msg: RawMessage) -> Outcome:
        try:
            (outcome,) = await self._in_thread([msg])
            return outcome
        except Exception:
            log.exception("record failed; dead-lettering it", extra={"event_id": _event_id(msg)})
            return self._failed(msg)

    async def _in_thread(self, batch: Sequence[RawMessage], prepared: Prepared | None = None) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._screener.screen, batch, prepared)

    def _conflict(self, msg: RawMessage) -> Outcome:
        err = ECGScreenError(DeadLetterReason.EVENT_ID_CONFLICT.value,
                             "this event id was already recorded with different content; "
                             "send corrections under a new event id")
        return dead(msg, err, self._screener.limits)

    def _failed(self, msg: RawMessage) -> Outcome:
        return dead(msg, ProcessingError("the worker failed on this record; replay it", _event_id(msg)),
                    self._screener.limits)

    def _unstorable(self, outcome: Outcome, fault: PermanentFault) -> Outcome:
        cause = type(fault.__cause__).__name__
        detail = f"the worker could not store this event's outcome ({fault.what}: {cause}); replay it once fixed"
        return dead(outcome.message, ProcessingError(detail, _event_id(outcome.message)), self._screener.limits)

    async def _persist(self, outcomes: Sequence[Outcome], dups: int) -> tuple[list[Outcome], list[Admitted]]:
        """The outcomes as stored (a record whose outcome could not be stored has a dead letter
        instead) and what the triage queue did with their alerts."""
        counts = {"duplicates_skipped": dups}  # recorded with the outcomes (new entries: in the add script)
        try:
            return list(outcomes), await self._store(outcomes, counts)
        except PermanentFault as fault:
            log.error("a permanent write fault; storing the batch record by record",
                      exc_info=fault.__cause__, extra={"what": fault.what, "batch_size": len(outcomes)})
        stored, admitted = [], []
        for outcome in outcomes:
            done, more = await self._store_alone(outcome, counts)
            stored.append(done)
            admitted += more
            counts = {}  # counted once, with the first record stored
        return stored, admitted

    async def _store(self, outcomes: Sequence[Outcome], counts: dict[str, int] | None = None) -> list[Admitted]:
        alerts = [a for o in outcomes for a in o.alerts]
        # The policy's dedup and rate limit run here, inside the idempotent add script:
        # a replayed batch gets the same admissions back and republishes the same alerts.
        # The waveforms are packed inside the write, so a record that cannot be packed is a
        # permanent fault of that record (dead-lettered), not an exception out of the batch.
        admitted = await self._durably("triage", lambda: self.triage.add_alerts(alerts, alert_waveforms(outcomes)))
        await self._durably("publish", lambda: self._publish(outcomes, _to_publish(admitted)))
        done = [(o.message.key, RecordedOutcome(o.message.digest, o.kind)) for o in outcomes]
        ttl = self._settings.redis.outcome_ttl_s
        await self._durably("record outcomes", lambda: self.triage.record_outcomes(done, ttl, counts))
        return admitted

    async def _store_alone(self, outcome: Outcome, counts: dict[str, int]) -> tuple[Outcome, list[Admitted]]:
        try:
            return outcome, await self._store([outcome], counts)
        except PermanentFault as fault:
            log.error("outcome cannot be stored; dead-lettering the event", exc_info=fault.__cause__,
                      extra={"what": fault.what, "event_id": _event_id(outcome.message)})
            letter = self._unstorable(outcome, fault)
            try:
                return letter, await self._store([letter], counts)
            except PermanentFault as again:  # not even a dead letter: the fault is the setup's
                self._exit(EX_CONFIG, "a dead letter cannot be stored; stopping without ack", again.what)

    async def _publish(self, outcomes: Sequence[Outcome], alerts: Sequence[Alert]) -> None:
        records = outcome_records(self._settings.kafka.topics, outcomes, alerts)
        sends = [await self._send(topic, key, value) for topic, key, value in records]
        await asyncio.gather(*sends)  # the broker's acks (acks=all): durable from here

    async def _send(self, topic: str, key: str, value: bytes) -> Awaitable[Any]:
        producer = self._app.producer
        return await producer.send(topic, key.encode(), value, partition=None, timestamp=None, headers=None)

    async def _durably(self, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """Retry transient faults with backoff; past the deadline (or when stopping), exit without ack.

        A permanent fault raises :class:`PermanentFault` at once: retrying it would only loop.
        """
        deadline = time.monotonic() + self._settings.durable_write_timeout_s
        delay, attempt = 0.1, 0
        while True:
            attempt += 1
            try:
                # A write that hangs (a blackholed Redis, no socket timeout) is a transient fault too.
                return await asyncio.wait_for(write(), timeout=max(deadline - time.monotonic(), 0.1))
            except Exception as exc:
                if not is_transient(exc):
                    raise PermanentFault(what) from exc
                if self.stopping or time.monotonic() + delay > deadline:
                    return self._exit(EX_TEMPFAIL, "durable write keeps failing; stopping without ack", what)
                log.warning("durable write failed; retrying", exc_info=True,
                            extra={"what": what, "attempt": attempt})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0 if self.stopping else 5.0)

    def _exit(self, code: int, msg: str, what: str) -> NoReturn:
        # Exit at once: faust's take_events acks in `finally`, so unwinding would ack this batch.
        log.critical(msg, extra={"what": what, "exit_code": code})
        logging.shutdown()
        self._exit_process(code)
        raise SystemExit(code)  # only reached when a test replaces exit_process


def is_transient(exc: BaseException) -> bool:
    """True for faults that go away by themselves: lost connections, timeouts, a Redis that is
    loading or busy with a script, a broker without a leader or not (yet) available."""
    if isinstance(exc, ProducerSendError) and exc.__cause__ is not None:
        return is_transient(exc.__cause__)  # faust wraps aiokafka's error
    if isinstance(exc, KafkaError):
        return bool(exc.retriable) or isinstance(exc, _TRANSIENT_KAFKA)
    if isinstance(exc, RedisAuthenticationError | RedisAuthorizationError | NoPermissionError):
        return False
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | ReadOnlyError | TryAgainError | ClusterDownError):
        return True  # BusyLoadingError (LOADING) is a ConnectionError; READONLY is a failover in progress
    if isinstance(exc, ResponseError):
        return str(exc).split(" ", 1)[0] in _TRANSIENT_REDIS_REPLIES
    return isinstance(exc, ConnectionError | TimeoutError | asyncio.TimeoutError)


_TRANSIENT_KAFKA = (KafkaTimeoutError, BrokerNotAvailableError, KafkaUnavailableError, ProducerClosed)
_TRANSIENT_REDIS_REPLIES = frozenset({"BUSY", "LOADING", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "READONLY", "OOM"})


def create_app(settings: Settings, screener: Screener, metrics: WorkerMetrics | None = None,
               pool: PrepPool | None = None) -> tuple[faust.App, BatchRunner]:
    """The faust app with its one agent, and the runner of its batches; nothing connects until
    the worker starts.

    With a prep ``pool``, the agent runs the pipelined loop (``workers.pipelined``: two batches
    in flight, acked in order once durable); without, one batch at a time, as below."""
    app = faust.App(
        settings.kafka.group_id,
        broker=f"kafka://{settings.kafka.bootstrap}",
        broker_credentials=faust_credentials(settings.kafka.security),
        datadir=str(settings.state_dir / "faust"),
        web_enabled=False,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.kafka.commit_interval_s,
        broker_session_timeout=settings.kafka.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.kafka.session_timeout_s / 3),
        # Topics are created by ops (`stack up`, or the platform team in production).
        topic_allow_declare=False,
        topic_disable_leader=True,
        # A model call on a cold CPU can take seconds; that is not a stalled stream.
        stream_processing_timeout=300.0,
    )
    use_transport(app, settings.kafka.fetch_max_wait_s)
    events = app.topic(settings.kafka.topics.events, value_type=bytes, key_type=bytes,
                       value_serializer="raw", key_serializer="raw")
    runner = BatchRunner(app, settings, screener, metrics)
    max_batch, within = settings.batch.max_batch, settings.batch.max_wait_s

    # Concurrency 1: with more, faust can commit past events still in flight.
    @app.agent(events, concurrency=1)
    async def screen(stream: Any) -> None:  # faust.Stream; take_events is missing from its StreamT
        if pool is not None:
            await PipelinedLoop(pool, runner.score, runner.store, _raw).run(stream, max_batch, within)
            return
        async for batch in stream.take_events(max_batch, within=within):
            try:
                await runner.handle([_raw(e) for e in batch])
            except BaseException:  # cancelled mid-batch by a shutdown, or a bug escaped handle
                runner.abandon()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def _ready(sender: faust.App, **kwargs: Any) -> None:
        # A readiness marker for supervisors and the demo: partitions are assigned.
        ready = settings.state_dir / "worker.ready"
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.write_text(f"{os.getpid()}\n")
        log.info("worker ready")

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _close(sender: faust.App, **kwargs: Any) -> None:
        if pool is not None:  # first: batches still preparing are then left unacked, not screened
            pool.close()
        await runner.close()

    return app, runner


def outcome_records(topics: Topics, outcomes: Sequence[Outcome], alerts: Sequence[Alert],
                    ) -> list[tuple[str, str, bytes]]:
    """(topic, key, value) of every message a batch publishes: alerts keyed by patient (one
    partition keeps a patient's alerts in order), verdicts and dead letters by event. Everything
    is encoded before anything is sent, so a message that will not encode fails the batch before
    any of it is on the wire."""
    records = [(topics.alerts, a.patient_ref, encode_alert(a)) for a in alerts]
    for o in outcomes:
        if o.verdict is not None:
            records.append((topics.verdicts, o.verdict.event_id, encode_verdict(o.verdict)))
        elif o.deadletter is not None:
            records.append((topics.deadletter, o.message.key, encode_deadletter(o.deadletter)))
    return records


def alert_waveforms(outcomes: Sequence[Outcome]) -> dict[str, bytes]:
    """The signal of each alerting event, as received, for the triage store; none for the others."""
    return {o.alerts[0].event_id: pack_waveform(o.message.value) for o in outcomes if o.alerts}


def _to_publish(admitted: Sequence[Admitted]) -> list[Alert]:
    """The alerts subscribers see: new, held and updated ones, each target once (its latest view)."""
    latest = {a.target: a.alert for a in admitted if a.publish}
    return list(latest.values())


def _event_id(msg: RawMessage) -> str | None:
    return None if msg.key.startswith("sha256:") else msg.key


def _raw(event: faust.EventT[Any]) -> RawMessage:
    msg = event.message
    ts = int(msg.timestamp * 1000) if msg.timestamp else None
    return RawMessage.of(msg.value or b"", msg.topic, msg.partition, msg.offset, ts)
