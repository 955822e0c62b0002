"""Evaluate bundles on PTB-XL records: per-task PRAUC/AUROC with bootstrap 95% intervals, and the
operating point (sensitivity, specificity, PPV) at each task's threshold in the bundle.

Scores are what the worker would compute: records go through ``prepare_record`` with the bundle's
InputSpec and through ``make_engine(bundle, "torch-cpu").infer`` (calibrated probabilities), or
are read from ``ecgscreen model predict`` output, so the two can be checked against each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from models.bundle import Bundle, load_bundle
from models.engine import make_engine
from models.train.data import DataError, PTBXLSet, load_ptbxl, npz_path, read_statements
from models.train.metrics import (
    Estimate,
    auroc,
    average_precision,
    bootstrap_indices,
    difference,
    estimate,
    macro,
    ppv_at,
    sensitivity,
    specificity,
)
from models.train.tasks import SUPERCLASS_TASKS, label_matrix, labels_for_tasks

F32 = npt.NDArray[np.float32]
DEFAULT_BOOT = 2000


def score_bundle(bundle: Bundle, x: F32, batch: int = 64) -> F32:
    engine = make_engine(bundle, "torch-cpu")
    parts = [engine.infer(x[i : i + batch]) for i in range(0, len(x), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, len(bundle.task_ids)), np.float32)


def read_scores(path: Path, ecg_ids: npt.NDArray[np.int64], task_ids: Sequence[str]) -> F32:
    """Scores from ``model predict`` JSON lines (``{"ecg_id":..., "scores": {task: p}}``), in ``ecg_ids`` order."""
    rows: dict[int, list[float]] = {}
    for line in path.read_bytes().splitlines():
        doc = orjson.loads(line) if line.strip() else {}
        if "ecg_id" in doc and "scores" in doc:
            rows[int(doc["ecg_id"])] = [float(doc["scores"][t]) for t in task_ids]
    missing = [int(e) for e in ecg_ids if int(e) not in rows]
    if missing:
        raise DataError(f"{path} has no scores for {len(missing)} record(s), e.g. ecg_id {missing[:5]}")
    return np.array([rows[int(e)] for e in ecg_ids], dtype=np.float32)


def eval_data(bundle: Bundle, data_dir: Path, folds: Sequence[int], rate_hz: float | None) -> PTBXLSet:
    """The records of ``folds``, prepared for the bundle; from the npz at the bundle's own rate if there is one."""
    if rate_hz is None:
        own = bundle.config.input.sampling_rate_hz
        try:
            npz_path(data_dir, own)
            rate_hz = own
        except DataError:
            rate_hz = 100.0
    return load_ptbxl(data_dir, bundle.config.input, rate_hz, folds)


def evaluate_bundle(bundle_path: Path, data_dir: Path, folds: Sequence[int] = (8,), *, rate_hz: float | None = None,
                    n_boot: int = DEFAULT_BOOT, seed: int = 0, scores_path: Path | None = None) -> dict[str, Any]:
    bundle = load_bundle(bundle_path)
    ds = eval_data(bundle, data_dir, folds, rate_hz)
    tasks = labels_for_tasks(bundle.config.tasks, read_statements(data_dir))
    y = label_matrix(ds, tasks).astype(bool)
    probs = score_bundle(bundle, ds.x) if scores_path is None else read_scores(scores_path, ds.ecg_id, bundle.task_ids)
    report = evaluate_probs(probs, y, bundle, bootstrap_indices(len(ds), n_boot, seed))
    report.update({"data": str(data_dir), "folds": list(folds), "n_boot": n_boot, "bootstrap_seed": seed,
                   "scores": "engine torch-cpu" if scores_path is None else str(scores_path)})
    return report


def evaluate_probs(probs: F32, y: npt.NDArray[np.bool_], bundle: Bundle, idx: npt.NDArray[np.int64]) -> dict[str, Any]:
    """Per-task rows and macro means; ``_estimates`` keeps bootstrap replicates for paired comparisons."""
    rows, est = [], {}
    for j, task in enumerate(bundle.config.tasks):
        p, yj = probs[:, j].astype(np.float64), y[:, j]
        est[task.id] = {"auroc": estimate(auroc, p, yj, idx), "prauc": estimate(average_precision, p, yj, idx)}
        rows.append(_task_row(task, p, yj, idx, est[task.id]))
    report: dict[str, Any] = {"bundle": str(bundle.path), "sha256": bundle.sha256, "name": bundle.config.name,
                              "trained": bundle.config.trained, "n": len(y), "tasks": rows}
    report["macro"] = {group: {m: macro([est[t][m] for t in ids]).to_dict() for m in ("auroc", "prauc")}
                       for group, ids in _groups(bundle).items()}
    report["alert_rate"] = alert_rate(probs, bundle, idx)
    report["_estimates"] = est
    return report


def _groups(bundle: Bundle) -> dict[str, list[str]]:
    supers = [t for t in SUPERCLASS_TASKS if t in bundle.task_ids]
    return {**({"superclasses": supers} if supers else {}), "all_tasks": list(bundle.task_ids)}


def _task_row(task: Any, p: npt.NDArray[np.float64], y: npt.NDArray[np.bool_], idx: npt.NDArray[np.int64],
              est: dict[str, Estimate]) -> dict[str, Any]:
    thr = task.threshold
    # Intervals for the operating point of alerting tasks only: the rest would cost bootstrap time for
    # figures nobody acts on (their point values are still reported).
    ci = idx if task.alert else idx[:0]
    sens = estimate(lambda s, t: sensitivity(s, t, thr), p, y, ci)
    spec = estimate(lambda s, t: specificity(s, t, thr), p, y, ci)
    ppv = estimate(lambda s, t: ppv_at(sensitivity(s, t, thr), specificity(s, t, thr), float(t.mean())), p, y, ci)
    row = {"id": task.id, "name": task.name, "n": int(y.size), "n_pos": int(y.sum()),
           "prevalence": round(float(y.mean()), 6), "auroc": est["auroc"].to_dict(), "prauc": est["prauc"].to_dict(),
           "threshold": thr, "sensitivity": sens.to_dict(), "specificity": spec.to_dict(), "ppv": ppv.to_dict()}
    if task.prevalence is not None:  # the intended population's prevalence, from the catalog
        at = estimate(lambda s, t: ppv_at(sensitivity(s, t, thr), specificity(s, t, thr), task.prevalence), p, y, ci)
        row["ppv_at_target_prevalence"] = {"prevalence": task.prevalence, **at.to_dict()}
    row["flagged_per_100"] = round(100 * float((p >= thr).mean()), 3)
    return row


def alert_rate(probs: F32, bundle: Bundle, idx: npt.NDArray[np.int64]) -> dict[str, Any]:
    """ECGs with at least one alerting task at or above its threshold, per 100 scored (before the
    worker's quality gate, eligibility rules and per-patient dedup, which only remove alerts)."""
    cols = [j for j, t in enumerate(bundle.config.tasks) if t.alert]
    thr = np.array([bundle.config.tasks[j].threshold for j in cols])
    flagged: npt.NDArray[np.bool_] = np.zeros(len(probs), dtype=bool)
    if cols:
        flagged = np.asarray(np.any(probs[:, cols] >= thr, axis=1), dtype=bool)
    reps = 100 * flagged[idx].mean(1)
    lo, hi = np.quantile(reps, [0.025, 0.975]) if len(reps) else (np.nan, np.nan)
    return {"tasks": [bundle.config.tasks[j].id for j in cols], "per_100": round(100 * float(flagged.mean()), 3),
            "ci95": [round(float(lo), 3), round(float(hi), 3)]}


def _r(v: float) -> float | None:
    return round(v, 6) if np.isfinite(v) else None


# --- comparing bundles on the same resamples -----------------------------------------------------


def compare_bundles(paths: Sequence[Path], data_dir: Path, folds: Sequence[int] = (8,), *,
                    n_boot: int = DEFAULT_BOOT, seed: int = 0) -> dict[str, Any]:
    """Evaluate several bundles on one set of bootstrap resamples; differences are against the first."""
    reports = [evaluate_bundle(p, data_dir, folds, n_boot=n_boot, seed=seed) for p in paths]
    ref = reports[0]
    rows = []
    for rep in reports:
        row = {"bundle": rep["bundle"], "name": rep["name"], "macro": rep["macro"]}
        row["diff_vs_first"] = {g: {m: difference(_macro_est(rep, g, m), _macro_est(ref, g, m)).to_dict()
                                    for m in ("auroc", "prauc")} for g in rep["macro"] if g in ref["macro"]}
        rows.append(row)
    return {"data": str(data_dir), "folds": list(folds), "n_boot": n_boot, "bootstrap_seed": seed, "bundles": rows}


def _macro_est(report: dict[str, Any], group: str, metric: str) -> Estimate:
    ids = [t["id"] for t in report["tasks"]]
    if group == "superclasses":
        ids = [t for t in SUPERCLASS_TASKS if t in ids]
    return macro([report["_estimates"][t][metric] for t in ids])


def public(report: dict[str, Any]) -> dict[str, Any]:
    """The report without bootstrap replicates (for JSON output)."""
    return {k: v for k, v in report.items() if not k.startswith("_")}


# --- tables ------------------------------------------------------------------------------------------


def _ci(d: dict[str, Any]) -> str:
    v, (lo, hi) = d["value"], d["ci95"]
    if v is None:
        return "n/a"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{v:.3f}"


def _pt(d: dict[str, Any]) -> str:
    return "n/a" if d["value"] is None else f"{d['value']:.2f}"


def format_table(report: dict[str, Any]) -> str:
    head = (f"{'task':<12} {'n':>4} {'pos':>4} {'prev':>5}  {'AUROC [95% CI]':<22} {'PRAUC [95% CI]':<22} "
            f"{'thr':>5} {'sens':>5} {'spec':>5} {'PPV':>5}")
    lines = [f"{report['name']} ({report['sha256'][:12]}) on folds {report['folds']}, n={report['n']}", head]
    for t in report["tasks"]:
        lines.append(f"{t['id']:<12} {t['n']:>4} {t['n_pos']:>4} {t['prevalence']:>5.2f}  {_ci(t['auroc']):<22} "
                     f"{_ci(t['prauc']):<22} {t['threshold']:>5.2f} {_pt(t['sensitivity']):>5} "
                     f"{_pt(t['specificity']):>5} {_pt(t['ppv']):>5}")
    for group, m in report["macro"].items():
        lines.append(f"macro ({group}): AUROC {_ci(m['auroc'])}  PRAUC {_ci(m['prauc'])}")
    return "\n".join(lines)


def format_comparison(cmp: dict[str, Any]) -> str:
    lines = [f"{'bundle':<44} {'superclass AUROC':<22} {'superclass PRAUC':<22} {'all-task AUROC':<22} "
             f"{'dAUROC vs first (superclasses)':<22}"]
    for b in cmp["bundles"]:
        m = b["macro"]
        sup = m.get("superclasses", {"auroc": {"value": None, "ci95": [None, None]},
                                     "prauc": {"value": None, "ci95": [None, None]}})
        diff = b["diff_vs_first"].get("superclasses", {}).get("auroc", {"value": None, "ci95": [None, None]})
        lines.append(f"{Path(b['bundle']).name:<44} {_ci(sup['auroc']):<22} {_ci(sup['prauc']):<22} "
                     f"{_ci(m['all_tasks']['auroc']):<22} {_ci(diff):<22}")
    return "\n".join(lines)
