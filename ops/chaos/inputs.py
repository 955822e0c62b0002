"""Hostile input: one payload per codec dead-letter reason, absurd sizes, a canary, a NaN model.

Each poison carries the outcome it must get, written down here independently of the
decoder: ``deadletter:<reason>``, or ``reject`` for a signal that decodes but that the
quality gate must refuse (all-zero).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from schemas.codec import LEAD_NAMES
from schemas.messages import DeadLetterReason as R

TEN_MIB = 10 * 1024 * 1024
# Not reachable from an event's content alone: a reused id, a stage failure, a model's NaN output.
NOT_FROM_PAYLOAD = frozenset({"event_id_conflict", "processing_failed", "non_finite_output"})


@dataclass(frozen=True, slots=True)
class Poison:
    kind: str
    payload: bytes
    expected: str  # "deadletter:<reason>" or "reject"


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, "<f4").tobytes()).decode()


def catalogue(valid: bytes, tag: str) -> list[Poison]:
    """Every dead-letter reason the codec can give, plus the absurd inputs of the issue."""
    doc: dict[str, Any] = orjson.loads(valid)
    n_leads, n = len(doc["leads"]), doc["n_samples"]

    def ev(kind: str, **changes: object) -> bytes:
        return orjson.dumps({**doc, "event_id": f"{tag}-{kind}", **changes})

    def f32(arr: np.ndarray) -> dict[str, object]:
        return {"encoding": {"type": "float32-le-base64"}, "data": _b64(arr)}

    def without(kind: str, key: str) -> bytes:
        return orjson.dumps({k: v for k, v in orjson.loads(ev(kind)).items() if k != key})

    nan, inf = np.zeros((n_leads, n), np.float32), np.zeros((n_leads, n), np.float32)
    nan[3, 17], inf[5, 400] = np.nan, np.inf
    out = [
        ("payload_10mib", ev("big", data="A" * TEN_MIB), R.PAYLOAD_TOO_LARGE),
        ("invalid_json", ev("json")[:-25], R.INVALID_JSON),
        ("nesting", ev("deep", source={"site": "s", "device": [[[["x"]]]]}), R.NESTING_TOO_DEEP),
        ("not_an_object", b"[1, 2, 3]", R.NOT_AN_OBJECT),
        ("schema_v9", ev("schema", schema="ecg.event/v9"), R.UNSUPPORTED_SCHEMA),
        ("no_patient", without("nopat", "patient_ref"), R.MISSING_FIELD),
        ("unknown_field", ev("extra", shoe_size=44), R.UNKNOWN_FIELD),
        ("rate_string", ev("ratestr", sampling_rate_hz="fast"), R.INVALID_FIELD),
        ("event_id_slash", orjson.dumps({**doc, "event_id": f"{tag}/bad id"}), R.INVALID_EVENT_ID),
        ("timestamp", ev("ts", acquired_at="yesterday at noon"), R.INVALID_TIMESTAMP),
        ("rate_0", ev("rate0", sampling_rate_hz=0), R.INVALID_SAMPLING_RATE),
        ("unknown_lead", ev("lead", leads=["I", "II", "V7x", *doc["leads"][3:]]), R.UNKNOWN_LEAD),
        ("duplicate_lead", ev("duplead", leads=["I", "I", *doc["leads"][2:]]), R.DUPLICATE_LEAD),
        ("leads_200", ev("leads200", leads=[LEAD_NAMES[i % len(LEAD_NAMES)] for i in range(200)]),
         R.TOO_MANY_LEADS),
        ("n_samples_1e9", ev("huge", n_samples=10**9), R.TOO_MANY_SAMPLES),
        ("encoding", ev("enc", encoding={"type": "int24-be-hex"}), R.UNKNOWN_ENCODING),
        ("gain_zero", ev("gain", encoding={**doc["encoding"], "gain_adc_per_mv": [0.0] * n_leads}), R.INVALID_GAIN),
        ("base64_cut", ev("trunc", data=doc["data"][:-3]), R.TRUNCATED_BASE64),
        ("base64_char", ev("b64", data="!" + doc["data"][1:]), R.INVALID_BASE64),
        ("length", ev("short", data=doc["data"][: len(doc["data"]) // 8 * 4]), R.LENGTH_MISMATCH),
        ("nan_samples", ev("nan", **f32(nan)), R.NON_FINITE),
        ("inf_samples", ev("inf", **f32(inf)), R.NON_FINITE),
    ]
    poisons = [Poison(kind, payload, f"deadletter:{reason.value}") for kind, payload, reason in out]
    poisons.append(Poison("all_zero", ev("zero", **f32(np.zeros((n_leads, n), np.float32))), "reject"))
    return poisons


def conflict_of(valid: bytes) -> Poison:
    """The same event id with different content, to be sent after the original."""
    doc = orjson.loads(valid)
    return Poison("id_conflict", orjson.dumps({**doc, "age_years": 33}), f"deadletter:{R.EVENT_ID_CONFLICT.value}")


def covered_reasons(poisons: list[Poison]) -> set[str]:
    return {p.expected.split(":", 1)[1] for p in poisons if p.expected.startswith("deadletter:")}


# --------------------------------------------------------------------------- canary

CANARY_PATIENT = "CANARY-PT-5f3a9c"
CANARY_VALUE = np.float32(3.7218401)  # a waveform value no other sample has


def canary_payloads(valid: bytes, tag: str) -> list[tuple[str, bytes]]:
    """A canary patient with canary waveform values, clean and in each way the worker reports on."""
    doc = orjson.loads(valid)
    n_leads, n = len(doc["leads"]), doc["n_samples"]
    signal = _signal_of(doc)
    signal[:, 200:240] = CANARY_VALUE
    clean = {**doc, "patient_ref": CANARY_PATIENT, "encoding": {"type": "float32-le-base64"}, "data": _b64(signal)}
    nan = signal.copy()
    nan[2, 300] = np.nan

    def ev(kind: str, **changes: object) -> bytes:
        return orjson.dumps({**clean, "event_id": f"{tag}-{kind}", **changes})

    return [
        ("clean", ev("clean")),
        ("nan_samples", ev("nan", data=_b64(nan))),
        ("unknown_lead", ev("lead", leads=["I", "II", "V7x", *doc["leads"][3:]])),
        ("patient_too_long", ev("longpat", patient_ref=CANARY_PATIENT * 5)),
        ("patient_number", ev("numpat", patient_ref=int(CANARY_VALUE * 1e7))),
        ("length", ev("short", data=_b64(signal)[: n_leads * n])),
        ("all_zero", ev("zero", data=_b64(np.zeros_like(signal)))),
    ]


def canary_needles(valid: bytes) -> list[str]:
    """What must not appear in logs, metrics or dead-letter details."""
    doc = orjson.loads(valid)
    signal = _signal_of(doc)
    signal[:, 200:240] = CANARY_VALUE
    data = _b64(signal)
    return [CANARY_PATIENT, f"{float(CANARY_VALUE):.5f}"[:6], str(int(CANARY_VALUE * 1e7)), data[1072:1104]]


def _signal_of(doc: dict[str, Any]) -> np.ndarray:
    from schemas.codec import decode_event

    return decode_event(orjson.dumps(doc)).signal_mv.astype(np.float32).copy()


# --------------------------------------------------------------------------- a model that returns NaN


def nan_bundle(source: Path, path: Path) -> Path:
    """A copy of ``source`` whose finite weights overflow: projection x1e30, heads x1e30, so the
    logits are inf - inf = NaN (an fp16 engine overflowing does the same). It loads fine."""
    import torch

    from models.bundle import load_bundle, save_bundle

    if (path / "bundle.json").exists():
        return path
    bundle = load_bundle(source)
    with torch.no_grad():
        bundle.model.proj.weight.mul_(1e30)
        bundle.model.heads.weight.mul_(1e30)
    save_bundle(path, bundle.config, bundle.model, overwrite=True)
    return path
