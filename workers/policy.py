"""Alert policy: which scores become alerts, for whom, how urgent, and how often.

Pure functions over the decoded event, its quality and the model's scores, so
the rules can be read and tested as tables. Eligibility follows what cleared
ECG-AI screening tools do: adults only, no result on poor signal, paced rhythms
excluded where the task cannot be read under pacing.

Two rules need state that lives in Redis; the triage store's add-alert Lua script
(:mod:`workers.triage_lua`) is their one implementation (``tests/admission_model.py``
restates them for tests, which check it against the script on a real Redis):

- dedup: at most one open alert per (site, patient, task) episode within a
  window on *event time* (``acquired_at``); a later higher score updates it;
- rate limit: at most N alerts per site per sliding hour reach the worklist;
  the excess is HELD (kept, counted, released when the hour frees up). Urgent
  alerts are never held: an update that makes a held alert urgent releases it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

from models.config import TaskSpec
from schemas.messages import (
    Alert,
    ECGEvent,
    Explanation,
    ModelRef,
    Priority,
    Quality,
    QualityStatus,
    TaskGroup,
    TaskRef,
)

HOUR_MS = 3_600_000
# Worklist order: lower band first (urgent = 0), see ``TriageStore``.
PRIORITY_BAND = MappingProxyType({Priority.URGENT: 0, Priority.HIGH: 1, Priority.ROUTINE: 2})


class AlertFlag(StrEnum):
    """Caveats a clinician must see with the alert."""

    UNTRAINED_MODEL = "untrained_model"
    DEGRADED_QUALITY = "degraded_quality"
    LEADS_MASKED = "leads_masked"
    AGE_UNKNOWN = "age_unknown"
    # acquired_at lies more than max_past_s before processing: a backfill or a long outage.
    LATE_EVENT = "late_event"
    # acquired_at lies more than max_future_s after processing: the device clock is wrong.
    CLOCK_SKEW = "clock_skew"
    # The head was trained and validated on synthetic labels (a demonstration, not a clinical finding);
    # such heads alert only where ``PolicyConfig.allow_synthetic_labels`` is set.
    SYNTHETIC_LABELS = "synthetic_labels"
    # Raised by `ecgscreen replay backfill`, not the live worker: it sits in the backfill review queue.
    BACKFILL = "backfill"


PACING_SPIKES = "pacing_spikes"  # the gate's reason code (workers.gate.QualityReason.PACING_SPIKES)


class Ineligible(StrEnum):
    """Why a task crossed its threshold but raised no alert."""

    QUALITY = "quality"
    MINOR = "minor"
    AGE_ABOVE = "age_above"
    PACED = "paced"
    NOT_ALERTING = "not_alerting"
    SITE_DISABLED = "site_disabled"
    SYNTHETIC_LABELS = "synthetic_labels"


class Admission(StrEnum):
    """What the triage queue did with a candidate alert."""

    ADDED = "added"  # a new worklist entry
    HELD = "held"  # a new entry, held back by the site's rate limit
    UPDATED = "updated"  # a higher score for the open alert of its episode
    SUPPRESSED = "suppressed"  # no higher than the open alert of its episode: nothing new


@dataclass(frozen=True, slots=True)
class SitePolicy:
    """Per-site overrides of the bundle's and the policy's defaults (None: keep the default)."""

    prevalence: Mapping[str, float] = field(default_factory=dict)  # task id -> prevalence at this site
    thresholds: Mapping[str, float] = field(default_factory=dict)  # task id -> operating threshold
    disabled_tasks: frozenset[str] = frozenset()
    max_alerts_per_hour: int | None = None
    dedup_window_s: float | None = None
    min_age_years: float | None = None


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    # Screening models are validated on adults; paediatric ECG norms differ.
    min_age_years: float = 18.0
    max_age_years: float | None = None
    # Pacing hides QRS/ST morphology; rhythm tasks stay readable (atrial activity).
    paced_allowed_tasks: frozenset[str] = frozenset({"ecg.afib", "ecg.aflt"})
    # Tasks where a confident positive should reach a clinician today.
    urgent_tasks: frozenset[str] = frozenset({"ecg.stemi", "ecg.mi", "ecg.afib", "ecg.vt"})
    # Fraction of the way from threshold to 1.0 at which a score counts as confident.
    confident_margin: float = 0.5
    # One open alert per patient and task per 3 days of ECGs: a stay's serial ECGs are one finding.
    dedup_window_s: float = 72 * 3600.0
    # Tolerated device clock lead; beyond it the event time is not trusted for dedup.
    max_future_s: float = 600.0
    # Older events still alert (a finding is a finding) but never above routine.
    max_past_s: float = 14 * 86400.0
    max_alerts_per_hour: int | None = None  # default for sites without their own limit
    # Backfill (`ecgscreen replay backfill`, or workers on a backfill topic with ECGSCREEN_BACKFILL=1):
    # every alert is flagged `backfill`, and the triage store puts new ones in the site's backfill
    # review queue, outside the rate limit, so a year of history never buries today's worklist.
    backfill: bool = False
    sites: Mapping[str, SitePolicy] = field(default_factory=dict)
    # Heads whose labels are synthetic (``TaskSpec.label_source``) never alert unless this is set
    # (ECGSCREEN_ALLOW_SYNTHETIC_LABELS): for demonstrations and shadow-mode plumbing tests only.
    allow_synthetic_labels: bool = False

    def site(self, site: str) -> SitePolicy:
        return self.sites.get(site, _NO_OVERRIDES)

    def window_ms(self, site: str) -> int:
        own = self.site(site).dedup_window_s
        return int((self.dedup_window_s if own is None else own) * 1000)

    def rate_limit(self, site: str) -> int | None:
        own = self.site(site).max_alerts_per_hour
        return self.max_alerts_per_hour if own is None else own


_NO_OVERRIDES = SitePolicy()


def alert_id(event_id: str, task_id: str, model_version: str) -> str:
    """Deterministic, so a redelivered event maps to the same triage entry."""
    digest = hashlib.sha256(f"{event_id}\x1f{task_id}\x1f{model_version}".encode()).hexdigest()
    return f"al_{digest[:32]}"


def episode_key(site: str, patient_ref: str, task_id: str) -> str:
    """Names a (site, patient, task) episode in Redis without putting the patient ref in a key name."""
    return hashlib.sha256(f"{site}\x1f{patient_ref}\x1f{task_id}".encode()).hexdigest()[:32]


def threshold(task: TaskSpec, site: SitePolicy) -> float:
    return site.thresholds.get(task.id, task.threshold)


def eligibility(event: ECGEvent, quality: Quality, task: TaskSpec, config: PolicyConfig) -> Ineligible | None:
    """None when the task may alert on this event, else the first rule that forbids it."""
    site = config.site(event.source.site)
    if not task.alert:
        return Ineligible.NOT_ALERTING
    if task.id in site.disabled_tasks:
        return Ineligible.SITE_DISABLED
    if task.synthetic_labels and not config.allow_synthetic_labels:
        return Ineligible.SYNTHETIC_LABELS
    if quality.status is QualityStatus.REJECT:
        return Ineligible.QUALITY
    # Echo and rare-disease screens were validated on clean ECGs only.
    if quality.status is QualityStatus.DEGRADED and task.group is not TaskGroup.ECG:
        return Ineligible.QUALITY
    min_age = config.min_age_years if site.min_age_years is None else site.min_age_years
    age = _age_rule(event.age_years, min_age, config.max_age_years)
    if age is not None:
        return age
    if _paced(event, quality) and task.id not in config.paced_allowed_tasks:
        return Ineligible.PACED
    return None


def _paced(event: ECGEvent, quality: Quality) -> bool:
    """The feed's pacemaker flag, or pacing spikes the gate saw (feeds often omit the flag)."""
    return bool(event.pacemaker) or PACING_SPIKES in quality.reasons


def _age_rule(age: float | None, lo: float, hi: float | None) -> Ineligible | None:
    if age is None:
        return None  # unknown age alerts, flagged
    if age < lo:
        return Ineligible.MINOR
    return Ineligible.AGE_ABOVE if hi is not None and age > hi else None


def timing_flag(acquired_at: datetime, now: datetime, config: PolicyConfig) -> AlertFlag | None:
    """The stated rule for event times far from the worker's clock."""
    if acquired_at - now > timedelta(seconds=config.max_future_s):
        return AlertFlag.CLOCK_SKEW
    if now - acquired_at > timedelta(seconds=config.max_past_s):
        return AlertFlag.LATE_EVENT
    return None


def priority(task: TaskSpec, score: float, config: PolicyConfig, thr: float | None = None) -> Priority:
    thr = task.threshold if thr is None else thr
    confident = score >= thr + config.confident_margin * (1.0 - thr)
    if confident and task.id in config.urgent_tasks:
        return Priority.URGENT
    if confident or task.group is TaskGroup.RARE:
        return Priority.HIGH
    return Priority.ROUTINE


def expected_ppv(task: TaskSpec, prevalence: float | None) -> float | None:
    """Bayes: sens*p / (sens*p + (1-spec)*(1-p)); None without validation metrics or prevalence."""
    m = task.metrics
    if m is None or prevalence is None:
        return None
    true_pos = m.sensitivity * prevalence
    false_pos = (1.0 - m.specificity) * (1.0 - prevalence)
    return None if true_pos + false_pos == 0 else true_pos / (true_pos + false_pos)


def site_prevalence(task: TaskSpec, site: SitePolicy) -> float | None:
    """The site's configured prevalence, else the bundle's default for the task."""
    return site.prevalence.get(task.id, task.prevalence)


def flags(event: ECGEvent, quality: Quality, model: ModelRef, masked: Sequence[str],
          timing: AlertFlag | None = None) -> tuple[str, ...]:
    out: list[AlertFlag] = []
    if not model.trained:
        out.append(AlertFlag.UNTRAINED_MODEL)
    if quality.status is QualityStatus.DEGRADED:
        out.append(AlertFlag.DEGRADED_QUALITY)
    if masked:
        out.append(AlertFlag.LEADS_MASKED)
    if event.age_years is None:
        out.append(AlertFlag.AGE_UNKNOWN)
    if timing is not None:
        out.append(timing)
    return tuple(f.value for f in out)


def synthetic_label_tasks(tasks: Sequence[TaskSpec], scores: Mapping[str, float]) -> tuple[str, ...]:
    """The scored tasks whose heads were trained on synthetic labels (the verdict lists them)."""
    return tuple(t.id for t in tasks if t.synthetic_labels and t.id in scores)


def decide_alerts(
    event: ECGEvent,
    quality: Quality,
    scores: Mapping[str, float],
    tasks: Sequence[TaskSpec],
    model: ModelRef,
    now: datetime,
    masked: Sequence[str] = (),
    config: PolicyConfig = PolicyConfig(),
    explanations: Mapping[str, Explanation] | None = None,
) -> list[Alert]:
    """Candidate alerts for every eligible task whose score reaches its (site's) threshold."""
    site = config.site(event.source.site)
    timing = timing_flag(event.acquired_at, now, config)
    alert_flags = flags(event, quality, model, masked, timing)
    if config.backfill:
        alert_flags += (AlertFlag.BACKFILL.value,)
    alerts = []
    for task in tasks:
        score, thr = scores.get(task.id), threshold(task, site)
        # `not >=`: a NaN score (a failed model) never alerts, where `score < thr` would let it through.
        if score is None or not score >= thr or eligibility(event, quality, task, config):
            continue
        prio = priority(task, score, config, thr)
        alerts.append(Alert(
            alert_id=alert_id(event.event_id, task.id, model.version),
            event_id=event.event_id, patient_ref=event.patient_ref, site=event.source.site,
            task=TaskRef(task.id, task.name, task.group), score=float(score), threshold=thr,
            # A late event is no emergency any more: it waits its turn.
            priority=Priority.ROUTINE if timing is AlertFlag.LATE_EVENT else prio,
            model=model, quality=quality, acquired_at=event.acquired_at, created_at=now,
            flags=(*alert_flags, AlertFlag.SYNTHETIC_LABELS.value) if task.synthetic_labels else alert_flags,
            expected_ppv=expected_ppv(task, site_prevalence(task, site)),
            explanation=(explanations or {}).get(task.id),
        ))
    return alerts


def dedup_time_ms(alert: Alert) -> int:
    """The event time dedup windows are measured on; a skewed device clock falls back to arrival."""
    when = alert.created_at if AlertFlag.CLOCK_SKEW.value in alert.flags else alert.acquired_at
    return int(when.timestamp() * 1000)
