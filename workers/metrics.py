"""The worker's Prometheus metrics and the hooks that feed them.

One :class:`WorkerMetrics` per process, on its own registry (no module globals),
fed by :meth:`WorkerMetrics.observe_batch` once a batch's outcomes are durable and
by a faust timer for consumer lag. Names and labels are what the Grafana dashboard
(``ops/deploy/grafana/dashboards/ecgscreen.json``) queries; a test holds them together.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC
from typing import Any

from faust.types import TP
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

from workers.health import Health
from workers.pipeline import Outcome, RawMessage
from workers.triage import Admitted

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Acquisition to alert spans a live feed (seconds) to a backfill of old ECGs (days).
ACQUIRED_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0)
LAG_INTERVAL_S = 5.0
log = logging.getLogger("ecgscreen.metrics")


def process_registry() -> CollectorRegistry:
    """A registry with the process's own figures (memory, CPU, open files, GC, Python version)."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


class WorkerMetrics:
    """Counters, histograms and gauges of the screening worker."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or process_registry()
        self.events = Counter("ecgscreen_events", "Events by recorded outcome (duplicate: skipped redelivery)",
                              ["outcome"], registry=r)
        self.deadletters = Counter("ecgscreen_deadletters", "Dead letters by reason", ["reason"], registry=r)
        self.gate = Counter("ecgscreen_gate_records", "Screened records by signal-quality status", ["status"],
                            registry=r)
        self.gate_reasons = Counter("ecgscreen_gate_reasons", "Signal-quality findings by reason", ["reason"],
                                    registry=r)
        self.alerts = Counter("ecgscreen_alerts", "Candidate alerts by task and what triage did with them",
                              ["task", "admission"], registry=r)
        self.unexplained = Counter("ecgscreen_alerts_unexplained", "Candidate alerts without an explanation "
                                   "(the worker was more than ECGSCREEN_EXPLAIN_MAX_LAG_S behind, or it failed)",
                                   registry=r)
        self.batch_size = Histogram("ecgscreen_batch_size", "Events per micro-batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.stage_seconds = Histogram("ecgscreen_stage_seconds", "Wall time of each stage of a batch",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.event_to_verdict = Histogram("ecgscreen_event_to_verdict_seconds",
                                          "From the event's Kafka timestamp to its outcome being durable",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.acquired_to_alert = Histogram("ecgscreen_acquired_to_alert_seconds",
                                           "From the ECG's acquisition to its alert being published",
                                           buckets=ACQUIRED_BUCKETS, registry=r)
        self.lag = Gauge("ecgscreen_consumer_lag", "Events on the topic not yet handled, per assigned partition",
                         ["topic", "partition"], registry=r)
        self.model = Info("ecgscreen_model", "The loaded bundle and the engine that runs it", registry=r)
        self._next_offset: dict[tuple[str, int], int] = {}
        self._lag_labels: set[tuple[str, str]] = set()
        # The consumer's last-seen high watermark of a partition (set by ``attach``): lag after each batch.
        self.highwater: Callable[[Any], int | None] | None = None

    def set_model(self, name: str, version: str, sha256: str, engine: str, trained: bool) -> None:
        self.model.info({"name": name, "version": version, "model_sha256": sha256, "engine": engine,
                         "trained": str(trained).lower()})

    def observe_batch(self, messages: Sequence[RawMessage], outcomes: Sequence[Outcome], duplicates: int,
                      admitted: Iterable[Admitted], persist_s: float) -> None:
        """Count a batch whose outcomes are now durable; a failure here costs figures, never the batch."""
        try:
            self._observe(messages, outcomes, duplicates, admitted, persist_s)
        except Exception as exc:
            log.error("metrics of a batch not recorded", extra={"error": type(exc).__name__})

    def _observe(self, messages: Sequence[RawMessage], outcomes: Sequence[Outcome], duplicates: int,
                 admitted: Iterable[Admitted], persist_s: float) -> None:
        now = time.time()
        self.batch_size.observe(len(messages))
        self.events.labels("duplicate").inc(duplicates)
        for m in messages:
            key = (m.topic, m.partition)
            self._next_offset[key] = max(self._next_offset.get(key, 0), m.offset + 1)
        if self.highwater is not None:
            for topic, partition in {(m.topic, m.partition) for m in messages}:
                hw = self.highwater(TP(topic, partition))
                if hw is not None:
                    self.lag.labels(topic, str(partition)).set(max(0, hw - self._next_offset[(topic, partition)]))
        for o in outcomes:
            self._outcome(o, now)
        self._stages(outcomes, persist_s)
        for a in admitted:
            self.alerts.labels(a.alert.task.id, a.admission.value).inc()
            if a.publish and not a.replay:
                self.acquired_to_alert.observe(max(0.0, now - a.alert.acquired_at.astimezone(UTC).timestamp()))

    def _outcome(self, o: Outcome, now: float) -> None:
        self.events.labels(o.kind).inc()
        self.unexplained.inc(sum(a.explanation is None for a in o.alerts))
        if o.deadletter is not None:
            self.deadletters.labels(o.deadletter.reason.value).inc()
        if o.verdict is not None:
            self.gate.labels(o.verdict.quality.status.value).inc()
            for reason in o.verdict.quality.reasons:
                self.gate_reasons.labels(reason).inc()
        if o.message.timestamp_ms is not None:
            self.event_to_verdict.observe(max(0.0, now - o.message.timestamp_ms / 1000))

    def _stages(self, outcomes: Sequence[Outcome], persist_s: float) -> None:
        """Stage times travel in each verdict's ``timings_ms`` (the same for the whole batch)."""
        timings = next((o.verdict.timings_ms for o in outcomes if o.verdict is not None), {})
        for key, ms in timings.items():
            if key.endswith("_ms") and key != "queue_ms":
                self.stage_seconds.labels(key.removesuffix("_ms")).observe(ms / 1000)
        if "persist_ms" not in timings:
            self.stage_seconds.labels("persist").observe(persist_s)

    async def update_lag(self, consumer: Any, topic: str) -> None:
        """Lag per assigned partition of ``topic``: the high watermark less the next offset to handle
        (the consumer's position before the first batch on a partition)."""
        tps = [tp for tp in consumer.assignment() if tp.topic == topic]
        highwaters = await consumer.highwaters(*tps) if tps else {}
        seen: set[tuple[str, str]] = set()
        for tp, hw in highwaters.items():
            nxt = self._next_offset.get((tp.topic, tp.partition))
            if nxt is None:
                nxt = await consumer.position(tp)
            if nxt is None:
                continue
            labels = (tp.topic, str(tp.partition))
            self.lag.labels(*labels).set(max(0, hw - nxt))
            seen.add(labels)
        for labels in self._lag_labels - seen:  # revoked in a rebalance: another worker reports it now
            self.lag.remove(*labels)
            self._next_offset.pop((labels[0], int(labels[1])), None)  # stale if it comes back later
        self._lag_labels = seen


def attach(app: Any, metrics: WorkerMetrics, health: Health, events_topic: str) -> None:
    """Register the worker's ticks (liveness), the lag timer and draining on the faust app."""

    metrics.highwater = lambda tp: app.consumer.highwater(tp)

    # faust passes the app to a timer function (its wrapper takes *args).
    @app.timer(interval=1.0)
    async def ecgscreen_tick(_: Any) -> None:
        health.tick()

    @app.timer(interval=LAG_INTERVAL_S)
    async def ecgscreen_lag(_: Any) -> None:
        try:
            await metrics.update_lag(app.consumer, events_topic)
        except Exception as exc:  # a broker hiccup leaves the last figures; it must not end the timer
            log.warning("consumer lag not updated", extra={"error": type(exc).__name__})

    @app.on_before_shutdown.connect
    async def _draining(sender: Any, **kwargs: Any) -> None:
        health.draining = True



class SubscriberMetrics:
    """An alert-topic subscriber's figures: what it handled, what failed, how far behind it is."""

    def __init__(self, subscriber: str, health: Health, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or process_registry()
        self.subscriber, self.health = subscriber, health
        self.alerts = Counter("ecgscreen_subscriber_alerts", "Alerts handled, by result", ["subscriber", "result"],
                              registry=r)
        self.failures = Counter("ecgscreen_subscriber_failures",
                                "Failures: undecodable messages skipped, delivery attempts that failed",
                                ["subscriber", "reason"], registry=r)
        self.lag = Gauge("ecgscreen_subscriber_lag", "Alerts on the topic not yet handled, per partition",
                         ["subscriber", "topic", "partition"], registry=r)

    def handled(self, result: str) -> None:
        self.alerts.labels(self.subscriber, result).inc()

    def failed(self, reason: str) -> None:
        self.failures.labels(self.subscriber, reason).inc()

    def batch_done(self, highwater: Callable[[Any], int | None], done: dict[Any, int]) -> None:
        """After a batch: lag per partition from the consumer's last-seen high watermark."""
        for tp, next_offset in done.items():
            hw = highwater(tp)
            if hw is not None:
                self.lag.labels(self.subscriber, tp.topic, str(tp.partition)).set(max(0, hw - next_offset))
