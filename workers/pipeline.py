"""One micro-batch, from raw Kafka values to outcomes: decode, gate, infer, decide.

Everything here is synchronous and free of Kafka and Redis, so it runs in a
worker thread off the event loop and is tested as plain functions. Each message
ends in exactly one :class:`Outcome`: a verdict (with its alerts) or a dead letter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from models.bundle import Bundle
from models.engine import Engine
from models.explain import explain
from models.preprocess import prepare_record
from schemas.codec import DecodeError, Limits, decode_event, make_deadletter, peek_event_id
from schemas.errors import ECGScreenError
from schemas.messages import (
    Alert,
    DeadLetter,
    DeadLetterReason,
    ECGEvent,
    Explanation,
    Quality,
    QualityStatus,
    Verdict,
)
from workers.gate import GateConfig, RecordQuality, gate_batch
from workers.policy import PolicyConfig, decide_alerts

log = logging.getLogger("ecgscreen.pipeline")


@dataclass(frozen=True, slots=True)
class RawMessage:
    value: bytes
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    digest: str  # sha256 of the payload
    key: str  # dedup key: the source's event id when readable, else "sha256:<digest>"

    @classmethod
    def of(cls, value: bytes, topic: str, partition: int, offset: int,
           timestamp_ms: int | None = None) -> RawMessage:
        digest = hashlib.sha256(value).hexdigest()
        event_id = peek_event_id(value)
        key = event_id if event_id is not None else f"sha256:{digest}"
        return cls(value, topic, partition, offset, timestamp_ms, digest, key)


@dataclass(frozen=True, slots=True)
class Outcome:
    message: RawMessage
    verdict: Verdict | None = None
    deadletter: DeadLetter | None = None
    alerts: tuple[Alert, ...] = ()

    @property
    def kind(self) -> str:
        return "verdict" if self.verdict is not None else "deadletter"


@dataclass(slots=True)
class _Stage:
    """Wall time of each stage of one batch, in milliseconds."""

    started: float = field(default_factory=time.perf_counter)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.marks[f"{name}_ms"] = round((now - self.started) * 1000 - sum(self.marks.values()), 3)


def dead(message: RawMessage, err: ECGScreenError, limits: Limits) -> Outcome:
    letter = make_deadletter(err, message.value, message.topic, message.partition, message.offset, limits)
    return Outcome(message, deadletter=letter)


@dataclass(frozen=True)
class Screener:
    """Decode, gate, infer and decide for a batch of raw messages."""

    bundle: Bundle
    engine: Engine
    gate: GateConfig = field(default_factory=GateConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    explain_alerts: bool = True  # attribution for alerting records only (one backward pass per alert)

    def screen(self, messages: Sequence[RawMessage]) -> list[Outcome]:
        """One outcome per message, in order. Never raises on bad input."""
        stage = _Stage()
        outcomes: list[Outcome | None] = [None] * len(messages)
        events: dict[int, ECGEvent] = {}
        for i, msg in enumerate(messages):
            try:
                events[i] = decode_event(msg.value, self.limits)
            except DecodeError as err:
                outcomes[i] = dead(msg, err, self.limits)
        stage.mark("decode")
        qualities = self._gate(events)
        stage.mark("gate")
        scored = self._infer(messages, events, qualities, outcomes)
        stage.mark("infer")
        self._decide(messages, events, qualities, scored, outcomes, stage)
        return [o for o in outcomes if o is not None]

    def _gate(self, events: dict[int, ECGEvent]) -> dict[int, RecordQuality]:
        """Gate events in groups of equal shape, rate and leads (one vectorised call each)."""
        groups: dict[tuple[float, tuple[str, ...], int], list[int]] = defaultdict(list)
        for i, ev in events.items():
            groups[(ev.sampling_rate_hz, ev.leads, ev.n_samples)].append(i)
        out: dict[int, RecordQuality] = {}
        for (fs, leads, _), idx in groups.items():
            x = np.stack([events[i].signal_mv for i in idx])
            rails = _stack_rails([events[i] for i in idx])
            for i, q in zip(idx, gate_batch(x, fs, leads, self.gate, rails), strict=True):
                out[i] = q
        return out

    def _infer(self, messages: Sequence[RawMessage], events: dict[int, ECGEvent],
               qualities: dict[int, RecordQuality], outcomes: list[Outcome | None],
               ) -> dict[int, tuple[dict[str, float], tuple[str, ...], np.ndarray]]:
        """Scores and masked leads per runnable event; failures become dead letters."""
        prepared: dict[int, tuple[np.ndarray, tuple[str, ...]]] = {}
        for i, ev in events.items():
            q = qualities[i]
            if q.status is QualityStatus.REJECT:
                continue
            masked = q.bad_leads if q.status is QualityStatus.DEGRADED else ()
            try:
                prepared[i] = prepare_record(ev.signal_mv, ev.sampling_rate_hz, ev.leads,
                                             self.bundle.config.input, masked)
            except Exception as exc:  # a record the preprocessing cannot handle must not sink the batch
                outcomes[i] = dead(messages[i], _failed("preprocess", exc, ev.event_id), self.limits)
        if not prepared:
            return {}
        order = list(prepared)
        try:
            probs = self.engine.infer(np.stack([prepared[i][0] for i in order]))
        except Exception as exc:
            for i in order:
                outcomes[i] = dead(messages[i], _failed("inference", exc, events[i].event_id), self.limits)
            return {}
        task_ids = self.bundle.task_ids
        return {i: (dict(zip(task_ids, map(float, probs[k]), strict=True)), prepared[i][1], prepared[i][0])
                for k, i in enumerate(order)}

    def _decide(self, messages: Sequence[RawMessage], events: dict[int, ECGEvent],
                qualities: dict[int, RecordQuality],
                scored: dict[int, tuple[dict[str, float], tuple[str, ...], np.ndarray]],
                outcomes: list[Outcome | None], stage: _Stage) -> None:
        now = self.clock()
        batch_ms = {**stage.marks, "batch_size": float(len(messages))}
        for i, ev in events.items():
            if outcomes[i] is not None:
                continue
            quality = _quality(qualities[i])
            scores, masked, x = scored.get(i, ({}, (), None))
            alerts = decide_alerts(ev, quality, scores, self.bundle.config.tasks, self.bundle.ref, now,
                                   masked, self.policy)
            if alerts and x is not None and self.explain_alerts:
                alerts = self._explain(ev.event_id, alerts, x)
            timings = {**batch_ms, "queue_ms": _queue_ms(messages[i], now)}
            verdict = Verdict(
                event_id=ev.event_id, patient_ref=ev.patient_ref, site=ev.source.site,
                acquired_at=ev.acquired_at, model=self.bundle.ref, quality=quality, scores=scores,
                alert_ids=tuple(a.alert_id for a in alerts), timings_ms=timings, processed_at=now,
                masked_leads=masked,
            )
            outcomes[i] = Outcome(messages[i], verdict=verdict, alerts=tuple(alerts))

    def _explain(self, event_id: str, alerts: list[Alert], x: np.ndarray) -> list[Alert]:
        """Attach an explanation to each alert, once per task; a failure logs and leaves it None,
        because an explanation is an aid to the reader and must never cost the verdict."""
        source = self.engine if getattr(self.engine, "eager_model", None) is not None else self.bundle
        done: dict[str, Explanation | None] = {}
        for alert in alerts:
            if alert.task.id not in done:
                try:
                    done[alert.task.id] = explain(source, x, self.bundle.task_ids.index(alert.task.id))
                except Exception as exc:
                    log.warning("explanation failed", extra={"event_id": event_id, "error": type(exc).__name__})
                    done[alert.task.id] = None
        return [dataclasses.replace(a, explanation=done[a.task.id]) for a in alerts]


def _quality(q: RecordQuality) -> Quality:
    return Quality(q.status, tuple(r.value for r in q.reasons), q.bad_leads)


def _stack_rails(events: Sequence[ECGEvent]) -> np.ndarray | None:
    """Rails for the gate's clipping check; float32 sources have none."""
    if any(ev.rails_mv is None for ev in events):
        return None
    return np.stack([ev.rails_mv for ev in events if ev.rails_mv is not None])


def _queue_ms(message: RawMessage, now: datetime) -> float:
    if message.timestamp_ms is None:
        return -1.0
    return round(now.timestamp() * 1000 - message.timestamp_ms, 3)


class ProcessingError(ECGScreenError):
    """A valid event the worker could not screen (preprocessing or model failure)."""

    def __init__(self, detail: str, event_id: str | None) -> None:
        super().__init__(DeadLetterReason.PROCESSING_FAILED.value, detail)
        self.event_id = event_id


def _failed(stage: str, exc: Exception, event_id: str | None) -> ProcessingError:
    # Log the type only: exception text from numeric code can quote signal values.
    log.error("screening stage failed", extra={"stage": stage, "event_id": event_id, "error": type(exc).__name__})
    return ProcessingError(f"{stage} failed ({type(exc).__name__}); replay the event once fixed", event_id)


def classify(messages: Sequence[RawMessage], recorded: Sequence[tuple[str, str] | None],
             ) -> tuple[list[int], list[int], list[int]]:
    """Split a batch into fresh, duplicate and conflicting messages.

    ``recorded[i]`` is the (digest, kind) already stored for message i's key, if any.
    A duplicate carries a payload identical to one already handled (here or in an
    earlier batch) and is skipped; a conflict reuses an event id for different
    content, which a person must look at, so it is dead-lettered.
    """
    fresh, dup, conflict = [], [], []
    seen: dict[str, str] = {}
    for i, msg in enumerate(messages):
        key, digest = msg.key, msg.digest
        prior = recorded[i][0] if recorded[i] is not None else seen.get(key)  # type: ignore[index]
        if prior is None:
            seen[key] = digest
            fresh.append(i)
        elif prior == digest:
            dup.append(i)
        else:
            conflict.append(i)
    return fresh, dup, conflict
