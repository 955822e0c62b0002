"""The triage queue and outcome ledger against a real Redis server."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from schemas.messages import Alert, ModelRef, Priority, Quality, QualityStatus, TaskGroup, TaskRef
from workers.triage import RecordedOutcome, TriageStore

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def make_alert(n: int, priority: Priority = Priority.ROUTINE, site: str = "site-a") -> Alert:
    return Alert(alert_id=f"al_{n:04d}", event_id=f"e-{n}", patient_ref=f"p-{n}", site=site,
                 task=TaskRef("ecg.afib", "Atrial fibrillation", TaskGroup.ECG), score=0.9, threshold=0.5,
                 priority=priority, model=ModelRef("m", "1", "0" * 64, True), quality=Quality(QualityStatus.PASS),
                 acquired_at=T0, created_at=T0 + timedelta(seconds=n))


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def test_same_alert_written_twice_leaves_one_entry(redis_url: str, prefix: str) -> None:
    async def go() -> tuple[int, int, int, int]:
        store = TriageStore.from_url(redis_url, prefix)
        first = await store.add_alerts([make_alert(1)])
        again = await store.add_alerts([make_alert(1), make_alert(1)])
        size, audit = await store.worklist_size("site-a"), await store.audit_length()
        await store.close()
        return first, again, size, audit

    assert run(go()) == (1, 0, 1, 1)


def test_concurrent_writers_of_one_alert_leave_one_entry(redis_url: str, prefix: str) -> None:
    async def go() -> tuple[list[int], int]:
        stores = [TriageStore.from_url(redis_url, prefix) for _ in range(8)]
        added = await asyncio.gather(*(s.add_alerts([make_alert(7)]) for s in stores for _ in range(5)))
        size = await stores[0].worklist_size("site-a")
        for s in stores:
            await s.close()
        return list(added), size

    added, size = run(go())
    assert sum(added) == 1 and size == 1


def test_worklist_orders_by_priority_then_age(redis_url: str, prefix: str) -> None:
    async def go() -> list[str]:
        store = TriageStore.from_url(redis_url, prefix)
        await store.add_alerts([make_alert(1), make_alert(2, Priority.URGENT), make_alert(3, Priority.HIGH),
                                make_alert(4, Priority.URGENT), make_alert(5, site="site-b")])
        top = await store.worklist("site-a", limit=10)
        assert await store.sites() == ["site-a", "site-b"]
        await store.close()
        return [a.alert_id for a in top]

    assert run(go()) == ["al_0002", "al_0004", "al_0003", "al_0001"]


def test_stored_alert_round_trips(redis_url: str, prefix: str) -> None:
    alert = replace(make_alert(9), flags=("untrained_model",))

    async def go() -> list[Alert]:
        store = TriageStore.from_url(redis_url, prefix)
        await store.add_alerts([alert])
        out = await store.worklist("site-a")
        await store.close()
        return out

    assert run(go()) == [alert]


def test_first_recorded_outcome_stands(redis_url: str, prefix: str) -> None:
    async def go() -> list[RecordedOutcome | None]:
        store = TriageStore.from_url(redis_url, prefix)
        await store.record_outcomes([("e-1", RecordedOutcome("d1", "verdict"))], ttl_s=60)
        await store.record_outcomes([("e-1", RecordedOutcome("d2", "deadletter"))], ttl_s=60)
        out = await store.recorded_outcomes(["e-1", "e-2"])
        await store.close()
        return out

    assert run(go()) == [RecordedOutcome("d1", "verdict"), None]
