"""Echo/rare task catalog: contents, label rules at every threshold boundary, label provenance in bundles."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from models.bundle import BundleError, init_untrained_bundle, load_bundle
from models.catalog import catalog_task
from models.config import LABEL_SOURCES, BundleConfig
from models.echo_catalog import derive_labels, load_echo_catalog
from schemas.messages import TaskGroup
from workers.settings import DEFAULT_BUNDLE

ECHONEXT_12 = {"echo.lvef_le_45", "echo.lvh_wall_ge_13mm", "echo.as_moderate_plus", "echo.ar_moderate_plus",
               "echo.mr_moderate_plus", "echo.tr_moderate_plus", "echo.pr_moderate_plus", "echo.rv_dysfunction",
               "echo.pericardial_effusion", "echo.pasp_ge_45", "echo.tr_vmax_ge_3_2", "echo.any_shd"}


def test_catalog_holds_every_named_target_with_a_sourced_prevalence() -> None:
    cat = load_echo_catalog()
    assert set(cat.echonext_columns().values()) == ECHONEXT_12
    named = ECHONEXT_12 | {"echo.lvef_le_40", "echo.hcm", "rare.ebstein", "rare.constrictive_pericarditis",
                           "rare.dextrocardia", "rare.amyloidosis"}
    assert named <= set(cat.task_ids)
    for t in cat.targets:
        assert t.spec.group in (TaskGroup.ECHO, TaskGroup.RARE)
        assert t.spec.prevalence is not None and 0 < t.spec.prevalence < 1
        assert len(t.prevalence_source) > 20 and t.definition and t.label_source in LABEL_SOURCES
        assert catalog_task(t.spec.id) == t.spec  # models.catalog reads the same rows
    assert {t.spec.id for t in cat.targets if t.spec.group is TaskGroup.RARE} == {
        "rare.ebstein", "rare.constrictive_pericarditis", "rare.dextrocardia", "rare.amyloidosis"}


# (task, column, value just positive, value just negative): each inclusive bound exactly at the boundary.
BOUNDARIES = [
    ("echo.lvef_le_45", "lvef_pct", 45, 45.01),
    ("echo.lvef_le_40", "lvef_pct", 40, 40.01),
    ("echo.lvef_le_50", "lvef_pct", 50, 50.01),
    ("echo.lvh_wall_ge_13mm", "lv_wall_mm", 13, 12.99),
    ("echo.pasp_ge_45", "pasp_mmhg", 45, 44.99),
    ("echo.tr_vmax_ge_3_2", "tr_vmax_ms", 3.2, 3.19),
    ("echo.la_dilation", "lavi_ml_m2", 34.01, 34),  # strict: > 34 mL/m2
]


@pytest.mark.parametrize(("task", "column", "pos", "neg"), BOUNDARIES)
def test_measurement_rules_at_their_boundary(task: str, column: str, pos: float, neg: float) -> None:
    assert derive_labels({column: pos})[task] == 1.0
    assert derive_labels({column: str(pos)})[task] == 1.0  # CSV text
    assert derive_labels({column: neg})[task] == 0.0
    assert math.isnan(derive_labels({column: ""})[task]) and math.isnan(derive_labels({})[task])


GRADES = [("echo.as_moderate_plus", "as_grade"), ("echo.ar_moderate_plus", "ar_grade"),
          ("echo.mr_moderate_plus", "mr_grade"), ("echo.tr_moderate_plus", "tr_grade"),
          ("echo.pr_moderate_plus", "pr_grade"), ("echo.rv_dysfunction", "rv_function")]


@pytest.mark.parametrize(("task", "column"), GRADES)
def test_grade_rules_count_moderate_and_above(task: str, column: str) -> None:
    for grade in ("moderate", "Moderate", "moderate-severe", "moderate to severe", "severe"):
        assert derive_labels({column: grade})[task] == 1.0, grade
    for grade in ("none", "normal", "trace", "trivial", "mild", "mild-moderate", "mild_moderate"):
        assert derive_labels({column: grade})[task] == 0.0, grade
    for grade in ("", "not assessed", "bogus"):
        assert math.isnan(derive_labels({column: grade})[task]), grade


def test_effusion_scale_and_diagnoses() -> None:
    for size, label in (("small", 0.0), ("trivial", 0.0), ("moderate", 1.0), ("large", 1.0)):
        assert derive_labels({"pericardial_effusion": size})["echo.pericardial_effusion"] == label
    for word, label in (("1", 1.0), ("yes", 1.0), ("TRUE", 1.0), ("0", 0.0), ("no", 0.0)):
        assert derive_labels({"dx_ebstein": word})["rare.ebstein"] == label
    assert math.isnan(derive_labels({"dx_hcm": ""})["echo.hcm"])


def test_composite_is_positive_on_any_part_and_negative_only_when_all_known() -> None:
    healthy = {"lvef_pct": 60, "lv_wall_mm": 9, "as_grade": "none", "ar_grade": "none", "mr_grade": "mild",
               "tr_grade": "trace", "pr_grade": "none", "rv_function": "normal", "pericardial_effusion": "none",
               "pasp_mmhg": 30, "tr_vmax_ms": 2.5}
    assert derive_labels(healthy)["echo.any_shd"] == 0.0
    assert derive_labels({**healthy, "pasp_mmhg": 45})["echo.any_shd"] == 1.0
    assert math.isnan(derive_labels({**healthy, "pasp_mmhg": ""})["echo.any_shd"])  # unknown part, no positive
    assert derive_labels({"lvef_pct": 30})["echo.any_shd"] == 1.0  # a positive part decides alone


# --- label provenance in bundles ----------------------------------------------------------------


def _edit(path: Path, fn: Any) -> None:
    import hashlib

    raw = orjson.loads((path / "bundle.json").read_bytes())
    fn(raw)
    data = orjson.dumps(raw, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    (path / "bundle.json").write_bytes(data)
    sums = [line for line in (path / "SHA256SUMS").read_text().splitlines() if not line.endswith("bundle.json")]
    sums.append(f"{hashlib.sha256(data).hexdigest()}  bundle.json")
    (path / "SHA256SUMS").write_text("".join(f"{s}\n" for s in sorted(sums, key=lambda s: s.split()[-1])))


def test_committed_v2_bundle_loads_with_ecg_statement_heads() -> None:
    b = load_bundle(DEFAULT_BUNDLE)
    assert b.config.trained and {t.label_source for t in b.config.tasks} == {"ecg_statement"}
    for t in b.config.tasks:
        assert t.metrics is None or (t.metrics.n_pos >= 0 and t.metrics.prauc is not None)


def test_label_source_rules_of_the_loader(tmp_path: Path) -> None:
    b = init_untrained_bundle(tmp_path / "b", base_width=4)
    assert b.config.schema_version == 3 and all(t.label_source is None for t in b.config.tasks)

    def trained(raw: dict[str, Any]) -> None:
        raw["trained"] = True

    _edit(b.path, trained)  # a trained v3 bundle whose heads do not say where their labels came from
    with pytest.raises(BundleError) as exc:
        load_bundle(b.path)
    assert exc.value.reason == "invalid_config" and "label_source" in exc.value.detail

    def synthetic(raw: dict[str, Any]) -> None:
        for t in raw["tasks"]:
            t["label_source"] = "synthetic"

    _edit(b.path, synthetic)
    assert all(t.synthetic_labels for t in load_bundle(b.path).config.tasks)

    def as_v2(raw: dict[str, Any]) -> None:
        raw["schema_version"] = 2

    _edit(b.path, as_v2)  # v2 never had the key: refused rather than half-understood
    with pytest.raises(BundleError) as exc:
        load_bundle(b.path)
    assert exc.value.reason == "invalid_config"

    def strip(raw: dict[str, Any]) -> None:
        for t in raw["tasks"]:
            del t["label_source"]

    _edit(b.path, strip)  # a trained v2 bundle: PTB-XL statements, by history
    v2 = load_bundle(b.path)
    assert {t.label_source for t in v2.config.tasks} == {"ecg_statement"}
    assert "label_source" not in orjson.dumps(v2.config.to_dict()).decode()  # v2 written as v2 knew it
    assert BundleConfig.from_dict(v2.config.to_dict()).schema_version == 2
