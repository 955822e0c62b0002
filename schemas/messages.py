"""Typed, in-memory forms of the four v1 wire formats.

The codec (:mod:`schemas.codec`) turns bytes into these and back; the JSON Schema
documents in ``schemas/json/`` describe the same shapes for other languages.
Enums are the machine-readable vocabulary shared by every stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import numpy as np

EVENT_SCHEMA = "ecg.event/v1"
VERDICT_SCHEMA = "ecg.verdict/v1"
ALERT_SCHEMA = "ecg.alert/v1"
DEADLETTER_SCHEMA = "ecg.deadletter/v1"


class Encoding(StrEnum):
    INT16_LE_BASE64 = "int16-le-base64"
    FLOAT32_LE_BASE64 = "float32-le-base64"


class Sex(StrEnum):
    MALE = "M"
    FEMALE = "F"
    UNKNOWN = "U"


class QualityStatus(StrEnum):
    PASS = "pass"
    DEGRADED = "degraded"
    REJECT = "reject"


class TaskGroup(StrEnum):
    ECG = "ecg"
    ECHO = "echo"
    RARE = "rare"


class Priority(StrEnum):
    URGENT = "urgent"
    HIGH = "high"
    ROUTINE = "routine"


class DeadLetterReason(StrEnum):
    """Why an event produced no verdict. Stable: consumers switch on these."""

    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_JSON = "invalid_json"
    NESTING_TOO_DEEP = "nesting_too_deep"
    NOT_AN_OBJECT = "not_an_object"
    UNSUPPORTED_SCHEMA = "unsupported_schema"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_FIELD = "invalid_field"
    INVALID_EVENT_ID = "invalid_event_id"
    INVALID_TIMESTAMP = "invalid_timestamp"
    INVALID_SAMPLING_RATE = "invalid_sampling_rate"
    UNKNOWN_LEAD = "unknown_lead"
    DUPLICATE_LEAD = "duplicate_lead"
    TOO_MANY_LEADS = "too_many_leads"
    TOO_MANY_SAMPLES = "too_many_samples"
    UNKNOWN_ENCODING = "unknown_encoding"
    INVALID_GAIN = "invalid_gain"
    TRUNCATED_BASE64 = "truncated_base64"
    INVALID_BASE64 = "invalid_base64"
    LENGTH_MISMATCH = "length_mismatch"
    NON_FINITE = "non_finite"
    EVENT_ID_CONFLICT = "event_id_conflict"
    PROCESSING_FAILED = "processing_failed"
    # The model returned NaN or Inf for this record (e.g. an overflowing head or an fp16 engine):
    # no score to act on, so no verdict; replay once the bundle or engine is fixed.
    NON_FINITE_OUTPUT = "non_finite_output"


@dataclass(frozen=True, slots=True)
class Source:
    site: str
    device: str | None = None
    feed: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class ECGEvent:
    """A decoded, validated ECG. ``signal_mv`` is lead-major (L, N) float32 in mV.

    ``rails_mv`` is (L, 2) low/high rail in mV when the source was int16 (so the
    gate can see clipping at the ADC limits); None for float32 payloads.
    """

    event_id: str
    patient_ref: str
    acquired_at: datetime
    source: Source
    sampling_rate_hz: float
    leads: tuple[str, ...]
    signal_mv: np.ndarray
    rails_mv: np.ndarray | None = None
    age_years: float | None = None
    sex: Sex | None = None
    pacemaker: bool | None = None

    @property
    def n_samples(self) -> int:
        return int(self.signal_mv.shape[1])


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    version: str
    sha256: str
    trained: bool


@dataclass(frozen=True, slots=True)
class Quality:
    status: QualityStatus
    reasons: tuple[str, ...] = ()
    bad_leads: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    event_id: str
    patient_ref: str
    site: str
    acquired_at: datetime
    model: ModelRef
    quality: Quality
    scores: dict[str, float]  # task id -> probability; empty when quality is reject
    alert_ids: tuple[str, ...]
    timings_ms: dict[str, float]
    processed_at: datetime
    masked_leads: tuple[str, ...] = ()
    # Scored tasks whose heads were trained on synthetic labels (their scores demonstrate, never diagnose).
    synthetic_labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TaskRef:
    id: str
    name: str
    group: TaskGroup


@dataclass(frozen=True, slots=True)
class Window:
    """A stretch of one lead that drove a score (seconds from the record start)."""

    lead: str
    start_s: float
    end_s: float
    weight: float  # share of the attribution mass, 0..1


@dataclass(frozen=True, slots=True)
class Explanation:
    """Where in the ECG the model looked, for the clinician reading the alert."""

    method: str  # e.g. "gradient_x_input"
    top_leads: tuple[str, ...]
    windows: tuple[Window, ...]


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    event_id: str
    patient_ref: str
    site: str
    task: TaskRef
    score: float
    threshold: float
    priority: Priority
    model: ModelRef
    quality: Quality
    acquired_at: datetime
    created_at: datetime
    flags: tuple[str, ...] = ()
    # PPV expected at the site's prevalence from the bundle's validation sensitivity/specificity.
    expected_ppv: float | None = None
    explanation: Explanation | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: DeadLetterReason
    detail: str
    topic: str
    partition: int
    offset: int
    event_id: str | None
    payload_b64: str  # base64 of the first ``payload_limit`` bytes of the original message
    payload_bytes: int  # size of the original message
    payload_truncated: bool
    created_at: datetime
    extra: dict[str, str] = field(default_factory=dict)
