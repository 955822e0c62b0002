"""Ranking and threshold metrics with percentile-bootstrap 95% intervals. Pure numpy/scipy.

* AUROC and PRAUC (average precision) are models.calibration's, the ones that choose
  operating points, so training reports and bundles agree on one definition.
* Intervals: the same record resamples for every task and every statistic, so a macro mean's
  interval and paired differences between models come from one joint resampling. Resamples
  lacking a positive or a negative for a task give NaN for it and are left out of its interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models import calibration

F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]
Stat = Callable[[F64, Bool], float]

CI_LEVEL = 0.95


def auroc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """models.calibration's AUROC, NaN when a class is absent (a bootstrap resample can lose one)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    return calibration.auroc(s, y) if y.any() and not y.all() else float("nan")


def average_precision(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """models.calibration's average precision (PRAUC), NaN without positives."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    return calibration.average_precision(s, y) if y.any() else float("nan")


def sensitivity(scores: F64, labels: Bool, threshold: float) -> float:
    return float((scores[labels] >= threshold).mean()) if labels.any() else float("nan")


def specificity(scores: F64, labels: Bool, threshold: float) -> float:
    return float((scores[~labels] < threshold).mean()) if (~labels).any() else float("nan")


def ppv_at(sens: float, spec: float, prevalence: float) -> float:
    """PPV by Bayes at ``prevalence`` (the validation set's, or the intended population's)."""
    tp, fp = sens * prevalence, (1 - spec) * (1 - prevalence)
    return tp / (tp + fp) if tp + fp > 0 else float("nan")


def bootstrap_indices(n: int, n_boot: int, seed: int) -> npt.NDArray[np.int64]:
    """(n_boot, n) record indices drawn with replacement; seeded, so intervals are reproducible."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n), dtype=np.int64)


def bootstrap_values(stat: Stat, scores: F64, labels: Bool, idx: npt.NDArray[np.int64]) -> F64:
    """``stat`` on every resample (NaN where the resample lacks a class the statistic needs)."""
    return np.array([stat(scores[i], labels[i]) for i in idx], dtype=np.float64)


def percentile_ci(values: F64) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    a = (1 - CI_LEVEL) / 2
    lo, hi = np.quantile(v, [a, 1 - a])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Estimate:
    """A point estimate, its 95% interval, and its bootstrap replicates (for macro means and differences)."""

    value: float
    lo: float
    hi: float
    replicates: F64

    def to_dict(self) -> dict[str, Any]:
        return {"value": _finite(self.value), "ci95": [_finite(self.lo), _finite(self.hi)]}


def _finite(v: float) -> float | None:
    return round(float(v), 6) if np.isfinite(v) else None


def estimate(stat: Stat, scores: F64, labels: Bool, idx: npt.NDArray[np.int64]) -> Estimate:
    reps = bootstrap_values(stat, scores, labels, idx)
    return Estimate(stat(scores, labels), *percentile_ci(reps), reps)


def combine(estimates: list[Estimate], op: Callable[[F64], F64]) -> Estimate:
    """A statistic of several estimates on the same resamples (e.g. a macro mean, or a difference).

    ``op`` maps a (k, ...) stack to one value per column; resamples where any input is NaN are dropped.
    """
    point = float(op(np.array([[e.value] for e in estimates]))[0])
    reps = op(np.stack([e.replicates for e in estimates]))
    return Estimate(point, *percentile_ci(reps), reps)


def macro(estimates: list[Estimate]) -> Estimate:
    return combine(estimates, lambda m: m.mean(axis=0))


def difference(a: Estimate, b: Estimate) -> Estimate:
    return combine([a, b], lambda m: m[0] - m[1])
