"""An alert as FHIR R4 (4.0.1) resources: pure functions, no I/O.

- ``RiskAssessment`` for every alert: the task as the predicted outcome, the
  score as ``probabilityDecimal``, priority as qualitative risk, the expected PPV
  as an extension, flags and the explanation as notes;
- ``Flag`` (category clinical) for ``high`` and ``urgent`` alerts, so the finding
  shows in the chart until someone acts on it;
- ``Communication`` (priority urgent) for ``urgent`` alerts: the message to the
  cardiology team that something needs a look today.

They travel as one ``transaction`` Bundle of PUTs with ids derived from the
alert id, so posting the same alert twice updates rather than duplicates.
The patient is referenced by identifier (the pseudonymous ``patient_ref``): the
receiving system maps it to its own Patient.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from schemas.messages import Alert, Explanation, Priority

SYSTEM = "urn:ecgscreen"
_FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"

Resource = dict[str, Any]


def fhir_id(alert_id: str, kind: str = "") -> str:
    """FHIR ids allow [A-Za-z0-9-.]{1,64}: alert ids carry an underscore."""
    base = alert_id.replace("_", "-")
    return f"{kind}-{base}"[:64] if kind else base[:64]


def alert_bundle(alert: Alert) -> Resource:
    """The transaction Bundle for one alert."""
    entries = [_put(r) for r in alert_resources(alert)]
    return {"resourceType": "Bundle", "id": fhir_id(alert.alert_id, "bundle"), "type": "transaction",
            "entry": entries}


def bundle_digest(bundle: Resource) -> str:
    """Content digest: the exporter's dedup key beside the alert id (an updated alert differs)."""
    return hashlib.sha256(orjson.dumps(bundle, option=orjson.OPT_SORT_KEYS)).hexdigest()


def alert_resources(alert: Alert) -> list[Resource]:
    out = [risk_assessment(alert)]
    if alert.priority in (Priority.HIGH, Priority.URGENT):
        out.append(flag(alert))
    if alert.priority is Priority.URGENT:
        out.append(communication(alert))
    return out


def risk_assessment(alert: Alert) -> Resource:
    res: Resource = {
        "resourceType": "RiskAssessment", "id": fhir_id(alert.alert_id), **_meta(alert),
        "identifier": [_identifier(alert)], "status": "preliminary",
        "code": {"text": "ECG-AI opportunistic screening"},
        "method": {"coding": [{"system": f"{SYSTEM}:model", "code": f"{alert.model.name}@{alert.model.version}",
                               "display": alert.model.name}],
                   "text": f"{alert.model.name} {alert.model.version} (sha256 {alert.model.sha256[:12]})"},
        "subject": _subject(alert), "occurrenceDateTime": alert.acquired_at.isoformat(),
        "performer": {"display": "ecgscreen"},
        "basis": [{"identifier": {"system": f"{SYSTEM}:event-id", "value": alert.event_id},
                   "display": "12-lead ECG"}],
        "prediction": [_prediction(alert)],
        "note": [{"text": t} for t in _notes(alert)],
    }
    if alert.expected_ppv is not None:
        res["extension"] = [{"url": f"{SYSTEM}:fhir:expected-ppv", "valueDecimal": round(alert.expected_ppv, 6)}]
    return res


def flag(alert: Alert) -> Resource:
    return {
        "resourceType": "Flag", "id": fhir_id(alert.alert_id, "flag"), **_meta(alert),
        "identifier": [_identifier(alert)], "status": "active",
        "category": [{"coding": [{"system": _FLAG_CATEGORY, "code": "clinical", "display": "Clinical"}]}],
        "code": {"coding": [_task_coding(alert)], "text": f"ECG screening suggests {alert.task.name}: review"},
        "subject": _subject(alert), "period": {"start": alert.created_at.isoformat()},
        "author": {"display": "ecgscreen"},
    }


def communication(alert: Alert) -> Resource:
    return {
        "resourceType": "Communication", "id": fhir_id(alert.alert_id, "comm"), **_meta(alert),
        "identifier": [_identifier(alert)], "status": "completed", "priority": "urgent",
        "category": [{"text": "ECG screening alert"}], "subject": _subject(alert),
        "about": [{"reference": f"RiskAssessment/{fhir_id(alert.alert_id)}"}],
        "sent": alert.created_at.isoformat(), "recipient": [{"display": f"cardiology triage, {alert.site}"}],
        "payload": [{"contentString": summary(alert)}],
    }


def summary(alert: Alert) -> str:
    ppv = "" if alert.expected_ppv is None else f"; expected PPV {alert.expected_ppv:.0%} at this site"
    return (f"{alert.priority.value} ECG screening alert: {alert.task.name} "
            f"(score {alert.score:.2f}, threshold {alert.threshold:.2f}{ppv}). Review the ECG.")


def to_json(resource: Resource) -> bytes:
    return orjson.dumps(resource, option=orjson.OPT_INDENT_2)


def _put(resource: Resource) -> Resource:
    return {"resource": resource, "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}}


def _meta(alert: Alert) -> Resource:
    # FHIR JSON forbids empty objects: no flags, no meta.
    tags = [{"system": f"{SYSTEM}:flag", "code": f} for f in alert.flags]
    return {"meta": {"tag": tags}} if tags else {}


def _identifier(alert: Alert) -> Resource:
    return {"system": f"{SYSTEM}:alert-id", "value": alert.alert_id}


def _subject(alert: Alert) -> Resource:
    return {"type": "Patient", "identifier": {"system": f"{SYSTEM}:patient-ref:{alert.site}",
                                              "value": alert.patient_ref}}


def _task_coding(alert: Alert) -> Resource:
    return {"system": f"{SYSTEM}:task", "code": alert.task.id, "display": alert.task.name}


def _prediction(alert: Alert) -> Resource:
    return {
        "outcome": {"coding": [_task_coding(alert)], "text": alert.task.name},
        "probabilityDecimal": round(alert.score, 6),
        "qualitativeRisk": {"coding": [{"system": f"{SYSTEM}:priority", "code": alert.priority.value}]},
        "rationale": f"score {alert.score:.3f} >= threshold {alert.threshold:.3f}",
    }


def _notes(alert: Alert) -> list[str]:
    notes = [summary(alert)]
    if "untrained_model" in alert.flags:
        notes.append("UNTRAINED MODEL: this score carries no clinical meaning.")
    if "synthetic_labels" in alert.flags:
        notes.append("SYNTHETIC LABELS: this head was trained on synthetic labels; the score demonstrates the "
                     "pipeline and carries no clinical meaning.")
    if alert.flags:
        notes.append("caveats: " + ", ".join(alert.flags))
    if alert.explanation is not None:
        notes.append(_explanation_text(alert.explanation))
    return notes


def _explanation_text(e: Explanation) -> str:
    windows = "; ".join(f"{w.lead} {w.start_s:.1f}-{w.end_s:.1f} s ({w.weight:.0%})" for w in e.windows)
    return f"where the model looked ({e.method}): leads {', '.join(e.top_leads)}; windows {windows}"
