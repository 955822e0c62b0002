"""Per-task probability calibration and operating points, fitted on validation data. Pure numpy/scipy.

A head emits a logit ``z``; the bundle stores, per task, how to turn it into a probability
(:class:`models.config.Calibration`) and the threshold chosen on the calibrated probability
for a stated goal (:class:`models.config.ThresholdTarget`), together with the validation
figures at that threshold (:class:`models.config.TaskMetrics`). Engines apply the calibration,
so ``Engine.infer`` returns calibrated probabilities and the alert policy compares those.

Why these choices:

* The method is chosen by cross-validated negative log-likelihood on the validation set
  (proper scoring rule: rewards calibration and sharpness together), not fixed in advance.
* Isotonic regression only competes with >= ``MIN_ISOTONIC_CLASS`` of each class: with fewer,
  PAV fits the noise and its plateaus hand out probabilities of exactly 0 or 1.
* Thresholds sit ON a validation score (``score >= threshold`` alerts), so the stated
  sensitivity is achieved on validation exactly, not approximately.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize, minimize_scalar

from models.config import MAX_ISOTONIC_KNOTS, Calibration, TaskMetrics, TaskSpec, ThresholdTarget
from schemas.errors import ECGScreenError

F64 = npt.NDArray[np.float64]

PROB_EPS = 1e-6  # keeps log-loss finite and thresholds strictly inside (0, 1), as TaskSpec requires
MIN_ISOTONIC_CLASS = 30
CV_FOLDS = 5
LOG_T_BOUNDS = (-6.0, 6.0)  # temperatures from 0.0025 to 400: wider would only fit degenerate data


class CalibrationError(ECGScreenError):
    """Validation data that cannot calibrate a task (reason ``invalid_calibration_data``)."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_calibration_data", detail)


def sigmoid(z: npt.ArrayLike) -> F64:
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))  # overflow-free for large |z|


def _validated(logits: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[F64, npt.NDArray[np.bool_]]:
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if z.shape != y.shape or z.size == 0:
        raise CalibrationError(f"need equal, non-empty logits and labels, got {z.shape} and {y.shape}")
    if not np.isfinite(z).all():
        raise CalibrationError("logits contain NaN or infinity")
    if not np.isin(y, (0, 1)).all():
        raise CalibrationError("labels must be 0 or 1")
    yb = y.astype(bool)
    if yb.all() or not yb.any():
        raise CalibrationError("need both positive and negative examples")
    return z, yb


# --- applying ------------------------------------------------------------------------------------


def apply_calibration(logits: npt.ArrayLike, cal: Calibration | None) -> F64:
    """Probabilities from raw logits under one task's calibration (``None`` = plain sigmoid)."""
    z = np.asarray(logits, dtype=np.float64)
    if cal is None or cal.method == "none":
        return sigmoid(z)
    if cal.method == "temperature":
        return sigmoid(z / cal.temperature)
    if cal.method == "platt":
        return sigmoid(z / cal.temperature + cal.bias)
    return np.interp(z, cal.x, cal.y)  # isotonic: flat beyond the end knots


class Calibrator:
    """Applies every task's calibration to a (B, T) logit matrix, in task order."""

    def __init__(self, tasks: Sequence[TaskSpec]) -> None:
        self.calibrations = tuple(t.calibration for t in tasks)

    def __call__(self, logits: npt.ArrayLike) -> npt.NDArray[np.float32]:
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != len(self.calibrations):
            raise CalibrationError(f"expected (B, {len(self.calibrations)}) logits, got {z.shape}")
        out = np.empty_like(z)
        for j, cal in enumerate(self.calibrations):
            out[:, j] = apply_calibration(z[:, j], cal)
        return out.astype(np.float32)


# --- fitting -------------------------------------------------------------------------------------


def log_loss(p: npt.ArrayLike, y: npt.ArrayLike) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), PROB_EPS, 1 - PROB_EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def fit_temperature(logits: npt.ArrayLike, labels: npt.ArrayLike) -> Calibration:
    """T minimising the log-loss of sigmoid(z / T); optimised over log T (positive, well scaled)."""
    z, y = _validated(logits, labels)
    res = minimize_scalar(lambda lt: log_loss(sigmoid(z * np.exp(-lt)), y), bounds=LOG_T_BOUNDS, method="bounded")
    return Calibration(method="temperature", temperature=float(np.exp(res.x)))


def fit_platt(logits: npt.ArrayLike, labels: npt.ArrayLike) -> Calibration:
    """Temperature and bias (Platt scaling): also corrects a head whose logits are offset, as zero-shot ones are."""
    z, y = _validated(logits, labels)

    def loss(params: F64) -> float:
        lt = np.clip(params[0], *LOG_T_BOUNDS)
        return log_loss(sigmoid(z * np.exp(-lt) + params[1]), y)

    res = minimize(loss, x0=np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9})
    lt, bias = float(np.clip(res.x[0], *LOG_T_BOUNDS)), float(res.x[1])
    return Calibration(method="platt", temperature=float(np.exp(lt)), bias=bias)


def _pav(values: F64, weights: F64) -> tuple[F64, npt.NDArray[np.int64]]:
    """Weighted pool-adjacent-violators over values in score order: block means and last indices."""
    means: list[float] = []
    wsum: list[float] = []
    ends: list[int] = []
    for i, (v, w) in enumerate(zip(values, weights, strict=True)):
        means.append(float(v))
        wsum.append(float(w))
        ends.append(i)
        while len(means) > 1 and means[-2] > means[-1]:  # merge until non-decreasing
            w2 = wsum[-2] + wsum[-1]
            m = (means[-2] * wsum[-2] + means[-1] * wsum[-1]) / w2
            means[-2:], wsum[-2:], ends[-2:] = [m], [w2], [ends[-1]]
    return np.asarray(means), np.asarray(ends, dtype=np.int64)


def fit_isotonic(logits: npt.ArrayLike, labels: npt.ArrayLike) -> Calibration:
    """Monotone step fit (PAV), stored as knots at each block's lowest and highest score.

    PAV runs over distinct scores weighted by their counts, so equal scores always share one
    probability. Interpolating between blocks (rather than stepping) keeps ranking inside a gap.
    """
    z, y = _validated(logits, labels)
    ux, inverse = np.unique(z, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    rate = np.bincount(inverse, weights=y.astype(np.float64)) / counts
    means, ends = _pav(rate, counts)
    starts = np.concatenate(([0], ends[:-1] + 1))
    xs, ys = _knots(ux, starts, ends, means)
    return Calibration(method="isotonic", x=tuple(xs), y=tuple(ys))


def _knots(ux: F64, first: npt.NDArray[np.int64], last: npt.NDArray[np.int64], means: F64) -> tuple[F64, F64]:
    xs = np.stack([ux[first], ux[last]], axis=1).ravel()
    ys = np.clip(np.repeat(means, 2), PROB_EPS, 1 - PROB_EPS)
    keep = np.concatenate(([True], np.diff(xs) > 0))  # a one-value block gives one knot, not two
    xs, ys = xs[keep], ys[keep]
    if xs.size == 1:  # a single block: constant map, but Calibration needs two knots
        xs, ys = np.array([xs[0] - 1.0, xs[0] + 1.0]), np.repeat(ys, 2)
    if xs.size > MAX_ISOTONIC_KNOTS:  # subsample evenly, always keeping both ends
        idx = np.unique(np.linspace(0, xs.size - 1, MAX_ISOTONIC_KNOTS).round().astype(int))
        xs, ys = xs[idx], ys[idx]
    return xs, np.maximum.accumulate(ys)


FITTERS = {"temperature": fit_temperature, "platt": fit_platt, "isotonic": fit_isotonic}


def _folds(y: npt.NDArray[np.bool_], k: int, seed: int) -> list[npt.NDArray[np.int64]]:
    """Stratified folds: positives and negatives dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    fold = np.empty(y.size, dtype=np.int64)
    for cls in (True, False):
        idx = rng.permutation(np.flatnonzero(y == cls))
        fold[idx] = np.arange(idx.size) % k
    return [np.flatnonzero(fold == f) for f in range(k)]


def cv_log_loss(method: str, z: F64, y: npt.NDArray[np.bool_], k: int = CV_FOLDS, seed: int = 0) -> float:
    """Out-of-fold log-loss of one calibration method."""
    losses = []
    for test in _folds(y, k, seed):
        train = np.setdiff1d(np.arange(y.size), test)
        if y[train].all() or not y[train].any():
            continue
        cal = FITTERS[method](z[train], y[train])
        losses.append(log_loss(apply_calibration(z[test], cal), y[test]) * test.size)
    return float(np.sum(losses) / y.size)


def choose_calibration(
    logits: npt.ArrayLike, labels: npt.ArrayLike, methods: Sequence[str] = ("temperature", "platt", "isotonic"),
    *, seed: int = 0,
) -> tuple[Calibration, dict[str, float]]:
    """The method with the lowest cross-validated log-loss, refitted on all the data; plus every CV score."""
    z, y = _validated(logits, labels)
    n_min = int(min(y.sum(), (~y).sum()))
    allowed = [m for m in methods if m != "isotonic" or n_min >= MIN_ISOTONIC_CLASS]
    if not allowed:
        raise CalibrationError(f"no usable method among {tuple(methods)} with {n_min} examples of the rarer class")
    k = max(2, min(CV_FOLDS, n_min))
    scores = {m: cv_log_loss(m, z, y, k, seed) for m in allowed}
    best = min(allowed, key=lambda m: (scores[m], allowed.index(m)))  # ties: the simpler, listed first
    return FITTERS[best](z, y), scores


# --- operating points ----------------------------------------------------------------------------


def ppv(sensitivity: float, specificity: float, prevalence: float) -> float:
    """Positive predictive value at ``prevalence`` (Bayes), 0 when nothing is flagged."""
    tp = sensitivity * prevalence
    fp = (1 - specificity) * (1 - prevalence)
    return tp / (tp + fp) if tp + fp > 0 else 0.0


def _rates(p: F64, y: npt.NDArray[np.bool_]) -> tuple[F64, F64, F64]:
    """Candidate thresholds (distinct scores, ascending) with sensitivity and specificity at each."""
    thr = np.unique(p)
    pos, neg = np.sort(p[y]), np.sort(p[~y])
    sens = 1 - np.searchsorted(pos, thr, side="left") / pos.size  # share of positives >= t
    spec = np.searchsorted(neg, thr, side="left") / neg.size  # share of negatives < t
    return thr, sens, spec


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    target: ThresholdTarget
    metrics: TaskMetrics


def choose_threshold(probs: npt.ArrayLike, labels: npt.ArrayLike, target: ThresholdTarget) -> OperatingPoint:
    """The threshold on calibrated probabilities meeting ``target``; ``target.met`` False when none can.

    min_sensitivity: the highest threshold keeping sensitivity >= value (best specificity).
    min_specificity: the lowest threshold keeping specificity >= value (best sensitivity).
    min_ppv: among thresholds with PPV >= value at the target prevalence, the lowest (best
    sensitivity); if none reaches it, the one with the highest PPV, flagged not met. PPV uses a
    smoothed false-positive rate, so zero false positives on validation do not mean PPV = 1.
    """
    p, y = _validated(probs, labels)
    if target.kind == "fixed":
        raise CalibrationError("a fixed target has no threshold to choose; set TaskSpec.threshold instead")
    thr, sens, spec = _rates(p, y)
    assert target.value is not None  # ThresholdTarget guarantees it for non-fixed kinds
    if target.kind == "min_sensitivity":
        ok = sens >= target.value
        i = int(np.flatnonzero(ok)[-1])  # sens is 1 at the lowest score, so ok is never empty
        met = True
    elif target.kind == "min_specificity":
        ok = (spec >= target.value) & (sens > 0)
        met = bool(ok.any())
        i = int(np.flatnonzero(ok)[0]) if met else thr.size - 1  # else the top score: the fewest false alerts
    else:
        assert target.prevalence is not None
        n_neg = int((~y).sum())
        # Smoothed false-positive rate (FP + 0.5) / (n_neg + 1): a threshold above every validation
        # negative must not claim PPV = 1 at any prevalence from a finite sample.
        spec_smoothed = 1 - ((1 - spec) * n_neg + 0.5) / (n_neg + 1)
        ppvs = np.array([ppv(a, b, target.prevalence) for a, b in zip(sens, spec_smoothed, strict=True)])
        ok = (ppvs >= target.value) & (sens > 0)
        met = bool(ok.any())
        i = int(np.flatnonzero(ok)[0]) if met else int(np.argmax(ppvs))
    t = float(np.clip(thr[i], PROB_EPS, 1 - PROB_EPS))
    return OperatingPoint(t, dataclasses.replace(target, met=met), task_metrics(p, y, t))


def auroc(p: F64, y: npt.NDArray[np.bool_]) -> float:
    """Mann-Whitney U / (n_pos * n_neg), ties counted half."""
    from scipy.stats import rankdata

    ranks = rankdata(p)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(p: F64, y: npt.NDArray[np.bool_]) -> float:
    """PRAUC as average precision (step-wise, no interpolation), tied scores taken together."""
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    last_of_tie = np.r_[np.diff(ps) != 0, True]
    tp = np.cumsum(ys)[last_of_tie]
    k = (np.arange(1, p.size + 1))[last_of_tie]
    recall_step = np.diff(np.r_[0, tp]) / ys.sum()
    return float(np.sum(recall_step * tp / k))


def task_metrics(probs: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> TaskMetrics:
    p, y = _validated(probs, labels)
    flagged = p >= threshold
    return TaskMetrics(
        sensitivity=float(flagged[y].mean()), specificity=float((~flagged[~y]).mean()),
        prevalence=float(y.mean()), n=int(y.size), n_pos=int(y.sum()),
        prauc=average_precision(p, y), auroc=auroc(p, y),
    )


def fit_task(task: TaskSpec, logits: npt.ArrayLike, labels: npt.ArrayLike, target: ThresholdTarget,
             methods: Sequence[str] = ("temperature", "platt", "isotonic")) -> TaskSpec:
    """``task`` with calibration, threshold, target and validation metrics fitted on (logits, labels).

    Calibration and threshold use the same validation data: acceptable for a screening
    operating point (the calibration is monotone, so it does not change which records pass),
    but the metrics are optimistic by the usual selection bias; report held-out figures apart.
    """
    cal, _ = choose_calibration(logits, labels, methods)
    op = choose_threshold(apply_calibration(logits, cal), labels, target)
    return dataclasses.replace(task, calibration=cal, threshold=op.threshold, target=op.target,
                               metrics=op.metrics)
