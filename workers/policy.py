"""Alert policy: which scores become alerts, for whom, and how urgent.

Pure functions over the decoded event, its quality and the model's scores, so
the rules can be read and tested as tables. Eligibility follows what cleared
ECG-AI screening tools do: adults only, no result on poor signal, paced rhythms
excluded where the task cannot be read under pacing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from models.config import TaskSpec
from schemas.messages import Alert, ECGEvent, ModelRef, Priority, Quality, QualityStatus, TaskGroup, TaskRef


class AlertFlag(StrEnum):
    """Caveats a clinician must see with the alert."""

    UNTRAINED_MODEL = "untrained_model"
    DEGRADED_QUALITY = "degraded_quality"
    LEADS_MASKED = "leads_masked"
    AGE_UNKNOWN = "age_unknown"


class Ineligible(StrEnum):
    """Why a task crossed its threshold but raised no alert."""

    QUALITY = "quality"
    MINOR = "minor"
    PACED = "paced"
    NOT_ALERTING = "not_alerting"


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    # Screening models are validated on adults; paediatric ECG norms differ.
    min_age_years: float = 18.0
    # Pacing hides QRS/ST morphology; rhythm tasks stay readable (atrial activity).
    paced_allowed_tasks: frozenset[str] = frozenset({"ecg.afib", "ecg.aflt"})
    # Tasks where a confident positive should reach a clinician today.
    urgent_tasks: frozenset[str] = frozenset({"ecg.stemi", "ecg.mi", "ecg.afib", "ecg.vt"})
    # Fraction of the way from threshold to 1.0 at which a score counts as confident.
    confident_margin: float = 0.5


def alert_id(event_id: str, task_id: str, model_version: str) -> str:
    """Deterministic, so a redelivered event maps to the same triage entry."""
    digest = hashlib.sha256(f"{event_id}\x1f{task_id}\x1f{model_version}".encode()).hexdigest()
    return f"al_{digest[:32]}"


def eligibility(event: ECGEvent, quality: Quality, task: TaskSpec, config: PolicyConfig) -> Ineligible | None:
    """None when the task may alert on this event, else the first rule that forbids it."""
    if not task.alert:
        return Ineligible.NOT_ALERTING
    if quality.status is QualityStatus.REJECT:
        return Ineligible.QUALITY
    # Echo and rare-disease screens were validated on clean ECGs only.
    if quality.status is QualityStatus.DEGRADED and task.group is not TaskGroup.ECG:
        return Ineligible.QUALITY
    if event.age_years is not None and event.age_years < config.min_age_years:
        return Ineligible.MINOR
    if event.pacemaker and task.id not in config.paced_allowed_tasks:
        return Ineligible.PACED
    return None


def priority(task: TaskSpec, score: float, config: PolicyConfig) -> Priority:
    confident = score >= task.threshold + config.confident_margin * (1.0 - task.threshold)
    if confident and task.id in config.urgent_tasks:
        return Priority.URGENT
    if confident or task.group is TaskGroup.RARE:
        return Priority.HIGH
    return Priority.ROUTINE


def flags(event: ECGEvent, quality: Quality, model: ModelRef, masked: Sequence[str]) -> tuple[str, ...]:
    out: list[AlertFlag] = []
    if not model.trained:
        out.append(AlertFlag.UNTRAINED_MODEL)
    if quality.status is QualityStatus.DEGRADED:
        out.append(AlertFlag.DEGRADED_QUALITY)
    if masked:
        out.append(AlertFlag.LEADS_MASKED)
    if event.age_years is None:
        out.append(AlertFlag.AGE_UNKNOWN)
    return tuple(f.value for f in out)


def decide_alerts(
    event: ECGEvent,
    quality: Quality,
    scores: Mapping[str, float],
    tasks: Sequence[TaskSpec],
    model: ModelRef,
    now: datetime,
    masked: Sequence[str] = (),
    config: PolicyConfig = PolicyConfig(),
) -> list[Alert]:
    """Alerts for every eligible task whose score reaches its threshold."""
    alert_flags = flags(event, quality, model, masked)
    alerts = []
    for task in tasks:
        score = scores.get(task.id)
        if score is None or score < task.threshold or eligibility(event, quality, task, config):
            continue
        alerts.append(Alert(
            alert_id=alert_id(event.event_id, task.id, model.version),
            event_id=event.event_id, patient_ref=event.patient_ref, site=event.source.site,
            task=TaskRef(task.id, task.name, task.group), score=float(score), threshold=task.threshold,
            priority=priority(task, score, config), model=model, quality=quality,
            acquired_at=event.acquired_at, created_at=now, flags=alert_flags,
        ))
    return alerts
