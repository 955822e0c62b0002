"""Linear probe: logistic-regression task heads on frozen ECGCLIP signal embeddings -> a bundle.

The heads read the UNNORMALISED embedding, as the bundle's scorer does (issue #4's
``ECGCLIPSignalModel``). Embeddings are standardised for fitting (so one L2 grid suits every
dimension) and the standardisation is folded back into the head's weights, so the bundle needs
no extra layer. The L2 strength is chosen per task by patient-grouped cross-validated log-loss on
the labelled training records; validation records are used for calibration and threshold only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from models.bundle import Bundle, export_bundle
from models.ecgclip import ECGCLIP, ECGCLIPSignalModel
from models.train.bundling import calibrated_tasks, logits_of, provenance
from models.train.config import TrainConfig
from models.train.data import PTBXLSet, Split, grouped_folds, label_subset
from models.train.loop import deterministic
from models.train.tasks import TaskLabel, label_matrix

F64 = npt.NDArray[np.float64]
BIAS_L2 = 1e-4  # keeps a head with no positives among its labels finite


@torch.no_grad()
def embed(model: ECGCLIPSignalModel, x: npt.NDArray[np.float32], batch: int = 128) -> F64:
    model.eval()
    parts = [model.encode_signal(torch.from_numpy(x[i : i + batch]), normalize=False).double().numpy()
             for i in range(0, len(x), batch)]
    return np.concatenate(parts)


@dataclass(frozen=True)
class Standardizer:
    mean: F64
    std: F64

    @classmethod
    def fit(cls, z: F64) -> Standardizer:
        return cls(z.mean(0), np.maximum(z.std(0), 1e-8))

    def __call__(self, z: F64) -> F64:
        return (z - self.mean) / self.std


def fit_logistic(z: F64, y: F64, l2: F64) -> tuple[F64, F64]:
    """Per-task L2-penalised logistic regression (tasks are independent; fitted jointly by L-BFGS).

    Objective per task: mean BCE + l2/2 * |w|^2. Float64 throughout, so the optimum does not
    depend on thread count or batch order.
    """
    zt, yt, lt = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)) for a in (z, y, l2))
    prev = (yt.sum(0) + 0.5) / (yt.shape[0] + 1.0)
    w = torch.zeros(yt.shape[1], zt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.log(prev / (1 - prev)).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        bce = F.binary_cross_entropy_with_logits(zt @ w.t() + b, yt, reduction="none").mean(0)
        loss = (bce + 0.5 * lt * (w**2).sum(1)).sum() + 0.5 * BIAS_L2 * (b**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def _log_loss(logits: F64, y: F64) -> F64:
    """Per-task mean BCE of logits (overflow-free)."""
    return (np.logaddexp(0.0, logits) - y * logits).mean(0)


def choose_l2(z: F64, y: F64, patient_id: npt.NDArray[np.int64], grid: Sequence[float], k: int,
              seed: int) -> tuple[F64, dict[float, F64]]:
    """Per-task L2 with the lowest patient-grouped cross-validated log-loss (ties: the stronger penalty)."""
    folds = grouped_folds(patient_id, k, seed)
    scores: dict[float, F64] = {}
    for l2 in grid:
        held = np.zeros_like(y)
        for test in folds:
            train = np.setdiff1d(np.arange(len(y)), test)
            w, b = fit_logistic(z[train], y[train], np.full(y.shape[1], l2))
            held[test] = z[test] @ w.T + b
        scores[l2] = _log_loss(held, y)
    ordered = sorted(grid, reverse=True)  # strongest first, so argmin's first hit prefers it on ties
    table = np.stack([scores[v] for v in ordered])
    return np.array(ordered)[table.argmin(0)], scores


def linear_heads(w: F64, b: F64, std: Standardizer) -> nn.Linear:
    """Fold the standardisation into the head: w.((z - m)/s) + b = (w/s).z + (b - (w/s).m)."""
    w_eff = w / std.std
    head = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w_eff))
        head.bias.copy_(torch.from_numpy(b - w_eff @ std.mean))
    return head


@dataclass(frozen=True)
class ProbeResult:
    bundle: Bundle
    summary: dict[str, Any]


def run_probe(cfg: TrainConfig, clip: ECGCLIP, ds: PTBXLSet, split: Split, tasks: Sequence[TaskLabel],
              out: Path, extra_provenance: dict[str, str] | None = None) -> ProbeResult:
    """Fit heads on ``label_fraction`` of the training patients, calibrate on validation, write a bundle."""
    train, val = ds.subset(split.train), ds.subset(split.val)
    with deterministic(cfg.seed, cfg.threads):
        z = embed(clip.signal, train.x)
        std = Standardizer.fit(z)  # from every training record: it uses no labels
        labelled = label_subset(train.patient_id, cfg.label_fraction, cfg.seed)
        zl, yl = std(z[labelled]), label_matrix(train, tasks)[labelled].astype(np.float64)
        l2, _ = choose_l2(zl, yl, train.patient_id[labelled], cfg.probe.l2_grid, cfg.probe.cv_folds, cfg.seed)
        heads = linear_heads(*fit_logistic(zl, yl, l2), std)
        base = [t.spec for t in tasks]
        val_logits = logits_of(clip.scorer(base, heads), val.x)
        specs = calibrated_tasks(tasks, val_logits, label_matrix(val, tasks), cfg)
        prov = provenance(cfg, "ECGCLIP contrastive pre-training + linear probe", **(extra_provenance or {}))
        bundle = export_bundle(out, clip, specs, cfg.data.input_spec(), name=cfg.bundle.name,
                               version=cfg.bundle.version, trained=True, provenance=prov, linear_heads=heads,
                               overwrite=True)
    summary = {"bundle": str(out), "sha256": bundle.sha256, "n_labelled": int(labelled.size),
               "labelled_positives": dict(zip([t.spec.id for t in tasks], yl.sum(0).astype(int).tolist(),
                                              strict=True)),
               "l2": dict(zip([t.spec.id for t in tasks], l2.tolist(), strict=True))}
    return ProbeResult(bundle, summary)
