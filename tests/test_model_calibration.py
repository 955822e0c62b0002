"""Calibration and operating points on distributions whose answers are known in closed form."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from models.bundle import BundleError, init_untrained_bundle, load_bundle, save_bundle
from models.calibration import (
    CalibrationError,
    Calibrator,
    apply_calibration,
    auroc,
    average_precision,
    choose_calibration,
    choose_threshold,
    fit_isotonic,
    fit_platt,
    fit_task,
    fit_temperature,
    ppv,
    sigmoid,
)
from models.catalog import catalog_task
from models.config import BundleConfig, Calibration, ModelConfigError, ThresholdTarget
from models.engine import make_engine


def gaussian_scores(n: int, mu: float, prevalence: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits N(+mu, 1) for positives, N(-mu, 1) for negatives: the true posterior is
    sigmoid(2 mu z + logit(prevalence)), so temperature 1/(2 mu) and bias logit(prevalence)."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prevalence
    return np.where(y, rng.normal(mu, 1, n), rng.normal(-mu, 1, n)), y


def true_posterior(z: np.ndarray, mu: float, prevalence: float) -> np.ndarray:
    return sigmoid(2 * mu * z + np.log(prevalence / (1 - prevalence)))


def test_temperature_recovers_known_scale() -> None:
    z, y = gaussian_scores(20_000, mu=0.8, prevalence=0.5)
    cal = fit_temperature(z, y)
    assert cal.method == "temperature" and cal.temperature == pytest.approx(1 / 1.6, rel=0.05)


def test_platt_recovers_scale_and_prevalence_offset() -> None:
    z, y = gaussian_scores(20_000, mu=1.0, prevalence=0.1)
    cal = fit_platt(z, y)
    assert cal.temperature == pytest.approx(0.5, rel=0.05)
    assert cal.bias == pytest.approx(np.log(0.1 / 0.9), abs=0.1)
    assert np.abs(apply_calibration(z, cal) - true_posterior(z, 1.0, 0.1)).mean() < 0.01


def test_isotonic_is_monotone_and_close_to_truth() -> None:
    z, y = gaussian_scores(5_000, mu=1.0, prevalence=0.3)
    cal = fit_isotonic(z, y)
    grid = np.linspace(-4, 4, 200)
    p = apply_calibration(grid, cal)
    assert (np.diff(p) >= 0).all() and p.min() > 0 and p.max() < 1
    assert np.abs(apply_calibration(z, cal) - true_posterior(z, 1.0, 0.3)).mean() < 0.03
    ties = fit_isotonic(np.array([0.0, 0.0, 1.0, 1.0]), np.array([0, 1, 1, 1]))
    assert apply_calibration(np.array([0.0, 1.0]), ties).tolist() == pytest.approx([0.5, 1.0], abs=1e-5)


def test_choice_follows_the_data() -> None:
    # Logistic truth with an offset: Platt's two parameters fit it; plain temperature cannot.
    z, y = gaussian_scores(4_000, mu=1.0, prevalence=0.2, seed=1)
    cal, scores = choose_calibration(z, y)
    assert cal.method == "platt" and scores["platt"] < scores["temperature"]
    # A step-shaped truth (probability 0.1 below 0, 0.9 above) no sigmoid can follow: isotonic wins.
    rng = np.random.default_rng(2)
    z = rng.uniform(-3, 3, 4_000)
    y = rng.random(z.size) < np.where(z > 0, 0.9, 0.1)
    cal, scores = choose_calibration(z, y)
    assert cal.method == "isotonic" and scores["isotonic"] < min(scores["platt"], scores["temperature"])
    # Too few positives for isotonic: it is not even considered.
    z, y = gaussian_scores(400, mu=1.0, prevalence=0.04, seed=3)
    _, scores = choose_calibration(z, y)
    assert "isotonic" not in scores


def test_min_sensitivity_threshold_matches_theory() -> None:
    mu = 1.0
    z, y = gaussian_scores(40_000, mu=mu, prevalence=0.3, seed=4)
    op = choose_threshold(sigmoid(z), y, ThresholdTarget("min_sensitivity", 0.9))
    m = op.metrics
    assert op.target.met and m.sensitivity >= 0.9 and m.sensitivity == pytest.approx(0.9, abs=0.002)
    z_t = np.log(op.threshold / (1 - op.threshold))
    assert z_t == pytest.approx(mu + norm.ppf(0.1), abs=0.03)  # the positives' 10th percentile
    assert m.specificity == pytest.approx(norm.cdf(z_t + mu), abs=0.01)
    assert m.auroc == pytest.approx(norm.cdf(2 * mu / np.sqrt(2)), abs=0.01)
    assert m.n == 40_000 and m.prevalence == pytest.approx(0.3, abs=0.01)


def test_min_specificity_threshold_matches_theory() -> None:
    """Negatives ~ N(-mu, 1) in logit space: the lowest threshold with specificity >= 0.99 sits at the
    negatives' 99th percentile, and sensitivity there is P(N(mu, 1) >= it)."""
    mu = 1.0
    z, y = gaussian_scores(40_000, mu=mu, prevalence=0.3, seed=6)
    op = choose_threshold(sigmoid(z), y, ThresholdTarget("min_specificity", 0.99))
    m = op.metrics
    assert op.target.met and m.specificity >= 0.99 and m.specificity == pytest.approx(0.99, abs=0.001)
    z_t = np.log(op.threshold / (1 - op.threshold))
    assert z_t == pytest.approx(-mu + norm.ppf(0.99), abs=0.03)
    assert m.sensitivity == pytest.approx(1 - norm.cdf(z_t - mu), abs=0.01)
    # Unreachable (every negative above every positive): flagged, at the top score.
    hard = choose_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0]),
                            ThresholdTarget("min_specificity", 0.99))
    assert not hard.target.met and hard.threshold == pytest.approx(0.9)


def test_min_ppv_threshold_uses_target_prevalence() -> None:
    z, y = gaussian_scores(40_000, mu=1.5, prevalence=0.3, seed=5)
    p = sigmoid(z)
    op = choose_threshold(p, y, ThresholdTarget("min_ppv", 0.5, prevalence=0.02))
    m = op.metrics
    achieved = ppv(m.sensitivity, m.specificity, 0.02)
    assert op.target.met and achieved >= 0.5
    looser = choose_threshold(p, y, ThresholdTarget("min_ppv", 0.5, prevalence=0.2))
    assert looser.threshold < op.threshold  # higher prevalence: the same PPV at a lower threshold
    # Unreachable: flagged, with the best PPV the data allow.
    hard = choose_threshold(p, y, ThresholdTarget("min_ppv", 0.99, prevalence=0.0001))
    assert not hard.target.met


def test_ppv_matches_cleared_hcm_detector() -> None:
    """The 2023 HCM detector: sensitivity 68.4%, specificity 99.1% -> PPV 13.7% at 0.2% prevalence."""
    assert ppv(0.684, 0.991, 0.002) == pytest.approx(0.132, abs=0.006)


def test_ranking_metrics_known_values() -> None:
    p = np.array([0.9, 0.8, 0.7, 0.6])
    y = np.array([True, False, True, False])
    assert auroc(p, y) == pytest.approx(0.75)
    assert average_precision(p, y) == pytest.approx((1 + 2 / 3) / 2)


def test_bad_inputs_refused() -> None:
    with pytest.raises(CalibrationError):
        fit_temperature(np.zeros(5), np.zeros(5))  # one class only
    with pytest.raises(CalibrationError):
        fit_temperature(np.array([np.nan, 1.0]), np.array([0, 1]))
    with pytest.raises(CalibrationError):
        choose_threshold(np.array([0.2, 0.8]), np.array([0, 1]), ThresholdTarget("fixed"))
    with pytest.raises(ModelConfigError):
        Calibration(method="isotonic", x=(1.0, 0.0), y=(0.1, 0.2))
    with pytest.raises(ModelConfigError):
        Calibration(method="temperature", temperature=0.0)
    with pytest.raises(ModelConfigError):
        ThresholdTarget("min_ppv", 0.5)  # PPV needs the prevalence it is stated at


def test_fitted_task_travels_in_bundle_and_engine_applies_it(tmp_path: Path) -> None:
    """Calibration, threshold, target and metrics survive save/load; ``infer`` returns calibrated scores."""
    base = init_untrained_bundle(tmp_path / "a", base_width=4, tasks=[catalog_task("ecg.afib")])
    z, y = gaussian_scores(3_000, mu=1.0, prevalence=0.1, seed=6)
    task = fit_task(base.config.tasks[0], z, y, ThresholdTarget("min_sensitivity", 0.85))
    assert task.calibration is not None and task.metrics is not None and task.target is not None
    assert task.metrics.sensitivity >= 0.85 and 0 < task.threshold < 1
    config: BundleConfig = dataclasses.replace(base.config, tasks=(task,))
    save_bundle(tmp_path / "b", config, base.model)
    loaded = load_bundle(tmp_path / "b")
    assert loaded.config.tasks[0] == task
    x = np.random.default_rng(0).standard_normal((4, 12, 1000)).astype(np.float32)
    with torch.inference_mode():
        raw = base.model(torch.from_numpy(x)).numpy()
    expected = apply_calibration(raw[:, 0], task.calibration).astype(np.float32)
    np.testing.assert_allclose(make_engine(loaded, "torch-cpu").infer(x)[:, 0], expected, rtol=1e-6)
    assert Calibrator(loaded.config.tasks)(raw).dtype == np.float32


def test_malformed_calibration_in_bundle_refused(tmp_path: Path) -> None:
    import hashlib

    import orjson

    b = init_untrained_bundle(tmp_path / "b", base_width=4)
    raw = orjson.loads((b.path / "bundle.json").read_bytes())
    bad = {"method": "isotonic", "temperature": 1.0, "bias": 0.0, "x": [0, 1], "y": [0.9, 0.1]}
    raw["tasks"][0]["calibration"] = bad
    (b.path / "bundle.json").write_bytes(orjson.dumps(raw))
    names = sorted(p.name for p in b.path.iterdir() if p.name != "SHA256SUMS")
    (b.path / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256((b.path / n).read_bytes()).hexdigest()}  {n}\n" for n in names))
    with pytest.raises(BundleError) as exc:
        load_bundle(b.path)
    assert exc.value.reason == "invalid_config" and "non-decreasing" in exc.value.detail
