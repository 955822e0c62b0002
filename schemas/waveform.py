"""``ecg.waveform/v1``: the signal behind an alert, kept as it was received.

The worker stores one blob per alerting event so that a reviewer sees the ECG the
model saw. The samples are the event's own bytes (int16 with its gains and
baselines, or float32), not a resampled or filtered copy: what the page draws is
what the hospital sent. Layout: one JSON header line, ``\\n``, then the
lead-major little-endian samples::

    {"schema": "ecg.waveform/v1", "event_id": ..., "leads": [...], "sampling_rate_hz": ...,
     "n_samples": ..., "encoding": {...as in the event...}, "age_years": ..., "sex": ..., "pacemaker": ...}

Age, sex and pacemaker travel with the signal because a reader of an ECG needs
them and the alert does not carry them; the patient reference stays in the alert.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from schemas.codec import decode_event
from schemas.errors import ECGScreenError
from schemas.messages import Encoding, Sex

WAVEFORM_SCHEMA = "ecg.waveform/v1"
_DTYPE = {Encoding.INT16_LE_BASE64: "<i2", Encoding.FLOAT32_LE_BASE64: "<f4"}


class WaveformError(ECGScreenError):
    def __init__(self, detail: str) -> None:
        super().__init__("invalid_waveform", detail)


@dataclass(frozen=True, slots=True, eq=False)
class Waveform:
    event_id: str
    leads: tuple[str, ...]
    sampling_rate_hz: float
    encoding: Encoding
    samples: np.ndarray  # (L, N) int16 or float32, as received
    gain_adc_per_mv: np.ndarray | None = None
    baseline_adc: np.ndarray | None = None
    age_years: float | None = None
    sex: Sex | None = None
    pacemaker: bool | None = None

    @property
    def signal_mv(self) -> np.ndarray:
        """(L, N) float32 mV, by the same float32 steps as :func:`schemas.codec.decode_event`."""
        signal = self.samples.astype(np.float32)
        if self.gain_adc_per_mv is not None and self.baseline_adc is not None:
            signal -= self.baseline_adc[:, None]
            signal /= self.gain_adc_per_mv[:, None]
        return signal


def pack_waveform(payload: bytes) -> bytes:
    """The blob for a valid ``ecg.event/v1`` payload (leads canonical, samples untouched)."""
    event = decode_event(payload)  # the one validator; it also canonicalises lead names
    doc = orjson.loads(payload)
    header = {"schema": WAVEFORM_SCHEMA, "event_id": event.event_id, "leads": list(event.leads),
              "sampling_rate_hz": event.sampling_rate_hz, "n_samples": event.n_samples,
              "encoding": doc["encoding"], "age_years": event.age_years,
              "sex": None if event.sex is None else event.sex.value, "pacemaker": event.pacemaker}
    return orjson.dumps(header) + b"\n" + base64.b64decode(doc["data"])


def unpack_waveform(blob: bytes) -> Waveform:
    head, sep, raw = blob.partition(b"\n")
    try:
        h: dict[str, Any] = orjson.loads(head)
        encoding = Encoding(h["encoding"]["type"])
        leads, n = tuple(h["leads"]), int(h["n_samples"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise WaveformError("the header is not an ecg.waveform/v1 header") from None
    size = len(leads) * n * np.dtype(_DTYPE[encoding]).itemsize
    if not sep or h.get("schema") != WAVEFORM_SCHEMA or len(raw) != size:
        raise WaveformError(f"expected {WAVEFORM_SCHEMA} with {len(leads)} x {n} samples")
    samples = np.frombuffer(raw, dtype=_DTYPE[encoding]).reshape(len(leads), n)
    gain = baseline = None
    if encoding is Encoding.INT16_LE_BASE64:
        gain = np.asarray(h["encoding"]["gain_adc_per_mv"], dtype=np.float64).astype(np.float32)
        baseline = np.asarray(h["encoding"].get("baseline_adc", [0] * len(leads)), dtype=np.float32)
    sex = h.get("sex")
    return Waveform(event_id=str(h.get("event_id", "")), leads=leads, sampling_rate_hz=float(h["sampling_rate_hz"]),
                    encoding=encoding, samples=samples, gain_adc_per_mv=gain, baseline_adc=baseline,
                    age_years=h.get("age_years"), sex=None if sex is None else Sex(sex), pacemaker=h.get("pacemaker"))
