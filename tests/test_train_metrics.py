"""models/train/metrics.py against hand-computed values, models.calibration, and bootstrap invariants."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibration import auroc as cal_auroc
from models.calibration import average_precision as cal_ap
from models.train.metrics import (
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


def test_known_values() -> None:
    s, y = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)
    assert auroc(s, y) == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ordered right
    assert average_precision(s, y) == pytest.approx((1 / 1 + 2 / 3) / 2)  # scikit-learn's documented example: 0.8333
    assert auroc(np.ones(4), y) == 0.5  # all tied: half credit
    assert average_precision(np.ones(4), y) == pytest.approx(0.5)  # all tied: one step at the prevalence
    assert np.isnan(auroc(s, np.zeros(4, bool))) and np.isnan(average_precision(s, np.zeros(4, bool)))


def test_perfect_and_reversed() -> None:
    y = np.array([0, 0, 0, 1, 1], bool)
    s = np.arange(5.0)
    assert auroc(s, y) == 1.0 and average_precision(s, y) == 1.0
    assert auroc(-s, y) == 0.0


def test_agrees_with_calibration_module() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.2
    s = np.round(rng.normal(size=300) + y, 1)  # rounding makes ties
    assert auroc(s, y) == pytest.approx(cal_auroc(s, y), abs=1e-12)
    assert average_precision(s, y) == pytest.approx(cal_ap(s, y), abs=1e-12)


def test_operating_point() -> None:
    s, y = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)
    assert sensitivity(s, y, 0.35) == 1.0 and specificity(s, y, 0.35) == 0.5
    assert ppv_at(1.0, 0.5, 0.5) == pytest.approx(2 / 3)
    assert ppv_at(0.9, 0.9, 0.01) == pytest.approx(0.009 / (0.009 + 0.099))


def test_bootstrap_interval_reproducible_and_paired() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(200) < 0.3
    s = rng.normal(size=200) + 1.5 * y
    idx = bootstrap_indices(200, 300, seed=7)
    a = estimate(auroc, s, y, idx)
    b = estimate(auroc, s, y, bootstrap_indices(200, 300, seed=7))
    assert (a.lo, a.hi) == (b.lo, b.hi) and a.lo < a.value < a.hi
    assert 0.05 < a.hi - a.lo < 0.3  # n=200: an interval of a few hundredths either side
    d = difference(a, a)
    assert d.value == 0.0 and (d.lo, d.hi) == (0.0, 0.0)  # paired: identical models differ by exactly 0
    m = macro([a, a])
    assert m.value == pytest.approx(a.value) and (m.lo, m.hi) == pytest.approx((a.lo, a.hi))
