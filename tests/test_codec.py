"""schemas.codec: strict event decoding, output round trips, dead letters."""

from __future__ import annotations

import base64
import contextlib
import copy
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import codec
from schemas.codec import (
    DEFAULT_LIMITS,
    LEAD_NAMES,
    DecodeError,
    EncodeError,
    Limits,
    decode_alert,
    decode_deadletter,
    decode_event,
    decode_verdict,
    encode_alert,
    encode_deadletter,
    encode_event,
    encode_verdict,
    event_to_dict,
    format_timestamp,
    load_json_schema,
    make_deadletter,
    parse_timestamp,
    peek_event_id,
)
from schemas.errors import ECGScreenError
from schemas.messages import (
    Alert,
    DeadLetter,
    DeadLetterReason,
    Encoding,
    ModelRef,
    Priority,
    Quality,
    QualityStatus,
    Sex,
    Source,
    TaskGroup,
    TaskRef,
    Verdict,
)

R = DeadLetterReason
ACQUIRED = datetime(2024, 5, 1, 8, 30, 15, 250_000, tzinfo=UTC)
LEADS12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
LEADS3 = ("I", "II", "V2")
EVENT_ID = "evt-0001:a.b_c"
DELETE = object()
NOT_FROM_CODEC = {R.EVENT_ID_CONFLICT, R.PROCESSING_FAILED, R.NON_FINITE_OUTPUT}


def make_signal(n_leads: int, n_samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / 500.0
    wave = np.sin(2 * np.pi * 1.2 * t)[None, :] * np.linspace(0.5, 2.0, n_leads)[:, None]
    return wave + 0.05 * rng.standard_normal((n_leads, n_samples))


def int16_doc() -> dict[str, Any]:
    return event_to_dict(
        EVENT_ID, "pat-9", ACQUIRED, Source("site-a", "cart-7", "feed-1"), 500, LEADS3, make_signal(3, 500),
        gain_adc_per_mv=[200.0, 400.0, 1000.0], baseline_adc=[0, 10, -5], age_years=61.5, sex=Sex.FEMALE,
        pacemaker=False,
    )  # fmt: skip


def float32_doc(signal: np.ndarray | None = None) -> dict[str, Any]:
    samples = make_signal(3, 500) if signal is None else signal
    return event_to_dict(
        EVENT_ID, "pat-9", ACQUIRED, Source("site-a"), 500, LEADS3, samples, encoding=Encoding.FLOAT32_LE_BASE64
    )


def with_field(doc: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A deep copy of ``doc`` with the dotted ``path`` set to ``value`` (or removed for DELETE)."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    target = out
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return out


def nan_float32_payload() -> bytes:
    raw = np.zeros((3, 500), dtype="<f4")
    raw[1, 7] = np.nan
    return orjson.dumps(with_field(float32_doc(), "data", base64.b64encode(raw.tobytes()).decode()))


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], bytes]
    reason: DeadLetterReason
    event_id: str | None = EVENT_ID  # what the error must carry
    schema_rejects: bool = True  # the JSON Schema document can express this rule too


def edit(path: str, value: object, doc: Callable[[], dict[str, Any]] = int16_doc) -> Callable[[], bytes]:
    return lambda: orjson.dumps(with_field(doc(), path, value))


def edit_data(change: Callable[[str], str]) -> Callable[[], bytes]:
    return lambda: orjson.dumps(with_field(int16_doc(), "data", change(int16_doc()["data"])))


def raw(payload: bytes) -> Callable[[], bytes]:
    return lambda: payload


CASES: tuple[Case, ...] = (
    Case("oversize", raw(b"{" + b" " * DEFAULT_LIMITS.max_payload_bytes + b"}"), R.PAYLOAD_TOO_LARGE, None, False),
    Case("truncated json", raw(b'{"schema": "ecg.event/v1", "event_id": "x"'), R.INVALID_JSON, None, False),
    Case("empty payload", raw(b""), R.INVALID_JSON, None, False),
    Case("not utf-8", raw(b'{"a": "\xff"}'), R.INVALID_JSON, None, False),
    Case("nan literal", raw(b'{"a": NaN}'), R.INVALID_JSON, None, False),
    Case("orjson depth limit", raw(b"[" * 2000 + b"]" * 2000), R.NESTING_TOO_DEEP, None, False),
    Case("depth 5", edit("source.device", [[["x"]]]), R.NESTING_TOO_DEEP),
    Case("array", raw(b"[]"), R.NOT_AN_OBJECT, None),
    Case("string", raw(b'"ecg"'), R.NOT_AN_OBJECT, None),
    Case("null", raw(b"null"), R.NOT_AN_OBJECT, None),
    Case("schema v2", edit("schema", "ecg.event/v2"), R.UNSUPPORTED_SCHEMA),
    Case("schema number", edit("schema", 1), R.UNSUPPORTED_SCHEMA),
    Case("no schema", edit("schema", DELETE), R.MISSING_FIELD),
    Case("no patient_ref", edit("patient_ref", DELETE), R.MISSING_FIELD),
    Case("no data", edit("data", DELETE), R.MISSING_FIELD),
    Case("no source.site", edit("source.site", DELETE), R.MISSING_FIELD),
    Case("no encoding.type", edit("encoding.type", DELETE), R.MISSING_FIELD),
    Case("no gains", edit("encoding.gain_adc_per_mv", DELETE), R.MISSING_FIELD),
    Case("top-level extra", edit("extra", 1), R.UNKNOWN_FIELD),
    Case("source extra", edit("source.room", "3"), R.UNKNOWN_FIELD),
    Case("encoding extra", edit("encoding.scale", 1), R.UNKNOWN_FIELD),
    Case("float32 with gains", edit("encoding.gain_adc_per_mv", [1.0] * 3, float32_doc), R.UNKNOWN_FIELD),
    Case("patient_ref number", edit("patient_ref", 5), R.INVALID_FIELD),
    Case("patient_ref too long", edit("patient_ref", "p" * 65), R.INVALID_FIELD),
    Case("event_id number", edit("event_id", 7), R.INVALID_FIELD, None),
    Case("source not object", edit("source", "site-a"), R.INVALID_FIELD),
    Case("site empty", edit("source.site", ""), R.INVALID_FIELD),
    Case("rate string", edit("sampling_rate_hz", "500"), R.INVALID_FIELD),
    Case("rate bool", edit("sampling_rate_hz", True), R.INVALID_FIELD),
    Case("leads string", edit("leads", "I"), R.INVALID_FIELD),
    Case("leads empty", edit("leads", []), R.INVALID_FIELD),
    Case("n_samples zero", edit("n_samples", 0), R.INVALID_FIELD),
    Case("n_samples fractional", edit("n_samples", 499.5), R.INVALID_FIELD),
    Case("encoding string", edit("encoding", "int16-le-base64"), R.INVALID_FIELD),
    Case("gains not array", edit("encoding.gain_adc_per_mv", 200.0), R.INVALID_FIELD),
    Case("baseline length", edit("encoding.baseline_adc", [0, 0]), R.INVALID_FIELD, schema_rejects=False),
    Case("baseline beyond int16", edit("encoding.baseline_adc", [0, 40000, 0]), R.INVALID_FIELD),
    Case("baseline fractional", edit("encoding.baseline_adc", [0, 0.5, 0]), R.INVALID_FIELD),
    Case("data number", edit("data", 12), R.INVALID_FIELD),
    Case("age 200", edit("age_years", 200), R.INVALID_FIELD),
    Case("sex X", edit("sex", "X"), R.INVALID_FIELD),
    Case("pacemaker string", edit("pacemaker", "yes"), R.INVALID_FIELD),
    Case("event_id space", edit("event_id", "evt 1"), R.INVALID_EVENT_ID, None),
    Case("event_id empty", edit("event_id", ""), R.INVALID_EVENT_ID, None),
    Case("event_id 129", edit("event_id", "e" * 129), R.INVALID_EVENT_ID, None),
    Case("no offset", edit("acquired_at", "2024-05-01T08:30:15"), R.INVALID_TIMESTAMP),
    Case("space separator", edit("acquired_at", "2024-05-01 08:30:15Z"), R.INVALID_TIMESTAMP),
    Case("february 30", edit("acquired_at", "2024-02-30T08:30:15Z"), R.INVALID_TIMESTAMP, schema_rejects=False),
    Case("offset 24h", edit("acquired_at", "2024-05-01T08:30:15+24:00"), R.INVALID_TIMESTAMP, schema_rejects=False),
    Case("offset minutes 60", edit("acquired_at", "2024-05-01T08:30:15+01:60"), R.INVALID_TIMESTAMP,
         schema_rejects=False),
    Case("timestamp number", edit("acquired_at", 1714552215), R.INVALID_FIELD),
    Case("rate 49.9", edit("sampling_rate_hz", 49.9), R.INVALID_SAMPLING_RATE),
    Case("rate 10001", edit("sampling_rate_hz", 10001), R.INVALID_SAMPLING_RATE),
    Case("lead V7x", edit("leads", ["I", "II", "V7x"]), R.UNKNOWN_LEAD),
    Case("lead number", edit("leads", ["I", 2, "V2"]), R.UNKNOWN_LEAD),
    Case("lead non-ascii", edit("leads", ["I", "ІІ", "V2"]), R.UNKNOWN_LEAD),  # Cyrillic І
    Case("duplicate lead", edit("leads", ["I", "II", "I"]), R.DUPLICATE_LEAD),
    Case("duplicate by case", edit("leads", ["I", "II", "ii"]), R.DUPLICATE_LEAD, schema_rejects=False),
    Case("16 leads", edit("leads", list(LEAD_NAMES[:16])), R.TOO_MANY_LEADS),
    Case("n_samples over limit", edit("n_samples", 120_001), R.TOO_MANY_SAMPLES),
    Case("encoding int24", edit("encoding.type", "int24-le-base64"), R.UNKNOWN_ENCODING),
    Case("encoding type number", edit("encoding.type", 16), R.INVALID_FIELD),
    Case("gain zero", edit("encoding.gain_adc_per_mv", [200.0, 0, 1000.0]), R.INVALID_GAIN),
    Case("gain negative", edit("encoding.gain_adc_per_mv", [200.0, -1.0, 1000.0]), R.INVALID_GAIN),
    Case("gain string", edit("encoding.gain_adc_per_mv", [200.0, "400", 1000.0]), R.INVALID_GAIN),
    Case("gain count", edit("encoding.gain_adc_per_mv", [200.0, 400.0]), R.INVALID_GAIN, schema_rejects=False),
    Case("gain underflows float32", edit("encoding.gain_adc_per_mv", [1e-50] * 3), R.INVALID_GAIN,
         schema_rejects=False),
    Case("gain subnormal", edit("encoding.gain_adc_per_mv", [1e-40] * 3), R.INVALID_GAIN, schema_rejects=False),
    Case("gain overflows float32", edit("encoding.gain_adc_per_mv", [1e300] * 3), R.INVALID_GAIN, schema_rejects=False),
    Case("data cut by one", edit_data(lambda data: data[:-1]), R.TRUNCATED_BASE64),
    Case("bad character", edit_data(lambda data: "!" + data[1:]), R.INVALID_BASE64),
    Case("url-safe alphabet", edit_data(lambda data: "-" + data[1:]), R.INVALID_BASE64),
    Case("non-ascii character", edit_data(lambda data: "é" + data[1:]), R.INVALID_BASE64),
    Case("early padding", edit_data(lambda data: "=" + data[1:]), R.INVALID_BASE64),
    Case("data too long", edit_data(lambda data: data + "AAAA"), R.LENGTH_MISMATCH, schema_rejects=False),
    Case("n_samples disagrees", edit("n_samples", 499), R.LENGTH_MISMATCH, schema_rejects=False),
    Case("float32 read as int16 length", edit("n_samples", 1000, float32_doc), R.LENGTH_MISMATCH, schema_rejects=False),
    Case("NaN sample", nan_float32_payload, R.NON_FINITE, schema_rejects=False),
)  # fmt: skip


def test_every_reason_the_codec_can_produce_is_covered() -> None:
    assert {case.reason for case in CASES} == set(DeadLetterReason) - NOT_FROM_CODEC


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_malformed_event_is_rejected_with_its_reason(case: Case) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_event(case.build())
    assert caught.value.reason == case.reason, caught.value.detail
    assert caught.value.event_id == case.event_id
    assert isinstance(caught.value, ECGScreenError)
    assert len(caught.value.detail) < 300


def test_detail_names_the_field_and_rule() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_event(edit("leads", ["I", "II", "III", "V7x"])())
    assert caught.value.detail == "leads[3]='V7x' is not a known lead name"


# --------------------------------------------------------------------------- round trips


def test_int16_event_round_trips_within_quantisation() -> None:
    signal = make_signal(12, 5000)
    gains = np.linspace(200.0, 1000.0, 12)
    payload = encode_event(
        EVENT_ID, "pat-9", ACQUIRED, Source("site-a", "cart-7"), 500, LEADS12, signal,
        gain_adc_per_mv=gains, baseline_adc=list(range(-6, 6)), age_years=61.5, sex="F", pacemaker=True,
    )  # fmt: skip
    event = decode_event(payload)
    assert (event.event_id, event.patient_ref, event.source) == (EVENT_ID, "pat-9", Source("site-a", "cart-7"))
    assert event.acquired_at == ACQUIRED and event.acquired_at.tzinfo is not None
    assert (event.sampling_rate_hz, event.leads, event.n_samples) == (500.0, LEADS12, 5000)
    assert (event.age_years, event.sex, event.pacemaker) == (61.5, Sex.FEMALE, True)
    assert event.signal_mv.dtype == np.float32 and event.signal_mv.flags.c_contiguous
    assert event.signal_mv.flags.writeable
    error = np.abs(event.signal_mv - signal) * gains[:, None]  # in ADC units
    assert error.max() <= 0.5 + 1e-3


def test_int16_rails_match_clipped_samples_exactly() -> None:
    signal = np.array([[0.0, 100.0, -100.0], [0.0, 1.0, -1.0]])
    event = decode_event(encode_event(EVENT_ID, "p", ACQUIRED, Source("s"), 500, ["I", "II"], signal,
                                      gain_adc_per_mv=[1000.0, 200.0], baseline_adc=[10, 0]))  # fmt: skip
    assert event.rails_mv is not None and event.rails_mv.shape == (2, 2)
    np.testing.assert_allclose(event.rails_mv, [[-32.778, 32.757], [-163.84, 163.835]], rtol=1e-6)
    assert event.signal_mv[0, 1] == event.rails_mv[0, 1] and event.signal_mv[0, 2] == event.rails_mv[0, 0]


def test_float32_event_round_trips_exactly() -> None:
    signal = make_signal(3, 500)
    event = decode_event(orjson.dumps(float32_doc(signal)))
    assert event.rails_mv is None
    np.testing.assert_array_equal(event.signal_mv, signal.astype(np.float32))
    assert event.signal_mv.flags.c_contiguous and event.signal_mv.flags.writeable


def test_leads_are_matched_case_insensitively_and_canonicalised() -> None:
    event = decode_event(edit("leads", ["i", "AVR", "v3r"])())
    assert event.leads == ("I", "aVR", "V3R")
    assert orjson.loads(encode_event(EVENT_ID, "p", ACQUIRED, Source("s"), 500, ["avl"], np.zeros((1, 4))))[
        "leads"
    ] == ["aVL"]


def test_every_lead_name_is_accepted() -> None:
    for chunk in (LEAD_NAMES[:15], LEAD_NAMES[15:]):
        signal = np.zeros((len(chunk), 10))
        assert decode_event(encode_event(EVENT_ID, "p", ACQUIRED, Source("s"), 500, chunk, signal)).leads == chunk


def test_offsets_and_optional_fields() -> None:
    doc = with_field(int16_doc(), "acquired_at", "2024-05-01T10:30:15.250123456+02:00")
    for key in ("age_years", "sex", "pacemaker"):
        doc.pop(key)
    doc["source"] = {"site": "site-a"}
    event = decode_event(orjson.dumps(doc))
    assert event.acquired_at == ACQUIRED + timedelta(microseconds=123)
    assert event.acquired_at.utcoffset() == timedelta(hours=2)
    assert (event.age_years, event.sex, event.pacemaker, event.source) == (None, None, None, Source("site-a"))
    assert decode_event(edit("age_years", None)()).age_years is None


def test_integral_float_counts_are_integers() -> None:
    assert decode_event(edit("n_samples", 500.0)()).n_samples == 500


def test_custom_limits_apply() -> None:
    payload = orjson.dumps(int16_doc())
    with pytest.raises(DecodeError) as caught:
        decode_event(payload, Limits(max_leads=2))
    assert caught.value.reason == R.TOO_MANY_LEADS
    with pytest.raises(DecodeError) as caught:
        decode_event(payload, Limits(min_rate_hz=600))
    assert caught.value.reason == R.INVALID_SAMPLING_RATE
    with pytest.raises(DecodeError) as caught:
        decode_event(payload, Limits(max_depth=2))
    assert caught.value.reason == R.NESTING_TOO_DEEP
    assert decode_event(payload, Limits(max_depth=3)).event_id == EVENT_ID


# --------------------------------------------------------------------------- limits before allocation


def _explode(*_: object, **__: object) -> None:
    raise AssertionError("work done before a limit was checked")


def test_oversize_payload_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec.orjson, "loads", _explode)
    with pytest.raises(DecodeError) as caught:
        decode_event(b"{}" * 51, Limits(max_payload_bytes=100))
    assert caught.value.reason == R.PAYLOAD_TOO_LARGE


def test_sample_limit_is_checked_before_the_data_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec.base64, "b64decode", _explode)
    monkeypatch.setattr(codec.np, "frombuffer", _explode)
    doc = with_field(int16_doc(), "n_samples", 10**12)
    doc["data"] = "A" * 4_000_000
    with pytest.raises(DecodeError) as caught:
        decode_event(orjson.dumps(doc))
    assert caught.value.reason == R.TOO_MANY_SAMPLES and caught.value.event_id == EVENT_ID


def test_length_mismatch_is_decided_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec.base64, "b64decode", _explode)
    doc = with_field(int16_doc(), "data", "QUFB" * 1_000_000)
    with pytest.raises(DecodeError) as caught:
        decode_event(orjson.dumps(doc))
    assert caught.value.reason == R.LENGTH_MISMATCH


def test_decode_of_a_standard_event_is_fast() -> None:
    payload = encode_event(EVENT_ID, "p", ACQUIRED, Source("s"), 500, LEADS12, make_signal(12, 5000))
    timings = []
    for _ in range(20):
        start = time.perf_counter()
        decode_event(payload)
        timings.append(time.perf_counter() - start)
    assert sorted(timings)[10] < 0.02  # ~0.6 ms on a laptop; no per-sample Python loops


# --------------------------------------------------------------------------- never raises anything else

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
FIELD_PATHS = (
    "schema", "event_id", "patient_ref", "acquired_at", "source", "source.site", "source.device", "sampling_rate_hz",
    "leads", "n_samples", "encoding", "encoding.type", "encoding.gain_adc_per_mv", "encoding.baseline_adc", "data",
    "age_years", "sex", "pacemaker", "unexpected",
)  # fmt: skip
SMALL_PAYLOAD = orjson.dumps(
    event_to_dict(EVENT_ID, "p", ACQUIRED, Source("s"), 500, ["I", "II"], np.ones((2, 3)), baseline_adc=[1, 2])
)


def _decodes_or_rejects(payload: bytes) -> None:
    try:
        decode_event(payload)
    except DecodeError as err:
        assert isinstance(err.reason, DeadLetterReason)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_decode_error(payload: bytes) -> None:
    _decodes_or_rejects(payload)
    assert peek_event_id(payload) is None or codec._EVENT_ID_RE.fullmatch(peek_event_id(payload) or "")


@settings(max_examples=300)
@given(JSON_VALUES)
def test_arbitrary_json_only_raises_decode_error(value: object) -> None:
    _decodes_or_rejects(orjson.dumps(value))


@settings(max_examples=500)
@given(st.sampled_from(FIELD_PATHS), JSON_VALUES)
def test_mutated_fields_only_raise_decode_error(path: str, value: object) -> None:
    doc = orjson.loads(SMALL_PAYLOAD)
    try:
        mutated = with_field(doc, path, value)
    except (KeyError, TypeError):
        return
    _decodes_or_rejects(orjson.dumps(mutated))


@settings(max_examples=500)
@given(st.lists(st.tuples(st.integers(0, len(SMALL_PAYLOAD) - 1), st.integers(0, 255), st.sampled_from("sid"))))
def test_mutated_bytes_only_raise_decode_error(edits: list[tuple[int, int, str]]) -> None:
    payload = bytearray(SMALL_PAYLOAD)
    for position, byte, kind in edits:
        index = min(position, len(payload) - 1)
        if kind == "s" and payload:
            payload[index] = byte
        elif kind == "i":
            payload.insert(index, byte)
        elif kind == "d" and len(payload) > 1:
            del payload[index]
    _decodes_or_rejects(bytes(payload))
    peek_event_id(bytes(payload))


@settings(max_examples=200)
@given(st.sampled_from([decode_verdict, decode_alert, decode_deadletter]), JSON_VALUES)
def test_output_decoders_only_raise_decode_error(decoder: Callable[[bytes], object], value: object) -> None:
    with contextlib.suppress(DecodeError):
        decoder(orjson.dumps(value))


@settings(max_examples=200)
@given(st.sampled_from(["event_id", "scores", "model", "quality.reasons", "timings_ms", "alert_ids"]), JSON_VALUES)
def test_mutated_verdicts_only_raise_decode_error(path: str, value: object) -> None:
    doc = with_field(orjson.loads(encode_verdict(make_verdict())), path, value)
    with contextlib.suppress(DecodeError):
        decode_verdict(orjson.dumps(doc))


def test_non_bytes_payload_is_rejected_not_crashed() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_event(None)  # type: ignore[arg-type]  # a Kafka tombstone
    assert caught.value.reason == R.INVALID_JSON
    assert peek_event_id(None) is None  # type: ignore[arg-type]


# --------------------------------------------------------------------------- encoder guards


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"signal": np.zeros((2, 4))}, "shape"),
        ({"signal": np.full((3, 4), np.nan)}, "NaN"),
        ({"acquired_at": datetime(2024, 1, 1)}, "timezone"),
        ({"leads": ["I", "II", "Q"]}, "unknown_lead"),
        ({"sampling_rate_hz": 20}, "invalid_sampling_rate"),
        ({"gain_adc_per_mv": [1.0, 2.0]}, "one per lead"),
        ({"gain_adc_per_mv": -5.0}, "invalid_gain"),
        ({"baseline_adc": [0.5, 0, 0]}, "integers"),
        ({"encoding": "int8"}, "encoding"),
        ({"encoding": Encoding.FLOAT32_LE_BASE64, "baseline_adc": 0}, "int16"),
        ({"encoding": Encoding.FLOAT32_LE_BASE64, "signal": np.full((3, 4), 1e39)}, "float32"),
    ],
)
def test_encode_event_refuses_what_would_not_decode(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "event_id": EVENT_ID, "patient_ref": "p", "acquired_at": ACQUIRED, "source": Source("s"),
        "sampling_rate_hz": 500, "leads": LEADS3, "signal": np.zeros((3, 4)),
    }  # fmt: skip
    with pytest.raises(EncodeError, match=message):
        encode_event(**(args | kwargs))


def test_int16_encoding_clips_at_the_adc_limits() -> None:
    payload = encode_event(EVENT_ID, "p", ACQUIRED, Source("s"), 500, ["I"], np.array([[1e6, -1e6, 0.0]]))
    adc = np.frombuffer(base64.b64decode(orjson.loads(payload)["data"]), "<i2")
    assert adc.tolist() == [32767, -32768, 0]


# --------------------------------------------------------------------------- timestamps


def test_timestamps_are_utc_milliseconds_with_z() -> None:
    moment = datetime(2024, 5, 1, 10, 30, 15, 250_999, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(moment) == "2024-05-01T08:30:15.250Z"
    assert format_timestamp(datetime(5, 1, 2, tzinfo=UTC)) == "0005-01-02T00:00:00.000Z"
    assert parse_timestamp("2024-05-01t08:30:15z") == datetime(2024, 5, 1, 8, 30, 15, tzinfo=UTC)
    assert parse_timestamp("2024-05-01T08:30:15-05:30").utcoffset() == -timedelta(hours=5, minutes=30)
    for bad in ("2024-05-01T08:30:15.Z", "2024-05-01T08:30:60Z", "２０２４-05-01T08:30:15Z", "2024-05-01T08:30:15Z\n"):
        with pytest.raises(DecodeError):
            parse_timestamp(bad)


# --------------------------------------------------------------------------- outputs

MODEL = ModelRef("ecgclip", "0.3.1", "ab" * 32, trained=False)
QUALITY = Quality(QualityStatus.DEGRADED, ("baseline_wander",), ("V2",))
LATER = ACQUIRED + timedelta(seconds=3, milliseconds=17)


def make_verdict() -> Verdict:
    return Verdict(
        event_id=EVENT_ID, patient_ref="pat-9", site="site-a", acquired_at=ACQUIRED, model=MODEL, quality=QUALITY,
        scores={"lvsd": 0.91, "afib": 0.0, "hcm": 1}, alert_ids=("alr-1",), timings_ms={"decode": 0.4, "infer": 12.0},
        processed_at=LATER, masked_leads=("V2",),
    )  # fmt: skip


def make_alert() -> Alert:
    return Alert(
        alert_id="alr-1", event_id=EVENT_ID, patient_ref="pat-9", site="site-a",
        task=TaskRef("lvsd", "LV systolic dysfunction", TaskGroup.ECHO), score=0.91, threshold=0.5,
        priority=Priority.URGENT, model=MODEL, quality=QUALITY, acquired_at=ACQUIRED, created_at=LATER,
        flags=("untrained_model",),
    )  # fmt: skip


def make_letter() -> DeadLetter:
    return DeadLetter(
        reason=R.UNKNOWN_LEAD, detail="leads[3]='V7x' is not a known lead name", topic="ecg.events", partition=3,
        offset=1234, event_id=EVENT_ID, payload_b64=base64.b64encode(b'{"x": 1}').decode(), payload_bytes=8,
        payload_truncated=False, created_at=LATER, extra={"worker": "w1"},
    )  # fmt: skip


def test_verdict_round_trips() -> None:
    payload = encode_verdict(make_verdict())
    assert orjson.loads(payload)["schema"] == "ecg.verdict/v1"
    assert orjson.loads(payload)["processed_at"] == "2024-05-01T08:30:18.267Z"
    assert decode_verdict(payload) == make_verdict()


def test_alert_round_trips() -> None:
    assert decode_alert(encode_alert(make_alert())) == make_alert()


def test_deadletter_round_trips() -> None:
    letter = make_letter()
    assert decode_deadletter(encode_deadletter(letter)) == letter
    nameless = DeadLetter(**{**_fields(letter), "event_id": None, "payload_b64": "", "partition": -1})
    assert decode_deadletter(encode_deadletter(nameless)) == nameless


def test_numpy_scores_are_plain_numbers_on_the_wire() -> None:
    verdict = make_verdict()
    numpy_verdict = Verdict(**{**_fields(verdict), "scores": {"lvsd": np.float32(0.25)}})
    assert orjson.loads(encode_verdict(numpy_verdict))["scores"] == {"lvsd": 0.25}


def _fields(obj: object) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scores": {"lvsd": float("nan")}}, "finite"),
        ({"timings_ms": {"infer": 10**400}}, "finite"),
        ({"scores": {"lvsd": 1.5}}, "outside"),
        ({"processed_at": datetime(2024, 1, 1)}, "timezone"),
        ({"event_id": "bad id"}, "invalid_event_id"),
        ({"alert_ids": ("a", 3)}, "alert_ids"),
        ({"quality": Quality("fine")}, "quality.status"),  # type: ignore[arg-type]
    ],
)
def test_encode_verdict_refuses_what_would_not_decode(change: dict[str, Any], message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        encode_verdict(Verdict(**{**_fields(make_verdict()), **change}))


@pytest.mark.parametrize(
    ("decoder", "payload", "reason"),
    [
        (decode_verdict, b"{", R.INVALID_JSON),
        (decode_verdict, b"[]", R.NOT_AN_OBJECT),
        (decode_verdict, b'{"schema": "ecg.alert/v1"}', R.UNSUPPORTED_SCHEMA),
        (decode_verdict, b'{"schema": "ecg.verdict/v1"}', R.MISSING_FIELD),
        (decode_alert, b'{"schema": "ecg.alert/v1", "bogus": 1}', R.UNKNOWN_FIELD),
        (decode_deadletter, b'{"event_id": "x"}', R.MISSING_FIELD),
    ],
)
def test_output_decoders_reject_bad_input(decoder: Callable[[bytes], object], payload: bytes, reason: R) -> None:
    with pytest.raises(DecodeError) as caught:
        decoder(payload)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("priority", "asap", R.INVALID_FIELD),
        ("score", "0.9", R.INVALID_FIELD),
        ("task.group", "cardio", R.INVALID_FIELD),
        ("created_at", "yesterday", R.INVALID_TIMESTAMP),
        ("quality.extra", 1, R.UNKNOWN_FIELD),
        ("model.trained", DELETE, R.MISSING_FIELD),
    ],
)
def test_alert_decoder_is_strict(path: str, value: object, reason: R) -> None:
    doc = with_field(orjson.loads(encode_alert(make_alert())), path, value)
    with pytest.raises(DecodeError) as caught:
        decode_alert(orjson.dumps(doc))
    assert caught.value.reason == reason


def test_deadletter_decoder_checks_reason_and_excerpt() -> None:
    doc = orjson.loads(encode_deadletter(make_letter()))
    for path, value, reason in (("reason", "gremlins", R.INVALID_FIELD), ("payload_b64", "abc", R.INVALID_BASE64)):
        with pytest.raises(DecodeError) as caught:
            decode_deadletter(orjson.dumps(with_field(doc, path, value)))
        assert caught.value.reason == reason


# --------------------------------------------------------------------------- dead letters


def test_make_deadletter_truncates_the_payload_excerpt() -> None:
    payload = b'{"event_id": "evt-9", "pad": "' + b"x" * 10_000 + b'"}'
    err = DecodeError(R.INVALID_FIELD, "pad is not allowed", event_id="evt-9")
    letter = make_deadletter(err, payload, "ecg.events", 2, 77, Limits(payload_excerpt_bytes=4096))
    assert base64.b64decode(letter.payload_b64) == payload[:4096]
    assert (letter.payload_bytes, letter.payload_truncated) == (len(payload), True)
    assert (letter.reason, letter.event_id, letter.topic, letter.partition, letter.offset) == (
        R.INVALID_FIELD, "evt-9", "ecg.events", 2, 77,
    )  # fmt: skip
    assert letter.created_at.tzinfo is not None
    assert decode_deadletter(encode_deadletter(letter)) == letter


def test_make_deadletter_keeps_small_payloads_whole() -> None:
    letter = make_deadletter(DecodeError(R.INVALID_JSON, "x"), b"{oops", "t", 0, 0)
    assert (base64.b64decode(letter.payload_b64), letter.payload_truncated, letter.payload_bytes) == (
        b"{oops",
        False,
        5,
    )


def test_make_deadletter_from_a_real_decode_failure() -> None:
    payload = edit("leads", ["I", "II", "Q"])()
    with pytest.raises(DecodeError) as caught:
        decode_event(payload)
    letter = make_deadletter(caught.value, payload, "ecg.events", 0, 5)
    assert (letter.reason, letter.event_id) == (R.UNKNOWN_LEAD, EVENT_ID)
    assert "leads[2]" in letter.detail


def test_make_deadletter_peeks_when_the_error_has_no_id() -> None:
    payload = b'{"event_id": "evt-7", "schema": "ecg.event/v1", "broken": '
    letter = make_deadletter(DecodeError(R.INVALID_JSON, "eof"), payload, "t", 0, 0)
    assert letter.event_id == "evt-7"


def test_make_deadletter_for_other_errors() -> None:
    conflict = make_deadletter(ECGScreenError("event_id_conflict", "same id, different payload"), b"{}", "t", 0, 0)
    assert conflict.reason == R.EVENT_ID_CONFLICT
    other = make_deadletter(ECGScreenError("bundle_invalid", "weights missing"), b"{}", "t", 0, 0)
    assert other.reason == R.PROCESSING_FAILED and other.extra["error_reason"] == "bundle_invalid"
    crash = make_deadletter(RuntimeError("CUDA OOM"), None, "t", 0, 0, extra={"worker": "w1"})
    assert crash.reason == R.PROCESSING_FAILED and crash.detail == "RuntimeError: CUDA OOM"
    assert crash.extra == {"error_type": "RuntimeError", "worker": "w1"} and crash.payload_bytes == 0


def test_peek_event_id() -> None:
    assert peek_event_id(orjson.dumps(int16_doc())) == EVENT_ID
    assert peek_event_id(b'{"event_id": "has space"}') is None
    assert peek_event_id(b'{"source": {"event_id": "nested"}}') is None
    assert peek_event_id(b'[{"event_id": "e1"}]') is None
    assert peek_event_id(b'{"event_id": "e1", ') == "e1"
    assert peek_event_id(b'{"note": "\\"event_id\\": \\"e2\\"", ') is None
    assert peek_event_id(b'{"event_id": "e3", "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}') == "e3"


# --------------------------------------------------------------------------- misc


def test_decode_error_contract() -> None:
    err = DecodeError(R.UNKNOWN_LEAD, "leads[0]='Q' is not a known lead name", event_id="e1")
    assert err.reason == R.UNKNOWN_LEAD == "unknown_lead" and err.reason is R.UNKNOWN_LEAD
    assert str(err) == "unknown_lead: leads[0]='Q' is not a known lead name"
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.reason, clone.detail, clone.event_id) == (err.reason, err.detail, err.event_id)


def test_load_json_schema() -> None:
    for name in ("ecg.event/v1", "ecg.event.v1", "ecg.event.v1.json"):
        assert load_json_schema(name)["$id"] == "https://ecgscreen.example/schemas/ecg.event.v1.json"
    with pytest.raises(ECGScreenError):
        load_json_schema("../errors")


def test_alert_with_explanation_and_expected_ppv_round_trips() -> None:
    from jsonschema import Draft202012Validator

    from schemas.codec import decode_alert, encode_alert, load_json_schema
    from schemas.messages import (
        Alert,
        Explanation,
        ModelRef,
        Priority,
        Quality,
        QualityStatus,
        TaskGroup,
        TaskRef,
        Window,
    )

    when = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    alert = Alert(alert_id="al_1", event_id="e-1", patient_ref="p-1", site="s", task=TaskRef("ecg.afib", "AF",
                  TaskGroup.ECG), score=0.9, threshold=0.5, priority=Priority.HIGH, model=ModelRef("m", "1", "0" * 64,
                  True), quality=Quality(QualityStatus.PASS), acquired_at=when, created_at=when, expected_ppv=0.25,
                  explanation=Explanation("gradient_x_input", ("II", "V1"), (Window("II", 1.5, 2.0, 0.4),)))
    payload = encode_alert(alert)
    Draft202012Validator(load_json_schema("ecg.alert/v1")).validate(orjson.loads(payload))
    assert decode_alert(payload) == alert
