"""Bytes <-> typed messages for the four v1 wire formats.

``decode_event`` is the worker's trust boundary. Each limit is checked before the work or
memory it guards is spent: the payload length before parsing, the lead and sample counts
before the data string is looked at, the data string's length before it is decoded. Every
rejection is a :class:`DecodeError` whose ``reason`` is a
:class:`~schemas.messages.DeadLetterReason`, so a worker can dead-letter whatever this
module refuses without a catch-all.

Encoders run the decoders' own field rules over what they build, so whatever they emit
decodes; a message that would not raises :class:`EncodeError` (a caller's bug, not bad input).
Timestamps go out as RFC 3339 UTC with millisecond precision, so a datetime survives a round
trip to the millisecond.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum, StrEnum
from importlib import resources
from typing import Any, TypeVar

import numpy as np
import orjson

from schemas.errors import ECGScreenError
from schemas.messages import (
    ALERT_SCHEMA,
    DEADLETTER_SCHEMA,
    EVENT_SCHEMA,
    VERDICT_SCHEMA,
    Alert,
    DeadLetter,
    DeadLetterReason,
    ECGEvent,
    Encoding,
    Explanation,
    ModelRef,
    Priority,
    Quality,
    QualityStatus,
    Sex,
    Source,
    TaskGroup,
    TaskRef,
    Verdict,
    Window,
)

_R = DeadLetterReason
_T = TypeVar("_T")
_E = TypeVar("_E", bound=StrEnum)

LEAD_NAMES: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
    "V3R", "V4R", "V5R", "V7", "V8", "V9", "X", "Y", "Z",
)  # fmt: skip
JSON_SCHEMA_NAMES: tuple[str, ...] = ("ecg.event.v1", "ecg.verdict.v1", "ecg.alert.v1", "ecg.deadletter.v1")

_LEADS_BY_LOWER = {name.lower(): name for name in LEAD_NAMES}
_ITEMSIZE = {Encoding.INT16_LE_BASE64: 2, Encoding.FLOAT32_LE_BASE64: 4}
_INT16_MIN, _INT16_MAX = -32768, 32767
_CONTAINER_TYPES = frozenset({dict, list})
_EXPECTED = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
_EVENT_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TIMESTAMP_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
# Textual fallback for payloads that will not parse; the lookbehind skips escaped quotes.
_PEEK_RE = re.compile(rb'(?<!\\)"event_id"\s*:\s*"([A-Za-z0-9._:-]{1,128})"')
_PEEK_SCAN_BYTES = 64 * 1024
_MAX_DETAIL_CHARS = 2000
_SHOW_CHARS = 40
_ID_CHARS = 128
_NAME_CHARS = 64
_TOPIC_CHARS = 249  # Kafka's own ceiling on topic names

_EVENT_REQUIRED = frozenset(
    {"schema", "event_id", "patient_ref", "acquired_at", "source", "sampling_rate_hz", "leads",
     "n_samples", "encoding", "data"}
)  # fmt: skip
_EVENT_OPTIONAL = frozenset({"age_years", "sex", "pacemaker"})
_SOURCE_REQUIRED = frozenset({"site"})
_SOURCE_OPTIONAL = frozenset({"device", "feed"})
_INT16_REQUIRED = frozenset({"type", "gain_adc_per_mv"})
_INT16_OPTIONAL = frozenset({"baseline_adc"})
_FLOAT32_REQUIRED = frozenset({"type"})
_MODEL_KEYS = frozenset({"name", "version", "sha256", "trained"})
_QUALITY_KEYS = frozenset({"status", "reasons", "bad_leads"})
_TASK_KEYS = frozenset({"id", "name", "group"})
_VERDICT_KEYS = frozenset(
    {"schema", "event_id", "patient_ref", "site", "acquired_at", "model", "quality", "scores",
     "alert_ids", "masked_leads", "timings_ms", "processed_at"}
)  # fmt: skip
_VERDICT_OPTIONAL = frozenset({"synthetic_labels"})  # added after v1 shipped: older verdicts lack it
_ALERT_KEYS = frozenset(
    {"schema", "alert_id", "event_id", "patient_ref", "site", "task", "score", "threshold", "priority",
     "model", "quality", "acquired_at", "created_at", "flags", "expected_ppv", "explanation"}
)  # fmt: skip
_EXPLANATION_KEYS = frozenset({"method", "top_leads", "windows"})
_WINDOW_KEYS = frozenset({"lead", "start_s", "end_s", "weight"})
_DEADLETTER_KEYS = frozenset(
    {"schema", "reason", "detail", "topic", "partition", "offset", "event_id", "payload_b64",
     "payload_bytes", "payload_truncated", "created_at", "extra"}
)  # fmt: skip


class DecodeError(ECGScreenError):
    """A message was rejected; ``reason`` is its dead-letter code.

    ``event_id`` is the message's own id whenever it carried a valid one, so the dead letter
    can be traced to the event even when something else in it was wrong.
    """

    reason: DeadLetterReason

    def __init__(self, reason: DeadLetterReason, detail: str, event_id: str | None = None) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.event_id = event_id

    def __reduce__(self) -> tuple[type[DecodeError], tuple[DeadLetterReason, str, str | None]]:
        # The default would replay only the formatted message into __init__.
        return (DecodeError, (self.reason, self.detail, self.event_id))


class EncodeError(ECGScreenError):
    """The caller asked for a message that would not decode (a bug upstream, not bad input)."""

    def __init__(self, detail: str) -> None:
        super().__init__("encode_invalid", detail)


@dataclass(frozen=True, slots=True)
class Limits:
    """Ceilings on what one event may make the decoder parse or allocate."""

    max_payload_bytes: int = 4 * 1024 * 1024
    max_leads: int = 15
    max_samples: int = 120_000  # per lead: 10 kHz for 12 s
    min_rate_hz: float = 50.0
    max_rate_hz: float = 10_000.0
    max_depth: int = 4  # a valid event nests 3 deep (event > encoding > gains)
    payload_excerpt_bytes: int = 4096


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class _Calibration:
    gain: np.ndarray  # (L,) float32, positive and finite
    baseline: np.ndarray  # (L,) float32, integral
    rails: np.ndarray  # (L, 2) float32 mV at the int16 limits


@dataclass(frozen=True, slots=True)
class _SignalSpec:
    encoding: Encoding
    leads: tuple[str, ...]
    n_samples: int
    data: str
    calibration: _Calibration | None


# --------------------------------------------------------------------------- small helpers


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    names = {dict: "object", list: "array", str: "string", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    """A short, bounded rendering of an offending value for a detail string."""
    if isinstance(value, dict | list):
        return f"<{_json_type(value)} of {len(value)}>"
    if isinstance(value, str) and len(value) > _SHOW_CHARS:
        return repr(value[:_SHOW_CHARS]) + "..."
    text = repr(value)
    return text if len(text) <= _SHOW_CHARS else text[:_SHOW_CHARS] + "..."


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _wrong_type(path: str, expected: str, value: object) -> DecodeError:
    return DecodeError(_R.INVALID_FIELD, f"{path} must be {expected}, got {_json_type(value)}")


def _want(value: object, kind: type[_T], path: str) -> _T:
    if not isinstance(value, kind):
        raise _wrong_type(path, _EXPECTED.get(kind, kind.__name__), value)
    return value


def _want_number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(path, "a number", value)
    try:
        number = float(value)
    except OverflowError:  # a Python int beyond float range; orjson never yields one, callers might
        number = math.inf
    if not math.isfinite(number):
        raise DecodeError(_R.INVALID_FIELD, f"{path} must be a finite number")
    return number


def _want_int(value: object, path: str) -> int:
    # JSON has one number type: 5000.0 is the integer 5000 to JSON Schema too.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(path, "an integer", value)
    return value


def _in_range(value: float, lo: float, hi: float, path: str, reason: DeadLetterReason) -> float:
    if not lo <= value <= hi:
        raise DecodeError(reason, f"{path}={value:g} is outside [{lo:g}, {hi:g}]")
    return value


def _valid_event_id(value: object) -> str | None:
    return value if isinstance(value, str) and _EVENT_ID_RE.fullmatch(value) else None


def _plain(value: object) -> object:
    """Numpy scalars and enums as the plain Python values orjson and the readers expect."""
    if isinstance(value, np.generic):
        return value.item()
    return value.value if isinstance(value, Enum) else value


class _Fields:
    """Typed reads from one JSON object; each failure names the offending path."""

    def __init__(
        self, obj: object, path: str, required: frozenset[str], optional: frozenset[str] = frozenset()
    ) -> None:
        fields = _want(obj, dict, path)
        unknown = fields.keys() - required - optional
        if unknown:
            where = f" in {path}" if path else ""
            raise DecodeError(_R.UNKNOWN_FIELD, f"unknown field {_show(min(unknown))}{where}")
        missing = required - fields.keys()
        if missing:
            raise DecodeError(_R.MISSING_FIELD, f"{_join(path, min(missing))} is required")
        self._obj: dict[str, Any] = fields
        self._path = path

    def at(self, key: str) -> str:
        return _join(self._path, key)

    def has(self, key: str) -> bool:
        return key in self._obj

    def raw(self, key: str) -> Any:
        return self._obj.get(key)

    def text(self, key: str, hi: int | None = None, lo: int = 1) -> str:
        value = _want(self.raw(key), str, self.at(key))
        if len(value) < lo or (hi is not None and len(value) > hi):
            bound = f"{lo}-{hi}" if hi is not None else f"at least {lo}"
            raise DecodeError(_R.INVALID_FIELD, f"{self.at(key)} must be {bound} characters, got {len(value)}")
        return value

    def opt_text(self, key: str, hi: int) -> str | None:
        return self.text(key, hi, lo=0) if self.has(key) else None

    def number(
        self,
        key: str,
        lo: float = -math.inf,
        hi: float = math.inf,
        reason: DeadLetterReason = _R.INVALID_FIELD,
    ) -> float:
        return _in_range(_want_number(self.raw(key), self.at(key)), lo, hi, self.at(key), reason)

    def integer(self, key: str, lo: int) -> int:
        value = _want_int(self.raw(key), self.at(key))
        if value < lo:
            raise DecodeError(_R.INVALID_FIELD, f"{self.at(key)}={value} must be >= {lo}")
        return value

    def flag(self, key: str) -> bool:
        return _want(self.raw(key), bool, self.at(key))

    def array(self, key: str) -> list[Any]:
        return _want(self.raw(key), list, self.at(key))

    def texts(self, key: str) -> tuple[str, ...]:
        return tuple(_want(item, str, f"{self.at(key)}[{i}]") for i, item in enumerate(self.array(key)))

    def mapping(self, key: str) -> dict[str, Any]:
        value = _want(self.raw(key), dict, self.at(key))
        for name in value:  # always strings from JSON, but encoders pass Python dicts through here
            _want(name, str, f"a key of {self.at(key)}")
        return value

    def numbers(self, key: str, lo: float, hi: float) -> dict[str, float]:
        paths = {k: f"{self.at(key)}[{_show(k)}]" for k in self.mapping(key)}
        items = self.mapping(key).items()
        return {k: _in_range(_want_number(v, paths[k]), lo, hi, paths[k], _R.INVALID_FIELD) for k, v in items}

    def text_map(self, key: str) -> dict[str, str]:
        return {k: _want(v, str, f"{self.at(key)}[{_show(k)}]") for k, v in self.mapping(key).items()}

    def choice(self, key: str, kind: type[_E]) -> _E:
        value = _want(self.raw(key), str, self.at(key))
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(member.value for member in kind)
            raise DecodeError(_R.INVALID_FIELD, f"{self.at(key)}={_show(value)} is not one of {allowed}") from None

    def timestamp(self, key: str) -> datetime:
        return parse_timestamp(_want(self.raw(key), str, self.at(key)), self.at(key))

    def child(self, key: str, required: frozenset[str], optional: frozenset[str] = frozenset()) -> _Fields:
        return _Fields(self.raw(key), self.at(key), required, optional)


# --------------------------------------------------------------------------- timestamps


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with millisecond precision and a ``Z``; naive datetimes are refused."""
    if moment.utcoffset() is None:
        raise EncodeError(f"datetime {moment.isoformat()} has no timezone")
    u = moment.astimezone(UTC)
    date = f"{u.year:04d}-{u.month:02d}-{u.day:02d}"
    return f"{date}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}.{u.microsecond // 1000:03d}Z"


def parse_timestamp(text: str, path: str = "timestamp") -> datetime:
    """A timezone-aware datetime from RFC 3339 text that carries ``Z`` or a numeric offset."""
    match = _TIMESTAMP_RE.fullmatch(text)
    if match is None:
        raise DecodeError(_R.INVALID_TIMESTAMP, f"{path}={_show(text)} is not RFC 3339 with a UTC offset")
    try:
        return _build_datetime(match)
    except ValueError as exc:
        raise DecodeError(_R.INVALID_TIMESTAMP, f"{path}={_show(text)}: {exc}") from None


def _build_datetime(match: re.Match[str]) -> datetime:
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    micro = int((fraction or "0").ljust(6, "0")[:6])
    tz = UTC if sign is None else timezone(_offset(sign, off_h, off_m))
    return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz)


def _offset(sign: str, hours: str, minutes: str) -> timedelta:
    if int(minutes) > 59:
        raise ValueError("offset minutes must be 00-59")
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    return -delta if sign == "-" else delta


# --------------------------------------------------------------------------- parsing


def _loads(payload: object, max_bytes: int) -> dict[str, Any]:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise DecodeError(_R.INVALID_JSON, f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise DecodeError(_R.PAYLOAD_TOO_LARGE, f"payload is {len(payload)} bytes; the limit is {max_bytes}")
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        deep = "depth" in str(exc) or "recursion" in str(exc)
        raise DecodeError(_R.NESTING_TOO_DEEP if deep else _R.INVALID_JSON, str(exc)) from None
    if not isinstance(obj, dict):
        raise DecodeError(_R.NOT_AN_OBJECT, f"top-level JSON value is {_json_type(obj)}, not an object")
    return obj


def _check_depth(obj: dict[str, Any], max_depth: int) -> None:
    level: list[Any] = [obj]
    for _ in range(max_depth):
        level = [child for container in level for child in _containers(container)]
        if not level:
            return
    raise DecodeError(_R.NESTING_TOO_DEEP, f"JSON nests deeper than {max_depth} levels")


def _containers(container: dict[str, Any] | list[Any]) -> list[Any]:
    values = container.values() if isinstance(container, dict) else container
    # set(map(type, ...)) runs in C, so a long flat array costs no Python-level loop.
    if not _CONTAINER_TYPES & set(map(type, values)):
        return []
    return [value for value in values if isinstance(value, dict | list)]


def _check_schema(obj: dict[str, Any], expected: str) -> None:
    if "schema" not in obj:
        raise DecodeError(_R.MISSING_FIELD, "schema is required")
    if obj["schema"] != expected:
        raise DecodeError(_R.UNSUPPORTED_SCHEMA, f"schema={_show(obj['schema'])} is not {expected!r}")


def _load_message(payload: bytes, schema: str, keys: frozenset[str],
                  optional: frozenset[str] = frozenset()) -> _Fields:
    obj = _loads(payload, DEFAULT_LIMITS.max_payload_bytes)
    _check_schema(obj, schema)
    return _Fields(obj, "", keys, optional)


# --------------------------------------------------------------------------- ecg.event/v1 in


def decode_event(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> ECGEvent:
    """Validate and decode one ``ecg.event/v1`` message; any rejection is a :class:`DecodeError`."""
    obj = _loads(payload, limits.max_payload_bytes)
    event_id = _valid_event_id(obj.get("event_id"))
    try:
        return _decode_event_object(obj, limits)
    except DecodeError as err:
        err.event_id = err.event_id or event_id
        raise


def _decode_event_object(obj: dict[str, Any], limits: Limits) -> ECGEvent:
    _check_depth(obj, limits.max_depth)
    _check_schema(obj, EVENT_SCHEMA)
    fields = _Fields(obj, "", _EVENT_REQUIRED, _EVENT_OPTIONAL)
    meta = _read_meta(fields, limits)
    spec = _read_signal_spec(fields, _read_leads(fields, limits), limits)
    signal, rails = _decode_signal(spec)
    return ECGEvent(**meta, leads=spec.leads, signal_mv=signal, rails_mv=rails)


def _read_meta(f: _Fields, limits: Limits) -> dict[str, Any]:
    return {
        "event_id": _read_event_id(f),
        "patient_ref": f.text("patient_ref", _NAME_CHARS),
        "acquired_at": f.timestamp("acquired_at"),
        "source": _read_source(f.child("source", _SOURCE_REQUIRED, _SOURCE_OPTIONAL)),
        "sampling_rate_hz": f.number(
            "sampling_rate_hz", limits.min_rate_hz, limits.max_rate_hz, _R.INVALID_SAMPLING_RATE
        ),
        "age_years": None if f.raw("age_years") is None else f.number("age_years", 0, 130),
        "sex": f.choice("sex", Sex) if f.has("sex") else None,
        "pacemaker": f.flag("pacemaker") if f.has("pacemaker") else None,
    }


def _read_event_id(f: _Fields) -> str:
    value = _want(f.raw("event_id"), str, f.at("event_id"))
    if _EVENT_ID_RE.fullmatch(value) is None:
        rule = "must be 1-128 characters of A-Z a-z 0-9 . _ : -"
        raise DecodeError(_R.INVALID_EVENT_ID, f"{f.at('event_id')}={_show(value)} {rule}")
    return value


def _read_source(f: _Fields) -> Source:
    return Source(site=f.text("site", _NAME_CHARS), device=f.opt_text("device", 128), feed=f.opt_text("feed", 128))


def _read_leads(f: _Fields, limits: Limits) -> tuple[str, ...]:
    names = f.array("leads")
    if len(names) > limits.max_leads:
        raise DecodeError(_R.TOO_MANY_LEADS, f"leads has {len(names)} entries; the limit is {limits.max_leads}")
    if not names:
        raise DecodeError(_R.INVALID_FIELD, "leads must name at least one lead")
    leads = tuple(_canonical_lead(name, i) for i, name in enumerate(names))
    _check_unique(leads)
    return leads


def _canonical_lead(name: object, index: int) -> str:
    canonical = _LEADS_BY_LOWER.get(name.lower()) if isinstance(name, str) and name.isascii() else None
    if canonical is None:
        raise DecodeError(_R.UNKNOWN_LEAD, f"leads[{index}]={_show(name)} is not a known lead name")
    return canonical


def _check_unique(leads: tuple[str, ...]) -> None:
    seen: dict[str, int] = {}
    for index, lead in enumerate(leads):
        if lead in seen:
            raise DecodeError(_R.DUPLICATE_LEAD, f"leads[{index}] repeats leads[{seen[lead]}] ({lead})")
        seen[lead] = index


def _read_signal_spec(f: _Fields, leads: tuple[str, ...], limits: Limits) -> _SignalSpec:
    n_samples = f.integer("n_samples", 1)
    if n_samples > limits.max_samples:
        detail = f"n_samples={n_samples} exceeds the limit of {limits.max_samples} per lead"
        raise DecodeError(_R.TOO_MANY_SAMPLES, detail)
    encoding, calibration = _read_encoding(f, len(leads))
    data = _want(f.raw("data"), str, "data")
    return _SignalSpec(encoding, leads, n_samples, data, calibration)


def _read_encoding(f: _Fields, n_leads: int) -> tuple[Encoding, _Calibration | None]:
    raw = _want(f.raw("encoding"), dict, "encoding")
    if "type" not in raw:
        raise DecodeError(_R.MISSING_FIELD, "encoding.type is required")
    kind = _want(raw["type"], str, "encoding.type")
    if kind == Encoding.FLOAT32_LE_BASE64:
        _Fields(raw, "encoding", _FLOAT32_REQUIRED)
        return Encoding.FLOAT32_LE_BASE64, None
    if kind != Encoding.INT16_LE_BASE64:
        allowed = ", ".join(Encoding)
        raise DecodeError(_R.UNKNOWN_ENCODING, f"encoding.type={_show(kind)} is not one of {allowed}")
    fields = _Fields(raw, "encoding", _INT16_REQUIRED, _INT16_OPTIONAL)
    return Encoding.INT16_LE_BASE64, _read_calibration(fields, n_leads)


def _read_calibration(f: _Fields, n_leads: int) -> _Calibration:
    gain = _read_gains(f.array("gain_adc_per_mv"), n_leads)
    baseline = _read_baseline(f, n_leads) if f.has("baseline_adc") else np.zeros(n_leads, np.float32)
    adc_limits = np.array([_INT16_MIN, _INT16_MAX], dtype=np.float32)
    with np.errstate(over="ignore"):
        rails = (adc_limits[None, :] - baseline[:, None]) / gain[:, None]
    if not np.isfinite(rails).all():
        detail = "encoding.gain_adc_per_mv is so small that the int16 range overflows float32 mV"
        raise DecodeError(_R.INVALID_GAIN, detail)
    return _Calibration(gain, baseline, rails)


def _read_gains(values: list[Any], n_leads: int) -> np.ndarray:
    path = "encoding.gain_adc_per_mv"
    if len(values) != n_leads:
        raise DecodeError(_R.INVALID_GAIN, f"{path} has {len(values)} entries for {n_leads} leads")
    for index, gain in enumerate(values):
        if isinstance(gain, bool) or not isinstance(gain, int | float) or not 0 < gain < math.inf:
            raise DecodeError(_R.INVALID_GAIN, f"{path}[{index}]={_show(gain)} must be a positive finite number")
    with np.errstate(over="ignore"):
        gain32 = np.asarray(values, dtype=np.float64).astype(np.float32)
    if not ((gain32 > 0) & np.isfinite(gain32)).all():
        raise DecodeError(_R.INVALID_GAIN, f"{path} holds a value outside the float32 range")
    return gain32


def _read_baseline(f: _Fields, n_leads: int) -> np.ndarray:
    values = f.array("baseline_adc")
    if len(values) != n_leads:
        raise DecodeError(_R.INVALID_FIELD, f"encoding.baseline_adc has {len(values)} entries for {n_leads} leads")
    paths = (f"encoding.baseline_adc[{i}]" for i in range(n_leads))
    ints = [_want_int(value, path) for value, path in zip(values, paths, strict=True)]
    if not all(_INT16_MIN <= value <= _INT16_MAX for value in ints):
        raise DecodeError(_R.INVALID_FIELD, "encoding.baseline_adc values must lie in the int16 range")
    return np.asarray(ints, dtype=np.float32)


def _decode_signal(spec: _SignalSpec) -> tuple[np.ndarray, np.ndarray | None]:
    raw = _decode_data(spec)
    if spec.calibration is None:
        return _float32_signal(raw, spec), None
    return _int16_signal(raw, spec, spec.calibration), spec.calibration.rails


def _decode_data(spec: _SignalSpec) -> bytes:
    data, itemsize = spec.data, _ITEMSIZE[spec.encoding]
    expected = len(spec.leads) * spec.n_samples * itemsize
    if len(data) % 4:
        raise DecodeError(_R.TRUNCATED_BASE64, f"data has {len(data)} characters, not a multiple of 4")
    padding = 2 if data.endswith("==") else int(data.endswith("="))
    implied = len(data) // 4 * 3 - padding
    if implied != expected:
        shape = f"{len(spec.leads)} leads x {spec.n_samples} samples x {itemsize} bytes = {expected}"
        raise DecodeError(_R.LENGTH_MISMATCH, f"data holds {implied} bytes; {shape}")
    # a2b_base64's strict mode still accepts padding runs longer than two.
    if data.find("=", 0, len(data) - padding) != -1:
        raise DecodeError(_R.INVALID_BASE64, "data has '=' padding before its end")
    try:
        return base64.b64decode(data, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise DecodeError(_R.INVALID_BASE64, f"data is not standard base64: {exc}") from None


def _int16_signal(raw: bytes, spec: _SignalSpec, cal: _Calibration) -> np.ndarray:
    adc = np.frombuffer(raw, dtype="<i2").reshape(len(spec.leads), spec.n_samples)
    signal = adc.astype(np.float32)
    # The same float32 operations as the rails, so a sample at an ADC limit equals its rail exactly.
    signal -= cal.baseline[:, None]
    signal /= cal.gain[:, None]
    return signal


def _float32_signal(raw: bytes, spec: _SignalSpec) -> np.ndarray:
    signal = np.frombuffer(raw, dtype="<f4").reshape(len(spec.leads), spec.n_samples).astype(np.float32)
    finite = np.isfinite(signal)
    if not finite.all():
        first = spec.leads[int(np.argmin(finite.all(axis=1)))]
        raise DecodeError(
            _R.NON_FINITE, f"data has {finite.size - int(finite.sum())} NaN/Inf samples (first in {first})"
        )
    return signal


# --------------------------------------------------------------------------- ecg.event/v1 out


def event_to_dict(
    event_id: str,
    patient_ref: str,
    acquired_at: datetime,
    source: Source,
    sampling_rate_hz: float,
    leads: Sequence[str],
    signal: np.ndarray,
    *,
    encoding: Encoding | str = Encoding.INT16_LE_BASE64,
    gain_adc_per_mv: float | Sequence[float] | np.ndarray = 1000.0,
    baseline_adc: int | Sequence[int] | np.ndarray | None = None,
    age_years: float | None = None,
    sex: Sex | str | None = None,
    pacemaker: bool | None = None,
) -> dict[str, Any]:
    """The ``ecg.event/v1`` document for ``signal`` (L, N) in mV; gains apply to int16 only."""
    samples = _as_signal(signal, len(leads))
    doc: dict[str, Any] = {
        "schema": EVENT_SCHEMA,
        "event_id": event_id,
        "patient_ref": patient_ref,
        "acquired_at": format_timestamp(acquired_at),
        "source": {"site": source.site, **_present(device=source.device, feed=source.feed)},
        "sampling_rate_hz": _plain(sampling_rate_hz),
        "leads": list(leads),
        "n_samples": samples.shape[1],
        **_samples_to_dict(samples, encoding, gain_adc_per_mv, baseline_adc),
        **_present(age_years=age_years, sex=sex, pacemaker=pacemaker),
    }
    doc["leads"] = list(_check_event_doc(doc))
    return doc


def encode_event(
    event_id: str,
    patient_ref: str,
    acquired_at: datetime,
    source: Source,
    sampling_rate_hz: float,
    leads: Sequence[str],
    signal: np.ndarray,
    *,
    encoding: Encoding | str = Encoding.INT16_LE_BASE64,
    gain_adc_per_mv: float | Sequence[float] | np.ndarray = 1000.0,
    baseline_adc: int | Sequence[int] | np.ndarray | None = None,
    age_years: float | None = None,
    sex: Sex | str | None = None,
    pacemaker: bool | None = None,
) -> bytes:
    """An ``ecg.event/v1`` payload that :func:`decode_event` accepts with default limits."""
    doc = event_to_dict(
        event_id, patient_ref, acquired_at, source, sampling_rate_hz, leads, signal,
        encoding=encoding, gain_adc_per_mv=gain_adc_per_mv, baseline_adc=baseline_adc,
        age_years=age_years, sex=sex, pacemaker=pacemaker,
    )  # fmt: skip
    payload = orjson.dumps(doc)
    if len(payload) > DEFAULT_LIMITS.max_payload_bytes:
        raise EncodeError(f"event is {len(payload)} bytes; the limit is {DEFAULT_LIMITS.max_payload_bytes}")
    return payload


def _present(**values: object) -> dict[str, object]:
    return {key: _plain(value) for key, value in values.items() if value is not None}


def _as_signal(signal: np.ndarray, n_leads: int) -> np.ndarray:
    samples = np.asarray(signal, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[0] != n_leads or samples.shape[1] < 1:
        raise EncodeError(f"signal must have shape ({n_leads} leads, n_samples >= 1), got {samples.shape}")
    if not np.isfinite(samples).all():
        raise EncodeError("signal has NaN/Inf samples")
    return samples


def _samples_to_dict(
    samples: np.ndarray,
    encoding: Encoding | str,
    gain: float | Sequence[float] | np.ndarray,
    baseline: int | Sequence[int] | np.ndarray | None,
) -> dict[str, Any]:
    if encoding == Encoding.FLOAT32_LE_BASE64:
        if baseline is not None:
            raise EncodeError("baseline_adc applies to int16-le-base64 only")
        return _float32_to_dict(samples)
    if encoding == Encoding.INT16_LE_BASE64:
        return _int16_to_dict(samples, gain, baseline)
    raise EncodeError(f"encoding {encoding!r} is not one of {', '.join(Encoding)}")


def _float32_to_dict(samples: np.ndarray) -> dict[str, Any]:
    with np.errstate(over="ignore"):
        data = samples.astype("<f4")
    if not np.isfinite(data).all():
        raise EncodeError("signal overflows float32")
    return {"encoding": {"type": Encoding.FLOAT32_LE_BASE64.value}, "data": _b64(data.tobytes())}


def _int16_to_dict(
    samples: np.ndarray, gain: float | Sequence[float] | np.ndarray, baseline: int | Sequence[int] | np.ndarray | None
) -> dict[str, Any]:
    gains = _per_lead(gain, samples.shape[0], "gain_adc_per_mv")
    offsets = _per_lead(0 if baseline is None else baseline, samples.shape[0], "baseline_adc")
    if not np.array_equal(offsets, np.round(offsets)):
        raise EncodeError("baseline_adc must hold integers")
    with np.errstate(over="ignore", invalid="ignore"):
        adc = np.clip(np.rint(samples * gains[:, None]) + offsets[:, None], _INT16_MIN, _INT16_MAX)
    encoding: dict[str, Any] = {"type": Encoding.INT16_LE_BASE64.value, "gain_adc_per_mv": gains.tolist()}
    if baseline is not None:
        encoding["baseline_adc"] = [int(value) for value in offsets]
    return {"encoding": encoding, "data": _b64(adc.astype("<i2").tobytes())}


def _per_lead(value: float | Sequence[float] | np.ndarray, n_leads: int, name: str) -> np.ndarray:
    try:
        return np.broadcast_to(np.asarray(value, dtype=np.float64), (n_leads,))
    except ValueError:
        raise EncodeError(f"{name} must be one number or one per lead ({n_leads})") from None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _check_event_doc(doc: dict[str, Any]) -> tuple[str, ...]:
    """Run the decoder's header rules over a built document; returns the canonical lead names."""
    try:
        fields = _Fields(doc, "", _EVENT_REQUIRED, _EVENT_OPTIONAL)
        _read_meta(fields, DEFAULT_LIMITS)
        leads = _read_leads(fields, DEFAULT_LIMITS)
        _read_signal_spec(fields, leads, DEFAULT_LIMITS)
    except DecodeError as err:
        raise EncodeError(f"event would not decode: {err}") from err
    return leads


# --------------------------------------------------------------------------- verdict / alert


def verdict_to_dict(verdict: Verdict) -> dict[str, Any]:
    doc = {
        "schema": VERDICT_SCHEMA,
        "event_id": verdict.event_id,
        "patient_ref": verdict.patient_ref,
        "site": verdict.site,
        "acquired_at": format_timestamp(verdict.acquired_at),
        "model": _model_to_dict(verdict.model),
        "quality": _quality_to_dict(verdict.quality),
        "scores": {key: _plain(value) for key, value in verdict.scores.items()},
        "alert_ids": list(verdict.alert_ids),
        "masked_leads": list(verdict.masked_leads),
        "timings_ms": {key: _plain(value) for key, value in verdict.timings_ms.items()},
        "processed_at": format_timestamp(verdict.processed_at),
        "synthetic_labels": list(verdict.synthetic_labels),
    }
    return _checked(doc, _VERDICT_KEYS, _read_verdict, _VERDICT_OPTIONAL)


def encode_verdict(verdict: Verdict) -> bytes:
    return orjson.dumps(verdict_to_dict(verdict))


def decode_verdict(payload: bytes) -> Verdict:
    return _read_verdict(_load_message(payload, VERDICT_SCHEMA, _VERDICT_KEYS, _VERDICT_OPTIONAL))


def _read_verdict(f: _Fields) -> Verdict:
    return Verdict(
        event_id=_read_event_id(f),
        patient_ref=f.text("patient_ref", _NAME_CHARS),
        site=f.text("site", _NAME_CHARS),
        acquired_at=f.timestamp("acquired_at"),
        model=_read_model(f.child("model", _MODEL_KEYS)),
        quality=_read_quality(f.child("quality", _QUALITY_KEYS)),
        scores=f.numbers("scores", 0.0, 1.0),
        alert_ids=f.texts("alert_ids"),
        timings_ms=f.numbers("timings_ms", 0.0, math.inf),
        processed_at=f.timestamp("processed_at"),
        masked_leads=f.texts("masked_leads"),
        synthetic_labels=f.texts("synthetic_labels") if f.has("synthetic_labels") else (),
    )


def alert_to_dict(alert: Alert) -> dict[str, Any]:
    task = alert.task
    doc = {
        "schema": ALERT_SCHEMA,
        "alert_id": alert.alert_id,
        "event_id": alert.event_id,
        "patient_ref": alert.patient_ref,
        "site": alert.site,
        "task": {"id": task.id, "name": task.name, "group": _plain(task.group)},
        "score": _plain(alert.score),
        "threshold": _plain(alert.threshold),
        "priority": _plain(alert.priority),
        "model": _model_to_dict(alert.model),
        "quality": _quality_to_dict(alert.quality),
        "acquired_at": format_timestamp(alert.acquired_at),
        "created_at": format_timestamp(alert.created_at),
        "flags": list(alert.flags),
        "expected_ppv": None if alert.expected_ppv is None else _plain(alert.expected_ppv),
        "explanation": None if alert.explanation is None else _explanation_to_dict(alert.explanation),
    }
    return _checked(doc, _ALERT_KEYS, _read_alert)


def _explanation_to_dict(e: Explanation) -> dict[str, Any]:
    windows = [{"lead": w.lead, "start_s": _plain(w.start_s), "end_s": _plain(w.end_s), "weight": _plain(w.weight)}
               for w in e.windows]
    return {"method": e.method, "top_leads": list(e.top_leads), "windows": windows}


def _read_explanation(f: _Fields) -> Explanation:
    windows = tuple(_read_window(_Fields(w, f"{f.at('windows')}[{i}]", _WINDOW_KEYS))
                    for i, w in enumerate(f.array("windows")))
    return Explanation(method=f.text("method", _NAME_CHARS), top_leads=f.texts("top_leads"), windows=windows)


def _read_window(f: _Fields) -> Window:
    return Window(lead=f.text("lead", _NAME_CHARS), start_s=f.number("start_s", 0.0),
                  end_s=f.number("end_s", 0.0), weight=f.number("weight", 0.0, 1.0))


def encode_alert(alert: Alert) -> bytes:
    return orjson.dumps(alert_to_dict(alert))


def decode_alert(payload: bytes) -> Alert:
    return _read_alert(_load_message(payload, ALERT_SCHEMA, _ALERT_KEYS))


def _read_alert(f: _Fields) -> Alert:
    return Alert(
        alert_id=f.text("alert_id", _ID_CHARS),
        event_id=_read_event_id(f),
        patient_ref=f.text("patient_ref", _NAME_CHARS),
        site=f.text("site", _NAME_CHARS),
        task=_read_task(f.child("task", _TASK_KEYS)),
        score=f.number("score", 0.0, 1.0),
        threshold=f.number("threshold", 0.0, 1.0),
        priority=f.choice("priority", Priority),
        model=_read_model(f.child("model", _MODEL_KEYS)),
        quality=_read_quality(f.child("quality", _QUALITY_KEYS)),
        acquired_at=f.timestamp("acquired_at"),
        created_at=f.timestamp("created_at"),
        flags=f.texts("flags"),
        expected_ppv=None if f.raw("expected_ppv") is None else f.number("expected_ppv", 0.0, 1.0),
        explanation=None if f.raw("explanation") is None else _read_explanation(f.child("explanation",
                                                                                        _EXPLANATION_KEYS)),
    )


def _model_to_dict(model: ModelRef) -> dict[str, Any]:
    return {"name": model.name, "version": model.version, "sha256": model.sha256, "trained": model.trained}


def _quality_to_dict(quality: Quality) -> dict[str, Any]:
    return {
        "status": _plain(quality.status),
        "reasons": list(quality.reasons),
        "bad_leads": list(quality.bad_leads),
    }


def _read_model(f: _Fields) -> ModelRef:
    return ModelRef(
        name=f.text("name", _ID_CHARS),
        version=f.text("version", _ID_CHARS),
        sha256=f.text("sha256", _ID_CHARS, lo=0),
        trained=f.flag("trained"),
    )


def _read_quality(f: _Fields) -> Quality:
    return Quality(status=f.choice("status", QualityStatus), reasons=f.texts("reasons"), bad_leads=f.texts("bad_leads"))


def _read_task(f: _Fields) -> TaskRef:
    return TaskRef(id=f.text("id", _ID_CHARS), name=f.text("name", 256), group=f.choice("group", TaskGroup))


def _checked(doc: dict[str, Any], keys: frozenset[str], reader: Callable[[_Fields], object],
             optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    try:
        reader(_Fields(doc, "", keys, optional))
    except DecodeError as err:
        raise EncodeError(f"{doc['schema']} message would not decode: {err}") from err
    return doc


# --------------------------------------------------------------------------- dead letters


def deadletter_to_dict(letter: DeadLetter) -> dict[str, Any]:
    doc = {
        "schema": DEADLETTER_SCHEMA,
        "reason": _plain(letter.reason),
        "detail": letter.detail,
        "topic": letter.topic,
        "partition": _plain(letter.partition),
        "offset": _plain(letter.offset),
        "event_id": letter.event_id,
        "payload_b64": letter.payload_b64,
        "payload_bytes": _plain(letter.payload_bytes),
        "payload_truncated": letter.payload_truncated,
        "created_at": format_timestamp(letter.created_at),
        "extra": dict(letter.extra),
    }
    return _checked(doc, _DEADLETTER_KEYS, _read_deadletter)


def encode_deadletter(letter: DeadLetter) -> bytes:
    return orjson.dumps(deadletter_to_dict(letter))


def decode_deadletter(payload: bytes) -> DeadLetter:
    return _read_deadletter(_load_message(payload, DEADLETTER_SCHEMA, _DEADLETTER_KEYS))


def _read_deadletter(f: _Fields) -> DeadLetter:
    return DeadLetter(
        reason=f.choice("reason", DeadLetterReason),
        detail=f.text("detail", lo=0),
        topic=f.text("topic", _TOPIC_CHARS),
        partition=f.integer("partition", -1),  # -1: not from Kafka (replays, CLI)
        offset=f.integer("offset", -1),
        event_id=None if f.raw("event_id") is None else _read_event_id(f),
        payload_b64=_read_excerpt(f),
        payload_bytes=f.integer("payload_bytes", 0),
        payload_truncated=f.flag("payload_truncated"),
        created_at=f.timestamp("created_at"),
        extra=f.text_map("extra"),
    )


def _read_excerpt(f: _Fields) -> str:
    value = f.text("payload_b64", lo=0)
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        raise DecodeError(_R.INVALID_BASE64, "payload_b64 is not standard base64") from None
    return value


def make_deadletter(
    err: BaseException,
    payload: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    limits: Limits = DEFAULT_LIMITS,
    *,
    extra: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> DeadLetter:
    """The dead letter for ``payload``; never raises, since it runs on the error path.

    A :class:`DecodeError` keeps its reason; another :class:`ECGScreenError` keeps its reason
    when that is a dead-letter code (e.g. ``event_id_conflict``); anything else is
    ``processing_failed``, with the error's type in ``extra``.
    """
    raw = bytes(payload) if isinstance(payload, bytes | bytearray | memoryview) else b""
    reason, detail, more = _classify(err)
    excerpt = raw[: limits.payload_excerpt_bytes]
    return DeadLetter(
        reason=reason,
        detail=detail[:_MAX_DETAIL_CHARS],
        topic=topic,
        partition=partition,
        offset=offset,
        event_id=_valid_event_id(getattr(err, "event_id", None)) or peek_event_id(raw),
        payload_b64=_b64(excerpt),
        payload_bytes=len(raw),
        payload_truncated=len(raw) > len(excerpt),
        created_at=now or _now_to_the_millisecond(),
        extra={**more, **(extra or {})},
    )


def _now_to_the_millisecond() -> datetime:
    # The wire keeps milliseconds; trimming here makes a dead letter equal its decoded form.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _classify(err: BaseException) -> tuple[DeadLetterReason, str, dict[str, str]]:
    if isinstance(err, DecodeError):
        return err.reason, err.detail, {}
    kind = {"error_type": type(err).__name__}
    if isinstance(err, ECGScreenError):
        reason = str(err.reason)
        known = reason in set(DeadLetterReason)
        return (
            (DeadLetterReason(reason) if known else _R.PROCESSING_FAILED),
            err.detail,
            {**kind, "error_reason": reason},
        )
    return _R.PROCESSING_FAILED, f"{type(err).__name__}: {err}", kind


def peek_event_id(payload: bytes) -> str | None:
    """The payload's event_id when it can be had cheaply and is valid; never raises.

    Parsed payloads answer only from their top-level ``event_id``. Unparsable or oversize ones
    fall back to a textual scan of the first 64 KiB, so the answer is best-effort.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        return None
    if len(payload) <= DEFAULT_LIMITS.max_payload_bytes:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
        else:
            return _valid_event_id(obj.get("event_id")) if isinstance(obj, dict) else None
    match = _PEEK_RE.search(bytes(payload[:_PEEK_SCAN_BYTES]))
    return match.group(1).decode("ascii") if match else None


# --------------------------------------------------------------------------- JSON Schema docs


def load_json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema document for ``name`` ("ecg.event/v1", "ecg.event.v1" or its file name)."""
    stem = name.removesuffix(".json").replace("/", ".")
    if stem not in JSON_SCHEMA_NAMES:
        raise ECGScreenError("unknown_schema", f"no JSON Schema named {name!r}; known: {', '.join(JSON_SCHEMA_NAMES)}")
    text = (resources.files("schemas") / "json" / f"{stem}.json").read_text(encoding="utf-8")
    document = orjson.loads(text)
    if not isinstance(document, dict):
        raise ECGScreenError("unknown_schema", f"{stem}.json is not a JSON object")
    return document
