"""The alert policy as tables of cases: pure functions, no servers."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from models.config import TaskSpec
from schemas.messages import ECGEvent, ModelRef, Priority, Quality, QualityStatus, Source, TaskGroup
from workers.policy import AlertFlag, Ineligible, PolicyConfig, alert_id, decide_alerts, eligibility, priority

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
TRAINED = ModelRef("ecgclip-r18", "1.0.0", "ab" * 32, trained=True)
UNTRAINED = ModelRef("ecgclip-r18", "0.0.0-untrained", "cd" * 32, trained=False)
AFIB = TaskSpec("ecg.afib", "Atrial fibrillation", TaskGroup.ECG, threshold=0.5, alert=True)
MI = TaskSpec("ecg.mi", "Myocardial infarction", TaskGroup.ECG, threshold=0.6, alert=True)
LVEF = TaskSpec("echo.lvef_le_40", "LVEF <= 40%", TaskGroup.ECHO, threshold=0.3, alert=True)
AMYLOID = TaskSpec("rare.amyloidosis", "Cardiac amyloidosis", TaskGroup.RARE, threshold=0.2, alert=True)
NORM = TaskSpec("ecg.norm", "Normal ECG", TaskGroup.ECG, threshold=0.5, alert=False)
PASS, DEGRADED, REJECT = (Quality(s) for s in QualityStatus)


def event(age: float | None = 64.0, pacemaker: bool | None = None, event_id: str = "e-1") -> ECGEvent:
    return ECGEvent(event_id=event_id, patient_ref="p-1", acquired_at=NOW, source=Source("site-a"),
                    sampling_rate_hz=500.0, leads=("I",), signal_mv=np.zeros((1, 10), np.float32),
                    age_years=age, pacemaker=pacemaker)


@pytest.mark.parametrize(("task", "ev", "quality", "expected"), [
    (AFIB, event(), PASS, None),
    (AFIB, event(), DEGRADED, None),  # ECG diagnoses tolerate degraded quality, flagged
    (AFIB, event(), REJECT, Ineligible.QUALITY),
    (LVEF, event(), DEGRADED, Ineligible.QUALITY),  # echo screens need a clean ECG
    (AMYLOID, event(), DEGRADED, Ineligible.QUALITY),
    (LVEF, event(), PASS, None),
    (AFIB, event(age=12.0), PASS, Ineligible.MINOR),
    (AFIB, event(age=18.0), PASS, None),
    (AFIB, event(age=None), PASS, None),  # unknown age: alert, flagged
    (MI, event(pacemaker=True), PASS, Ineligible.PACED),
    (AFIB, event(pacemaker=True), PASS, None),  # rhythm stays readable under pacing
    (NORM, event(), PASS, Ineligible.NOT_ALERTING),
])
def test_eligibility_table(task: TaskSpec, ev: ECGEvent, quality: Quality, expected: Ineligible | None) -> None:
    assert eligibility(ev, quality, task, PolicyConfig()) == expected


@pytest.mark.parametrize(("task", "score", "expected"), [
    (MI, 0.61, Priority.ROUTINE),
    (MI, 0.81, Priority.URGENT),  # confident and on the urgent list
    (LVEF, 0.9, Priority.HIGH),  # confident, not urgent
    (LVEF, 0.31, Priority.ROUTINE),
    (AMYLOID, 0.21, Priority.HIGH),  # rare disease: always worth a look
])
def test_priority_table(task: TaskSpec, score: float, expected: Priority) -> None:
    assert priority(task, score, PolicyConfig()) is expected


def test_alerts_only_at_or_above_threshold() -> None:
    scores = {"ecg.afib": 0.5, "ecg.mi": 0.59, "echo.lvef_le_40": 0.9, "ecg.norm": 0.99}
    alerts = decide_alerts(event(), PASS, scores, [AFIB, MI, LVEF, NORM], TRAINED, NOW)
    assert sorted(a.task.id for a in alerts) == ["ecg.afib", "echo.lvef_le_40"]
    assert all(a.flags == () for a in alerts)


def test_alert_carries_what_triage_needs() -> None:
    (alert,) = decide_alerts(event(), PASS, {"ecg.afib": 0.7}, [AFIB], TRAINED, NOW)
    assert alert.event_id == "e-1" and alert.patient_ref == "p-1" and alert.site == "site-a"
    assert alert.task.group is TaskGroup.ECG and alert.threshold == 0.5 and alert.score == pytest.approx(0.7)
    assert alert.model == TRAINED and alert.created_at == NOW and alert.acquired_at == NOW


def test_alert_id_is_deterministic_per_event_task_and_model_version() -> None:
    a = alert_id("e-1", "ecg.afib", "1.0.0")
    assert a == alert_id("e-1", "ecg.afib", "1.0.0")
    assert len({a, alert_id("e-2", "ecg.afib", "1.0.0"), alert_id("e-1", "ecg.mi", "1.0.0"),
                alert_id("e-1", "ecg.afib", "1.0.1")}) == 4


def test_replayed_event_gives_identical_alert_ids() -> None:
    first = decide_alerts(event(), PASS, {"ecg.afib": 0.9}, [AFIB], TRAINED, NOW)
    again = decide_alerts(event(), PASS, {"ecg.afib": 0.9}, [AFIB], TRAINED, datetime.now(UTC))
    assert [a.alert_id for a in first] == [a.alert_id for a in again]


def test_flags_name_every_caveat() -> None:
    (alert,) = decide_alerts(event(age=None), DEGRADED, {"ecg.afib": 0.9}, [AFIB], UNTRAINED, NOW,
                             masked=("V2",))
    assert set(alert.flags) == {AlertFlag.UNTRAINED_MODEL, AlertFlag.DEGRADED_QUALITY,
                                AlertFlag.LEADS_MASKED, AlertFlag.AGE_UNKNOWN}


def test_rejected_quality_never_alerts() -> None:
    assert decide_alerts(event(), REJECT, {"ecg.afib": 1.0}, [AFIB], TRAINED, NOW) == []
