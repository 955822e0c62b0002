"""Cross-fitted linear probe: out-of-fold (OOF) predictions over PTB-XL folds 1-8 decide calibration,
thresholds and every figure; the shipped heads are refitted on all of those folds.

Why: fold 8 alone holds 7 atrial-fibrillation records, so a single validation fold can neither
carry AF nor give honest intervals for any rare statement. Here every record of folds 1-8 gets a
score from a probe that never saw its patient: for each PTB-XL fold k the heads are fitted on the
other folds (standardisation and L2 strength chosen inside that training part only, by
patient-grouped inner cross-validation) and score fold k. PTB-XL folds are patient-disjoint; each
outer split is checked (a shared patient aborts). Calibration (strictly monotone, chosen by
cross-validated log-loss) and each task's threshold are fitted on the pooled OOF logits, and the
heads that ship are fitted on all folds with the same recipe: scikit-learn's
``CalibratedClassifierCV(ensemble=False)`` scheme. The frozen encoder's embeddings are computed once.

Caveat the card states: the contrastive encoder was pre-trained on folds 1-7 (reports included),
so only fold 8's OOF scores come from an encoder that never saw the record; the per-fold table
shows how fold 8 compares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import torch
from torch import nn

from models.bundle import export_bundle
from models.calibration import CalibrationError, Calibrator, auroc, average_precision
from models.catalog import catalog_task
from models.config import TaskSpec, ThresholdTarget
from models.ecgclip import ECGCLIP
from models.train.bundling import fit_task_threshold, provenance
from models.train.config import ProbeConfig, TrainConfig
from models.train.data import (
    PTBXLSet,
    Statement,
    check_patient_disjoint,
    grouped_folds,
    parse_codes,
    read_metadata,
)
from models.train.loop import deterministic
from models.train.probe import Standardizer, embed, linear_heads
from models.train.tasks import (
    SUPERCLASS_TASKS,
    SUPERCLASSES,
    TaskLabel,
    label_matrix,
    labels_of,
    statement_task,
)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
OOF_SCORES = "oof_scores.jsonl"
CV_REPORT = "crossval.json"


def select_cv_tasks(ds: PTBXLSet, statements: Mapping[str, Statement], min_positives: int) -> tuple[TaskLabel, ...]:
    """The five superclasses, then every SCP statement with >= ``min_positives`` positive records in
    ``ds`` (any likelihood), by descending count. Enough positives to estimate an operating point:
    with 20, a sensitivity near 0.8 has a 95% interval about +-0.17 wide."""
    tasks = [TaskLabel(catalog_task(t), c, "superclass") for t, c in zip(SUPERCLASS_TASKS, SUPERCLASSES, strict=True)]
    taken = {t.spec.id for t in tasks}
    counts = {c: int(labels_of(ds, c, "statement").sum()) for c in sorted({c for cs in ds.codes for c in cs})}
    for code in sorted(counts, key=lambda c: (-counts[c], c)):
        task = statement_task(code, statements.get(code), counts[code] / len(ds))
        if counts[code] >= min_positives and task.spec.id not in taken:
            tasks.append(task)
            taken.add(task.spec.id)
    return tuple(tasks)


# --- ridge heads ---------------------------------------------------------------------------------
# Least-squares (ridge) heads on standardised embeddings, Platt-calibrated afterwards. Why not the
# holdout probe's logistic regression: nested cross-fitting needs 8 x (5 x 5 + 1) fits, and one
# L-BFGS logistic fit of 39 tasks took 36-56 s on this shared machine (measured), hours in all; a
# ridge fit for every L2 value at once is one SVD (milliseconds). Ranking (AUROC, PRAUC) is what
# the heads are for; calibration is fitted afterwards on out-of-fold scores either way.


def ridge_path(z: F64, y: F64, grid: Sequence[float]) -> tuple[F64, F64]:
    """Ridge weights (G, T, D) and intercepts (G, T) for every L2 value (objective: mean squared
    error + l2 |w|^2), via one SVD of the centred design. Float64 torch, so the thread count the
    training recipe fixes also fixes the rounding."""
    zt, yt = torch.from_numpy(np.ascontiguousarray(z)), torch.from_numpy(np.ascontiguousarray(y))
    zm, ym = zt.mean(0), yt.mean(0)
    u, sv, vh = torch.linalg.svd(zt - zm, full_matrices=False)
    uty = u.T @ (yt - ym)  # (K, T)
    n = zt.shape[0]
    lam = torch.tensor(list(grid), dtype=torch.float64)
    shrink = sv[None, :] / (sv[None, :] ** 2 + n * lam[:, None])  # (G, K)
    w = torch.einsum("gk,kd,kt->gtd", shrink, vh, uty)
    b = ym[None, :] - torch.einsum("gtd,d->gt", w, zm)
    return w.numpy(), b.numpy()


def choose_ridge_l2(z: F64, y: F64, patient_id: I64, grid: Sequence[float], k: int, seed: int) -> F64:
    """Per-task L2 with the lowest patient-grouped cross-validated squared error (Brier score of the
    raw head); ties go to the stronger penalty."""
    order = sorted(grid, reverse=True)
    sse = np.zeros((len(order), y.shape[1]))
    for test in grouped_folds(patient_id, k, seed):
        train = np.setdiff1d(np.arange(len(y)), test)
        w, b = ridge_path(z[train], y[train], order)
        pred = np.einsum("nd,gtd->gnt", z[test], w) + b[:, None, :]
        sse += ((pred - y[test][None]) ** 2).sum(1)
    return np.array(order)[sse.argmin(0)]


@dataclass(frozen=True)
class Heads:
    """Ridge heads on standardised embeddings, with the L2 strength chosen per task."""

    std: Standardizer
    w: F64
    b: F64
    l2: F64

    def logits(self, z: F64) -> F64:
        return self.std(z) @ self.w.T + self.b

    def linear(self) -> nn.Linear:
        return linear_heads(self.w, self.b, self.std)


def fit_heads(z: F64, y: F64, patient_id: I64, cfg: ProbeConfig, seed: int) -> Heads:
    """Standardise, choose L2 per task by patient-grouped CV on these records only, fit."""
    std = Standardizer.fit(z)
    zs = std(z)
    l2 = choose_ridge_l2(zs, y, patient_id, cfg.l2_grid, cfg.cv_folds, seed)
    grid = sorted(set(l2.tolist()))
    w_all, b_all = ridge_path(zs, y, grid)
    pick = np.array([grid.index(v) for v in l2.tolist()])
    cols = np.arange(y.shape[1])
    return Heads(std, w_all[pick, cols], b_all[pick, cols], l2)


@dataclass(frozen=True)
class CrossFit:
    """Out-of-fold logits (N, T) for every record, with the outer fold that scored each."""

    logits: F64
    fold: I64
    l2_by_fold: dict[int, F64]


def cross_fit(z: F64, y: F64, ds: PTBXLSet, folds: Sequence[int], cfg: ProbeConfig, seed: int) -> CrossFit:
    """Per PTB-XL fold k: heads fitted on the other folds (patient-disjoint, checked) score fold k."""
    held = np.full(y.shape, np.nan)
    l2s: dict[int, F64] = {}
    for k in folds:
        test = np.flatnonzero(ds.fold == k).astype(np.int64)
        train = np.flatnonzero(np.isin(ds.fold, [f for f in folds if f != k])).astype(np.int64)
        check_patient_disjoint(ds.patient_id, train, test)
        heads = fit_heads(z[train], y[train], ds.patient_id[train], cfg, seed)
        held[test] = heads.logits(z[test])
        l2s[k] = heads.l2
    if np.isnan(held).any():
        raise ValueError("records outside the cross-fitting folds: select them before cross-fitting")
    return CrossFit(held, ds.fold.copy(), l2s)


def target_for(cfg: ProbeConfig, task_id: str) -> ThresholdTarget:
    return ThresholdTarget(kind="min_specificity", value=cfg.specificity_for(task_id))


def calibrate_on_oof(tasks: Sequence[TaskLabel], oof: F64, y: F64, cfg: ProbeConfig) -> tuple[TaskSpec, ...]:
    """Each task's calibration, threshold (stated target) and figures, all from the OOF logits; label
    source ``ecg_statement`` (PTB-XL's statements), as every bundle v3 head must name one."""
    tasks = [dataclasses.replace(t, spec=dataclasses.replace(t.spec, label_source="ecg_statement")) for t in tasks]
    out = []
    for j, task in enumerate(tasks):
        try:
            target = target_for(cfg, task.spec.id)
            labels = y[:, j].astype(np.float32)
            out.append(fit_task_threshold(task.spec, oof[:, j], labels, target, cfg.calibration_methods))
        except CalibrationError:
            out.append(dataclasses.replace(task.spec, calibration=None, target=None, metrics=None))
    return tuple(out)


def fold_table(oof: F64, y: F64, fold: I64) -> list[dict[str, Any]]:
    """Per outer fold: records and macro AUROC over the five superclasses (the first five tasks, present
    in every fold), so folds can be compared; fold 8 is the one the encoder never saw."""
    rows = []
    for k in sorted(set(fold.tolist())):
        sel = fold == k
        per = [auroc(oof[sel, j], y[sel, j].astype(bool)) for j in range(len(SUPERCLASSES))
               if 0 < y[sel, j].sum() < sel.sum()]
        rows.append({"fold": int(k), "n": int(sel.sum()), "macro_auroc_superclasses": float(np.mean(per))})
    return rows


# --- the command's pipeline --------------------------------------------------------------------------


@dataclass(frozen=True)
class CVResult:
    bundle: Any  # models.bundle.Bundle
    tasks: tuple[TaskLabel, ...]
    cross: CrossFit
    probs: npt.NDArray[np.float32]  # calibrated OOF probabilities (what an engine would return)
    summary: dict[str, Any]


def run_cv_probe(cfg: TrainConfig, clip: ECGCLIP, ds: PTBXLSet, tasks: Sequence[TaskLabel], out: Path,
                 extra_provenance: dict[str, str] | None = None) -> CVResult:
    """Cross-fit, calibrate on OOF scores, fit final heads on every record, write the bundle."""
    p = cfg.probe
    with deterministic(cfg.seed, cfg.threads):
        z = embed(clip.signal, ds.x)
        y = label_matrix(ds, tasks).astype(np.float64)
        cross = cross_fit(z, y, ds, p.oof_folds, p, cfg.seed)
        specs = calibrate_on_oof(tasks, cross.logits, y, p)
        final = fit_heads(z, y, ds.patient_id, p, cfg.seed)
        prov = provenance(cfg, "ECGCLIP contrastive pre-training + linear probe, cross-fitted",
                          splits=f"heads on folds {list(p.oof_folds)}; calibration, thresholds and metrics on "
                                 f"out-of-fold scores (one probe per held-out fold, patient-disjoint, checked)",
                          operating_point=f"out-of-fold specificity >= {p.target_specificity}",
                          **(extra_provenance or {}))
        bundle = export_bundle(out, clip, specs, cfg.data.input_spec(), name=cfg.bundle.name,
                               version=cfg.bundle.version, trained=True, provenance=prov,
                               linear_heads=final.linear(), overwrite=True)
    probs = Calibrator(specs)(cross.logits)
    summary = {"bundle": str(out), "sha256": bundle.sha256, "n": len(ds), "folds": list(p.oof_folds),
               "tasks": [t.spec.id for t in tasks], "l2": dict(zip([t.spec.id for t in tasks], final.l2.tolist(),
                                                                   strict=True)),
               "per_fold": fold_table(cross.logits, y, cross.fold)}
    return CVResult(bundle, tuple(tasks), cross, probs, summary)


def write_oof_scores(path: Path, ds: PTBXLSet, task_ids: Sequence[str], probs: npt.NDArray[np.float32]) -> None:
    """``model predict``-style JSON lines, so ``train evaluate --scores`` reads them."""
    with open(path, "wb") as f:
        for i, e in enumerate(ds.ecg_id.tolist()):
            row = {"ecg_id": int(e), "fold": int(ds.fold[i]),
                   "scores": {t: float(probs[i, j]) for j, t in enumerate(task_ids)}}
            f.write(orjson.dumps(row) + b"\n")


def context_check(cfg: TrainConfig, clip: ECGCLIP, ds: PTBXLSet, result: CVResult, seconds: float = 5.0
                  ) -> dict[str, Any]:
    """Rhythm tasks' OOF AUROC/PRAUC from the first ``seconds`` of each record vs the whole 10 s,
    same cross-fitting: if halving the context costs little, a longer one would gain little."""
    ids = [t.spec.id for t in result.tasks]
    cols = [ids.index(t) for t in cfg.probe.context_check_tasks if t in ids]
    n = round(seconds * cfg.data.sampling_rate_hz)
    y = label_matrix(ds, [result.tasks[j] for j in cols]).astype(np.float64)
    with deterministic(cfg.seed, cfg.threads):
        z_short = embed(clip.signal, np.ascontiguousarray(ds.x[:, :, :n]))
        short = cross_fit(z_short, y, ds, cfg.probe.oof_folds, cfg.probe, cfg.seed).logits
    rows = {}
    for i, j in enumerate(cols):
        yb = y[:, i].astype(bool)
        rows[ids[j]] = {"n_pos": int(yb.sum()),
                        "full": {"auroc": auroc(result.cross.logits[:, j], yb),
                                 "prauc": average_precision(result.cross.logits[:, j], yb)},
                        "short": {"auroc": auroc(short[:, i], yb), "prauc": average_precision(short[:, i], yb)}}
    return {"short_seconds": seconds, "full_seconds": ds.x.shape[2] / cfg.data.sampling_rate_hz, "tasks": rows}


def write_cv_outputs(run_dir: Path, cfg: TrainConfig, clip: ECGCLIP, ds: PTBXLSet, result: CVResult) -> dict[str, str]:
    """``oof_scores.jsonl`` (read by ``train evaluate --scores`` and ``train card``) and ``crossval.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    scores, report = run_dir / OOF_SCORES, run_dir / CV_REPORT
    write_oof_scores(scores, ds, [t.spec.id for t in result.tasks], result.probs)
    doc = {**result.summary, "context": context_check(cfg, clip, ds, result),
           "rate_500hz": records_500hz(Path(cfg.data.data_dir), result.tasks)}
    report.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return {"oof_scores": str(scores), "crossval": str(report)}


def records_500hz(data_dir: Path, tasks: Sequence[TaskLabel]) -> dict[str, Any]:
    """How many records (and positives per task) exist at 500 Hz: what a 500 Hz model could learn from."""
    meta = read_metadata(data_dir)
    rows = [m for m in meta.values() if int(float(m.get("row_500hz") or -1)) >= 0]
    sub = PTBXLSet(np.zeros((len(rows), 1, 1), np.float32), np.zeros(len(rows), np.int64),
                   np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64), tuple("" for _ in rows),
                   tuple(parse_codes(m["scp_codes"]) for m in rows),
                   tuple(frozenset(c for c in m["diagnostic_superclass"].split(";") if c) for m in rows))
    return {"n": len(rows), "positives": {t.spec.id: int(labels_of(sub, t.code, t.kind).sum()) for t in tasks}}
