"""`ecgscreen gate run` and `ecgscreen gate check` as a person or a script calls them."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from ops.cli import main
from schemas.codec import encode_event
from schemas.messages import Source
from tests.test_gate import LEADS, SIM_FS, clean, idx

WHEN = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def event(event_id: str, signal: np.ndarray) -> bytes:
    return encode_event(event_id, "p-1", WHEN, Source("site-a", None, "test"), SIM_FS, LEADS, signal)


def outputs(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_gate_run_on_events_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lead_off = clean()
    lead_off[idx("II")] = 0.0
    reversed_ = clean()
    reversed_[idx("I")] *= -1.0
    reversed_[[idx("II"), idx("III")]] = reversed_[[idx("III"), idx("II")]]
    reversed_[[idx("aVR"), idx("aVL")]] = reversed_[[idx("aVL"), idx("aVR")]]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([event("ev-clean", clean()), event("ev-lead-off", lead_off), b"{not json",
                                 event("ev-reversed", reversed_[:, : 8 * SIM_FS])]) + b"\n")
    assert main(["gate", "run", str(path)]) == 1  # one line could not be decoded
    lines = outputs(capsys)
    assert [ln.get("event_id") for ln in lines] == [None, "ev-clean", "ev-lead-off", "ev-reversed"]
    bad, ok, off, rev = lines
    assert bad["line"] == 3 and bad["error"] == "invalid_json"
    assert (ok["status"], ok["reasons"], ok["bad_leads"]) == ("pass", [], [])
    assert off["status"] == "reject" and "lead_off" in off["reasons"] and off["bad_leads"] == ["II"]
    assert rev["status"] == "reject" and "limb_lead_reversal" in rev["reasons"]  # 8 s: its own batch
    assert isinstance(ok["indices"], dict) and ok["indices"]["heart_rate_bpm"] > 0


def test_gate_run_on_npz_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    noisy = clean()
    noisy[idx("V3")] = 0.0
    signals = (np.stack([clean(), noisy]).transpose(0, 2, 1) * 1000).round().astype(np.int16)
    np.savez(tmp_path / "x.npz", signals=signals, ecg_id=np.array([11, 12], np.int32), fs=SIM_FS,
             lead_names=np.array(LEADS))
    with open(tmp_path / "meta.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["ecg_id", "patient_id", "age", "sex"])
        w.writeheader()
        w.writerows([{"ecg_id": 11, "patient_id": 1, "age": 50, "sex": 0},
                     {"ecg_id": 12, "patient_id": 2, "age": 60, "sex": 1}])
    assert main(["gate", "run", str(tmp_path / "x.npz"), str(tmp_path / "meta.csv")]) == 0
    lines = outputs(capsys)
    assert [(ln["ecg_id"], ln["status"], ln["bad_leads"]) for ln in lines] == [(11, "pass", []),
                                                                            (12, "degraded", ["V3"])]


def test_gate_check_without_data_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate", "check", "--data-dir", str(tmp_path)]) == 2
    assert "no PTB-XL data" in capsys.readouterr().err


@pytest.mark.data
def test_gate_check_json_on_shared_data(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["gate", "check", "--data-dir", str(shared_data), "--rate", "100", "--records", "30", "--no-baseline"]
    assert main([*args, "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["records"] == 30 and report["clean_neurokit2"] is None
    assert "neurokit2" not in report["same_records"]["baseline_drift"]
