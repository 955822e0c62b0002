"""Echo heads from precomputed embeddings: embed a shard folder once, then one calibrated linear probe per task.

Per task, only the records whose label is known are used (a missing echo measurement is not a
negative). The L2 strength is picked by patient-grouped cross-validation on the training split
(``models.train.probe``); calibration and threshold on the validation split (``calibrate``: the
``OperatingRule``, at each task's site or catalog prevalence); the figures reported as held out
come from the test split, which nothing was fitted on. Tasks with too few positives to fit or to
validate are skipped and named. The bundle written keeps the base bundle's encoder and heads, adds
one linear head per echo task, and records every head's label source.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader

from models.bundle import Bundle, make_provenance, save_bundle
from models.calibration import PROB_EPS, CalibrationError, auroc, average_precision, sigmoid
from models.config import (
    BUNDLE_SCHEMA_VERSION,
    TARGET_KINDS,
    BundleConfig,
    Calibration,
    LabelSource,
    TaskSpec,
    ThresholdTarget,
)
from models.ecgclip import ECGCLIPSignalModel
from models.echo_catalog import load_echo_catalog
from models.train.bundling import fit_task_threshold
from models.train.echo.shard import ShardDataset, ShardIndex
from models.train.metrics import bootstrap_indices, estimate
from models.train.probe import Standardizer, choose_l2, fit_logistic, linear_heads

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class OperatingRule:
    """How each echo head's threshold is chosen on validation (``models.calibration.choose_threshold``).

    ``kind`` is any non-fixed ``ThresholdTarget`` kind (``min_sensitivity``, ``min_ppv``, and whatever
    ``models.config.TARGET_KINDS`` adds). ``min_ppv`` recomputes PPV at each task's prevalence: the
    site's (``prevalence``, task id -> fraction) when given, else the task catalog's literature default,
    because the linked cohort (patients sent for an echo) is far sicker than the ECGs screened.
    The prevalence used is also the head's ``TaskSpec.prevalence``, the policy's default for expected PPV.

    ``shift_to_prevalence``: move the calibration from the validation split's prevalence to that one
    (label shift: every probability's odds times site odds / validation odds, Saerens et al. 2002),
    so a score reads as a probability among the ECGs screened, not among those sent for an echo.
    Ranking, hence sensitivity, specificity and the records flagged on validation, is unchanged.
    """

    kind: str = "min_sensitivity"
    value: float = 0.8
    prevalence: tuple[tuple[str, float], ...] = ()
    shift_to_prevalence: bool = True

    def __post_init__(self) -> None:
        if self.kind == "fixed" or self.kind not in TARGET_KINDS:
            raise ValueError(f"operating point kind must be one of {[k for k in TARGET_KINDS if k != 'fixed']}")
        for task_id, p in ((None, self.value), *self.prevalence):
            if not 0 < p < 1:
                raise ValueError(f"{'prevalence of ' + task_id if task_id else 'operating point value'} "
                                 f"must lie in (0, 1), got {p}")

    @classmethod
    def parse(cls, rule: str, prevalence: Sequence[str] = (), shift: bool = True) -> OperatingRule:
        """From the CLI: ``KIND=VALUE`` (e.g. ``min_ppv=0.2``) and ``TASK=PREVALENCE`` pairs."""
        pairs = [_pair(p) for p in (rule, *prevalence)]
        return cls(pairs[0][0], pairs[0][1], tuple(pairs[1:]), shift)

    def prevalence_of(self, spec: TaskSpec) -> float | None:
        return dict(self.prevalence).get(spec.id, spec.prevalence)

    def apply(self, spec: TaskSpec) -> tuple[TaskSpec, ThresholdTarget]:
        """``spec`` at the site's prevalence, and the target its threshold is chosen for."""
        p = self.prevalence_of(spec)
        if self.kind == "min_ppv" and p is None:
            raise ValueError(f"{spec.id}: min_ppv needs a prevalence (the catalog has none): pass TASK=P")
        target = ThresholdTarget(kind=self.kind, value=self.value,  # type: ignore[arg-type]  # checked above
                                 prevalence=p if self.kind == "min_ppv" else None)
        return dataclasses.replace(spec, prevalence=p), target


def _pair(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return key.strip(), float(value)
    except ValueError:
        raise ValueError(f"expected NAME=NUMBER, got {text!r}") from None


@dataclass(frozen=True)
class ProbeSettings:
    min_train_pos: int = 20
    min_val_pos: int = 5
    l2_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
    cv_folds: int = 4
    rule: OperatingRule = field(default_factory=OperatingRule)
    calibration_methods: tuple[str, ...] = ("temperature", "platt")  # affine: the prevalence shift is exact
    seed: int = 0


@torch.no_grad()
def embed_shards(folder: Path, model: ECGCLIPSignalModel, batch: int = 64, workers: int = 0) -> npt.NDArray[np.float32]:
    """(n, embed_dim) unnormalised embeddings of every record, in index order, streamed by a DataLoader."""
    loader = DataLoader(ShardDataset(folder), batch_size=batch, shuffle=False, num_workers=workers)
    model.eval()
    parts = [model.encode_signal(x, normalize=False).float().numpy() for x, _ in loader]
    return np.concatenate(parts) if parts else np.zeros((0, model.cfg.embed_dim), np.float32)


@dataclass(frozen=True)
class TaskFit:
    spec: TaskSpec
    head: tuple[F64, float]  # (w on raw embeddings, b) after folding the standardisation
    summary: dict[str, Any]


def _patients(refs: Sequence[str]) -> npt.NDArray[np.int64]:
    return np.unique(np.asarray(refs), return_inverse=True)[1].astype(np.int64)


def fit_one(task_id: str, z: F64, index: ShardIndex, label_source: LabelSource, cfg: ProbeSettings) -> TaskFit | str:
    """A calibrated head for one task, or the reason it was skipped."""
    y = index.labels[:, index.tasks.index(task_id)].astype(np.float64)
    part = {s: index.rows(s)[~np.isnan(y[index.rows(s)])] for s in ("train", "val", "test")}
    pos = {s: int(y[r].sum()) for s, r in part.items()}
    if pos["train"] < cfg.min_train_pos or pos["val"] < cfg.min_val_pos:
        return (f"too few positives: train {pos['train']} (need {cfg.min_train_pos}), "
                f"val {pos['val']} (need {cfg.min_val_pos})")
    tr = part["train"]
    std = Standardizer.fit(z[tr])
    l2, _ = choose_l2(std(z[tr]), y[tr, None], _patients([index.patient_ref[i] for i in tr]), cfg.l2_grid,
                      cfg.cv_folds, cfg.seed)
    w, b = fit_logistic(std(z[tr]), y[tr, None], l2)
    head = linear_heads(w, b, std)
    w_raw, b_raw = head.weight.detach().double().numpy()[0], float(head.bias.detach()[0])
    try:
        spec = calibrate(task_id, label_source, z[part["val"]] @ w_raw + b_raw, y[part["val"]], cfg)
    except CalibrationError as e:
        return f"calibration failed: {e.detail}"
    return TaskFit(spec, (w_raw, b_raw), _summary(z, y, part, (w_raw, b_raw), float(l2[0])))


def calibrate(task_id: str, label_source: LabelSource, val_logits: F64, val_labels: F64,
              cfg: ProbeSettings) -> TaskSpec:
    """The catalog's spec for ``task_id`` with its label source, prevalence, calibration, threshold and
    validation metrics (``models.train.bundling.fit_task_threshold``, then the prevalence shift);
    the one path for probes and exported fits."""
    base = dataclasses.replace(load_echo_catalog().target(task_id).spec, label_source=label_source)
    spec, target = cfg.rule.apply(base)
    spec = fit_task_threshold(spec, val_logits, val_labels.astype(np.float32), target, cfg.calibration_methods)
    if not cfg.rule.shift_to_prevalence or spec.prevalence is None or spec.calibration is None:
        return spec
    shift = _logit(spec.prevalence) - _logit(float(np.mean(val_labels)))
    # An affine move of the logit: the threshold, half-way between two validation scores, moves with
    # them, so every validation decision and metric stays as fitted.
    threshold = float(np.clip(sigmoid(_logit(spec.threshold) + shift), PROB_EPS, 1 - PROB_EPS))
    return dataclasses.replace(spec, calibration=shift_prior(spec.calibration, shift), threshold=threshold)


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def shift_prior(cal: Calibration, shift: float) -> Calibration:
    """The same calibration with every probability's log-odds moved by ``shift`` (temperature or Platt:
    an exact bias; isotonic knots would not move the interpolation between them exactly, so refused)."""
    if cal.method == "isotonic":
        raise ValueError("the prevalence shift needs temperature or platt calibration, not isotonic")
    return Calibration(method="platt", temperature=cal.temperature, bias=cal.bias + shift)


def _summary(z: F64, y: F64, part: Mapping[str, npt.NDArray[np.int64]], head: tuple[F64, float],
             l2: float) -> dict[str, Any]:
    out: dict[str, Any] = {"l2": l2}
    for s, rows in part.items():
        yy = y[rows].astype(bool)
        score = z[rows] @ head[0] + head[1]
        both = yy.any() and (~yy).any()
        out[s] = {"n": int(rows.size), "pos": int(yy.sum()),
                  "auroc": round(auroc(score, yy), 4) if both else None,
                  "prauc": round(average_precision(score, yy), 4) if both else None}
    rows = part["test"]
    yy = y[rows].astype(bool)
    if yy.any() and (~yy).any():  # held-out figures carry their uncertainty: test sets here are small
        est = estimate(auroc, z[rows] @ head[0] + head[1], yy, bootstrap_indices(rows.size, 1000, 0))
        out["test"]["auroc_ci95"] = [round(est.lo, 4), round(est.hi, 4)]
    return out


def fit_heads(z: F64, index: ShardIndex, tasks: Sequence[str], label_source: LabelSource,
              cfg: ProbeSettings) -> tuple[list[TaskFit], dict[str, str]]:
    fits, skipped = [], {}
    for t in tasks:
        result = fit_one(t, z, index, label_source, cfg)
        if isinstance(result, str):
            skipped[t] = result
        else:
            fits.append(result)
    return fits, skipped


def echo_bundle(base: Bundle, fits: Sequence[TaskFit], out: Path, *, name: str, version: str,
                provenance: Mapping[str, str]) -> str:
    """The base bundle's encoder and heads plus one linear head per fit, saved at ``out``; returns the sha256."""
    c = base.config
    ids = set(c.task_ids)
    clash = [f.spec.id for f in fits if f.spec.id in ids]
    if clash:
        raise ValueError(f"the base bundle already has task(s) {clash}")
    tasks = (*c.tasks, *(f.spec for f in fits))
    config = BundleConfig(schema_version=BUNDLE_SCHEMA_VERSION, name=name, version=version, trained=True,
                          encoder=c.encoder, input=c.input, tasks=tasks, text=c.text,
                          provenance={**make_provenance(provenance.get("data", "")), **provenance,
                                      "base_bundle": f"{c.name}@{c.version} sha256 {base.sha256}"})
    model = ECGCLIPSignalModel.from_config(config)
    state = {k: v for k, v in base.model.state_dict().items() if not k.startswith("heads.")}
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        w = torch.cat([base.model.heads.weight, torch.tensor(np.stack([f.head[0] for f in fits]), dtype=torch.float32)])
        b = torch.cat([base.model.heads.bias, torch.tensor([f.head[1] for f in fits], dtype=torch.float32)])
        model.heads.weight.copy_(w)
        model.heads.bias.copy_(b)
    return save_bundle(out, config, model, text=base.text, overwrite=True)


def planted_auroc(planted: Mapping[str, Mapping[str, float]], index: ShardIndex, task_id: str, column: str,
                  sign: float) -> float | None:
    """Held-out (test split) AUROC of the noise-free planted score: the ceiling a head could reach."""
    rows = index.rows("test")
    y = index.labels[rows, index.tasks.index(task_id)]
    keep = ~np.isnan(y)
    score = np.array([planted[column][index.ecg_id[i]] for i in rows[keep]]) * sign if column in planted else None
    yy = y[keep].astype(bool)
    if score is None or not (yy.any() and (~yy).any()):
        return None
    value = auroc(score, yy)
    return None if math.isnan(value) else round(value, 4)
