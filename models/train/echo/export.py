"""From a ``train fit`` checkpoint to a deployable bundle: calibrate each head on validation, save strictly.

The checkpoint holds the fine-tuned encoder and one linear head per fitted task (safetensors, and the
fit's config in ``state.json``). Each head is calibrated and given its threshold on the shards'
validation split exactly as ``echo-probe`` heads are (``heads.calibrate``: catalog spec, label source,
operating-point rule at the site's prevalence), and the bundle is written and loaded back by
``models.train.bundling.save_signal_bundle`` (schema v3, SHA-256, no pickle). Heads that cannot be
calibrated (too few validation positives, one class only) are left out of the bundle and named:
an uncalibrated head must not reach the alert policy.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Subset

from models.bundle import Bundle, make_provenance
from models.calibration import CalibrationError
from models.config import BUNDLE_SCHEMA_VERSION, BundleConfig, EncoderConfig, InputSpec, LabelSource, TaskSpec
from models.ecgclip import ECGCLIPSignalModel
from models.train.bundling import logits_of, save_signal_bundle
from models.train.echo.ddp import CKPT_MODEL, CKPT_STATE
from models.train.echo.heads import F64, ProbeSettings, calibrate
from models.train.echo.shard import ShardDataset, read_meta


@dataclass(frozen=True)
class Checkpoint:
    model: ECGCLIPSignalModel
    tasks: tuple[str, ...]
    step: int


def read_checkpoint(path: Path, shards: Path) -> Checkpoint:
    """The fitted model (strict load) and its task order (the fit's, else every task of the shards)."""
    state = json.loads((path / CKPT_STATE).read_text())
    cfg = state["config"]
    tasks = tuple(cfg["tasks"]) or ShardDataset(shards).index.tasks
    model = ECGCLIPSignalModel(EncoderConfig.from_dict(cfg["encoder"]), n_tasks=len(tasks))
    model.load_state_dict(load_file(str(path / CKPT_MODEL)), strict=True)
    return Checkpoint(model.eval(), tasks, int(state["step"]))


def split_logits(ckpt: Checkpoint, shards: Path, split: str, batch: int = 64) -> tuple[F64, F64]:
    """(n, T) head logits and labels (NaN unknown) of one split, streamed from the shards."""
    ds = ShardDataset(shards, ckpt.tasks)
    rows = ds.index.rows(split)
    loader = DataLoader(Subset(ds, rows.tolist()), batch_size=batch, shuffle=False)
    parts = [logits_of(ckpt.model, x.numpy(), batch) for x, _ in loader]
    z = np.concatenate(parts) if parts else np.zeros((0, len(ckpt.tasks)))
    return z, ds.labels[rows].astype(np.float64)


def calibrated_heads(ckpt: Checkpoint, z: F64, y: F64, sources: Mapping[str, LabelSource],
                     cfg: ProbeSettings) -> tuple[list[tuple[int, TaskSpec]], dict[str, str]]:
    """(head index, calibrated spec) of every head that can be calibrated; the others with the reason."""
    kept: list[tuple[int, TaskSpec]] = []
    skipped: dict[str, str] = {}
    for j, task_id in enumerate(ckpt.tasks):
        known = ~np.isnan(y[:, j])
        n_pos = int(y[known, j].sum())
        if n_pos < cfg.min_val_pos:
            skipped[task_id] = f"too few validation positives: {n_pos} (need {cfg.min_val_pos})"
            continue
        try:
            kept.append((j, calibrate(task_id, sources[task_id], z[known, j], y[known, j], cfg)))
        except CalibrationError as e:
            skipped[task_id] = f"calibration failed: {e.detail}"
    return kept, skipped


def _keep_heads(ckpt: Checkpoint, config: BundleConfig, heads: Sequence[int]) -> ECGCLIPSignalModel:
    model = ECGCLIPSignalModel.from_config(config)
    state = dict(ckpt.model.state_dict())
    idx = torch.tensor(list(heads), dtype=torch.long)
    state["heads.weight"], state["heads.bias"] = state["heads.weight"][idx], state["heads.bias"][idx]
    model.load_state_dict(state, strict=True)
    return model


def export_bundle(ckpt_path: Path, shards: Path, out: Path, sources: Mapping[str, LabelSource], cfg: ProbeSettings,
                  *, name: str, version: str, provenance: Mapping[str, str]) -> tuple[Bundle, dict[str, str]]:
    """Calibrate, save and load back the bundle of a fit checkpoint; also the heads left out and why."""
    ckpt = read_checkpoint(ckpt_path, shards)
    z, y = split_logits(ckpt, shards, "val")
    kept, skipped = calibrated_heads(ckpt, z, y, sources, cfg)
    if not kept:
        raise ValueError(f"no head of {ckpt_path} could be calibrated on the validation split: {skipped}")
    prov: dict[str, str] = {**make_provenance(provenance.get("data", str(shards))), **provenance,
                            "checkpoint": f"{ckpt_path} (step {ckpt.step})",
                            "operating_point": json.dumps(dataclasses.asdict(cfg.rule))}
    config = BundleConfig(schema_version=BUNDLE_SCHEMA_VERSION, name=name, version=version, trained=True,
                          encoder=ckpt.model.cfg, input=InputSpec.from_dict(read_meta(shards)["input"]),
                          tasks=tuple(spec for _, spec in kept), provenance=prov)
    return save_signal_bundle(out, config, _keep_heads(ckpt, config, [j for j, _ in kept])), skipped
