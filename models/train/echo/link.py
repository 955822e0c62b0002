"""ECG-to-echo linkage: labels from echo studies by the catalog's rules, nearest study within a window, patient splits.

Window: by default an echo counts for an ECG when it lies within 14 days either side
(``DEFAULT_WINDOW_DAYS``). ECG-to-echo models pair within weeks, not months: Attia et al. (Nat Med
2019) used echoes within 2 weeks of the ECG, Sangha et al. (Circulation 2023) within 15 days.
Ejection fraction can change within weeks (decompensation, treatment), so a wider window buys
more pairs at the price of label noise; a site with slow-changing targets only (valve disease)
may widen it. The nearest study wins; a tie goes to the study BEFORE the ECG.

Splits: a patient's split is a hash of (salt, patient ref), so every ECG of a patient lands in one
split, and adding patients later never moves an existing one (a model's validation patients stay
unseen as the data set grows). Disjointness is checked after assignment, not assumed.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from models.echo_catalog import EchoCatalog, derive_labels, load_echo_catalog
from models.train.echo.tables import EcgRef, LinkageError, parse_time, require_columns

DEFAULT_WINDOW_DAYS = 14.0
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
DEFAULT_SALT = "ecgscreen-split-v1"


@dataclass(frozen=True)
class EchoStudy:
    patient_ref: str
    study_time: datetime
    labels: Mapping[str, float]  # task id -> 1.0 / 0.0 / NaN (unknown)


@dataclass(frozen=True)
class LinkedEcg:
    ecg_id: str
    patient_ref: str
    acquired_at: datetime | None
    study_time: datetime | None
    gap_days: float | None  # echo time minus ECG time; None for per-ECG label files
    split: str
    labels: Mapping[str, float]


def split_of(patient_ref: str, fractions: Sequence[float] = DEFAULT_FRACTIONS, salt: str = DEFAULT_SALT) -> str:
    """A stable split from the patient alone: sha256 -> uniform [0, 1) -> cumulative fractions."""
    u = int.from_bytes(hashlib.sha256(f"{salt}\x1f{patient_ref}".encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]


def echo_studies(rows: Iterable[Mapping[str, object]], patient_col: str, time_col: str,
                 cat: EchoCatalog | None = None) -> list[EchoStudy]:
    """One EchoStudy per echo table row, labels derived by the catalog's rules."""
    cat = cat or load_echo_catalog()
    out = []
    for i, r in enumerate(rows):
        when = parse_time(r[time_col], f"echo row {i + 1}.{time_col}")
        out.append(EchoStudy(str(r[patient_col]), when, derive_labels(r, cat)))
    return out


def nearest_study(ecg: EcgRef, times: Sequence[datetime], studies: Sequence[EchoStudy],
                  window_days: float) -> EchoStudy | None:
    """The study nearest ``ecg`` in time within the window (``times`` sorted, aligned with ``studies``)."""
    i = bisect.bisect_left(times, ecg.acquired_at)
    best: tuple[float, int] | None = None
    for j in (i - 1, i):  # the last study before and the first at/after the ECG
        if 0 <= j < len(times):
            gap = abs((times[j] - ecg.acquired_at).total_seconds()) / 86400
            if gap <= window_days and (best is None or gap < best[0]):  # strict: a tie keeps the earlier
                best = (gap, j)
    return None if best is None else studies[best[1]]


def link(ecgs: Iterable[EcgRef], studies: Sequence[EchoStudy], window_days: float = DEFAULT_WINDOW_DAYS,
         fractions: Sequence[float] = DEFAULT_FRACTIONS, salt: str = DEFAULT_SALT) -> list[LinkedEcg]:
    """Each ECG with an echo of the same patient within ``window_days``, labelled from that echo."""
    if window_days < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise LinkageError("window_days must be >= 0 and split fractions must sum to 1")
    by_patient: dict[str, list[EchoStudy]] = {}
    for s in sorted(studies, key=lambda s: s.study_time):
        by_patient.setdefault(s.patient_ref, []).append(s)
    times = {p: [s.study_time for s in ss] for p, ss in by_patient.items()}
    out = []
    for ecg in ecgs:
        study = nearest_study(ecg, times.get(ecg.patient_ref, []), by_patient.get(ecg.patient_ref, []), window_days)
        if study is not None:
            gap = (study.study_time - ecg.acquired_at).total_seconds() / 86400
            out.append(LinkedEcg(ecg.ecg_id, ecg.patient_ref, ecg.acquired_at, study.study_time, gap,
                                 split_of(ecg.patient_ref, fractions, salt), study.labels))
    check_patient_disjoint(out)
    return out


def echonext_labels(rows: Sequence[Mapping[str, object]], refs: Mapping[str, EcgRef], patient_col: str | None,
                    fractions: Sequence[float] = DEFAULT_FRACTIONS, salt: str = DEFAULT_SALT,
                    cat: EchoCatalog | None = None, path: Path = Path("labels")) -> list[LinkedEcg]:
    """EchoNext-style rows (``ecg_id`` + the 12 binary columns) as linked ECGs.

    The patient comes from ``patient_col`` when given, else from the ECG's event; an ECG whose
    patient is unknown is refused (a split without patients could leak a patient across splits).
    """
    cat = cat or load_echo_catalog()
    columns = cat.echonext_columns()
    require_columns(rows, ("ecg_id", *columns), path)
    out = []
    for r in rows:
        ecg_id = str(r["ecg_id"])
        ref = refs.get(ecg_id)
        patient = str(r[patient_col]) if patient_col else (ref.patient_ref if ref else None)
        if patient is None:
            raise LinkageError(f"ecg_id {ecg_id}: no patient (pass --patient-column or the ECG events)")
        labels = {t: math.nan for t in cat.task_ids}
        labels.update({task: _binary(r[col], f"ecg_id {ecg_id}.{col}") for col, task in columns.items()})
        out.append(LinkedEcg(ecg_id, patient, ref.acquired_at if ref else None, None, None,
                             split_of(patient, fractions, salt), labels))
    check_patient_disjoint(out)
    return out


def _binary(value: object, where: str) -> float:
    text = "" if value is None else str(value).strip().lower()
    if text in ("", "nan", "na"):
        return math.nan
    if text in ("1", "1.0", "true"):
        return 1.0
    if text in ("0", "0.0", "false"):
        return 0.0
    raise LinkageError(f"{where}: {value!r} is not 0/1")


def check_patient_disjoint(rows: Sequence[LinkedEcg]) -> None:
    seen: dict[str, str] = {}
    for r in rows:
        if seen.setdefault(r.patient_ref, r.split) != r.split:
            raise LinkageError(f"patient {r.patient_ref!r} is in two splits ({seen[r.patient_ref]}, {r.split})")


def counts(rows: Sequence[LinkedEcg], task_ids: Sequence[str]) -> dict[str, dict[str, dict[str, int]]]:
    """task -> split -> {n (labelled), pos, unknown}; plus ``_ecgs``/``_patients`` per split."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for t in task_ids:
        out[t] = {}
        for s in SPLITS:
            vals = [r.labels.get(t, math.nan) for r in rows if r.split == s]
            known = [v for v in vals if not math.isnan(v)]
            out[t][s] = {"n": len(known), "pos": int(sum(known)), "unknown": len(vals) - len(known)}
    out["_total"] = {s: {"ecgs": sum(r.split == s for r in rows),
                         "patients": len({r.patient_ref for r in rows if r.split == s})} for s in SPLITS}
    return out


def write_manifest(rows: Sequence[LinkedEcg], task_ids: Sequence[str], path: Path) -> None:
    """CSV: ecg_id, patient_ref, acquired_at, study_time, gap_days, split, then one 1/0/'' column per task."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ecg_id", "patient_ref", "acquired_at", "study_time", "gap_days", "split", *task_ids])
        for r in rows:
            labels = ["" if math.isnan(r.labels.get(t, math.nan)) else int(r.labels[t]) for t in task_ids]
            w.writerow([r.ecg_id, r.patient_ref, _iso(r.acquired_at), _iso(r.study_time),
                        "" if r.gap_days is None else f"{r.gap_days:.3f}", r.split, *labels])


def read_manifest(path: Path) -> tuple[list[LinkedEcg], tuple[str, ...]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        tasks = tuple(c for c in (reader.fieldnames or ()) if "." in c)
        rows = [LinkedEcg(r["ecg_id"], r["patient_ref"], _opt_time(r["acquired_at"]), _opt_time(r["study_time"]),
                          float(r["gap_days"]) if r["gap_days"] else None, r["split"],
                          {t: float(r[t]) if r[t] != "" else math.nan for t in tasks}) for r in reader]
    return rows, tasks


def _iso(t: datetime | None) -> str:
    return "" if t is None else t.isoformat()


def _opt_time(text: str) -> datetime | None:
    return parse_time(text, "manifest") if text else None
