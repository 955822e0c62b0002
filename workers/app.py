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

A durable write that keeps failing past ``durable_write_timeout_s`` stops the
process without returning: faust's ``take_events`` acks in ``finally``, so an
exception escaping the loop body would lose the batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import faust

from schemas.codec import encode_alert, encode_deadletter, encode_verdict
from schemas.errors import ECGScreenError
from schemas.messages import Alert, DeadLetterReason
from schemas.waveform import pack_waveform
from workers.kafka_auth import faust_credentials
from workers.metrics import WorkerMetrics
from workers.pipeline import Outcome, ProcessingError, RawMessage, Screener, classify, dead
from workers.pipelined import PipelinedLoop
from workers.policy import Admission
from workers.prep import Prepared
from workers.prep_pool import PrepPool
from workers.settings import Settings
from workers.triage import Admitted, RecordedOutcome, TriageStore

log = logging.getLogger("ecgscreen.worker")
T = TypeVar("T")
EX_TEMPFAIL = 75


class BatchRunner:
    """Takes one batch from faust to durable outcomes; never raises."""

    def __init__(self, app: faust.App, settings: Settings, screener: Screener,
                 metrics: WorkerMetrics | None = None) -> None:
        self._app = app
        self._settings = settings
        self._screener = screener
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="screen")
        self._triage: TriageStore | None = None

    @property
    def triage(self) -> TriageStore:
        if self._triage is None:
            self._triage = TriageStore.from_settings(self._settings.redis, self._settings.policy)
        return self._triage

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._triage is not None:
            await self._triage.close()

    async def handle(self, messages: Sequence[RawMessage], prepared: Prepared | None = None) -> None:
        """``prepared``: the batch's decode/gate/preprocess already done by the pipelined loop's pool."""
        started = time.perf_counter()
        try:
            outcomes, dups = await self._screen(messages, prepared)
        except Exception:
            # A bug, not bad input (bad input is a dead letter inside the screener):
            # record the batch as dead letters rather than lose or loop on it.
            log.exception("batch failed; dead-lettering it", extra={"batch_size": len(messages)})
            outcomes, dups = [self._failed(m) for m in messages], 0
        persist_started = time.perf_counter()
        admitted = await self._persist(outcomes, dups)
        persist_s = time.perf_counter() - persist_started
        if self._metrics is not None:
            self._metrics.observe_batch(messages, outcomes, dups, admitted, persist_s)
        stages = next((o.verdict.timings_ms for o in outcomes if o.verdict is not None), {})
        log.info("batch done", extra={
            **{k: v for k, v in stages.items() if k.endswith("_ms") and k != "queue_ms"},
            "persist_ms": round(persist_s * 1000, 1),
            "batch_size": len(messages), "duplicates": dups,
            "verdicts": sum(o.kind == "verdict" for o in outcomes),
            "deadletters": sum(o.kind == "deadletter" for o in outcomes),
            "alerts": sum(len(o.alerts) for o in outcomes),
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 1)})

    async def _screen(self, messages: Sequence[RawMessage], prepared: Prepared | None,
                      ) -> tuple[list[Outcome], int]:
        recorded = await self._durably("read outcomes", lambda: self.triage.recorded_outcomes(
            [m.key for m in messages]))
        fresh, dups, conflicts = classify(messages, [(r.digest, r.kind) if r else None for r in recorded])
        batch = [messages[i] for i in fresh]
        loop = asyncio.get_running_loop()
        part = prepared.select(fresh) if prepared is not None else None
        outcomes = await loop.run_in_executor(self._executor, self._screener.screen, batch, part) if batch else []
        outcomes += [self._conflict(messages[i]) for i in conflicts]
        return outcomes, len(dups)

    def _conflict(self, msg: RawMessage) -> Outcome:
        err = ECGScreenError(DeadLetterReason.EVENT_ID_CONFLICT.value,
                             "this event id was already recorded with different content; "
                             "send corrections under a new event id")
        return dead(msg, err, self._screener.limits)

    def _failed(self, msg: RawMessage) -> Outcome:
        event_id = None if msg.key.startswith("sha256:") else msg.key
        return dead(msg, ProcessingError("the worker failed on this batch; replay it", event_id),
                    self._screener.limits)

    async def _persist(self, outcomes: Sequence[Outcome], dups: int) -> list[Admitted]:
        alerts = [a for o in outcomes for a in o.alerts]
        waves = alert_waveforms(outcomes)
        # The policy's dedup and rate limit run here, inside the idempotent add script:
        # a replayed batch gets the same admissions back and republishes the same alerts.
        admitted = await self._durably("triage", lambda: self.triage.add_alerts(alerts, waves))
        await self._durably("publish", lambda: self._publish(outcomes, _to_publish(admitted)))
        done = [(o.message.key, RecordedOutcome(o.message.digest, o.kind)) for o in outcomes]
        ttl = self._settings.redis.outcome_ttl_s
        new = sum(a.admission is Admission.ADDED and not a.replay for a in admitted)
        counts = {"duplicates_skipped": dups, "triage_entries_added": new}
        await self._durably("record outcomes", lambda: self.triage.record_outcomes(done, ttl, counts))
        return admitted

    async def _publish(self, outcomes: Sequence[Outcome], alerts: Sequence[Alert]) -> None:
        topics = self._settings.kafka.topics
        sends: list[Awaitable[Any]] = []
        for alert in alerts:
            sends.append(await self._send(topics.alerts, alert.patient_ref, encode_alert(alert)))
        for o in outcomes:
            if o.verdict is not None:
                sends.append(await self._send(topics.verdicts, o.verdict.event_id, encode_verdict(o.verdict)))
            elif o.deadletter is not None:
                sends.append(await self._send(topics.deadletter, o.message.key, encode_deadletter(o.deadletter)))
        await asyncio.gather(*sends)  # the broker's acks (acks=all): durable from here

    async def _send(self, topic: str, key: str, value: bytes) -> Awaitable[Any]:
        producer = self._app.producer
        return await producer.send(topic, key.encode(), value, partition=None, timestamp=None, headers=None)

    async def _durably(self, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """Retry with backoff; past the deadline, stop without acking so the batch is redelivered."""
        deadline = time.monotonic() + self._settings.durable_write_timeout_s
        delay, attempt = 0.1, 0
        while True:
            attempt += 1
            try:
                return await write()
            except Exception:
                if time.monotonic() + delay > deadline:
                    log.critical("durable write keeps failing; stopping without ack",
                                 extra={"what": what, "attempt": attempt})
                    logging.shutdown()
                    os._exit(EX_TEMPFAIL)
                log.warning("durable write failed; retrying", exc_info=True,
                            extra={"what": what, "attempt": attempt})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def create_app(settings: Settings, screener: Screener, metrics: WorkerMetrics | None = None,
               pool: PrepPool | None = None) -> faust.App:
    """The faust app with its one agent; nothing connects until the worker starts.

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
    events = app.topic(settings.kafka.topics.events, value_type=bytes, key_type=bytes,
                       value_serializer="raw", key_serializer="raw")
    runner = BatchRunner(app, settings, screener, metrics)
    max_batch, within = settings.batch.max_batch, settings.batch.max_wait_s

    # Concurrency 1: with more, faust can commit past events still in flight.
    @app.agent(events, concurrency=1)
    async def screen(stream: Any) -> None:  # faust.Stream; take_events is missing from its StreamT
        if pool is not None:
            await PipelinedLoop(pool, runner.handle, _raw).run(stream, max_batch, within)
            return
        async for batch in stream.take_events(max_batch, within=within):
            await runner.handle([_raw(e) for e in batch])

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

    return app


def alert_waveforms(outcomes: Sequence[Outcome]) -> dict[str, bytes]:
    """The signal of each alerting event, as received, for the triage store; none for the others."""
    return {o.alerts[0].event_id: pack_waveform(o.message.value) for o in outcomes if o.alerts}


def _to_publish(admitted: Sequence[Admitted]) -> list[Alert]:
    """The alerts subscribers see: new, held and updated ones, each target once (its latest view)."""
    latest = {a.target: a.alert for a in admitted if a.publish}
    return list(latest.values())


def _raw(event: faust.EventT[Any]) -> RawMessage:
    msg = event.message
    ts = int(msg.timestamp * 1000) if msg.timestamp else None
    return RawMessage.of(msg.value or b"", msg.topic, msg.partition, msg.offset, ts)
