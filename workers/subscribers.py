"""Subscribers of the alert topic: a terminal tail and the FHIR export.

Both read ``ecg.alerts`` either ephemerally (no group, from the start or the
end) or in a consumer group whose offsets are committed only after a batch was
handled, so an export that stops half way resumes where it stopped. The topic is
at-least-once and an updated alert is republished under its id, so the export
dedups by alert id *and* content: a redelivery is skipped, an update rewritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import DecodeError, decode_alert
from schemas.errors import ECGScreenError
from schemas.messages import Alert, Priority, TaskGroup
from workers.fhir import alert_bundle, bundle_digest, fhir_id, to_json
from workers.kafka_auth import aiokafka_auth
from workers.policy import PRIORITY_BAND
from workers.settings import KafkaSecurity

if TYPE_CHECKING:
    from workers.metrics import SubscriberMetrics

log = logging.getLogger("ecgscreen.subscribers")
_RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


class ExportError(ECGScreenError):
    """The FHIR export could not deliver an alert; nothing after it is committed."""

    def __init__(self, alert_id: str, detail: str) -> None:
        super().__init__("fhir_export_failed", f"{alert_id}: {detail}")
        self.alert_id = alert_id


class ExportResult(StrEnum):
    WRITTEN = "written"  # first delivery of this alert
    UPDATED = "updated"  # the alert changed (a higher score for the open alert): delivered again
    DUPLICATE = "duplicate"  # already delivered with this content: skipped


# --- tail: filter and format, pure ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertFilter:
    sites: frozenset[str] = frozenset()  # empty: every site
    groups: frozenset[TaskGroup] = frozenset()
    min_priority: Priority | None = None

    def matches(self, alert: Alert) -> bool:
        if self.sites and alert.site not in self.sites:
            return False
        if self.groups and alert.task.group not in self.groups:
            return False
        return self.min_priority is None or PRIORITY_BAND[alert.priority] <= PRIORITY_BAND[self.min_priority]


def alert_line(alert: Alert) -> str:
    """One line per alert for a terminal; the patient ref stays out (it is on the record)."""
    ppv = "   -  " if alert.expected_ppv is None else f"{alert.expected_ppv:6.1%}"
    flags = f" [{', '.join(alert.flags)}]" if alert.flags else ""
    return (f"{alert.created_at:%Y-%m-%dT%H:%M:%SZ} {alert.priority.value:<7} {alert.site:<14} "
            f"{alert.task.id:<22} score {alert.score:.3f} (thr {alert.threshold:.2f}) ppv {ppv} "
            f"{alert.alert_id} event {alert.event_id}{flags}")


# --- reading the topic ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscription:
    bootstrap: str
    topic: str
    group_id: str | None = None  # None: ephemeral, nothing committed
    from_beginning: bool = True
    max_alerts: int | None = None  # stop after this many matching alerts
    idle_timeout_s: float | None = None  # stop after this long without a message
    filter: AlertFilter = field(default_factory=AlertFilter)
    session_timeout_s: float = 10.0  # group membership; Tansu completes a join after half of it
    security: KafkaSecurity = field(default_factory=KafkaSecurity)


async def consume(sub: Subscription, handle: Callable[[Alert], Awaitable[None]],
                  metrics: SubscriberMetrics | None = None) -> int:
    """Feed matching alerts to ``handle``; commit a group's offsets after each handled batch."""
    consumer = AIOKafkaConsumer(sub.topic, bootstrap_servers=sub.bootstrap, group_id=sub.group_id,
                                enable_auto_commit=False,
                                auto_offset_reset="earliest" if sub.from_beginning else "latest",
                                session_timeout_ms=int(sub.session_timeout_s * 1000),
                                heartbeat_interval_ms=int(min(3.0, sub.session_timeout_s / 3) * 1000),
                                **aiokafka_auth(sub.security))
    await consumer.start()
    try:
        return await _drain(consumer, sub, handle, metrics)
    finally:
        await consumer.stop()


async def _drain(consumer: AIOKafkaConsumer, sub: Subscription, handle: Callable[[Alert], Awaitable[None]],
                 metrics: SubscriberMetrics | None) -> int:
    seen, idle = 0, 0.0
    while True:
        if metrics is not None:
            metrics.health.tick()  # liveness: this loop turns at least every half second
        records = await consumer.getmany(timeout_ms=500)
        if not records:
            idle += 0.5
            if sub.idle_timeout_s is not None and idle >= sub.idle_timeout_s:
                return seen
            continue
        idle = 0.0
        done, seen, stop = await _handle_batch(records, sub, handle, seen, metrics)
        if sub.group_id is not None and done:
            await consumer.commit(done)  # only what was handled: a stop mid-batch leaves the rest
        if metrics is not None:
            metrics.batch_done(consumer.highwater, done)
        if stop:
            return seen


async def _handle_batch(records: dict[TopicPartition, list[Any]], sub: Subscription,
                        handle: Callable[[Alert], Awaitable[None]], seen: int, metrics: SubscriberMetrics | None,
                        ) -> tuple[dict[TopicPartition, int], int, bool]:
    """Offsets to commit (next to read, per partition), alerts handled so far, whether to stop."""
    done: dict[TopicPartition, int] = {}
    for tp, recs in records.items():
        for rec in recs:
            alert = _decode(rec.value)
            if alert is None and metrics is not None:
                metrics.failed("undecodable")
            if alert is not None and sub.filter.matches(alert):
                await handle(alert)
                seen += 1
            done[tp] = rec.offset + 1
            if sub.max_alerts is not None and seen >= sub.max_alerts:
                return done, seen, True
    return done, seen, False


def _decode(value: bytes | None) -> Alert | None:
    try:
        return decode_alert(value or b"")
    except DecodeError as err:
        # A foreign message on the topic is skipped, not fatal: the producer is not ours to fix here.
        log.warning("undecodable alert skipped", extra={"reason": err.reason})
        return None


# --- FHIR export ----------------------------------------------------------------------------


class Sink(Protocol):
    async def deliver(self, alert_id: str, body: bytes) -> None: ...


class FileSink:
    """One ``{id}.json`` per alert in a folder; written atomically (temp file + rename)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, alert_id: str) -> Path:
        return self.folder / f"{fhir_id(alert_id)}.json"

    async def deliver(self, alert_id: str, body: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(alert_id)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_bytes(body)
        os.replace(tmp, path)

    def delivered(self) -> dict[str, str]:
        """Digests of what is already on disk, so a restarted export skips it."""
        out = {}
        # A half-written or foreign file is not a delivery: the alert is exported again.
        for path in self.folder.glob("*.json") if self.folder.exists() else ():
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, OSError):
                bundle = orjson.loads(path.read_bytes())
                out[bundle["entry"][0]["resource"]["identifier"][0]["value"]] = bundle_digest(bundle)
        return out


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 6
    backoff_s: float = 0.5  # doubled per attempt
    max_backoff_s: float = 30.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


class HttpSink:
    """POSTs each alert's transaction Bundle to a FHIR endpoint, retrying transient failures."""

    def __init__(self, endpoint: str, retry: RetryPolicy = RetryPolicy(), timeout_s: float = 10.0,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.endpoint = endpoint
        self.retry = retry
        self.timeout_s = timeout_s
        self._sleep = sleep
        self._on_failure = on_failure  # told of each failed attempt ("http_503", "unreachable")

    async def deliver(self, alert_id: str, body: bytes) -> None:
        for attempt in range(1, self.retry.max_attempts + 1):
            status = await asyncio.to_thread(self._post, body)
            if 200 <= status < 300:
                return
            if self._on_failure is not None:
                self._on_failure(f"http_{status}" if status else "unreachable")
            if status not in _RETRYABLE_HTTP and status != 0:
                raise ExportError(alert_id, f"the FHIR server refused the bundle (HTTP {status}); fix and replay")
            log.warning("FHIR POST failed; retrying", extra={"alert_id": alert_id, "attempt": attempt})
            if attempt < self.retry.max_attempts:
                await self._sleep(self.retry.delay(attempt))
        raise ExportError(alert_id, f"no success after {self.retry.max_attempts} attempts; the group will redeliver")

    def _post(self, body: bytes) -> int:
        """HTTP status, or 0 when the server could not be reached."""
        req = urllib.request.Request(self.endpoint, data=body, method="POST",
                                     headers={"Content-Type": "application/fhir+json",
                                              "Accept": "application/fhir+json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            return 0


class FhirExporter:
    """Alert -> FHIR Bundle -> sink, deduplicated by alert id and content."""

    def __init__(self, sink: Sink, delivered: dict[str, str] | None = None) -> None:
        self.sink = sink
        self._delivered = dict(delivered or {})  # alert id -> digest of what was delivered
        self.counts: dict[ExportResult, int] = dict.fromkeys(ExportResult, 0)

    async def export(self, alert: Alert) -> ExportResult:
        bundle = alert_bundle(alert)
        digest = bundle_digest(bundle)
        before = self._delivered.get(alert.alert_id)
        if before == digest:
            result = ExportResult.DUPLICATE
        else:
            await self.sink.deliver(alert.alert_id, to_json(bundle))
            self._delivered[alert.alert_id] = digest
            result = ExportResult.WRITTEN if before is None else ExportResult.UPDATED
        self.counts[result] += 1
        return result
