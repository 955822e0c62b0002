"""A DECLARED-SYNTHETIC linked ECG/echo cohort built from the real PTB-XL records: proof of the path, not of medicine.

ECGs are real: every PTB-XL record of ``../shared/data`` becomes one ``ecg.event/v1`` line with its
real patient and recording date (PTB-XL patients with several records have several ECGs at the
real intervals). Echo studies and their measurements are INVENTED, with a planted dependence on
the ECG that :data:`DEFINITION` states in full (it is written into ``cohort.json`` beside the data):

* each patient gets one echo study anchored on one of their ECGs: 75% within +-14 days of it, 25%
  15-180 days away (outside the default window, so linkage has something to reject); with
  probability 0.4 a follow-up study 180-720 days later;
* a study's values come from the anchor ECG's features (SCP statements, QRS voltage), a
  per-patient random effect shared by all their studies, and per-study noise (``DEFINITION``);
* AR, PR and pericardial effusion are pure noise: CONTROL tasks on which a head must not find
  signal (held-out AUROC about 0.5); rare diagnoses are left unknown (too rare for 1510 records).

The ``planted`` file holds each ECG's noise-free planted score per task (the mean of the latent
variable before noise), so the best AUROC any model could reach is known and can be compared with
what the heads recover.
"""

from __future__ import annotations

import ast
import csv
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from schemas.codec import encode_event
from schemas.messages import Source

F64 = npt.NDArray[np.float64]
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
MI_CODES = frozenset({"IMI", "ASMI", "AMI", "ILMI", "ALMI", "LMI", "IPLMI", "IPMI", "PMI", "INJAS", "INJAL"})
GRADES = ("none", "trace", "mild", "moderate", "severe")
GRADE_CUTS = (0.3, 0.9, 1.5, 2.0)  # latent below each cut -> that grade; >= 1.5 is "moderate" or worse
EFFUSION = ("none", "trivial", "small", "moderate", "large")

# The planted model, as data. Features of the anchor ECG: lvh, mi, clbbb, afib, rvh (0/1 from its SCP
# statements), volt = R(V5|V6) + S(V1) in mV, age in years. u_* ~ N(0,1) per patient; noise per study.
DEFINITION: dict[str, Any] = {
    "lvef_pct": "60 - 18 mi - 12 clbbb - 6 afib + 3 u_ef + N(0, 5), clipped to [10, 75]",
    "lv_wall_mm": "9.5 + 3 lvh + 1.5 clip(volt - 3, -1.5, 3) + 0.8 u_wall + N(0, 1), clipped to [6, 25]",
    "pasp_mmhg": "31 + 14 rvh + 12 afib + 0.5 max(0, 55 - lvef) + 3 u_pa + N(0, 5), clipped to [15, 90]",
    "tr_vmax_ms": "sqrt(max(pasp - 5, 1) / 4) + N(0, 0.1)  (Bernoulli: PASP = 4 v^2 + RA pressure 5)",
    "mr_grade": "latent 0.08 max(0, 55 - lvef) + 0.8 afib + N(0, 1)",
    "as_grade": "latent 0.04 (age - 60) + 0.7 lvh + N(0, 1)",
    "tr_grade": "latent 0.05 (pasp - 30) + N(0, 1)",
    "rv_function": "latent 0.05 (pasp - 30) + 0.8 rvh + N(0, 1)",
    "ar_grade": "latent N(0, 1)  (control: no ECG dependence)",
    "pr_grade": "latent N(0, 1)  (control: no ECG dependence)",
    "pericardial_effusion": "latent N(0, 1) on the effusion scale  (control: no ECG dependence)",
    "lavi_ml_m2": "28 + 10 afib + 0.15 max(0, 55 - lvef) + 3 mr_latent + N(0, 4)",
    "grades": f"latent < {GRADE_CUTS} -> {GRADES}; effusion scale {EFFUSION} at the same cuts",
    "studies": "one per patient anchored on a random ECG: 75% within +-14 days, 25% 15-180 days away; "
               "p=0.4 a follow-up 180-720 days later (same anchor features, new noise)",
    "rare_and_hcm": "dx_* columns left empty: unknown labels (too rare to plant in 1510 records)",
}


# Task -> (planted.csv column, sign): the noise-free score whose held-out AUROC is the ceiling for that task.
PLANTED_SCORE: dict[str, tuple[str, float]] = {
    "echo.lvef_le_40": ("lvef_pct", -1.0), "echo.lvef_le_45": ("lvef_pct", -1.0), "echo.lvef_le_50": ("lvef_pct", -1.0),
    "echo.lvh_wall_ge_13mm": ("lv_wall_mm", 1.0), "echo.pasp_ge_45": ("pasp_mmhg", 1.0),
    "echo.tr_vmax_ge_3_2": ("pasp_mmhg", 1.0), "echo.mr_moderate_plus": ("mr", 1.0),
    "echo.as_moderate_plus": ("as", 1.0), "echo.tr_moderate_plus": ("tr", 1.0), "echo.rv_dysfunction": ("rv", 1.0),
}


def read_planted(path: Path) -> dict[str, dict[str, float]]:
    """planted.csv as column -> {ecg_id: value}."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {c: {r["ecg_id"]: float(r[c]) for r in rows} for c in (rows[0] if rows else {}) if c != "ecg_id"}


@dataclass(frozen=True)
class Features:
    lvh: F64
    mi: F64
    clbbb: F64
    afib: F64
    rvh: F64
    volt: F64
    age: F64


def qrs_voltage(signals_mv: F64) -> F64:
    """(N, T, 12) mV -> R(V5 or V6) + S(V1) in mV per record, from robust extremes after removing the median."""
    x = signals_mv - np.median(signals_mv, axis=1, keepdims=True)
    r = np.maximum(np.percentile(x[:, :, 10], 99.5, axis=1), np.percentile(x[:, :, 11], 99.5, axis=1))
    s = -np.percentile(x[:, :, 6], 0.5, axis=1)
    return np.clip(r + s, 0.0, 8.0)


def features(meta: Sequence[Mapping[str, str]], signals_mv: F64) -> Features:
    codes = [set(ast.literal_eval(m["scp_codes"] or "{}")) for m in meta]

    def has(*names: str) -> F64:
        return np.array([float(bool(c & set(names))) for c in codes])

    ages = np.array([float(m.get("age") or 60) for m in meta])
    return Features(lvh=has("LVH"), mi=np.array([float(bool(c & MI_CODES)) for c in codes]), clbbb=has("CLBBB"),
                    afib=has("AFIB", "AFLT"), rvh=has("RVH", "RAO/RAE"), volt=qrs_voltage(signals_mv),
                    age=np.where(ages > 120, 90.0, ages))


def means(f: Features) -> dict[str, F64]:
    """The noise-free planted part of each measurement/latent (patient effects at 0)."""
    lvef = 60 - 18 * f.mi - 12 * f.clbbb - 6 * f.afib
    lowef = np.maximum(0, 55 - lvef)
    pasp = 31 + 14 * f.rvh + 12 * f.afib + 0.5 * lowef
    return {"lvef_pct": lvef, "lv_wall_mm": 9.5 + 3 * f.lvh + 1.5 * np.clip(f.volt - 3, -1.5, 3), "pasp_mmhg": pasp,
            "mr": 0.08 * lowef + 0.8 * f.afib, "as": 0.04 * (f.age - 60) + 0.7 * f.lvh, "tr": 0.05 * (pasp - 30),
            "rv": 0.05 * (pasp - 30) + 0.8 * f.rvh}


def _grade(latent: F64, scale: tuple[str, ...]) -> list[str]:
    return [scale[int(np.searchsorted(GRADE_CUTS, v, side="right"))] for v in latent]


def measurements(f: Features, u: Mapping[str, F64], rng: np.random.Generator) -> dict[str, list[Any]]:
    """One study per row of ``f`` (the anchor ECG's features), ``u`` the patients' random effects."""
    n = f.lvh.size

    def noise(sd: float) -> F64:
        return rng.normal(0, sd, n)

    lvef = np.clip(60 - 18 * f.mi - 12 * f.clbbb - 6 * f.afib + 3 * u["ef"] + noise(5), 10, 75)
    wall = np.clip(9.5 + 3 * f.lvh + 1.5 * np.clip(f.volt - 3, -1.5, 3) + 0.8 * u["wall"] + noise(1), 6, 25)
    lowef = np.maximum(0, 55 - lvef)
    pasp = np.clip(31 + 14 * f.rvh + 12 * f.afib + 0.5 * lowef + 3 * u["pa"] + noise(5), 15, 90)
    mr = 0.08 * lowef + 0.8 * f.afib + noise(1)
    return {
        "lvef_pct": np.round(lvef, 1).tolist(), "lv_wall_mm": np.round(wall, 1).tolist(),
        "pasp_mmhg": np.round(pasp).tolist(),
        "tr_vmax_ms": np.round(np.sqrt(np.maximum(pasp - 5, 1) / 4) + noise(0.1), 2).tolist(),
        "mr_grade": _grade(mr, GRADES), "as_grade": _grade(0.04 * (f.age - 60) + 0.7 * f.lvh + noise(1), GRADES),
        "tr_grade": _grade(0.05 * (pasp - 30) + noise(1), GRADES),
        "rv_function": _grade(0.05 * (pasp - 30) + 0.8 * f.rvh + noise(1), GRADES),
        "ar_grade": _grade(noise(1), GRADES), "pr_grade": _grade(noise(1), GRADES),
        "pericardial_effusion": _grade(noise(1), EFFUSION),
        "lavi_ml_m2": np.round(28 + 10 * f.afib + 0.15 * lowef + 3 * mr + noise(4), 1).tolist(),
    }


def _time(raw: str) -> datetime:
    try:
        return datetime.fromisoformat(raw).replace(tzinfo=UTC)
    except ValueError:
        return datetime(1990, 1, 1, tzinfo=UTC)


def _study_offsets(rng: np.random.Generator, n: int) -> F64:
    near = rng.uniform(-14, 14, n)
    far = rng.choice([-1.0, 1.0], n) * rng.uniform(15, 180, n)
    return np.where(rng.random(n) < 0.75, near, far)


def load_records(data_dir: Path) -> tuple[F64, list[dict[str, str]]]:
    with np.load(data_dir / "ptbxl_folds1-8_100hz.npz") as z:
        signals, ids = z["signals"].astype(np.float64) / 1000.0, z["ecg_id"]
    with open(data_dir / "ptbxl_folds1-8_metadata.csv", newline="", encoding="utf-8") as fh:
        meta = {int(float(r["ecg_id"])): r for r in csv.DictReader(fh)}
    return signals, [meta[int(i)] for i in ids]


def build_cohort(data_dir: Path, out: Path, seed: int = 0, limit: int | None = None) -> dict[str, Any]:
    """Write ``events.jsonl``, ``echo.csv``, ``planted.csv`` and ``cohort.json`` into ``out``; return the summary."""
    rng = np.random.default_rng(seed)
    signals, meta = load_records(data_dir)
    if limit is not None:
        signals, meta = signals[:limit], meta[:limit]
    feats = features(meta, signals)
    patients = [f"ptbxl-p{int(float(m['patient_id']))}" for m in meta]
    times = [_time(m["recording_date"]) for m in meta]
    out.mkdir(parents=True, exist_ok=True)
    n_events = _write_events(out / "events.jsonl", meta, signals, patients, times)
    studies = _studies(rng, feats, patients, times)
    _write_csv(out / "echo.csv", studies)
    planted = means(feats)
    _write_csv(out / "planted.csv", [{"ecg_id": _event_id(m), **{k: round(float(v[i]), 4) for k, v in planted.items()}}
                                     for i, m in enumerate(meta)])
    summary = {"kind": "synthetic", "warning": "echo measurements are SYNTHETIC; ECGs are real PTB-XL records",
               "seed": seed, "ecgs": n_events, "patients": len(set(patients)), "studies": len(studies),
               "patients_with_several_ecgs": sum(c > 1 for c in _counts(patients).values()),
               "definition": DEFINITION, "source": str(data_dir)}
    (out / "cohort.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return summary


def _counts(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def _event_id(m: Mapping[str, str]) -> str:
    return f"ptbxl-{int(float(m['ecg_id']))}"


def _write_events(path: Path, meta: list[dict[str, str]], signals: F64, patients: list[str],
                  times: list[datetime]) -> int:
    with open(path, "wb") as f:
        for i, m in enumerate(meta):
            age = float(m.get("age") or 0) or None
            f.write(encode_event(_event_id(m), patients[i], times[i], Source("synthetic-echo-site", feed="ptbxl"),
                                 100.0, LEADS, signals[i].T, age_years=None if age is None else min(age, 90.0))
                    + b"\n")
    return len(meta)


def _studies(rng: np.random.Generator, f: Features, patients: list[str], times: list[datetime]) -> list[dict[str, Any]]:
    by_patient: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        by_patient.setdefault(p, []).append(i)
    order = sorted(by_patient)
    anchors = np.array([by_patient[p][int(rng.integers(len(by_patient[p])))] for p in order])
    u = {k: rng.normal(0, 1, len(order)) for k in ("ef", "wall", "pa")}
    follow = rng.random(len(order)) < 0.4
    rows = list(_study_rows(rng, f, anchors, u, [patients[a] for a in anchors],
                            [times[a] + timedelta(days=float(d)) for a, d in
                             zip(anchors, _study_offsets(rng, len(order)), strict=True)]))
    idx = np.flatnonzero(follow)
    later = [times[anchors[j]] + timedelta(days=float(rng.uniform(180, 720))) for j in idx]
    rows += list(_study_rows(rng, f, anchors[idx], {k: v[idx] for k, v in u.items()},
                             [patients[anchors[j]] for j in idx], later))
    return rows


def _study_rows(rng: np.random.Generator, f: Features, anchors: npt.NDArray[np.int64], u: Mapping[str, F64],
                patients: list[str], when: list[datetime]) -> Iterator[dict[str, Any]]:
    sub = Features(*(getattr(f, k)[anchors] for k in ("lvh", "mi", "clbbb", "afib", "rvh", "volt", "age")))
    values = measurements(sub, u, rng)
    for j, p in enumerate(patients):
        yield {"patient_ref": p, "study_time": when[j].isoformat(), **{k: v[j] for k, v in values.items()},
               "dx_hcm": "", "dx_ebstein": "", "dx_constrictive_pericarditis": "", "dx_dextrocardia": "",
               "dx_cardiac_amyloidosis": ""}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
