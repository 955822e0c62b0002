"""Model shape, input contract and task list as frozen, JSON-round-trippable dataclasses.

A bundle's ``bundle.json`` is ``BundleConfig.to_dict()``; everything needed to rebuild the
network and to prepare its input lives here, so a bundle is self-describing. ``from_dict``
is strict (unknown keys, wrong types and out-of-range values are refused) because a typo
in a config must fail loudly at load time rather than silently fall back to a default.
This module imports no torch: the worker can read configs without the heavy stack.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from schemas.errors import ECGScreenError
from schemas.messages import TaskGroup

BUNDLE_SCHEMA_VERSION = 3
# v1 (signal tower + linear heads only) is a strict subset of v2: every v1 key exists in v2 with
# the same meaning, and v1 weights are exactly the v2 weights of an all-linear bundle without a
# text tower. Reading it costs nothing, so the loader keeps accepting it.
# v3 adds each head's ``label_source`` (required on every head of a trained bundle): whether a head
# may alert depends on it (``synthetic`` heads may not by default), so a bundle that carries it must
# be refused by an older reader with ``unsupported_version``, and a new trained bundle that forgot
# it must be refused too. v1/v2 bundles were all trained by this project's PTB-XL pipeline on ECG
# statements; the loader reads their trained heads as ``ecg_statement`` (``models.bundle``).
SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2, 3)
LABEL_SOURCE_SCHEMA_VERSION = 3

# Where a head's training and validation labels came from, most to least direct for echo targets.
LabelSource = Literal["echo_measurement", "echo_report", "ecg_statement", "clinical_diagnosis", "synthetic"]
LABEL_SOURCES: tuple[str, ...] = ("echo_measurement", "echo_report", "ecg_statement", "clinical_diagnosis",
                                  "synthetic")
SYNTHETIC: LabelSource = "synthetic"

STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)  # fmt: skip

Arch = Literal["r18", "r34"]
ARCHS: tuple[str, ...] = ("r18", "r34")
NORMALISATIONS: tuple[str, ...] = ("per_lead_zscore", "none")
HeadKind = Literal["linear", "zero_shot"]
HEAD_KINDS: tuple[str, ...] = ("linear", "zero_shot")
CalibrationMethod = Literal["none", "temperature", "platt", "isotonic"]
CALIBRATION_METHODS: tuple[str, ...] = ("none", "temperature", "platt", "isotonic")
TargetKind = Literal["fixed", "min_sensitivity", "min_specificity", "min_ppv"]
TARGET_KINDS: tuple[str, ...] = ("fixed", "min_sensitivity", "min_specificity", "min_ppv")
TEXT_ENCODER_KINDS: tuple[str, ...] = ("transformer",)
MAX_ISOTONIC_KNOTS = 512  # a validation set of a few thousand records gives far fewer PAV blocks

# Leave headroom under Nyquist: a band edge at Nyquist would make the Butterworth design unstable.
NYQUIST_MARGIN = 0.9

_TASK_ID = re.compile(r"^[a-z]+\.[a-z0-9_]+$")

_T = TypeVar("_T")


class ModelConfigError(ECGScreenError):
    """A model config (or catalog lookup) is malformed; ``reason`` is usually ``invalid_config``."""

    def __init__(self, detail: str, reason: str = "invalid_config") -> None:
        super().__init__(reason, detail)


# --- small validators: one place that says what "an int" means (bool is not one) -------------


def _need(ok: bool, detail: str) -> None:
    if not ok:
        raise ModelConfigError(detail)


def _int(name: str, value: object, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelConfigError(f"{name} must be an int, got {value!r}")
    _need(value >= lo, f"{name} must be >= {lo}, got {value}")
    return value


def _float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _prob(name: str, value: object) -> float:
    v = _float(name, value)
    _need(0.0 < v < 1.0, f"{name} must lie strictly between 0 and 1, got {v}")
    return v


def _unit(name: str, value: object) -> float:
    v = _float(name, value)
    _need(0.0 <= v <= 1.0, f"{name} must lie in [0, 1], got {v}")
    return v


def _str(name: str, value: object, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ModelConfigError(f"{name} must be a string, got {value!r}")
    _need(allow_empty or bool(value.strip()), f"{name} must not be empty")
    return value


def _set(obj: object, name: str, value: object) -> None:
    """Normalise a field of a frozen dataclass in __post_init__ (e.g. list -> tuple, int -> float)."""
    object.__setattr__(obj, name, value)


def _strict_kwargs(cls: type, data: object) -> dict[str, Any]:
    """Check ``data`` is a mapping whose keys are a subset of ``cls``'s fields, required ones present."""
    if not isinstance(data, Mapping):
        raise ModelConfigError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    _need(not unknown, f"{cls.__name__}: unknown key(s) {unknown}")
    missing = sorted(
        n for n, f in fields.items()
        if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )  # fmt: skip
    _need(not missing, f"{cls.__name__}: missing key(s) {missing}")
    return dict(data)


def _build(cls: type[_T], kwargs: dict[str, Any]) -> _T:
    try:
        return cls(**kwargs)
    except TypeError as e:  # a wrong type that slipped past the validators
        raise ModelConfigError(f"{cls.__name__}: {e}") from e


# --- configs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderConfig:
    """1D ResNet signal encoder: R18 = BasicBlock [2,2,2,2], R34 = [3,4,6,3]; widths base*(1,2,4,8)."""

    arch: Arch = "r18"
    in_leads: int = 12
    base_width: int = 64
    stem_kernel: int = 15
    kernel: int = 7
    embed_dim: int = 256

    def __post_init__(self) -> None:
        _need(self.arch in ARCHS, f"arch must be one of {ARCHS}, got {self.arch!r}")
        for name in ("in_leads", "base_width", "embed_dim"):
            _int(name, getattr(self, name))
        for name in ("stem_kernel", "kernel"):
            # Odd kernels keep 'same' padding symmetric, so stride-1 convs preserve length exactly.
            _need(_int(name, getattr(self, name)) % 2 == 1, f"{name} must be odd")

    @property
    def feature_dim(self) -> int:
        return 8 * self.base_width

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> EncoderConfig:
        return _build(cls, _strict_kwargs(cls, data))


@dataclass(frozen=True)
class InputSpec:
    """What the model was trained on: rate, length, lead order and preprocessing."""

    sampling_rate_hz: float
    n_samples: int
    leads: tuple[str, ...] = STANDARD_LEADS
    bandpass_hz: tuple[float, float] | None = (0.5, 40.0)
    normalisation: Literal["per_lead_zscore", "none"] = "per_lead_zscore"
    clip_mv: float = 10.0

    def __post_init__(self) -> None:
        fs = _float("sampling_rate_hz", self.sampling_rate_hz)
        _need(fs > 0, "sampling_rate_hz must be > 0")
        _set(self, "sampling_rate_hz", fs)
        _int("n_samples", self.n_samples)
        self._check_leads()
        self._check_bandpass()
        _need(self.normalisation in NORMALISATIONS, f"normalisation must be one of {NORMALISATIONS}")
        clip = _float("clip_mv", self.clip_mv)
        _need(clip > 0, "clip_mv must be > 0")
        _set(self, "clip_mv", clip)

    def _check_leads(self) -> None:
        _need(isinstance(self.leads, list | tuple), "leads must be a list of names")
        leads = tuple(_str("lead", lead) for lead in self.leads)
        _need(bool(leads), "leads must not be empty")
        _need(len({lead.lower() for lead in leads}) == len(leads), f"duplicate lead in {leads}")
        _set(self, "leads", leads)

    def _check_bandpass(self) -> None:
        if self.bandpass_hz is None:
            return
        pair = isinstance(self.bandpass_hz, list | tuple) and len(self.bandpass_hz) == 2
        _need(pair, f"bandpass_hz must be [lo, hi] or null, got {self.bandpass_hz!r}")
        lo, hi = (_float("bandpass_hz", v) for v in self.bandpass_hz)
        _need(0 < lo < hi, f"bandpass_hz must satisfy 0 < lo < hi, got {(lo, hi)}")
        _set(self, "bandpass_hz", (lo, hi))
        eff = self.effective_bandpass_hz
        _need(eff is not None and eff[0] < eff[1], f"bandpass low edge {lo} Hz is above Nyquist margin")

    @property
    def effective_bandpass_hz(self) -> tuple[float, float] | None:
        """The band actually applied: the high edge clipped below Nyquist of ``sampling_rate_hz``."""
        if self.bandpass_hz is None:
            return None
        lo, hi = self.bandpass_hz
        return lo, min(hi, NYQUIST_MARGIN * self.sampling_rate_hz / 2)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["leads"] = list(self.leads)
        d["bandpass_hz"] = None if self.bandpass_hz is None else list(self.bandpass_hz)
        return d

    @classmethod
    def from_dict(cls, data: object) -> InputSpec:
        return _build(cls, _strict_kwargs(cls, data))


@dataclass(frozen=True)
class TextEncoderConfig:
    """The built-in text tower: byte-level BPE tokens -> pre-norm transformer -> mean pool.

    ``vocab_size`` must equal the size of the bundle's tokenizer (checked at load). A bigger
    pretrained encoder plugs in through ``models.text.TextEncoder`` instead; such a bundle
    ships precomputed prompt embeddings and ``text: null``.
    """

    kind: Literal["transformer"] = "transformer"
    vocab_size: int = 2048
    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    max_tokens: int = 128
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _need(self.kind in TEXT_ENCODER_KINDS, f"text kind must be one of {TEXT_ENCODER_KINDS}")
        for name in ("vocab_size", "width", "layers", "heads", "mlp_ratio", "max_tokens"):
            _int(name, getattr(self, name))
        _need(self.width % self.heads == 0, f"width {self.width} must be divisible by heads {self.heads}")
        drop = _float("dropout", self.dropout)
        _need(0.0 <= drop < 1.0, "dropout must lie in [0, 1)")
        _set(self, "dropout", drop)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> TextEncoderConfig:
        return _build(cls, _strict_kwargs(cls, data))


@dataclass(frozen=True)
class ClipConfig:
    """Contrastive pre-training: CLIP's learnable temperature, stored as log(scale) and clamped.

    The clamp (CLIP: scale <= 100) stops the logits from growing until training destabilises.
    """

    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = math.log(100.0)

    def __post_init__(self) -> None:
        init = _float("logit_scale_init", self.logit_scale_init)
        top = _float("logit_scale_max", self.logit_scale_max)
        _need(0.0 <= init <= top, f"need 0 <= logit_scale_init <= logit_scale_max, got {init}, {top}")
        _set(self, "logit_scale_init", init)
        _set(self, "logit_scale_max", top)


@dataclass(frozen=True)
class Calibration:
    """Raw head logit -> probability, fitted on validation data (``models.calibration``).

    ``none``: sigmoid(z). ``temperature``: sigmoid(z / T). ``platt``: sigmoid(z / T + bias).
    ``isotonic``: piecewise-linear through knots (``x`` logits ascending, ``y`` probabilities
    non-decreasing), flat beyond the end knots.
    """

    method: CalibrationMethod = "none"
    temperature: float = 1.0
    bias: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _need(self.method in CALIBRATION_METHODS, f"calibration method must be one of {CALIBRATION_METHODS}")
        t = _float("temperature", self.temperature)
        _need(t > 0, f"temperature must be > 0, got {t}")
        _set(self, "temperature", t)
        _set(self, "bias", _float("bias", self.bias))
        _need(self.method == "platt" or self.bias == 0.0, "bias is only used by platt calibration")
        self._check_knots()

    def _check_knots(self) -> None:
        _need(isinstance(self.x, list | tuple) and isinstance(self.y, list | tuple), "x and y must be lists")
        x = tuple(_float("x", v) for v in self.x)
        y = tuple(_unit("y", v) for v in self.y)
        _set(self, "x", x)
        _set(self, "y", y)
        if self.method != "isotonic":
            _need(not x and not y, "x and y are only used by isotonic calibration")
            return
        _need(2 <= len(x) == len(y) <= MAX_ISOTONIC_KNOTS, f"isotonic needs 2..{MAX_ISOTONIC_KNOTS} knots")
        _need(all(a < b for a, b in itertools.pairwise(x)), "isotonic x must be strictly increasing")
        _need(all(a <= b for a, b in itertools.pairwise(y)), "isotonic y must be non-decreasing")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["x"], d["y"] = list(self.x), list(self.y)
        return d

    @classmethod
    def from_dict(cls, data: object) -> Calibration:
        return _build(cls, _strict_kwargs(cls, data))


@dataclass(frozen=True)
class ThresholdTarget:
    """The stated goal a task's threshold was chosen for.

    ``min_sensitivity``: the highest threshold whose validation sensitivity is >= ``value``.
    ``min_specificity``: the lowest threshold whose validation specificity is >= ``value`` (a bound
    on false alerts per ECG scored, which is what a worklist's reviewers feel).
    ``min_ppv``: the lowest threshold whose PPV, recomputed at ``prevalence`` (the intended
    population's, not the validation set's), is >= ``value``. ``fixed``: set by hand.
    ``met`` records whether the validation data allowed the goal to be reached.
    """

    kind: TargetKind
    value: float | None = None
    prevalence: float | None = None
    met: bool = True

    def __post_init__(self) -> None:
        _need(self.kind in TARGET_KINDS, f"target kind must be one of {TARGET_KINDS}")
        _need(isinstance(self.met, bool), "met must be a bool")
        if self.kind == "fixed":
            _need(self.value is None and self.prevalence is None, "a fixed target takes no value or prevalence")
            return
        _set(self, "value", _prob("target value", self.value))
        if self.kind == "min_ppv":
            _set(self, "prevalence", _prob("target prevalence", self.prevalence))
        else:
            _need(self.prevalence is None, "prevalence is only used by min_ppv")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> ThresholdTarget:
        return _build(cls, _strict_kwargs(cls, data))


@dataclass(frozen=True)
class TaskMetrics:
    """Validation figures of one task at its threshold; the alert policy derives expected PPV from them."""

    sensitivity: float
    specificity: float
    prevalence: float  # in the validation data
    n: int
    n_pos: int
    prauc: float | None = None
    auroc: float | None = None

    def __post_init__(self) -> None:
        for name in ("sensitivity", "specificity", "prevalence", "prauc", "auroc"):
            if getattr(self, name) is not None:
                _set(self, name, _unit(name, getattr(self, name)))
        _int("n", self.n)
        _int("n_pos", self.n_pos, lo=0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> TaskMetrics:
        return _build(cls, _strict_kwargs(cls, data))


@dataclass(frozen=True)
class TaskSpec:
    """One output head: a stable id (``<group>.<name>``), its operating point and alerting policy."""

    id: str
    name: str
    group: TaskGroup
    threshold: float
    alert: bool
    prevalence: float | None = None
    description: str = ""
    metrics: TaskMetrics | None = None
    # How the score is made: a linear head on the signal embedding, or zero-shot from the
    # similarity to ``prompt`` versus ``negative_prompt`` (embeddings precomputed into the bundle).
    head: HeadKind = "linear"
    prompt: str | None = None
    negative_prompt: str | None = None
    calibration: Calibration | None = None
    target: ThresholdTarget | None = None
    # Where this head's labels came from (schema v3); None only for untrained heads (no labels at all).
    label_source: LabelSource | None = None

    @property
    def synthetic_labels(self) -> bool:
        return self.label_source == SYNTHETIC

    def __post_init__(self) -> None:
        well_formed = isinstance(self.id, str) and bool(_TASK_ID.match(self.id))
        _need(well_formed, f"task id {self.id!r} is not '<group>.<name>' (lower case)")
        _str("name", self.name)
        try:
            _set(self, "group", TaskGroup(self.group))
        except ValueError as e:
            raise ModelConfigError(f"task {self.id}: unknown group {self.group!r}") from e
        _need(self.id.split(".", 1)[0] == self.group, f"task id {self.id!r} must start with '{self.group}.'")
        _set(self, "threshold", _prob("threshold", self.threshold))
        _need(isinstance(self.alert, bool), f"alert must be a bool, got {self.alert!r}")
        if self.prevalence is not None:
            _set(self, "prevalence", _prob("prevalence", self.prevalence))
        _str("description", self.description, allow_empty=True)
        self._check_head()
        _need(self.label_source is None or self.label_source in LABEL_SOURCES,
              f"task {self.id}: label_source must be one of {LABEL_SOURCES}, got {self.label_source!r}")
        for name, kind in (("metrics", TaskMetrics), ("calibration", Calibration), ("target", ThresholdTarget)):
            value = getattr(self, name)
            _need(value is None or isinstance(value, kind), f"task {self.id}: {name} must be a {kind.__name__}")

    def _check_head(self) -> None:
        _need(self.head in HEAD_KINDS, f"task {self.id}: head must be one of {HEAD_KINDS}")
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            _need(value is None or bool(_str(name, value).strip()), f"task {self.id}: {name} must not be empty")
        if self.head == "zero_shot":
            _need(self.prompt is not None and self.negative_prompt is not None,
                  f"task {self.id}: a zero_shot head needs prompt and negative_prompt")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["group"] = self.group.value
        for name in ("metrics", "calibration", "target"):
            value = getattr(self, name)
            d[name] = None if value is None else value.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: object) -> TaskSpec:
        kw = _strict_kwargs(cls, data)
        for name, kind in (("metrics", TaskMetrics), ("calibration", Calibration), ("target", ThresholdTarget)):
            if kw.get(name) is not None:
                kw[name] = kind.from_dict(kw[name])
        return _build(cls, kw)


@dataclass(frozen=True)
class BundleConfig:
    """Everything in ``bundle.json``: identity, encoder shape, input contract, tasks, provenance."""

    schema_version: int
    name: str
    version: str
    trained: bool
    encoder: EncoderConfig
    input: InputSpec
    tasks: tuple[TaskSpec, ...]
    provenance: dict[str, str] = field(default_factory=dict)
    # The text tower travels with the bundle (weights + tokenizer.json) when it is the built-in
    # one; the worker never runs it (zero-shot prompts are precomputed), ``model info`` does.
    text: TextEncoderConfig | None = None

    def __post_init__(self) -> None:
        _int("schema_version", self.schema_version)
        _need(self.text is None or isinstance(self.text, TextEncoderConfig), "text must be a TextEncoderConfig")
        _str("name", self.name)
        _str("version", self.version)
        _need(isinstance(self.trained, bool), "trained must be a bool")
        _need(isinstance(self.encoder, EncoderConfig), "encoder must be an EncoderConfig")
        _need(isinstance(self.input, InputSpec), "input must be an InputSpec")
        self._check_tasks()
        self._check_provenance()

    def _check_tasks(self) -> None:
        _need(isinstance(self.tasks, list | tuple), "tasks must be a list")
        tasks = tuple(self.tasks)
        ok = bool(tasks) and all(isinstance(t, TaskSpec) for t in tasks)
        _need(ok, "tasks must be a non-empty list of TaskSpec")
        ids = [t.id for t in tasks]
        _need(len(set(ids)) == len(ids), f"duplicate task ids in {ids}")
        if self.trained and self.schema_version >= LABEL_SOURCE_SCHEMA_VERSION:
            unsourced = [t.id for t in tasks if t.label_source is None]
            _need(not unsourced, f"every head of a trained bundle names its label_source; missing for {unsourced}")
        _set(self, "tasks", tasks)

    def _check_provenance(self) -> None:
        _need(isinstance(self.provenance, Mapping), "provenance must be an object of strings")
        ok = all(isinstance(k, str) and isinstance(v, str) for k, v in self.provenance.items())
        _need(ok, "provenance keys and values must be strings")
        _set(self, "provenance", dict(self.provenance))  # own copy: the dataclass is frozen

    @property
    def task_ids(self) -> tuple[str, ...]:
        return tuple(t.id for t in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        tasks = [t.to_dict() for t in self.tasks]
        if self.schema_version < LABEL_SOURCE_SCHEMA_VERSION:  # written as the older schema knew it
            tasks = [{k: v for k, v in t.items() if k != "label_source"} for t in tasks]
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "trained": self.trained,
            "encoder": self.encoder.to_dict(),
            "input": self.input.to_dict(),
            "tasks": tasks,
            "provenance": dict(self.provenance),
            "text": None if self.text is None else self.text.to_dict(),
        }

    @property
    def linear_tasks(self) -> tuple[int, ...]:
        """Indices (in task order) of tasks scored by a linear head."""
        return tuple(i for i, t in enumerate(self.tasks) if t.head == "linear")

    @property
    def zero_shot_tasks(self) -> tuple[int, ...]:
        """Indices (in task order) of tasks scored zero-shot from precomputed prompt embeddings."""
        return tuple(i for i, t in enumerate(self.tasks) if t.head == "zero_shot")

    @classmethod
    def from_dict(cls, data: object) -> BundleConfig:
        kw = _strict_kwargs(cls, data)
        if kw.get("text") is not None:
            kw["text"] = TextEncoderConfig.from_dict(kw["text"])
        kw["encoder"] = EncoderConfig.from_dict(kw["encoder"])
        kw["input"] = InputSpec.from_dict(kw["input"])
        _need(isinstance(kw["tasks"], list | tuple), "tasks must be a list")
        kw["tasks"] = tuple(TaskSpec.from_dict(t) for t in kw["tasks"])
        return _build(cls, kw)
