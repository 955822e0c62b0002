"""The paper's baseline: the same signal encoder, randomly initialised, trained supervised on the labels.

Same compute budget as pre-training: the same batch size and number of optimiser steps
(pre-training's epochs x full-training-set batches), whatever the label fraction, so with 10% of
the labels the baseline sees its subset about ten times as often. Same augmentations, same
schedule shape; the last step is the result (no early stopping on validation, as for pre-training).
Multi-label BCE over every task; heads sit on the unnormalised embedding like the probe's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.bundle import Bundle
from models.ecgclip import ECGCLIPSignalModel
from models.train.augment import augment
from models.train.bundling import bundle_config, calibrated_tasks, logits_of, provenance, save_signal_bundle
from models.train.config import TrainConfig
from models.train.data import PTBXLSet, Split, label_subset
from models.train.loop import JsonlLog, Progress, adamw, deterministic, epoch_batches, lr_at, set_lr, steps_per_epoch
from models.train.tasks import TaskLabel, label_matrix


def budget_steps(cfg: TrainConfig, n_train: int) -> tuple[int, int]:
    """(total steps, steps per pre-training epoch) of the pre-training this baseline is matched to."""
    per_epoch = steps_per_epoch(n_train, cfg.pretrain.optim.batch_size)
    return cfg.pretrain.optim.epochs * per_epoch, per_epoch


@dataclass(frozen=True)
class SupervisedResult:
    bundle: Bundle
    summary: dict[str, Any]


def train_supervised(cfg: TrainConfig, ds: PTBXLSet, split: Split, tasks: Sequence[TaskLabel], out: Path,
                     log_path: Path | None = None, quiet: bool = False) -> SupervisedResult:
    train, val = ds.subset(split.train), ds.subset(split.val)
    labelled = label_subset(train.patient_id, cfg.label_fraction, cfg.seed)
    sub = train.subset(labelled)
    log = JsonlLog(log_path)
    started = time.perf_counter()
    with deterministic(cfg.seed, cfg.threads) as gen:
        model = ECGCLIPSignalModel(cfg.encoder, n_tasks=len(tasks))
        history = _fit(model, cfg, sub, label_matrix(sub, tasks), budget_steps(cfg, len(train)), gen, log, quiet)
        specs = calibrated_tasks(tasks, logits_of(model, val.x), label_matrix(val, tasks), cfg)
        prov = provenance(cfg, "supervised baseline: random init, BCE on task labels (same step budget)")
        config = bundle_config(cfg, specs, name=cfg.bundle.name, version=cfg.bundle.version, provenance=prov)
        bundle = save_signal_bundle(out, config, model)
    seconds = time.perf_counter() - started
    log.write(event="done", seconds=round(seconds, 1))
    summary = {"bundle": str(out), "sha256": bundle.sha256, "n_labelled": len(sub), "seconds": round(seconds, 1),
               "final_loss": history[-1]["loss"] if history else None}
    return SupervisedResult(bundle, summary)


def _fit(model: ECGCLIPSignalModel, cfg: TrainConfig, sub: PTBXLSet, y: np.ndarray, budget: tuple[int, int],
         gen: torch.Generator, log: JsonlLog, quiet: bool) -> list[dict[str, Any]]:
    """``budget`` = (total steps, steps per reported 'epoch'): progress is reported in pre-training epochs."""
    total, per_epoch = budget
    o, s = cfg.pretrain.optim, cfg.supervised
    warmup = round(o.warmup_epochs * per_epoch)
    opt = adamw(model, s.lr, s.weight_decay)
    progress = Progress("supervised", o.epochs, quiet=quiet)
    history: list[dict[str, Any]] = []
    log.write(event="start", n_labelled=len(sub), steps=total, config=cfg.to_dict())
    step, losses = 0, []
    model.train()
    while step < total:
        for idx in epoch_batches(len(sub), o.batch_size, gen):
            if step >= total:
                break
            set_lr(opt, lr_at(step, total, warmup, s.lr))
            losses.append(_step(model, opt, sub, y, idx, cfg, gen))
            step += 1
            if step % per_epoch == 0:
                row = {"event": "epoch", "epoch": step // per_epoch, "step": step, "loss": float(np.mean(losses)),
                       "lr": opt.param_groups[0]["lr"], "seconds": round(progress.elapsed, 1)}
                log.write(**row)
                history.append(row)
                progress.epoch(step // per_epoch, f"loss {row['loss']:.4f}")
                losses = []
    return history


def _step(model: ECGCLIPSignalModel, opt: torch.optim.Optimizer, sub: PTBXLSet, y: np.ndarray, idx: np.ndarray,
          cfg: TrainConfig, gen: torch.Generator) -> float:
    x = augment(torch.from_numpy(sub.x[idx]), cfg.augment, cfg.data.sampling_rate_hz, gen)
    loss = F.binary_cross_entropy_with_logits(model(x), torch.from_numpy(y[idx]))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())
