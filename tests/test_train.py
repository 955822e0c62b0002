"""ECGCLIP training (models/train, `ecgscreen train`): synthetic PTB-XL-style files built in the test.

The end-to-end test runs pre-training -> probe -> bundle -> load -> engine, and the supervised
baseline, on 60 synthetic records with a tiny network; tests on ../shared/data skip without it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from models.bundle import BundleError, load_bundle
from models.catalog import catalog_task
from models.config import EncoderConfig, TextEncoderConfig
from models.engine import make_engine
from models.train.augment import augment, drop_leads, time_shift
from models.train.card import CARD_FILE, attach_file
from models.train.config import (
    AugmentConfig,
    DataConfig,
    OptimConfig,
    PretrainConfig,
    ProbeConfig,
    TrainConfig,
    TrainConfigError,
    from_dict,
    load_config,
)
from models.train.crossval import cross_fit, ridge_path, run_cv_probe, select_cv_tasks, write_cv_outputs
from models.train.data import (
    DataError,
    PTBXLSet,
    grouped_folds,
    label_subset,
    load_ptbxl,
    make_split,
    read_metadata,
    read_statements,
)
from models.train.evaluate import evaluate_bundle
from models.train.pretrain import pretrain
from models.train.probe import run_probe
from models.train.supervised import train_supervised
from models.train.tasks import label_matrix, labels_for_tasks, select_tasks, task_id_for
from ops.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = REPO / "models/train/configs/ecgclip-r18-ptbxl-100hz.json"
COMMITTED_BUNDLE = REPO / "models/bundles/ecgclip-r18-ptbxl-100hz"
FS, SECONDS = 50.0, 5.0
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
# One synthetic "diagnosis" per superclass: (superclass, scp codes, report, heart rate, lead gain pattern seed)
CLASSES = (
    ("NORM", {"NORM": 100.0, "SR": 0.0}, "sinus rhythm. normal ecg.", 60),
    ("MI", {"IMI": 100.0, "SR": 0.0}, "sinusrhythmus. inferiorer infarkt.", 75),
    ("STTC", {"NDT": 100.0, "SR": 0.0}, "sinus rhythm. t wave abnormality.", 90),
    ("CD", {"LAFB": 100.0, "AFIB": 0.0}, "vorhofflimmern. linksanteriorer hemiblock.", 110),
    ("HYP", {"LVH": 100.0, "SR": 0.0}, "sinusrytm. vaenster kammarhypertrofi.", 50),
)
STATEMENTS = {"NORM": ("normal ECG", "NORM"), "IMI": ("inferior myocardial infarction", "MI"),
              "NDT": ("non-diagnostic T abnormalities", "STTC"), "LAFB": ("left anterior fascicular block", "CD"),
              "LVH": ("left ventricular hypertrophy", "HYP"), "SR": ("sinus rhythm", ""),
              "AFIB": ("atrial fibrillation", ""), "STD_": ("non-specific ST depression", "")}


# --- synthetic PTB-XL-style files -------------------------------------------------------------------


def _signal(k: int, rng: np.random.Generator) -> np.ndarray:
    """(T, 12) int16 ADC: class k's heart rate and lead gains, random phase, noise."""
    t = np.arange(int(FS * SECONDS)) / FS
    period = 60.0 / CLASSES[k][3]
    beats = np.exp(-((((t + rng.uniform(0, period)) % period) - period / 2) / 0.03) ** 2)
    gains = np.random.default_rng(100 + k).uniform(-1.5, 1.5, 12)
    mv = beats[:, None] * gains[None, :] + 0.05 * rng.standard_normal((t.size, 12))
    return np.round(mv * 1000).astype(np.int16)


def write_dataset(root: Path, n: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    classes = [i % len(CLASSES) for i in range(n)]
    np.savez(root / f"ptbxl_folds1-8_{int(FS)}hz.npz", signals=np.stack([_signal(k, rng) for k in classes]),
             ecg_id=np.arange(1, n + 1, dtype=np.int32), fs=FS, lead_names=np.array(LEADS))
    rows = [{"ecg_id": i + 1, "patient_id": 1000 + i, "report": CLASSES[k][2], "scp_codes": repr(CLASSES[k][1]),
             "diagnostic_superclass": CLASSES[k][0], "strat_fold": 1 + i % 8} for i, k in enumerate(classes)]
    _csv(root / "ptbxl_folds1-8_metadata.csv", rows)
    _csv(root / "scp_statements.csv", [{"": c, "description": d, "diagnostic_class": g}
                                      for c, (d, g) in STATEMENTS.items()])
    return root


def _csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def tiny_config(data_dir: Path, run_dir: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(
        seed=0, threads=1, run_dir=str(run_dir),  # tiny ops: a second thread only adds sync waits
        data=DataConfig(data_dir=str(data_dir), sampling_rate_hz=FS, n_samples=int(FS * SECONDS),
                        min_train_pos=3, min_val_pos=1),
        augment=AugmentConfig(),
        encoder=EncoderConfig(base_width=4, embed_dim=16, stem_kernel=7, kernel=3),
        pretrain=PretrainConfig(optim=OptimConfig(epochs=12, batch_size=16, lr=3e-3, warmup_epochs=1.0),
                                text=TextEncoderConfig(vocab_size=300, width=16, layers=1, heads=2, max_tokens=24),
                                eval_every=4),
        probe=ProbeConfig(l2_grid=(1e-2, 1.0), cv_folds=2), **kw)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, Any, Any, Any, Any]:
    root = write_dataset(tmp_path_factory.mktemp("ptbxl"))
    cfg = tiny_config(root, tmp_path_factory.mktemp("run"))
    ds = load_ptbxl(root, cfg.data.input_spec())
    split = make_split(ds, cfg.data.train_folds, cfg.data.val_folds)
    statements = read_statements(root)
    tasks = select_tasks(ds, split, statements, cfg.data.min_train_pos, cfg.data.min_val_pos)
    return cfg, ds, split, statements, tasks


@pytest.fixture(scope="module")
def pretrained(synthetic: tuple[Any, ...]) -> Any:
    cfg, ds, split, statements, _ = synthetic
    return pretrain(cfg, ds, split, statements, Path(cfg.run_dir) / "pretrain", quiet=True)


# --- end to end ---------------------------------------------------------------------------------------


def test_pretrain_loss_decreases_and_logs(synthetic: tuple[Any, ...], pretrained: Any) -> None:
    cfg = synthetic[0]
    losses = [h["loss"] for h in pretrained.history]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses
    log = [orjson.loads(line) for line in (Path(cfg.run_dir) / "pretrain/pretrain.jsonl").read_bytes().splitlines()]
    assert log[0]["event"] == "start" and log[-1]["event"] == "done"
    assert any("zero_shot_macro_auroc" in r for r in log)


def test_pretrain_is_deterministic(synthetic: tuple[Any, ...], pretrained: Any) -> None:
    cfg, ds, split, statements, _ = synthetic
    optim = dataclasses.replace(cfg.pretrain.optim, epochs=2)
    short = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, optim=optim))
    a = pretrain(short, ds, split, statements, None, quiet=True)
    b = pretrain(short, ds, split, statements, None, quiet=True)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    for (k, va), vb in zip(a.clip.state_dict().items(), b.clip.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_probe_writes_bundle_that_loads_and_predicts(synthetic: tuple[Any, ...], pretrained: Any,
                                                     tmp_path: Path) -> None:
    cfg, ds, split, _, tasks = synthetic
    result = run_probe(cfg, pretrained.clip, ds, split, tasks, tmp_path / "bundle")
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.sha256 == result.bundle.sha256 and bundle.config.trained
    assert bundle.text is not None  # the text tower travels with a probed ECGCLIP bundle
    probs = make_engine(bundle).infer(ds.subset(split.val).x)
    assert probs.shape == (split.val.size, len(tasks)) and np.isfinite(probs).all()
    assert ((probs >= 0) & (probs <= 1)).all()
    norm = bundle.config.tasks[0]
    assert norm.id == "ecg.norm" and norm.metrics is not None and norm.calibration is not None
    sha = attach_file(tmp_path / "bundle", CARD_FILE, b"# card\n")  # the card joins the hashed files
    assert sha != bundle.sha256 and load_bundle(tmp_path / "bundle").sha256 == sha
    (tmp_path / "bundle" / CARD_FILE).write_bytes(b"# edited\n")
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "bundle")


def test_bundle_metrics_match_engine_and_evaluate(synthetic: tuple[Any, ...], pretrained: Any,
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What the bundle records as validation metrics is what the engine's scores give (float32, any batch)."""
    cfg, ds, split, _, tasks = synthetic
    run_probe(cfg, pretrained.clip, ds, split, tasks, tmp_path / "b")
    rep = evaluate_bundle(tmp_path / "b", Path(cfg.data.data_dir), cfg.data.val_folds, n_boot=20)
    bundle = load_bundle(tmp_path / "b")
    for row, task in zip(rep["tasks"], bundle.config.tasks, strict=True):
        assert task.metrics is not None
        assert row["auroc"]["value"] == pytest.approx(task.metrics.auroc, abs=1e-6)
        assert row["sensitivity"]["value"] == pytest.approx(task.metrics.sensitivity, abs=1e-6)
        assert row["specificity"]["value"] == pytest.approx(task.metrics.specificity, abs=1e-6)
    assert main(["train", "evaluate", str(tmp_path / "b"), cfg.data.data_dir, "--bootstrap", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    macro_auroc = rep["macro"]["superclasses"]["auroc"]["value"]
    assert out["macro"]["superclasses"]["auroc"]["value"] == pytest.approx(macro_auroc)


def test_cv_probe_oof_scores_reproduce_the_bundle_metrics(synthetic: tuple[Any, ...], pretrained: Any,
                                                           tmp_path: Path) -> None:
    """Cross-fitted bundle: every figure it stores is what its OOF scores give under ``train evaluate``."""
    cfg, ds, _, statements, _ = synthetic
    probe = dataclasses.replace(cfg.probe, min_positives=3, context_check_tasks=("ecg.afib",))
    cfg = dataclasses.replace(cfg, probe=probe, run_dir=str(tmp_path / "run"))
    tasks = select_cv_tasks(ds, statements, probe.min_positives)
    assert [t.spec.id for t in tasks][:5] == ["ecg.norm", "ecg.mi", "ecg.sttc", "ecg.cd", "ecg.hyp"]
    assert "ecg.afib" in [t.spec.id for t in tasks]
    result = run_cv_probe(cfg, pretrained.clip, ds, tasks, tmp_path / "b")
    files = write_cv_outputs(Path(cfg.run_dir), cfg, pretrained.clip, ds, result)
    rep = evaluate_bundle(tmp_path / "b", Path(cfg.data.data_dir), probe.oof_folds, n_boot=20,
                          scores_path=Path(files["oof_scores"]))
    bundle = load_bundle(tmp_path / "b")
    for row, task in zip(rep["tasks"], bundle.config.tasks, strict=True):
        assert task.metrics is not None and task.metrics.n == len(ds), task.id
        assert row["auroc"]["value"] == pytest.approx(task.metrics.auroc, abs=1e-6), task.id
        assert row["specificity"]["value"] == pytest.approx(task.metrics.specificity, abs=1e-6), task.id
        assert task.target is not None and task.target.kind == "min_specificity"
        assert task.target.value == probe.specificity_for(task.id)
    assert 0 <= rep["alert_rate"]["per_100"] <= 100
    cv = orjson.loads(Path(files["crossval"]).read_bytes())
    assert [r["fold"] for r in cv["per_fold"]] == list(probe.oof_folds) and "ecg.afib" in cv["context"]["tasks"]
    probs = make_engine(bundle).infer(ds.x[:4])
    assert probs.shape == (4, len(tasks)) and np.isfinite(probs).all()


def test_cross_fit_refuses_a_patient_in_two_folds(synthetic: tuple[Any, ...]) -> None:
    cfg, ds, *_ = synthetic
    pid = ds.patient_id.copy()
    a, b = np.flatnonzero(ds.fold == 1)[0], np.flatnonzero(ds.fold == 2)[0]
    pid[b] = pid[a]
    z, y = np.random.default_rng(0).standard_normal((len(ds), 6)), np.zeros((len(ds), 1))
    y[::3] = 1
    with pytest.raises(DataError, match="both sides"):
        cross_fit(z, y, dataclasses.replace(ds, patient_id=pid), tuple(range(1, 9)), cfg.probe, 0)


def test_ridge_path_matches_the_normal_equations() -> None:
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((50, 4)), (rng.random((50, 2)) < 0.4).astype(float)
    w, b = ridge_path(z, y, [0.1, 1.0])
    zc, yc = z - z.mean(0), y - y.mean(0)
    for g, lam in enumerate((0.1, 1.0)):
        expect = np.linalg.solve(zc.T @ zc + 50 * lam * np.eye(4), zc.T @ yc).T
        assert np.allclose(w[g], expect) and np.allclose(b[g], y.mean(0) - expect @ z.mean(0))


def test_supervised_baseline_same_budget(synthetic: tuple[Any, ...], tmp_path: Path) -> None:
    cfg, ds, split, _, tasks = synthetic
    tenth = dataclasses.replace(cfg, label_fraction=0.25)
    result = train_supervised(tenth, ds, split, tasks, tmp_path / "sup", tmp_path / "sup.jsonl", quiet=True)
    log = [orjson.loads(line) for line in (tmp_path / "sup.jsonl").read_bytes().splitlines()]
    pre_steps = cfg.pretrain.optim.epochs * (split.train.size // cfg.pretrain.optim.batch_size)
    assert log[0]["steps"] == pre_steps  # same number of optimiser steps as pre-training, whatever the labels
    assert result.summary["n_labelled"] < split.train.size
    bundle = load_bundle(tmp_path / "sup")
    assert bundle.text is None and bundle.config.trained
    assert make_engine(bundle, "torch-cpu").infer(ds.subset(split.val).x).shape == (split.val.size, len(tasks))


# --- data, splits, tasks, config ------------------------------------------------------------------


def _set(patients: list[int], folds: list[int]) -> PTBXLSet:
    n = len(patients)
    return PTBXLSet(np.zeros((n, 1, 1), np.float32), np.arange(n), np.array(patients), np.array(folds),
                    ("",) * n, ((),) * n, (frozenset(),) * n)


def test_split_refuses_shared_patients() -> None:
    ok = make_split(_set([1, 2, 3, 4], [1, 2, 8, 8]), (1, 2), (8,))
    assert ok.train.tolist() == [0, 1] and ok.val.tolist() == [2, 3]
    with pytest.raises(DataError, match="patient"):
        make_split(_set([1, 2, 3, 1], [1, 2, 8, 8]), (1, 2), (8,))


def test_label_subset_and_cv_folds_keep_patients_whole() -> None:
    patients = np.repeat(np.arange(50), 2)
    sub = label_subset(patients, 0.1, seed=3)
    assert sub.size == 10 and np.isin(patients, patients[sub]).sum() == 10
    assert (label_subset(patients, 0.1, seed=3) == sub).all()
    folds = grouped_folds(patients, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(100))
    assert all(len(np.intersect1d(patients[a], patients[b])) == 0 for a in folds for b in folds if a is not b)


def test_task_selection_and_ids(synthetic: tuple[Any, ...]) -> None:
    _, ds, _, statements, tasks = synthetic
    ids = [t.spec.id for t in tasks]
    assert ids[:5] == ["ecg.norm", "ecg.mi", "ecg.sttc", "ecg.cd", "ecg.hyp"]
    assert "ecg.lvh" in ids and "ecg.sr" in ids and "ecg.afib" in ids  # catalog ids where the catalog has them
    assert task_id_for("STD_", "statement") == "ecg.std" and task_id_for("LAO/LAE", "statement") == "ecg.lao_lae"
    assert next(t for t in tasks if t.spec.id == "ecg.afib").spec == catalog_task("ecg.afib")
    assert [t.code for t in labels_for_tasks([t.spec for t in tasks], statements)] == [t.code for t in tasks]
    y = label_matrix(ds, tasks)
    assert y.shape == (len(ds), len(tasks)) and y[:, 0].sum() == sum("NORM" in s for s in ds.superclasses)


def test_augment_deterministic_and_label_preserving_shapes() -> None:
    x = torch.randn(4, 12, 200)
    a = augment(x, AugmentConfig(), 100.0, torch.Generator().manual_seed(1))
    b = augment(x, AugmentConfig(), 100.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    dropped = drop_leads(x, 0.5, torch.Generator().manual_seed(0))
    per_lead = dropped.abs().sum(2)
    assert ((per_lead == 0) | torch.isclose(per_lead, x.abs().sum(2))).all()  # whole leads, or untouched
    shifted = time_shift(torch.ones(8, 1, 50), 5, torch.Generator().manual_seed(0))
    assert (shifted.sum(2) >= 45).all() and set(shifted.unique().tolist()) <= {0.0, 1.0}  # zero-filled, not wrapped


def test_config_strict_and_shipped_config_loads(tmp_path: Path) -> None:
    cfg = load_config(SHIPPED_CONFIG)
    assert cfg.encoder.arch == "r18" and cfg.encoder.base_width == 32 and cfg.data.val_folds == (8,)
    assert from_dict(TrainConfig, orjson.loads(orjson.dumps(cfg.to_dict())), "c") == cfg  # JSON round trip
    for bad in ({"sed": 1}, {"data": {"val_folds": 8}}, {"pretrain": {"optim": {"epochs": "3"}}},
                {"data": {"train_folds": [8]}}, {"encoder": {"arch": "r50"}}):
        path = tmp_path / "bad.json"
        path.write_bytes(orjson.dumps(bad))
        with pytest.raises(TrainConfigError):
            load_config(path)


# --- on the real data (skipped without ../shared/data) ----------------------------------------------


def _real_labels(shared_data: Path) -> PTBXLSet:
    from models.train.data import parse_codes

    meta = list(read_metadata(shared_data).values())
    ds = _set([int(float(m["patient_id"])) for m in meta], [int(float(m["strat_fold"])) for m in meta])
    return dataclasses.replace(ds, codes=tuple(parse_codes(m["scp_codes"]) for m in meta),
                               superclasses=tuple(frozenset(m["diagnostic_superclass"].split(";")) - {""}
                                                  for m in meta))


def test_real_folds_patient_disjoint_and_tasks(shared_data: Path) -> None:
    ds = _real_labels(shared_data)
    cfg = load_config(SHIPPED_CONFIG)
    split = make_split(ds, cfg.data.train_folds, cfg.data.val_folds)  # raises if a patient crossed
    assert (split.train.size, split.val.size) == (1333, 177)
    tasks = select_tasks(ds, split, read_statements(shared_data), cfg.data.min_train_pos, cfg.data.min_val_pos)
    assert [t.spec.id for t in tasks][:5] == ["ecg.norm", "ecg.mi", "ecg.sttc", "ecg.cd", "ecg.hyp"]
    assert "ecg.lvh" in [t.spec.id for t in tasks] and "ecg.afib" not in [t.spec.id for t in tasks]  # 7 val positives
    # The cross-fitted rule (>= 20 positives over folds 1-8) carries AF (73), CLBBB (22), 1AVB (52), not AFLT (4).
    cv = [t.spec.id for t in select_cv_tasks(ds, read_statements(shared_data), cfg.probe.min_positives)]
    assert {"ecg.afib", "ecg.clbbb", "ecg.1avb", "ecg.lvh", "ecg.crbbb"} <= set(cv) and "ecg.aflt" not in cv


def test_committed_bundle_alerts_on_af_with_oof_operating_points(shared_data: Path) -> None:
    """The shipped bundle: the tasks the rule selects, AF alerting, each threshold meeting its stated
    specificity on the out-of-fold scores of all 1,510 records (as its card reports)."""
    if not (COMMITTED_BUNDLE / "bundle.json").exists():
        pytest.skip(f"no committed bundle at {COMMITTED_BUNDLE}")
    bundle = load_bundle(COMMITTED_BUNDLE)
    cfg = load_config(SHIPPED_CONFIG)
    expected = [t.spec.id for t in select_cv_tasks(_real_labels(shared_data), read_statements(shared_data),
                                                   cfg.probe.min_positives)]
    assert list(bundle.task_ids) == expected
    assert {t.id for t in bundle.config.tasks if t.alert} == {"ecg.afib", "ecg.clbbb", "ecg.lvh"}
    for task in bundle.config.tasks:
        assert task.metrics is not None and task.metrics.n == 1510 and task.target is not None, task.id
        assert task.target.kind == "min_specificity" and task.target.value == cfg.probe.specificity_for(task.id)
        assert task.metrics.specificity >= task.target.value or not task.target.met, task.id
    afib = bundle.config.tasks[bundle.task_ids.index("ecg.afib")]
    assert afib.metrics is not None and afib.metrics.n_pos == 73 and afib.target is not None and afib.target.met
    assert (COMMITTED_BUNDLE / CARD_FILE).read_text().count("`ecg.afib`") >= 2  # in the task and alerting tables
