"""`ecgscreen gate fit-precordial`: fit the gate's precordial-order model on PTB-XL.

Fitted on the 100 Hz records that are not in the 500 Hz file and carry no noise
annotation, so ``gate check --rate 500`` measures it on records it never saw. Deterministic:
the same data gives the same JSON, byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ops.gate_check import BATCH, load_ptbxl
from workers.gate import _precordial, beat_templates

SOFT_QUANTILE = 0.98  # GateConfig.precordial_swap_soft: ~2 % of clean records say "check V-leads"
BAD_QUANTILE = 0.995  # GateConfig.precordial_swap_bad: ~0.5 % lose the two leads
COMMAND = "ecgscreen gate fit-precordial --data-dir ../shared/data"


def default_output() -> Path:
    return Path(_precordial.__file__).with_name(_precordial.MODEL_FILE)


def fit_records(data_dir: Path) -> tuple[NDArray[np.float32], NDArray[np.int64], float]:
    """(R, 8, W) templates of the fitting records, their ecg_ids and the template rate."""
    ds = load_ptbxl(data_dir, 100)
    with np.load(data_dir / "ptbxl_folds1-8_500hz.npz") as z:
        held_out = set(z["ecg_id"].tolist())
    rows = np.flatnonzero(~ds.any_annotation & ~np.isin(ds.ecg_ids, list(held_out)))
    chunks, ids, fs = [], [], 0.0
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        tm = beat_templates(ds.x_mv[chunk], ds.fs, ds.leads)
        t8 = _precordial.model_leads(tm.template, ds.leads)
        assert t8 is not None, "PTB-XL has all twelve leads"
        chunks.append(t8[tm.beats > 0])
        ids.append(ds.ecg_ids[chunk][tm.beats > 0])  # a record without beats has no template
        fs = tm.fs
    return np.concatenate(chunks), np.concatenate(ids), fs


def fit_precordial(data_dir: Path) -> tuple[_precordial.PrecordialModel, dict[str, Any]]:
    t8, ids, fs = fit_records(data_dir)
    model = _precordial.fit(t8, fs)
    gain, _ = _precordial.swap_gain(t8, model)
    quantiles = {f"{q:g}": round(float(np.quantile(gain, q)), 3) for q in (0.5, 0.9, 0.95, SOFT_QUANTILE, 0.99,
                                                                              BAD_QUANTILE)}
    provenance = {
        "data": "PTB-XL folds 1-8 (../shared/data), 100 Hz records not in the 500 Hz file, no noise annotation",
        "license": "derived from PTB-XL (Wagner et al., Sci Data 2020), CC BY 4.0",
        "records": len(ids), "ecg_ids": ids.tolist(), "command": COMMAND,
        "fit_gain_quantiles": quantiles,
        "suggested_thresholds": {"precordial_swap_soft": quantiles[f"{SOFT_QUANTILE:g}"],
                                 "precordial_swap_bad": quantiles[f"{BAD_QUANTILE:g}"]},
    }
    return dataclasses.replace(model, provenance=provenance), provenance


def write_model(model: _precordial.PrecordialModel, out: Path) -> None:
    out.write_text(json.dumps(model.to_json(), separators=(",", ":")) + "\n", encoding="utf-8")
