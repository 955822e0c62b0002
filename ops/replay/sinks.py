"""Where a replay's outcomes go: the triage store and Kafka (backfill, shadow), or nowhere (audit, dry run).

:class:`StoreSink` writes a batch as the live worker does (``workers.app.BatchRunner``), in the
same order: admit alerts through the triage store's idempotent add script, publish the admitted
alerts, verdicts and dead letters and wait for the broker's acks, then record each event's
outcome. Run twice, the outcome ledger marks every event a duplicate and the add script's
idempotency keys return what the first run got, so nothing is added.

A shadow sink is the same class pointed at the shadow namespace (its own Redis key prefix and
topics): it never touches a live key or topic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from schemas.errors import ECGScreenError
from workers.app import outcome_records
from workers.pipeline import Outcome
from workers.policy import Admission
from workers.settings import Topics
from workers.triage import Admitted, RecordedOutcome, TriageStore


class Sink(Protocol):
    async def recorded(self, keys: Sequence[str]) -> list[tuple[str, str] | None]: ...

    async def write(self, outcomes: Sequence[Outcome], duplicates: int) -> dict[str, int]: ...

    async def close(self) -> None: ...


class NullSink:
    """Writes nothing (audit, --dry-run); with a store, still reads which events are already done."""

    def __init__(self, store: TriageStore | None = None) -> None:
        self._store = store

    async def recorded(self, keys: Sequence[str]) -> list[tuple[str, str] | None]:
        if self._store is None:
            return [None] * len(keys)
        return [(r.digest, r.kind) if r else None for r in await self._store.recorded_outcomes(keys)]

    async def write(self, outcomes: Sequence[Outcome], duplicates: int) -> dict[str, int]:
        return {}

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()


class StoreSink(NullSink):
    def __init__(self, store: TriageStore, bootstrap: str, topics: Topics, outcome_ttl_s: int,
                 create_topics: int = 0) -> None:
        super().__init__(store)
        self.store = store
        self.topics = topics
        self._ttl = outcome_ttl_s
        self._bootstrap = bootstrap
        self._create = create_topics  # partitions of topics to create when missing (the shadow ones); 0: none
        self._producer: Any = None

    async def _started(self) -> Any:
        if self._producer is None:
            from aiokafka import AIOKafkaProducer

            if self._create:
                from ops.stack import create_topics

                t = self.topics
                await create_topics(self._bootstrap, [t.verdicts, t.alerts, t.deadletter], self._create)

            producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all",
                                        max_request_size=8 * 1024 * 1024, request_timeout_ms=30_000)
            try:
                await producer.start()
            except Exception as exc:
                await producer.stop()
                raise ECGScreenError("kafka_unavailable", f"{type(exc).__name__}: {exc}") from None
            self._producer = producer
        return self._producer

    async def write(self, outcomes: Sequence[Outcome], duplicates: int) -> dict[str, int]:
        alerts = [a for o in outcomes for a in o.alerts]
        # As the live worker: each alerting event's ECG is stored beside its alerts for reviewers.
        admitted = await self.store.add_alerts(alerts, alert_waveforms(outcomes))
        await self._publish(outcomes, to_publish(admitted))
        done = [(o.message.key, RecordedOutcome(o.message.digest, o.kind)) for o in outcomes]
        added = sum(a.admission is Admission.ADDED and not a.replay for a in admitted)
        counts = {"duplicates_skipped": duplicates}  # as the live worker; new entries are counted in the add script
        await self.store.record_outcomes(done, self._ttl, counts)
        return {"triage_added": added, "triage_updated": sum(a.admission is Admission.UPDATED for a in admitted)}

    async def _publish(self, outcomes: Sequence[Outcome], alerts: Sequence[Any]) -> None:
        producer = await self._started()
        records = outcome_records(self.topics, outcomes, alerts)  # the live worker's messages
        sends = [await producer.send(topic, value, key=key.encode()) for topic, key, value in records]
        await asyncio.gather(*sends)  # acks=all: durable from here

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        await super().close()


def alert_waveforms(outcomes: Sequence[Outcome]) -> dict[str, bytes]:
    from workers.app import alert_waveforms as live

    return live(outcomes)


def to_publish(admitted: Sequence[Admitted]) -> list[Any]:
    """As the live worker: new, held and updated alerts, each target once (its latest view)."""
    from workers.app import _to_publish

    return _to_publish(admitted)


def shadow_topics(live: Topics, suffix: str = ".shadow") -> Topics:
    """The shadow namespace's topics: the live names with a suffix; the events topic is never written."""
    return Topics(events=live.events, verdicts=live.verdicts + suffix, alerts=live.alerts + suffix,
                  deadletter=live.deadletter + suffix)
