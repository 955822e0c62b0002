"""ECG-to-echo linkage: nearest study within the window, patient-disjoint splits, EchoNext label files, the CLI."""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.echo_catalog import load_echo_catalog
from models.train.echo.link import (
    EchoStudy,
    check_patient_disjoint,
    counts,
    echonext_labels,
    link,
    read_manifest,
    split_of,
    write_manifest,
)
from models.train.echo.tables import EcgRef, LinkageError
from ops.cli import main
from schemas.codec import encode_event
from schemas.messages import Source

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def study(patient: str, days: float, lvef: float) -> EchoStudy:
    return EchoStudy(patient, T0 + timedelta(days=days), {"echo.lvef_le_45": float(lvef <= 45)})


def test_nearest_echo_within_the_window_and_ties_go_to_the_earlier() -> None:
    studies = [study("p1", -10, 30), study("p1", 3, 60), study("p2", 0, 30), study("p1", 40, 30)]
    ecgs = [EcgRef("e1", "p1", T0), EcgRef("e2", "p1", T0 + timedelta(days=25)),
            EcgRef("e3", "p1", T0 + timedelta(days=-3.5)), EcgRef("e4", "p3", T0)]
    rows = {r.ecg_id: r for r in link(ecgs, studies, window_days=14)}
    assert rows["e1"].labels["echo.lvef_le_45"] == 0.0 and rows["e1"].gap_days == pytest.approx(3)
    assert "e2" not in rows and "e4" not in rows  # 15 days from the nearest; no echo of that patient
    assert rows["e3"].gap_days == pytest.approx(-6.5)  # -10 is 6.5 days away, +3 is 6.5 days away: earlier wins
    assert rows["e3"].labels["echo.lvef_le_45"] == 1.0
    assert "e2" in {r.ecg_id for r in link(ecgs, studies, window_days=15)}  # window edge is inclusive


def test_no_patient_in_two_splits() -> None:
    rng = np.random.default_rng(0)
    studies, ecgs = [], []
    for p in range(400):
        for k in range(int(rng.integers(1, 5))):  # several ECGs and echoes per patient
            day = float(rng.uniform(0, 900))
            ecgs.append(EcgRef(f"e{p}-{k}", f"pt{p}", T0 + timedelta(days=day)))
            studies.append(study(f"pt{p}", day + float(rng.uniform(-10, 10)), float(rng.uniform(20, 70))))
    rows = link(ecgs, studies)
    splits: dict[str, set[str]] = {}
    for r in rows:
        splits.setdefault(r.patient_ref, set()).add(r.split)
    assert rows and all(len(s) == 1 for s in splits.values())
    share = {s: sum(r.split == s for r in rows) / len(rows) for s in ("train", "val", "test")}
    assert 0.6 < share["train"] < 0.8 and share["val"] > 0.08 and share["test"] > 0.08
    # stable: a patient's split depends on the patient alone, not on who else is in the data
    assert all(split_of(r.patient_ref) == r.split for r in rows)
    c = counts(rows, ["echo.lvef_le_45"])
    assert sum(c["_total"][s]["ecgs"] for s in ("train", "val", "test")) == len(rows)
    assert sum(c["echo.lvef_le_45"][s]["n"] for s in ("train", "val", "test")) == len(rows)
    bad = [rows[0], rows[0].__class__(**{**rows[0].__dict__, "ecg_id": "x", "split": "zzz"})]
    with pytest.raises(LinkageError):
        check_patient_disjoint(bad)


def test_echonext_label_files() -> None:
    cat = load_echo_catalog()
    cols = cat.echonext_columns()
    row = {"ecg_id": "7", "patient_key": "P9", **{c: "0" for c in cols}}
    row["lvef_lte_45_flag"] = "1"
    [r] = echonext_labels([row], {}, "patient_key")
    assert r.labels["echo.lvef_le_45"] == 1.0 and r.labels["echo.any_shd"] == 0.0
    assert math.isnan(r.labels["echo.hcm"]) and r.split == split_of("P9")
    with pytest.raises(LinkageError):  # no patient anywhere: refused
        echonext_labels([row], {}, None)
    ref = EcgRef("7", "P1", T0)
    assert echonext_labels([row], {"7": ref}, None)[0].patient_ref == "P1"


def _events(path: Path) -> None:
    sig = np.zeros((12, 100), np.float32)
    leads = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    with open(path, "wb") as f:
        for i, (p, d) in enumerate([("a", 0), ("a", 100), ("b", 1), ("c", 2)]):
            f.write(encode_event(f"ev{i}", p, T0 + timedelta(days=d), Source("s"), 100.0, leads, sig) + b"\n")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_link_echo_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    _events(tmp_path / "ev.jsonl")
    table = [{"patient_ref": "a", "study_time": "2025-03-05", "lvef_pct": "35", "lv_wall_mm": "14"},
             {"patient_ref": "b", "study_time": "2025-03-01T12:00:00", "lvef_pct": "62", "lv_wall_mm": ""},
             {"patient_ref": "c", "study_time": "2025-06-01", "lvef_pct": "20", "lv_wall_mm": "9"}]
    if fmt == "csv":
        echo = tmp_path / "echo.csv"
        with open(echo, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
    else:
        pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (the parquet extra)")
        import pyarrow.parquet as pq

        echo = tmp_path / "echo.parquet"
        pq.write_table(pa.Table.from_pylist(table), echo)
    assert main(["train", "link-echo", "--events", str(tmp_path / "ev.jsonl"), "--echo", str(echo),
                 "--out", str(tmp_path / "out")]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["ecgs_in"] == 4 and summary["ecgs_linked"] == 2  # ev1: 96 days off; c: 91 days off
    rows, tasks = read_manifest(tmp_path / "out" / "linked.csv")
    by = {r.ecg_id: r for r in rows}
    assert set(by) == {"ev0", "ev2"} and by["ev0"].labels["echo.lvef_le_45"] == 1.0
    assert by["ev0"].labels["echo.lvh_wall_ge_13mm"] == 1.0 and math.isnan(by["ev2"].labels["echo.lvh_wall_ge_13mm"])
    total = sum(summary["counts"]["echo.lvef_le_45"][s]["pos"] for s in ("train", "val", "test"))
    assert total == 1 and "echo.lvef_le_45" in tasks
    write_manifest(rows, tasks, tmp_path / "again.csv")  # round trip
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "out" / "linked.csv").read_bytes()
