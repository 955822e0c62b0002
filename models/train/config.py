"""Training configuration: frozen dataclasses, read strictly from JSON (unknown keys and wrong types refused).

One file drives every command (``train pretrain``, ``probe``, ``supervised``): each reads the
sections it needs, so the probe and the baseline cannot silently disagree with the pre-training
about data, splits or input spec. Model shapes reuse :mod:`models.config` (``EncoderConfig``,
``TextEncoderConfig``, ``ClipConfig``), so what is trained is what a bundle describes.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

from models.config import ClipConfig, EncoderConfig, InputSpec, TextEncoderConfig
from schemas.errors import ECGScreenError

_T = TypeVar("_T")


class TrainConfigError(ECGScreenError):
    """A training config file is unreadable or malformed (reason ``invalid_train_config``)."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_train_config", detail)


def _need(ok: bool, detail: str) -> None:
    if not ok:
        raise TrainConfigError(detail)


@dataclass(frozen=True)
class DataConfig:
    """Where the records are, how they become model input, how they split, which labels are tasks."""

    data_dir: str = "../shared/data"
    sampling_rate_hz: float = 100.0
    n_samples: int = 1000
    # "none" keeps millivolts: voltage criteria (LVH, low QRS voltage) live in absolute amplitude,
    # which a per-record z-score would erase.
    normalisation: Literal["per_lead_zscore", "none"] = "none"
    bandpass_hz: tuple[float, float] | None = (0.5, 40.0)
    train_folds: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)
    val_folds: tuple[int, ...] = (8,)
    # An SCP statement becomes a task only with enough positives to train AND to evaluate.
    min_train_pos: int = 30
    min_val_pos: int = 10

    def __post_init__(self) -> None:
        _need(not set(self.train_folds) & set(self.val_folds), "train_folds and val_folds overlap")
        _need(bool(self.train_folds) and bool(self.val_folds), "train_folds and val_folds must not be empty")
        _need(self.min_train_pos >= 1 and self.min_val_pos >= 1, "min_train_pos and min_val_pos must be >= 1")

    def input_spec(self) -> InputSpec:
        return InputSpec(sampling_rate_hz=self.sampling_rate_hz, n_samples=self.n_samples,
                         bandpass_hz=self.bandpass_hz, normalisation=self.normalisation)


@dataclass(frozen=True)
class AugmentConfig:
    """Label-preserving ECG augmentations, applied per record on the model-ready signal."""

    enabled: bool = True
    amplitude_scale: tuple[float, float] = (0.8, 1.25)  # log-uniform gain per record (electrode/gain variation)
    max_shift_s: float = 0.5  # circular-free time shift, zero-filled
    noise_std: float = 0.05  # Gaussian noise, relative to each lead's own standard deviation
    lead_dropout: float = 0.1  # each lead zeroed with this probability, as the worker zero-fills a missing lead

    def __post_init__(self) -> None:
        lo, hi = self.amplitude_scale
        _need(0 < lo <= hi, f"amplitude_scale must satisfy 0 < lo <= hi, got {self.amplitude_scale}")
        _need(self.max_shift_s >= 0 and self.noise_std >= 0, "max_shift_s and noise_std must be >= 0")
        _need(0 <= self.lead_dropout < 1, "lead_dropout must lie in [0, 1)")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to zero; decay on weight matrices only."""

    epochs: int = 25
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0

    def __post_init__(self) -> None:
        _need(self.epochs >= 1 and self.batch_size >= 2, "need epochs >= 1 and batch_size >= 2")
        _need(self.lr > 0 and self.weight_decay >= 0 and self.warmup_epochs >= 0, "lr > 0, decay/warm-up >= 0")


def _default_text() -> TextEncoderConfig:
    # Two layers of width 128: reports are short lists of findings, the tower costs CPU time on
    # every step, and it travels in the bundle, which must stay under 25 MB. 64 tokens hold 98% of
    # the training reports whole (median 13).
    # No dropout: it cost a third of the text tower's time on CPU, and without it a batch's
    # repeated reports can be encoded once. vocab_size is the BPE target; the trained size replaces it.
    return TextEncoderConfig(vocab_size=1024, width=128, layers=2, heads=4, max_tokens=64, dropout=0.0)


@dataclass(frozen=True)
class PretrainConfig:
    """Contrastive pre-training on (ECG, report) pairs of the training folds only."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    text: TextEncoderConfig = field(default_factory=_default_text)
    clip: ClipConfig = field(default_factory=ClipConfig)
    bpe_min_frequency: int = 2
    # Probability of pairing an ECG with its SCP statement descriptions (English, canonical) instead of
    # its free-text report (English/German/Swedish). Both exist for every training record.
    scp_text_prob: float = 0.5
    eval_every: int = 5  # epochs between validation contrastive loss / zero-shot checks (monitoring only)

    def __post_init__(self) -> None:
        _need(0.0 <= self.scp_text_prob <= 1.0, "scp_text_prob must lie in [0, 1]")
        _need(self.eval_every >= 1 and self.bpe_min_frequency >= 1, "eval_every and bpe_min_frequency must be >= 1")


@dataclass(frozen=True)
class SupervisedConfig:
    """The baseline's optimiser. Batch size and number of steps are the pre-training's (same budget)."""

    lr: float = 1e-3
    weight_decay: float = 1e-2

    def __post_init__(self) -> None:
        _need(self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0")


@dataclass(frozen=True)
class ProbeConfig:
    """Logistic-regression heads on frozen embeddings; calibration and thresholds on validation."""

    l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # on standardised embeddings, per record
    cv_folds: int = 5  # patient-grouped folds of the labelled training records, to pick l2 per task
    # Strictly monotone methods only: ranking metrics (AUROC, PRAUC) then do not depend on a
    # calibration fitted on the very validation fold they are reported on.
    calibration_methods: tuple[Literal["temperature", "platt", "isotonic"], ...] = ("temperature", "platt")
    target_sensitivity: float = 0.8  # holdout probes (train folds -> validation folds), the comparison's
    # The shipped bundle: heads cross-fitted over these PTB-XL folds (one probe per held-out fold),
    # calibration and thresholds on the pooled out-of-fold scores, final heads fitted on all of them.
    oof_folds: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    min_positives: int = 20  # an SCP statement is carried with >= this many positives in oof_folds
    # Worklist operating point, every task: the lowest threshold with out-of-fold specificity >= this,
    # i.e. at most 1 false alert per 100 ECGs per alerting task.
    target_specificity: float = 0.99
    # Per-task exceptions (task id, specificity): atrial fibrillation gets 3 false alerts per 100 ECGs
    # instead of 1, because a missed AF is a missed anticoagulation decision.
    target_specificity_by_task: tuple[tuple[str, float], ...] = (("ecg.afib", 0.97),)
    # Rhythm tasks whose out-of-fold figures are also measured on the first 5 s of each record
    # (does context length matter?).
    context_check_tasks: tuple[str, ...] = ("ecg.afib", "ecg.sr", "ecg.stach", "ecg.sbrad", "ecg.pvc", "ecg.pac")

    def __post_init__(self) -> None:
        _need(bool(self.l2_grid) and all(v >= 0 for v in self.l2_grid), "l2_grid must be non-empty, values >= 0")
        _need(self.cv_folds >= 2, "cv_folds must be >= 2")
        _need(bool(self.calibration_methods), "calibration_methods must not be empty")
        _need(0 < self.target_sensitivity < 1, "target_sensitivity must lie in (0, 1)")
        _need(len(set(self.oof_folds)) >= 2, "oof_folds needs at least two distinct folds")
        _need(self.min_positives >= 2, "min_positives must be >= 2")
        _need(all(0 < v < 1 for v in (self.target_specificity, *dict(self.target_specificity_by_task).values())),
              "target specificities must lie in (0, 1)")

    def specificity_for(self, task_id: str) -> float:
        return dict(self.target_specificity_by_task).get(task_id, self.target_specificity)


@dataclass(frozen=True)
class BundleOutConfig:
    path: str = "models/bundles/ecgclip-r18-ptbxl-100hz"
    name: str = "ecgclip-r18-ptbxl-100hz"
    version: str = "1.0.0"


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    # torch intra-op threads (process-wide). 1, not 2: on a shared 2-core machine a second thread
    # mostly waits at OpenMP barriers for a core someone else holds (measured: 1 thread 2.1 s/step,
    # 2 threads 6-19 s/step under load). Part of the recipe: results are bitwise-reproducible per count.
    threads: int = 1
    run_dir: str = ".ecgscreen/train/ecgclip-r18-ptbxl-100hz"  # checkpoints, logs, side bundles
    label_fraction: float = 1.0  # share of training records whose labels the heads may use
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(base_width=32, embed_dim=256))
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    bundle: BundleOutConfig = field(default_factory=BundleOutConfig)

    def __post_init__(self) -> None:
        _need(0 < self.label_fraction <= 1, f"label_fraction must lie in (0, 1], got {self.label_fraction}")
        _need(self.threads >= 1, "threads must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- strict JSON reading ---------------------------------------------------------------------------


def load_config(path: str | Path) -> TrainConfig:
    """Read a JSON training config; every section and key is optional, unknown ones are refused."""
    try:
        raw = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        raise TrainConfigError(f"cannot read {path}: {e}") from e
    return from_dict(TrainConfig, raw, "config")


def from_dict(cls: type[_T], data: object, where: str) -> _T:
    """Build dataclass ``cls`` from a JSON object, checking keys and value types field by field."""
    _need(isinstance(data, dict), f"{where} must be a JSON object")
    assert isinstance(data, dict)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    _need(not unknown, f"{where}: unknown key(s) {unknown}")
    kwargs = {k: _coerce(f"{where}.{k}", hints[k], v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ECGScreenError as e:
        raise TrainConfigError(f"{where}: {e.detail}") from e
    except TypeError as e:
        raise TrainConfigError(f"{where}: {e}") from e


def _coerce(where: str, hint: Any, value: object) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)  # type: ignore[arg-type]
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        return _coerce(where, next(a for a in args if a is not type(None)), value)
    if origin is Literal:
        _need(value in args, f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        return _tuple(where, args, value)
    return _scalar(where, hint, value)


def _tuple(where: str, args: tuple[Any, ...], value: object) -> tuple[Any, ...]:
    _need(isinstance(value, list), f"{where} must be a list")
    assert isinstance(value, list)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(where, args[0], v) for v in value)
    _need(len(value) == len(args), f"{where} must have {len(args)} items")
    return tuple(_coerce(where, a, v) for a, v in zip(args, value, strict=True))


def _scalar(where: str, hint: Any, value: object) -> Any:
    if hint is bool:
        _need(isinstance(value, bool), f"{where} must be true or false")
    elif hint is int:
        _need(isinstance(value, int) and not isinstance(value, bool), f"{where} must be an integer")
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        _need(ok, f"{where} must be a finite number")
        return float(value)  # type: ignore[arg-type]
    elif hint is str:
        _need(isinstance(value, str), f"{where} must be a string")
    return value
