"""The alert policy as tables of cases: pure functions, no servers."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from models.config import TaskMetrics, TaskSpec
from schemas.messages import (
    ECGEvent,
    Explanation,
    ModelRef,
    Priority,
    Quality,
    QualityStatus,
    Source,
    TaskGroup,
    Window,
)
from tests.admission_model import Candidate, OpenAlert, admit, nearest_open, simulate
from workers.policy import (
    Admission,
    AlertFlag,
    Ineligible,
    PolicyConfig,
    SitePolicy,
    alert_id,
    decide_alerts,
    dedup_time_ms,
    eligibility,
    expected_ppv,
    priority,
    timing_flag,
)

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


def test_a_nan_score_never_alerts() -> None:
    """`score < thr` is False for NaN, so a NaN used to alert on every task (the screener also
    dead-letters such records, see test_pipeline; this is the policy's own guard)."""
    alerts = decide_alerts(event(), PASS, {"ecg.afib": float("nan"), "ecg.mi": 0.9}, [AFIB, MI], TRAINED, NOW)
    assert [a.task.id for a in alerts] == ["ecg.mi"]


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


# --- site overrides, age bounds, event-time rules ----------------------------------------------

SITE_A = PolicyConfig(sites={"site-a": SitePolicy(disabled_tasks=frozenset({"ecg.mi"}), min_age_years=16.0,
                                                  thresholds={"ecg.afib": 0.8}, prevalence={"ecg.afib": 0.2})})


@pytest.mark.parametrize(("task", "ev", "config", "expected"), [
    (MI, event(), SITE_A, Ineligible.SITE_DISABLED),  # the site switched MI alerts off
    (AFIB, event(age=17.0), SITE_A, None),  # the site's own minimum age
    (AFIB, event(age=17.0), PolicyConfig(), Ineligible.MINOR),
    (AFIB, event(age=101.0), PolicyConfig(max_age_years=100.0), Ineligible.AGE_ABOVE),
    (AFIB, event(age=101.0), PolicyConfig(), None),  # no upper bound by default
])
def test_eligibility_with_overrides(task: TaskSpec, ev: ECGEvent, config: PolicyConfig,
                                    expected: Ineligible | None) -> None:
    assert eligibility(ev, PASS, task, config) == expected


@pytest.mark.parametrize(("offset", "expected"), [
    (timedelta(minutes=5), None),  # within the tolerated clock lead
    (timedelta(minutes=11), AlertFlag.CLOCK_SKEW),
    (-timedelta(days=13), None),
    (-timedelta(days=15), AlertFlag.LATE_EVENT),
])
def test_timing_rule_table(offset: timedelta, expected: AlertFlag | None) -> None:
    assert timing_flag(NOW + offset, NOW, PolicyConfig()) == expected


def test_late_event_alerts_routine_and_flagged() -> None:
    ev = replace(event(), acquired_at=NOW - timedelta(days=30))
    (alert,) = decide_alerts(ev, PASS, {"ecg.mi": 0.99}, [MI], TRAINED, NOW)
    assert alert.priority is Priority.ROUTINE and AlertFlag.LATE_EVENT in alert.flags
    assert dedup_time_ms(alert) == int(ev.acquired_at.timestamp() * 1000)


def test_future_event_is_deduped_on_arrival_time() -> None:
    ev = replace(event(), acquired_at=NOW + timedelta(days=400))
    (alert,) = decide_alerts(ev, PASS, {"ecg.afib": 0.9}, [AFIB], TRAINED, NOW)
    assert AlertFlag.CLOCK_SKEW in alert.flags and dedup_time_ms(alert) == int(NOW.timestamp() * 1000)


METRICS = TaskMetrics(sensitivity=0.9, specificity=0.9, prevalence=0.1, n=1000, n_pos=100)


@pytest.mark.parametrize(("metrics", "prevalence", "expected"), [
    (METRICS, 0.01, 0.009 / (0.009 + 0.099)),  # rare at this site: most alerts are false
    (METRICS, 0.5, 0.9),
    (TaskMetrics(0.8, 1.0, 0.1, 100, 10), 0.01, 1.0),  # perfect specificity
    (None, 0.1, None),  # no validation metrics: no promise
    (METRICS, None, None),
])
def test_expected_ppv_table(metrics: TaskMetrics | None, prevalence: float | None, expected: float | None) -> None:
    task = replace(AFIB, metrics=metrics)
    assert expected_ppv(task, prevalence) == (None if expected is None else pytest.approx(expected))


def test_site_threshold_and_prevalence_override_the_bundle() -> None:
    task = replace(AFIB, metrics=METRICS, prevalence=0.07)
    assert decide_alerts(event(), PASS, {"ecg.afib": 0.7}, [task], TRAINED, NOW, config=SITE_A) == []
    (alert,) = decide_alerts(event(), PASS, {"ecg.afib": 0.85}, [task], TRAINED, NOW, config=SITE_A)
    assert alert.threshold == 0.8 and alert.expected_ppv == pytest.approx(0.18 / (0.18 + 0.08))
    (default,) = decide_alerts(event(), PASS, {"ecg.afib": 0.85}, [task], TRAINED, NOW)
    assert default.expected_ppv == pytest.approx(0.063 / (0.063 + 0.093))


def test_explanation_is_carried_when_given() -> None:
    why = Explanation("gradient_x_input", ("II", "V1"), (Window("II", 1.0, 2.5, 0.6),))
    (alert,) = decide_alerts(event(), PASS, {"ecg.afib": 0.9}, [AFIB], TRAINED, NOW,
                             explanations={"ecg.afib": why})
    assert alert.explanation == why


# --- admission: dedup on event time and rate limits, as tables --------------------------------
# Of the reference model (tests/admission_model.py); tests/test_triage.py runs the same
# sequences through the Lua script on a real Redis.

H = 3_600_000
WINDOW = 72 * H


@pytest.mark.parametrize(("score", "prio", "match", "used", "limit", "expected"), [
    (0.9, Priority.ROUTINE, None, 0, None, Admission.ADDED),
    (0.9, Priority.ROUTINE, OpenAlert("a", 0, 0.8), 0, None, Admission.UPDATED),
    (0.8, Priority.ROUTINE, OpenAlert("a", 0, 0.8), 0, None, Admission.SUPPRESSED),  # equal is no news
    (0.9, Priority.ROUTINE, None, 5, 5, Admission.HELD),
    (0.9, Priority.HIGH, None, 5, 5, Admission.HELD),
    (0.9, Priority.URGENT, None, 5, 5, Admission.ADDED),  # urgent is never held
    (0.9, Priority.ROUTINE, OpenAlert("a", 0, 0.8), 5, 5, Admission.UPDATED),  # an update adds no entry
])
def test_admit_table(score: float, prio: Priority, match: OpenAlert | None, used: int, limit: int | None,
                     expected: Admission) -> None:
    assert admit(score, prio, match, used, limit) is expected


@pytest.mark.parametrize(("event_h", "alerts", "expected"), [
    (10, [OpenAlert("a", 0, 0.5)], "a"),
    (-10, [OpenAlert("a", 0, 0.5)], "a"),  # a late event belongs to the alert it precedes
    (72, [OpenAlert("a", 0, 0.5)], None),  # the window is open on the right
    (10, [OpenAlert("a", 0, 0.5, resolved=True)], None),  # a resolved alert does not absorb new findings
    (60, [OpenAlert("a", 0, 0.5), OpenAlert("b", 100 * H, 0.5)], "b"),  # nearest anchor wins
    (50, [OpenAlert("b", 100 * H, 0.5), OpenAlert("a", 0, 0.5)], "a"),  # a tie goes to the earlier one
])
def test_nearest_open_table(event_h: int, alerts: list[OpenAlert], expected: str | None) -> None:
    match = nearest_open(event_h * H, alerts, WINDOW)
    assert (match.alert_id if match else None) == expected


def c(n: int, hours: float, score: float = 0.8, ep: str = "p1", prio: Priority = Priority.ROUTINE) -> Candidate:
    return Candidate(f"al_{n}", ep, int(hours * H), score, prio)


A, U, S, HELD = Admission.ADDED, Admission.UPDATED, Admission.SUPPRESSED, Admission.HELD

# (name, candidates, limit, resolved, expected (admission, target index, replay) per candidate)
POLICY_SEQUENCES = [
    ("duplicate delivery", [c(1, 0), c(1, 0)], None, (), [(A, 1, False), (A, 1, True)]),
    ("later, lower", [c(1, 0, 0.8), c(2, 5, 0.7)], None, (), [(A, 1, False), (S, 1, False)]),
    ("later, higher", [c(1, 0, 0.8), c(2, 5, 0.9)], None, (), [(A, 1, False), (U, 1, False)]),
    ("late, lower", [c(1, 10, 0.8), c(2, 5, 0.7)], None, (), [(A, 1, False), (S, 1, False)]),
    ("late, higher", [c(1, 10, 0.8), c(2, 5, 0.9)], None, (), [(A, 1, False), (U, 1, False)]),
    ("outside the window", [c(1, 0), c(2, 80)], None, (), [(A, 1, False), (A, 2, False)]),
    ("late into the older episode", [c(1, 0), c(2, 100), c(3, 20, 0.95)], None, (),
     [(A, 1, False), (A, 2, False), (U, 1, False)]),
    ("other patient", [c(1, 0), c(2, 1, ep="p2")], None, (), [(A, 1, False), (A, 2, False)]),
    ("after resolution", [c(1, 0), c(2, 5)], None, ("al_1",), [(A, 1, False), (A, 2, False)]),
    ("rate limit holds, urgent passes", [c(1, 0, ep="a"), c(2, 0, ep="b"), c(3, 0, ep="c"),
                                          c(4, 0, ep="d", prio=Priority.URGENT)], 2, (),
     [(A, 1, False), (A, 2, False), (HELD, 3, False), (A, 4, False)]),
    ("an urgent update releases a held alert and takes a place", [
        c(1, 0, ep="a"), c(2, 0, ep="b"), c(3, 1, 0.95, ep="b", prio=Priority.URGENT), c(4, 0, ep="c")], 1, (),
     [(A, 1, False), (HELD, 2, False), (U, 2, False), (HELD, 4, False)]),
]


@pytest.mark.parametrize(("name", "cands", "limit", "resolved", "expected"), POLICY_SEQUENCES,
                         ids=[s[0] for s in POLICY_SEQUENCES])
def test_admission_sequences(name: str, cands: list[Candidate], limit: int | None, resolved: tuple[str, ...],
                             expected: list[tuple[Admission, int, bool]]) -> None:
    got = simulate(cands, WINDOW, limit, frozenset(resolved))
    assert [(d.admission, d.target, d.replay) for d in got] == [(a, f"al_{t}", r) for a, t, r in expected]


@pytest.mark.parametrize(("name", "cands", "limit", "resolved", "expected"), POLICY_SEQUENCES,
                         ids=[s[0] for s in POLICY_SEQUENCES])
def test_replaying_a_sequence_adds_nothing(name: str, cands: list[Candidate], limit: int | None,
                                           resolved: tuple[str, ...], expected: object) -> None:
    got = simulate(cands + cands, WINDOW, limit, frozenset(resolved))
    first, again = got[:len(cands)], got[len(cands):]
    assert all(d.replay for d in again)
    assert [(d.admission, d.target) for d in again] == [(d.admission, d.target) for d in first]


def test_any_arrival_order_leaves_one_alert_per_episode() -> None:
    cands = [c(1, 0, 0.7), c(2, 10, 0.9), c(3, 5, 0.8)]
    for order in itertools.permutations(cands):
        got = simulate(list(order), WINDOW)
        assert sum(d.admission is Admission.ADDED for d in got) == 1
        assert len({d.target for d in got}) == 1


def test_pacing_spikes_seen_by_the_gate_count_as_paced() -> None:
    from workers.gate import QualityReason

    spiked = Quality(QualityStatus.DEGRADED, (QualityReason.PACING_SPIKES.value,))
    assert QualityReason.PACING_SPIKES.value == "pacing_spikes"
    assert eligibility(event(pacemaker=None), spiked, MI, PolicyConfig()) is Ineligible.PACED
    assert eligibility(event(pacemaker=None), spiked, AFIB, PolicyConfig()) is None
