"""Alerts as FHIR R4: validated against the R4 (4.0.1) models of fhir.resources; the export's sinks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from ops.stack import free_port
from schemas.messages import Explanation, Priority, Window
from tests.triage_factory import make_alert
from workers.fhir import alert_bundle, alert_resources, fhir_id
from workers.subscribers import ExportError, ExportResult, FhirExporter, FileSink, HttpSink, RetryPolicy

fhir = pytest.importorskip("fhir.resources", reason="needs fhir.resources==6.4.0 (FHIR R4 4.0.1)")

# Required bindings of the elements we set (FHIR R4 value sets): the models check structure, not codes.
REQUIRED_CODES = {
    ("RiskAssessment", "status"): {"registered", "preliminary", "final", "amended", "corrected", "cancelled",
                                   "entered-in-error", "unknown"},
    ("Flag", "status"): {"active", "inactive", "entered-in-error"},
    ("Communication", "status"): {"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed",
                                  "entered-in-error", "unknown"},
    ("Communication", "priority"): {"routine", "urgent", "asap", "stat"},
}


def rich_alert(priority: Priority) -> Any:
    why = Explanation("gradient_x_input", ("II", "V1"), (Window("II", 1.0, 2.5, 0.6), Window("V1", 3.0, 3.4, 0.2)))
    return replace(make_alert(1, priority), flags=("untrained_model", "degraded_quality"), expected_ppv=0.31,
                   explanation=why)


def _empties(node: Any, path: str = "") -> list[str]:
    """FHIR JSON has no empty objects, arrays or strings, and no nulls."""
    if node in ({}, [], "", None):
        return [path]
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _empties(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _empties(v, f"{path}[{i}]")]
    return []


def test_the_library_is_fhir_r4() -> None:
    assert fhir.__fhir_version__ == "4.0.1"


@pytest.mark.parametrize(("priority", "kinds"), [
    (Priority.ROUTINE, ["RiskAssessment"]),
    (Priority.HIGH, ["RiskAssessment", "Flag"]),
    (Priority.URGENT, ["RiskAssessment", "Flag", "Communication"]),
])
def test_bundle_validates_against_fhir_r4(priority: Priority, kinds: list[str]) -> None:
    from fhir.resources import construct_fhir_element

    for alert in (rich_alert(priority), make_alert(2, priority)):
        bundle = orjson.loads(orjson.dumps(alert_bundle(alert)))  # exactly what goes on the wire
        model = construct_fhir_element("Bundle", bundle)
        assert [type(e.resource).__name__ for e in model.entry] == kinds
        assert [e.request.url for e in model.entry] == [f"{r['resourceType']}/{r['id']}"
                                                        for r in alert_resources(alert)]
        for entry in bundle["entry"]:
            res = entry["resource"]
            construct_fhir_element(res["resourceType"], res)
            for (kind, field), allowed in REQUIRED_CODES.items():
                if res["resourceType"] == kind:
                    assert res[field] in allowed
        assert _empties(bundle) == []


def test_risk_assessment_carries_score_ppv_and_explanation() -> None:
    from fhir.resources.riskassessment import RiskAssessment

    alert = rich_alert(Priority.HIGH)
    ra = RiskAssessment.parse_obj(alert_resources(alert)[0])
    assert ra.id == fhir_id(alert.alert_id) and ra.identifier[0].value == alert.alert_id
    assert float(ra.prediction[0].probabilityDecimal) == pytest.approx(alert.score)
    assert ra.prediction[0].outcome.coding[0].code == "ecg.afib"
    assert float(ra.extension[0].valueDecimal) == pytest.approx(0.31)
    notes = " ".join(n.text for n in ra.note)
    assert "UNTRAINED MODEL" in notes and "leads II, V1" in notes and "degraded_quality" in notes
    assert ra.subject.identifier.value == alert.patient_ref


def test_fhir_ids_are_valid_for_any_alert_id() -> None:
    assert fhir_id("al_" + "f" * 32) == "al-" + "f" * 32
    assert len(fhir_id("al_" + "f" * 64, "bundle")) == 64


# --- file sink -----------------------------------------------------------------------------


def test_file_export_dedups_by_alert_id_and_content(tmp_path: Path) -> None:
    alert = rich_alert(Priority.URGENT)
    updated = replace(alert, score=0.99, event_id="e-later")

    async def go() -> list[ExportResult]:
        exporter = FhirExporter(FileSink(tmp_path))
        got = [await exporter.export(alert), await exporter.export(alert), await exporter.export(updated)]
        restarted = FhirExporter(FileSink(tmp_path), FileSink(tmp_path).delivered())
        return [*got, await restarted.export(updated)]

    assert asyncio.run(go()) == [ExportResult.WRITTEN, ExportResult.DUPLICATE, ExportResult.UPDATED,
                                 ExportResult.DUPLICATE]
    (path,) = tmp_path.glob("*.json")
    assert path.name == f"{fhir_id(alert.alert_id)}.json"
    stored = orjson.loads(path.read_bytes())
    assert stored["entry"][0]["resource"]["prediction"][0]["probabilityDecimal"] == 0.99


# --- HTTP sink, against a local server ------------------------------------------------------


class _Server:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.bodies: list[bytes] = []
        self.content_types: list[str] = []


@pytest.fixture
def fhir_server() -> Iterator[tuple[str, _Server]]:
    state = _Server([])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            state.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            state.content_types.append(self.headers["Content-Type"])
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir", state
    finally:
        server.shutdown()
        server.server_close()


def _sink(url: str, attempts: int = 4) -> tuple[HttpSink, list[float]]:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    return HttpSink(url, RetryPolicy(max_attempts=attempts, backoff_s=0.5), timeout_s=5, sleep=sleep), slept


def test_post_retries_with_backoff_then_dedups(fhir_server: tuple[str, _Server]) -> None:
    url, state = fhir_server
    state.statuses = [503, 429, 201]
    sink, slept = _sink(url)
    alert = rich_alert(Priority.URGENT)

    async def go() -> list[ExportResult]:
        exporter = FhirExporter(sink)
        return [await exporter.export(alert), await exporter.export(alert)]

    assert asyncio.run(go()) == [ExportResult.WRITTEN, ExportResult.DUPLICATE]
    assert len(state.bodies) == 3 and slept == [0.5, 1.0]  # no POST for the duplicate
    assert orjson.loads(state.bodies[-1]) == alert_bundle(alert)
    assert state.content_types[-1] == "application/fhir+json"


def test_post_refused_is_not_retried(fhir_server: tuple[str, _Server]) -> None:
    url, state = fhir_server
    state.statuses = [400]
    sink, slept = _sink(url)
    with pytest.raises(ExportError, match="HTTP 400"):
        asyncio.run(FhirExporter(sink).export(make_alert(1)))
    assert len(state.bodies) == 1 and slept == []


def test_post_to_an_unreachable_server_gives_up_after_max_attempts() -> None:
    sink, slept = _sink(f"http://127.0.0.1:{free_port()}/fhir", attempts=3)
    with pytest.raises(ExportError, match="3 attempts"):
        asyncio.run(FhirExporter(sink).export(make_alert(1)))
    assert slept == [0.5, 1.0]
