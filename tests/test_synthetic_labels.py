"""Heads trained on synthetic labels: no alert without the setting; with it, flagged in verdict, alert, FHIR, triage."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import orjson
from jsonschema import Draft202012Validator

from models.config import TaskSpec
from ops.triage_cmd import item_line
from schemas.codec import decode_alert, decode_verdict, encode_alert, encode_verdict, load_json_schema
from schemas.messages import ECGEvent, ModelRef, Quality, QualityStatus, Source, TaskGroup, Verdict
from workers.fhir import alert_bundle
from workers.policy import (
    Admission,
    AlertFlag,
    Ineligible,
    PolicyConfig,
    decide_alerts,
    eligibility,
    synthetic_label_tasks,
)
from workers.settings import load_settings
from workers.triage import Status, TriageItem

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
MODEL = ModelRef("ecgclip-echo-synthetic", "0.1.0", "ef" * 32, trained=True)
PASS = Quality(QualityStatus.PASS)
SYN = TaskSpec("echo.lvef_le_45", "LVEF <= 45%", TaskGroup.ECHO, threshold=0.3, alert=True,
               label_source="synthetic")
REAL = TaskSpec("ecg.afib", "Atrial fibrillation", TaskGroup.ECG, threshold=0.5, alert=True,
                label_source="ecg_statement")
SCORES = {"echo.lvef_le_45": 0.9, "ecg.afib": 0.9}


def event() -> ECGEvent:
    return ECGEvent(event_id="e-1", patient_ref="p-1", acquired_at=NOW, source=Source("site-a"),
                    sampling_rate_hz=500.0, leads=("I",), signal_mv=np.zeros((1, 10), np.float32), age_years=70.0)


def test_a_synthetic_label_head_cannot_alert_without_the_setting() -> None:
    assert eligibility(event(), PASS, SYN, PolicyConfig()) is Ineligible.SYNTHETIC_LABELS
    alerts = decide_alerts(event(), PASS, SCORES, (SYN, REAL), MODEL, NOW)
    assert [a.task.id for a in alerts] == ["ecg.afib"]  # the real head still alerts
    assert AlertFlag.SYNTHETIC_LABELS.value not in alerts[0].flags
    assert load_settings({}).policy.allow_synthetic_labels is False


def test_with_the_setting_every_synthetic_alert_is_flagged() -> None:
    config = load_settings({"ECGSCREEN_ALLOW_SYNTHETIC_LABELS": "true"}).policy
    assert config.allow_synthetic_labels
    alerts = {a.task.id: a for a in decide_alerts(event(), PASS, SCORES, (SYN, REAL), MODEL, NOW, config=config)}
    assert set(alerts) == {"echo.lvef_le_45", "ecg.afib"}
    assert "synthetic_labels" in alerts["echo.lvef_le_45"].flags
    assert "synthetic_labels" not in alerts["ecg.afib"].flags
    # the other rules still hold: an echo screen needs a clean ECG
    degraded = Quality(QualityStatus.DEGRADED)
    assert eligibility(event(), degraded, SYN, config) is Ineligible.QUALITY


def test_flag_travels_in_alert_fhir_and_triage_views() -> None:
    config = PolicyConfig(allow_synthetic_labels=True)
    alert = decide_alerts(event(), PASS, SCORES, (SYN,), MODEL, NOW, config=config)[0]
    assert decode_alert(encode_alert(alert)).flags == alert.flags
    check = Draft202012Validator(load_json_schema("ecg.alert.v1"))
    assert check.is_valid(orjson.loads(encode_alert(alert)))
    risk = alert_bundle(alert)["entry"][0]["resource"]
    assert {"system": "urn:ecgscreen:flag", "code": "synthetic_labels"} in risk["meta"]["tag"]
    assert any(n["text"].startswith("SYNTHETIC LABELS") for n in risk["note"])
    line = item_line(TriageItem(alert=alert, status=Status.OPEN, admission=Admission.ADDED))
    assert "[SYNTHETIC LABELS]" in line


def test_verdict_lists_synthetic_heads_and_old_verdicts_still_decode() -> None:
    names = synthetic_label_tasks((SYN, REAL), SCORES)
    assert names == ("echo.lvef_le_45",) and synthetic_label_tasks((SYN, REAL), {}) == ()
    v = Verdict(event_id="e-1", patient_ref="p-1", site="site-a", acquired_at=NOW, model=MODEL, quality=PASS,
                scores=SCORES, alert_ids=(), timings_ms={}, processed_at=NOW, synthetic_labels=names)
    payload = encode_verdict(v)
    assert decode_verdict(payload).synthetic_labels == names
    check = Draft202012Validator(load_json_schema("ecg.verdict.v1"))
    doc = orjson.loads(payload)
    assert check.is_valid(doc)
    del doc["synthetic_labels"]  # a verdict written before the field existed
    assert check.is_valid(doc)
    assert decode_verdict(orjson.dumps(doc)) == dataclasses.replace(v, synthetic_labels=())
