"""Alerts and stores for the triage tests (not a test module)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from schemas.messages import Alert, ModelRef, Priority, Quality, QualityStatus, TaskGroup, TaskRef
from workers.policy import PolicyConfig
from workers.triage import TriageStore

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
AFIB = TaskRef("ecg.afib", "Atrial fibrillation", TaskGroup.ECG)


def make_alert(n: int, priority: Priority = Priority.ROUTINE, site: str = "site-a", *, patient: str | None = None,
               score: float = 0.9, event_h: float | None = None, task: TaskRef = AFIB) -> Alert:
    """Alert n; by default each alert is its own patient (no dedup), acquired at T0."""
    return Alert(alert_id=f"al_{n:04d}", event_id=f"e-{n}", patient_ref=patient or f"p-{n}", site=site,
                 task=task, score=score, threshold=0.5, priority=priority,
                 model=ModelRef("m", "1", "0" * 64, True), quality=Quality(QualityStatus.PASS),
                 acquired_at=T0 + timedelta(hours=event_h or 0.0), created_at=T0 + timedelta(seconds=n))


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def store(url: str, prefix: str, policy: PolicyConfig | None = None, **kw: object) -> TriageStore:
    return TriageStore.from_url(url, prefix, policy=policy, **kw)
