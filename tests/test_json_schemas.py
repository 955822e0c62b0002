"""The JSON Schema documents in schemas/json/ agree with what schemas.codec emits and accepts."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from jsonschema import Draft202012Validator

from schemas.codec import (
    JSON_SCHEMA_NAMES,
    LEAD_NAMES,
    DecodeError,
    decode_event,
    encode_alert,
    encode_deadletter,
    encode_event,
    encode_verdict,
    load_json_schema,
    make_deadletter,
)
from schemas.messages import DeadLetterReason, Encoding, Source
from tests.test_codec import (
    ACQUIRED,
    CASES,
    LEADS12,
    Case,
    edit,
    float32_doc,
    int16_doc,
    make_alert,
    make_letter,
    make_signal,
    make_verdict,
    with_field,
)


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_json_schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def assert_valid(name: str, payload: bytes) -> None:
    errors = [error.message for error in validator(name).iter_errors(orjson.loads(payload))]
    assert errors == []


@pytest.mark.parametrize("name", JSON_SCHEMA_NAMES)
def test_documents_are_valid_draft_2020_12(name: str) -> None:
    document = load_json_schema(name)
    Draft202012Validator.check_schema(document)
    assert document["$id"] == f"https://ecgscreen.example/schemas/{name}.json"
    assert document["additionalProperties"] is False
    assert document["properties"]["schema"]["const"] == name.replace(".v1", "/v1")


def test_encoded_events_validate() -> None:
    assert_valid("ecg.event.v1", orjson.dumps(int16_doc()))
    assert_valid("ecg.event.v1", orjson.dumps(float32_doc()))
    big = encode_event("e1", "p", ACQUIRED, Source("s"), 500, LEADS12, make_signal(12, 5000))
    assert_valid("ecg.event.v1", big)


def test_event_schema_accepts_every_lead_spelling_the_codec_accepts() -> None:
    check = validator("ecg.event.v1")
    for name in LEAD_NAMES:
        for spelling in (name, name.lower(), name.upper()):
            doc = with_field(
                int16_doc(), "leads", [spelling, "II", "V2"] if name not in ("II", "V2") else ["I", spelling, "V6"]
            )
            assert check.is_valid(doc), spelling
            decode_event(orjson.dumps(doc))
    for wrong in ("IV", "aVX", "V10", "V0", "V6R", "W", "I ", " I", "", "ІІ"):
        assert not check.is_valid(with_field(int16_doc(), "leads", [wrong, "II", "V2"])), wrong


def test_optional_event_fields_validate() -> None:
    check = validator("ecg.event.v1")
    doc = int16_doc()
    for key in ("age_years", "sex", "pacemaker"):
        doc.pop(key)
    doc["source"] = {"site": "s"}
    assert check.is_valid(doc)
    assert check.is_valid(with_field(doc, "age_years", None))
    assert check.is_valid(with_field(doc, "n_samples", 500.0))


@pytest.mark.parametrize("case", [case for case in CASES if case.schema_rejects], ids=lambda case: case.name)
def test_schema_rejects_what_the_codec_rejects(case: Case) -> None:
    payload = case.build()
    try:
        document: Any = orjson.loads(payload)
    except orjson.JSONDecodeError:
        pytest.skip("not JSON: nothing for a schema to see")
    assert not validator("ecg.event.v1").is_valid(document)


def test_rules_the_schema_cannot_express_are_listed_in_its_description() -> None:
    description = load_json_schema("ecg.event.v1")["description"]
    for rule in ("4 MiB", "nesting", "case-insensitive", "one entry per lead", "finite", "decodes to exactly"):
        assert rule in description


def test_encoded_verdict_validates() -> None:
    assert_valid("ecg.verdict.v1", encode_verdict(make_verdict()))


def test_encoded_alert_validates() -> None:
    assert_valid("ecg.alert.v1", encode_alert(make_alert()))


def test_encoded_deadletters_validate() -> None:
    assert_valid("ecg.deadletter.v1", encode_deadletter(make_letter()))
    payload = edit("leads", ["I", "II", "Q"])()
    with pytest.raises(DecodeError) as caught:
        decode_event(payload)
    letter = make_deadletter(caught.value, payload, "ecg.events", 0, 9)
    assert_valid("ecg.deadletter.v1", encode_deadletter(letter))
    crash = make_deadletter(RuntimeError("boom"), b"\x00" * 9000, "ecg.events", -1, -1)
    assert_valid("ecg.deadletter.v1", encode_deadletter(crash))


def test_deadletter_reason_enum_is_every_reason() -> None:
    reasons = load_json_schema("ecg.deadletter.v1")["properties"]["reason"]["enum"]
    assert reasons == [reason.value for reason in DeadLetterReason]


@pytest.mark.parametrize(
    ("name", "make", "path", "value"),
    [
        ("ecg.verdict.v1", encode_verdict, "scores.lvsd", 1.5),
        ("ecg.verdict.v1", encode_verdict, "quality.status", "fine"),
        ("ecg.verdict.v1", encode_verdict, "model.trained", "no"),
        ("ecg.verdict.v1", encode_verdict, "timings_ms.infer", -1),
        ("ecg.verdict.v1", encode_verdict, "processed_at", "2024-05-01 08:30:15"),
        ("ecg.alert.v1", encode_alert, "priority", "asap"),
        ("ecg.alert.v1", encode_alert, "task.group", "cardio"),
        ("ecg.alert.v1", encode_alert, "extra", 1),
        ("ecg.deadletter.v1", encode_deadletter, "reason", "gremlins"),
        ("ecg.deadletter.v1", encode_deadletter, "event_id", "bad id"),
        ("ecg.deadletter.v1", encode_deadletter, "payload_b64", "abc"),
    ],
)
def test_invalid_output_documents_are_rejected(name: str, make: Any, path: str, value: object) -> None:
    sources = {encode_verdict: make_verdict, encode_alert: make_alert, encode_deadletter: make_letter}
    document = with_field(orjson.loads(make(sources[make]())), path, value)
    assert not validator(name).is_valid(document)


def test_float32_encoding_refuses_gains_in_schema_too() -> None:
    doc = with_field(float32_doc(), "encoding", {"type": Encoding.FLOAT32_LE_BASE64.value, "gain_adc_per_mv": [1.0]})
    assert not validator("ecg.event.v1").is_valid(doc)
    assert validator("ecg.event.v1").is_valid(float32_doc(np.zeros((3, 2))))
