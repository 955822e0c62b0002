"""PTB-XL records as model-ready arrays, their labels and reports, and patient-disjoint splits.

Signals go through :func:`models.preprocess.prepare_record` with the bundle's InputSpec, the very
function the worker and ``model predict`` use, so training sees exactly what inference will see.
Raw ADC -> mV exactly as ``ops.feed.ptbxl_records`` does it (int16 -> float32, / 1000).
"""

from __future__ import annotations

import ast
import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.config import InputSpec
from models.preprocess import prepare_record
from schemas.errors import ECGScreenError

I64 = npt.NDArray[np.int64]
METADATA_FILE = "ptbxl_folds1-8_metadata.csv"
STATEMENTS_FILE = "scp_statements.csv"
ADC_PER_MV = 1000.0  # every PTB-XL record: gain 1000, baseline 0 (asserted by the data's build script)


class DataError(ECGScreenError):
    """Training data missing, inconsistent, or a split that leaks patients (reason ``invalid_training_data``)."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_training_data", detail)


@dataclass(frozen=True)
class Statement:
    code: str
    description: str
    diagnostic_class: str  # NORM/MI/STTC/CD/HYP for diagnostic statements, "" otherwise


@dataclass(frozen=True)
class PTBXLSet:
    """N records: model-ready signals and the metadata training needs, row-aligned."""

    x: npt.NDArray[np.float32]  # (N, leads, samples)
    ecg_id: I64
    patient_id: I64
    fold: I64
    reports: tuple[str, ...]
    codes: tuple[tuple[str, ...], ...]  # SCP statement codes in report order, any likelihood
    superclasses: tuple[frozenset[str], ...]

    def __len__(self) -> int:
        return int(self.ecg_id.size)

    def subset(self, idx: Sequence[int] | I64) -> PTBXLSet:
        ix = np.asarray(idx, dtype=np.int64)
        pick = [int(i) for i in ix]
        return PTBXLSet(self.x[ix], self.ecg_id[ix], self.patient_id[ix], self.fold[ix],
                        tuple(self.reports[i] for i in pick), tuple(self.codes[i] for i in pick),
                        tuple(self.superclasses[i] for i in pick))


@dataclass(frozen=True)
class Split:
    train: I64
    val: I64


# --- reading ---------------------------------------------------------------------------------------


def read_statements(data_dir: Path) -> dict[str, Statement]:
    """PTB-XL's scp_statements.csv: code -> description and diagnostic class."""
    path = data_dir / STATEMENTS_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {r[""]: Statement(r[""], r["description"].strip(), r["diagnostic_class"].strip()) for r in rows}


def parse_codes(raw: str) -> tuple[str, ...]:
    """``"{'NORM': 100.0, 'SR': 0.0}"`` -> ('NORM', 'SR'); literal_eval never runs code."""
    value = ast.literal_eval(raw) if raw.strip() else {}
    if not isinstance(value, dict):
        raise DataError(f"scp_codes is not a dict: {raw[:80]!r}")
    return tuple(str(k) for k in value)


def read_metadata(data_dir: Path) -> dict[int, dict[str, str]]:
    path = data_dir / METADATA_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing (see ../shared/data/README.md)")
    with open(path, newline="", encoding="utf-8") as f:
        return {int(float(r["ecg_id"])): r for r in csv.DictReader(f)}


def npz_path(data_dir: Path, rate_hz: float) -> Path:
    path = data_dir / f"ptbxl_folds1-8_{round(rate_hz)}hz.npz"
    if not path.is_file():
        raise DataError(f"{path} is missing; this data set ships 100 and 500 Hz files")
    return path


def load_ptbxl(data_dir: str | Path, spec: InputSpec, rate_hz: float | None = None,
               folds: Sequence[int] | None = None) -> PTBXLSet:
    """Records of the npz at ``rate_hz`` (default: the spec's rate), prepared for ``spec``; optionally some folds."""
    data_dir = Path(data_dir)
    meta = read_metadata(data_dir)
    with np.load(npz_path(data_dir, rate_hz or spec.sampling_rate_hz)) as z:
        ecg_ids, fs = z["ecg_id"].astype(np.int64), float(z["fs"])
        leads = tuple(str(n) for n in z["lead_names"])
        rows = [i for i, e in enumerate(ecg_ids) if folds is None or _fold(meta, int(e)) in set(folds)]
        signals = z["signals"][rows]
    return build_set(signals, fs, leads, [meta[int(ecg_ids[i])] for i in rows], spec)


def _fold(meta: dict[int, dict[str, str]], ecg_id: int) -> int:
    if ecg_id not in meta:
        raise DataError(f"ecg_id {ecg_id} of the npz has no metadata row")
    return int(float(meta[ecg_id]["strat_fold"]))


def build_set(signals: np.ndarray, fs: float, leads: Sequence[str], meta: Sequence[dict[str, str]],
              spec: InputSpec) -> PTBXLSet:
    """(N, T, leads) int16 ADC + one metadata row each -> a PTBXLSet prepared for ``spec``."""
    x = np.stack([prepare_record(s.T.astype(np.float32) / ADC_PER_MV, fs, leads, spec)[0] for s in signals])
    return PTBXLSet(
        x=x.astype(np.float32),
        ecg_id=np.array([int(float(m["ecg_id"])) for m in meta], dtype=np.int64),
        patient_id=np.array([int(float(m["patient_id"])) for m in meta], dtype=np.int64),
        fold=np.array([int(float(m["strat_fold"])) for m in meta], dtype=np.int64),
        reports=tuple(m["report"] for m in meta),
        codes=tuple(parse_codes(m["scp_codes"]) for m in meta),
        superclasses=tuple(frozenset(c for c in m["diagnostic_superclass"].split(";") if c) for m in meta),
    )


# --- splits ----------------------------------------------------------------------------------------


def check_patient_disjoint(patient_id: I64, a: I64, b: I64) -> None:
    """Raise if any patient has records on both sides: a leak would inflate every validation figure."""
    shared = np.intersect1d(patient_id[a], patient_id[b])
    if shared.size:
        raise DataError(f"{shared.size} patient(s) on both sides of the split, e.g. {shared[:5].tolist()}")


def make_split(ds: PTBXLSet, train_folds: Sequence[int], val_folds: Sequence[int]) -> Split:
    """Fold-based split (PTB-XL folds are patient-disjoint by construction; checked, not assumed)."""
    train = np.flatnonzero(np.isin(ds.fold, list(train_folds))).astype(np.int64)
    val = np.flatnonzero(np.isin(ds.fold, list(val_folds))).astype(np.int64)
    if train.size == 0 or val.size == 0:
        raise DataError(f"empty split: {train.size} train, {val.size} validation records")
    check_patient_disjoint(ds.patient_id, train, val)
    return Split(train, val)


def label_subset(patient_id: I64, fraction: float, seed: int) -> I64:
    """Positions (into ``patient_id``) of the records of a seeded random ``fraction`` of the patients.

    Whole patients, so the labelled subset never holds one record of a patient and not another.
    """
    if fraction >= 1.0:
        return np.arange(patient_id.size, dtype=np.int64)
    patients = np.unique(patient_id)
    rng = np.random.default_rng(seed)
    keep = rng.permutation(patients)[: max(1, round(fraction * patients.size))]
    return np.flatnonzero(np.isin(patient_id, keep)).astype(np.int64)


def grouped_folds(patient_id: I64, k: int, seed: int) -> list[I64]:
    """k patient-grouped folds (positions), patients dealt round-robin after a seeded shuffle."""
    patients = np.random.default_rng(seed).permutation(np.unique(patient_id))
    fold_of = {int(p): i % k for i, p in enumerate(patients)}
    fold = np.array([fold_of[int(p)] for p in patient_id], dtype=np.int64)
    return [np.flatnonzero(fold == f).astype(np.int64) for f in range(k) if (fold == f).any()]
