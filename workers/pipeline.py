"""One micro-batch, from raw Kafka values to outcomes: decode, gate, preprocess, infer, explain, decide.

Everything here is synchronous and free of Kafka and Redis, so it runs in a
worker thread off the event loop and is tested as plain functions. Each message
ends in exactly one :class:`Outcome`: a verdict (with its alerts) or a dead letter.

Two halves: :func:`prepare` (decode, gate, preprocess: CPU only, no model, so the pipelined
worker runs it in a pool process) and :meth:`Screener.finish` (infer, explain, decide).
Verdicts carry each stage's own wall time: ``decode_ms``, ``gate_ms``, ``preprocess_ms``,
``infer_ms`` (the model call only), ``explain_ms`` (policy and explanations), ``queue_ms``
(broker timestamp to verdict). ``persist_ms`` follows the verdict's publication, so it is in
the worker's log line for the batch, not in the verdict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from models.bundle import Bundle
from models.engine import Engine
from models.explain import explain_many
from schemas.codec import DecodeError, Limits, make_deadletter, peek_event_id
from schemas.errors import ECGScreenError
from schemas.messages import (
    Alert,
    DeadLetter,
    DeadLetterReason,
    Explanation,
    Quality,
    Verdict,
)
from workers.gate import GateConfig, RecordQuality
from workers.policy import PolicyConfig, decide_alerts, synthetic_label_tasks
from workers.prep import Failure, Prepared, Stage, prepare

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
    explain_alerts: bool = True  # attribution for alerting records only (one batched backward pass)
    # Explanations only while the batch's oldest event has waited at most this long since the broker
    # took it; None: always. A worker that is behind (a backlog after an outage, a burst) sends its
    # alerts without them and catches up faster (on a CPU an explanation costs a few forward passes
    # of its record; docs/performance.md measures a backlog both ways); the alert must not wait.
    explain_max_lag_s: float | None = None

    def screen(self, messages: Sequence[RawMessage], prepared: Prepared | None = None) -> list[Outcome]:
        """One outcome per message, in order. Never raises on bad input.

        ``prepared`` is this batch's CPU work done elsewhere (the pipelined worker's pool);
        without it, that work runs here first (the serial screener): the outcomes are the same.
        """
        if prepared is None:
            prepared = prepare([m.value for m in messages], self.bundle.config.input, self.gate, self.limits)
        return self.finish(messages, prepared)

    def finish(self, messages: Sequence[RawMessage], prep: Prepared) -> list[Outcome]:
        """Infer, explain and decide for a prepared batch."""
        stage = Stage()
        outcomes: list[Outcome | None] = [None] * len(messages)
        for i, failure in prep.failures.items():
            outcomes[i] = dead(messages[i], self._error(failure), self.limits)
        scored = self._infer(messages, prep, outcomes)
        stage.mark("infer")
        alerts = self._alerts(prep, scored, outcomes)
        if self._explaining(messages, alerts):
            alerts = self._explain(prep, scored, alerts)
        stage.mark("explain")
        timings = {**prep.timings_ms, **stage.marks, "batch_size": float(len(messages))}
        self._verdicts(messages, prep, scored, alerts, outcomes, timings)
        return [o for o in outcomes if o is not None]

    def _error(self, failure: Failure) -> ECGScreenError:
        if failure.stage == "decode":
            return DecodeError(DeadLetterReason(failure.reason), failure.detail, failure.event_id)
        return _failed(failure.stage, failure.error_type, failure.event_id)

    def _infer(self, messages: Sequence[RawMessage], prep: Prepared, outcomes: list[Outcome | None],
               ) -> dict[int, tuple[dict[str, float], int]]:
        """Scores and model-input row per runnable record; a model failure dead-letters them."""
        order = sorted(prep.masked)
        if not order:
            return {}
        try:
            probs = self.engine.infer(prep.x)
        except Exception as exc:
            for i in order:
                err = _failed("inference", type(exc).__name__, prep.events[i].event_id)
                outcomes[i] = dead(messages[i], err, self.limits)
            return {}
        task_ids = self.bundle.task_ids
        finite = np.asarray(np.isfinite(probs).all(axis=1))
        for k in np.flatnonzero(~finite):  # NaN/Inf is no score: the policy must never see it
            i = order[k]
            outcomes[i] = dead(messages[i], _non_finite(prep.events[i].event_id), self.limits)
        return {i: (dict(zip(task_ids, map(float, probs[k]), strict=True)), k)
                for k, i in enumerate(order) if finite[k]}

    def _alerts(self, prep: Prepared, scored: dict[int, tuple[dict[str, float], int]],
                outcomes: list[Outcome | None]) -> dict[int, list[Alert]]:
        now = self.clock()
        out: dict[int, list[Alert]] = {}
        for i, ev in prep.events.items():
            if outcomes[i] is None:
                scores = scored[i][0] if i in scored else {}
                out[i] = decide_alerts(ev, _quality(prep.qualities[i]), scores, self.bundle.config.tasks,
                                       self.bundle.ref, now, prep.masked.get(i, ()), self.policy)
        return out

    def _explaining(self, messages: Sequence[RawMessage], alerts: dict[int, list[Alert]]) -> bool:
        if not self.explain_alerts:
            return False
        lag = _batch_lag_s(messages, self.clock())
        if self.explain_max_lag_s is None or lag is None or lag <= self.explain_max_lag_s:
            return True
        n = sum(len(found) for found in alerts.values())
        if n:
            log.warning("alerts sent without explanations: the worker is behind the feed",
                        extra={"alerts": n, "lag_s": round(lag, 1), "explain_max_lag_s": self.explain_max_lag_s})
        return False

    def _explain(self, prep: Prepared, scored: dict[int, tuple[dict[str, float], int]],
                 alerts: dict[int, list[Alert]]) -> dict[int, list[Alert]]:
        """Explanations for every alerting (record, task) pair of the batch in one backward pass;
        a failure logs and leaves them None: an explanation is an aid to the reader and must
        never cost the verdict."""
        pairs = sorted({(i, a.task.id) for i, found in alerts.items() for a in found if i in scored})
        if not pairs:
            return alerts
        source = self.engine if getattr(self.engine, "eager_model", None) is not None else self.bundle
        task_ids = self.bundle.task_ids
        try:
            found = explain_many(source, prep.x[[scored[i][1] for i, _ in pairs]],
                                 [task_ids.index(t) for _, t in pairs])
            done: dict[tuple[int, str], Explanation | None] = dict(zip(pairs, found, strict=True))
        except Exception as exc:
            log.warning("explanation failed", extra={"alerts": len(pairs), "error": type(exc).__name__})
            done = {}
        return {i: [dataclasses.replace(a, explanation=done.get((i, a.task.id))) for a in found_alerts]
                for i, found_alerts in alerts.items()}

    def _verdicts(self, messages: Sequence[RawMessage], prep: Prepared,
                  scored: dict[int, tuple[dict[str, float], int]], alerts: dict[int, list[Alert]],
                  outcomes: list[Outcome | None], timings: dict[str, float]) -> None:
        now = self.clock()
        for i, ev in prep.events.items():
            if outcomes[i] is not None:
                continue
            found = alerts[i]
            queue = _queue_ms(messages[i], now)
            scores = scored[i][0] if i in scored else {}
            verdict = Verdict(
                event_id=ev.event_id, patient_ref=ev.patient_ref, site=ev.source.site,
                acquired_at=ev.acquired_at, model=self.bundle.ref, quality=_quality(prep.qualities[i]),
                scores=scores, alert_ids=tuple(a.alert_id for a in found),
                timings_ms=timings if queue is None else {**timings, "queue_ms": queue}, processed_at=now,
                masked_leads=prep.masked.get(i, ()),
                synthetic_labels=synthetic_label_tasks(self.bundle.config.tasks, scores),
            )
            outcomes[i] = Outcome(messages[i], verdict=verdict, alerts=tuple(found))


def _quality(q: RecordQuality) -> Quality:
    return Quality(q.status, tuple(r.value for r in q.reasons), q.bad_leads)


def _batch_lag_s(messages: Sequence[RawMessage], now: datetime) -> float | None:
    """How long the batch's oldest event has waited since the broker took it; None without timestamps."""
    stamps = [m.timestamp_ms for m in messages if m.timestamp_ms is not None]
    return None if not stamps else now.timestamp() - min(stamps) / 1000


def _queue_ms(message: RawMessage, now: datetime) -> float | None:
    """From the broker's timestamp to the verdict (clock skew floored at 0); None without one."""
    if message.timestamp_ms is None:
        return None
    return max(0.0, round(now.timestamp() * 1000 - message.timestamp_ms, 3))


class ProcessingError(ECGScreenError):
    """A valid event the worker could not screen (preprocessing or model failure)."""

    def __init__(self, detail: str, event_id: str | None,
                 reason: DeadLetterReason = DeadLetterReason.PROCESSING_FAILED) -> None:
        super().__init__(reason.value, detail)
        self.event_id = event_id


def _failed(stage: str, error_type: str, event_id: str | None) -> ProcessingError:
    # Log the type only: exception text from numeric code can quote signal values.
    log.error("screening stage failed", extra={"stage": stage, "event_id": event_id, "error": error_type})
    return ProcessingError(f"{stage} failed ({error_type}); replay the event once fixed", event_id)


def _non_finite(event_id: str) -> ProcessingError:
    log.error("model output not finite", extra={"stage": "inference", "event_id": event_id})
    return ProcessingError("the model returned NaN or Inf for this record (an overflowing head, or a "
                           "reduced-precision engine); replay the event once the bundle or engine is fixed",
                           event_id, DeadLetterReason.NON_FINITE_OUTPUT)


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
