"""From trained heads to a bundle: per-task calibration and threshold on validation, then save.

Calibration, threshold choice and the validation ``TaskMetrics`` come from issue #4's
:mod:`models.calibration` (as its ``fit_task`` combines them), so bundles written here are read by the worker's
alert policy exactly as any other. Metrics are computed on CALIBRATED probabilities, i.e. on
what ``Engine.infer`` returns and ``model predict`` prints.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from models.bundle import BUNDLE_SCHEMA_VERSION, Bundle, load_bundle, make_provenance, save_bundle
from models.calibration import (
    PROB_EPS,
    CalibrationError,
    apply_calibration,
    choose_calibration,
    choose_threshold,
    task_metrics,
)
from models.config import BundleConfig, EncoderConfig, InputSpec, TaskSpec, ThresholdTarget
from models.ecgclip import ECGCLIPSignalModel
from models.train.config import TrainConfig
from models.train.tasks import TaskLabel

DATA_CITATION = ("PTB-XL 1.0.3 subset (strat_fold 1-8, ../shared/data), Wagner et al. 2020/2022, "
                 "PhysioNet, CC BY 4.0, doi:10.13026/kfzx-aw45")


@torch.no_grad()
def logits_of(model: ECGCLIPSignalModel, x: npt.NDArray[np.float32], batch: int = 128) -> npt.NDArray[np.float64]:
    """(N, T) head logits in eval mode (BatchNorm running statistics, no dropout)."""
    model.eval()
    out = [model(torch.from_numpy(x[i : i + batch])).double().numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, model.n_tasks))


def calibrated_tasks(tasks: Sequence[TaskLabel], val_logits: npt.NDArray[np.float64],
                     val_labels: npt.NDArray[np.float32], cfg: TrainConfig) -> tuple[TaskSpec, ...]:
    """Each task with calibration, threshold (target: min sensitivity), validation metrics and its label source
    (PTB-XL's statements: ``ecg_statement``)."""
    target = ThresholdTarget(kind="min_sensitivity", value=cfg.probe.target_sensitivity)
    tasks = [dataclasses.replace(t, spec=dataclasses.replace(t.spec, label_source="ecg_statement")) for t in tasks]
    out = []
    for j, task in enumerate(tasks):
        try:
            out.append(fit_task_threshold(task.spec, val_logits[:, j], val_labels[:, j], target,
                                          cfg.probe.calibration_methods))
        except CalibrationError:  # e.g. no validation positives: nothing to calibrate or to measure
            out.append(dataclasses.replace(task.spec, calibration=None, target=None, metrics=None))
    return tuple(out)


def fit_task_threshold(task: TaskSpec, logits: npt.NDArray[np.float64], labels: npt.NDArray[np.float32],
              target: ThresholdTarget, methods: Sequence[str]) -> TaskSpec:
    """``models.calibration.fit_task``, but with the threshold moved off the validation score it sits on.

    Engines return float32 probabilities and their float32 logits vary in the last bits with batch
    composition; a threshold exactly ON a validation score would let the record defining it flip
    sides. Half-way to the next lower score changes no validation decision and is robust to that.
    """
    cal, _ = choose_calibration(logits, labels, methods)
    probs = apply_calibration(logits, cal).astype(np.float32).astype(np.float64)  # what engines return
    op = choose_threshold(probs, labels, target)
    below = probs[probs < op.threshold]
    threshold = float(np.clip((op.threshold + below.max()) / 2 if below.size else op.threshold * 0.99,
                              PROB_EPS, 1 - PROB_EPS))
    return dataclasses.replace(task, calibration=cal, threshold=threshold, target=op.target,
                               metrics=task_metrics(probs, labels, threshold))


def bundle_config(cfg: TrainConfig, tasks: Sequence[TaskSpec], *, name: str, version: str,
                  provenance: Mapping[str, str], encoder: EncoderConfig | None = None,
                  spec: InputSpec | None = None) -> BundleConfig:
    return BundleConfig(schema_version=BUNDLE_SCHEMA_VERSION, name=name, version=version, trained=True,
                        encoder=encoder or cfg.encoder, input=spec or cfg.data.input_spec(), tasks=tuple(tasks),
                        provenance=dict(provenance))


def provenance(cfg: TrainConfig, method: str, splits: str | None = None, **extra: str) -> dict[str, str]:
    return make_provenance(
        DATA_CITATION, method=method, seed=str(cfg.seed),
        splits=splits or f"train folds {list(cfg.data.train_folds)}, validation folds {list(cfg.data.val_folds)}, "
                         "patient-disjoint (checked)",
        label_fraction=str(cfg.label_fraction), **extra)


def save_signal_bundle(path: str | os.PathLike[str], config: BundleConfig, model: ECGCLIPSignalModel) -> Bundle:
    """Save a heads-only (no text tower) bundle, replacing any bundle there, and load it back strictly."""
    save_bundle(Path(path), config, model, overwrite=True)
    return load_bundle(path)
