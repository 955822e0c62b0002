"""`train fit` checkpoint -> `train export-bundle` -> strict load -> Screener; operating points at prevalence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.bundle import load_bundle
from models.calibration import apply_calibration, ppv
from models.echo_catalog import load_echo_catalog
from models.engine import make_engine
from models.train.echo.ddp import fit
from models.train.echo.heads import OperatingRule, ProbeSettings, calibrate
from ops.feed import simulated_records
from schemas.messages import QualityStatus, TaskGroup
from tests.test_echo_ddp import CFG, ROOT, TASKS, write_test_shards
from workers.pipeline import RawMessage, Screener


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fit on 96 synthetic records, the last 32 (16 patients) for validation."""
    root = tmp_path_factory.mktemp("export")
    write_test_shards(root, 96, lambda i, patient: "train" if i < 64 else "val")
    fit(root / "shards", root / "run", CFG)
    return root


def _export(root: Path, out: str, *extra: str) -> dict[str, object]:
    cmd = [sys.executable, "-m", "ops.cli", "train", "export-bundle", str(root / "run" / "checkpoint"),
           "--shards", str(root / "shards"), "--label-source", "synthetic", "--min-val-pos", "2",
           "--out", str(root / out), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return dict(orjson.loads(done.stdout))


def test_fit_checkpoint_exports_a_strict_bundle_the_screener_scores(fitted: Path) -> None:
    report = _export(fitted, "bundle", "--operating-point", "min_ppv=0.2", "--prevalence", f"{TASKS[1]}=0.3")
    b = load_bundle(fitted / "bundle")  # hashes verified, config strict, weights strict
    assert b.sha256 == report["sha256"] and b.config.schema_version == 3 and b.config.trained
    assert b.config.task_ids == TASKS and report["skipped"] == {}
    catalog = load_echo_catalog()
    for t in b.config.tasks:
        assert t.label_source == "synthetic" and t.group is TaskGroup.ECHO
        assert t.calibration is not None and t.metrics is not None and t.metrics.n_pos >= 2
        assert t.target is not None and t.target.kind == "min_ppv" and t.target.value == pytest.approx(0.2)
    # prevalence: the site's where given, else the catalog's; the threshold's PPV is computed at it
    assert b.config.tasks[0].prevalence == catalog.target(TASKS[0]).spec.prevalence
    assert b.config.tasks[0].target.prevalence == b.config.tasks[0].prevalence  # type: ignore[union-attr]
    assert b.config.tasks[1].prevalence == pytest.approx(0.3)
    assert "SYNTHETIC" in b.config.provenance["warning"] and "step 6" in b.config.provenance["checkpoint"]

    # the worker's Screener (decode, quality gate, resampling to the bundle's input, calibrated scores, policy)
    records = list(simulated_records(4, fs=500.0, seed=1, bases=2))
    screener = Screener(bundle=b, engine=make_engine(b, "torch-cpu"), explain_alerts=False)
    outcomes = screener.screen([RawMessage.of(r.encode(), "ecg.events", 0, k) for k, r in enumerate(records)])
    for o in outcomes:
        assert o.verdict is not None and o.verdict.quality.status is QualityStatus.PASS, o.deadletter
        assert set(o.verdict.scores) == set(TASKS) and set(o.verdict.synthetic_labels) == set(TASKS)
        assert all(0.0 <= s <= 1.0 for s in o.verdict.scores.values())
        assert o.alerts == ()  # synthetic-label heads never alert without the setting


def test_min_ppv_threshold_at_the_catalog_prevalence_moves_exactly_at_its_boundary() -> None:
    # val scores: negatives 0, 1, 2, 3.5; positives 3, 4 (calibration is monotone: ranks are kept)
    z = np.array([0.0, 1.0, 2.0, 3.5, 3.0, 4.0])
    y = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    task = TASKS[0]
    p = load_echo_catalog().target(task).spec.prevalence
    assert p is not None
    # threshold at score 3: sensitivity 1, one of 4 negatives above -> smoothed FPR (1 + 0.5) / 5
    boundary = ppv(1.0, 1 - 1.5 / 5, p)

    def at(value: float) -> tuple[float, float, bool]:
        cfg = ProbeSettings(calibration_methods=("temperature",), rule=OperatingRule("min_ppv", value))
        spec = calibrate(task, "synthetic", z, y, cfg)
        assert spec.prevalence == p and spec.target is not None and spec.target.prevalence == p
        assert spec.metrics is not None
        return spec.metrics.sensitivity, spec.metrics.specificity, spec.target.met

    assert at(boundary) == (1.0, 0.75, True)  # met exactly at the boundary: both positives flagged
    assert at(float(np.nextafter(boundary, 1.0))) == (0.5, 1.0, True)  # just above: only score 4 qualifies
    assert at(0.99)[2] is False  # unreachable at this prevalence: flagged not met


def test_calibration_is_shifted_to_the_task_prevalence() -> None:
    """Validation at prevalence 1/3 (a sicker, echo-referred cohort); the catalog's 0.12 at the site."""
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(1.0, 1.0, 1000), rng.normal(-1.0, 1.0, 2000)])
    y = np.r_[np.ones(1000), np.zeros(2000)]
    p = load_echo_catalog().target(TASKS[0]).spec.prevalence
    assert p == pytest.approx(0.12)
    kept = calibrate(TASKS[0], "synthetic", z, y, ProbeSettings(rule=OperatingRule(shift_to_prevalence=False)))
    shifted = calibrate(TASKS[0], "synthetic", z, y, ProbeSettings())
    site = np.concatenate([rng.normal(1.0, 1.0, 1200), rng.normal(-1.0, 1.0, 8800)])  # 12% positive
    assert apply_calibration(z, kept.calibration).mean() == pytest.approx(1 / 3, abs=0.01)
    assert apply_calibration(site, shifted.calibration).mean() == pytest.approx(p, abs=0.01)
    assert apply_calibration(site, kept.calibration).mean() > 0.2  # unshifted: overstated at the site
    assert shifted.threshold < kept.threshold
    assert kept.metrics is not None and shifted.metrics == kept.metrics
    for spec in (kept, shifted):  # the same validation records flagged, as the stored metrics say
        assert spec.calibration is not None
        flagged = apply_calibration(z, spec.calibration).astype(np.float32) >= spec.threshold
        assert float(flagged[y == 1].mean()) == kept.metrics.sensitivity
        assert float((~flagged[y == 0]).mean()) == kept.metrics.specificity


def test_operating_rule_parsing_and_defaults() -> None:
    assert ProbeSettings().rule == OperatingRule("min_sensitivity", 0.8)
    rule = OperatingRule.parse("min_ppv=0.25", [f"{TASKS[0]}=0.05"])
    assert rule.prevalence == ((TASKS[0], 0.05),)
    spec, target = rule.apply(load_echo_catalog().target(TASKS[0]).spec)
    assert spec.prevalence == 0.05 and target.prevalence == 0.05 and target.value == 0.25
    spec, target = OperatingRule().apply(spec)
    assert target.kind == "min_sensitivity" and target.prevalence is None
    assert OperatingRule.parse("min_specificity=0.95").kind == "min_specificity"  # issue 18's worklist kind
    for bad in (("min_ppv",), ("fixed=0.5",), ("min_ppv=1",), ("min_ppv=0.2", f"{TASKS[0]}=0"), ("nope=0.5",)):
        with pytest.raises(ValueError):
            OperatingRule.parse(bad[0], bad[1:])
