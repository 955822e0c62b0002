"""GE MUSE RestingECG XML: the Rhythm waveform, base64 little-endian int16 per ``LeadData``.

MUSE stores eight independent leads (I, II, V1-V6); III, aVR, aVL, aVF are derived exactly
(Einthoven, Goldberger). The Median waveform is a representative beat, not a recording, and is
ignored. Each lead's CRC-32 is checked when present, its byte and sample counts always.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from datetime import datetime
from xml.etree.ElementTree import Element

import numpy as np

from schemas.vendor._common import (
    IntakeError,
    IntakeReason,
    VendorECG,
    VendorFormat,
    age_of,
    keep_known_leads,
    need,
    number,
    positive,
    sex_of,
    text_of,
    with_derived_limb_leads,
)

ROOT = "RestingECG"
_UNITS_UV = {"MICROVOLTS": 1.0, "MILLIVOLTS": 1000.0}
# Overreader lines name people or dates; they are not the machine's reading of the ECG.
_NOT_INTERPRETATION = re.compile(r"confirmed by|compared with|referred by|\d{1,2}-[A-Z]{3}-\d{4}", re.I)


def read_muse(root: Element) -> VendorECG:
    if root.tag != ROOT:
        raise IntakeError(IntakeReason.WRONG_DOCUMENT, f"root element is <{root.tag}>, not <{ROOT}>")
    rhythm = _rhythm_waveform(root)
    fs = positive(text_of(rhythm, "SampleBase"), "SampleBase") * 10 ** number(
        text_of(rhythm, "SampleExponent") or "0", "SampleExponent")
    labels, units, uv = _lead_data(rhythm)
    leads, signal, gain = with_derived_limb_leads(tuple(labels), units, uv)
    leads, signal, gain, warnings = keep_known_leads(list(leads), signal, gain)
    demo = root.find("PatientDemographics")
    test = root.find("TestDemographics")
    return VendorECG(
        format=VendorFormat.MUSE, version=text_of(root, "MuseInfo/MuseVersion") or "unknown", fs=fs,
        leads=leads, signal_mv=signal, gain_adc_per_mv=gain, acquired_at=_acquired(test),
        patient_id=text_of(demo, "PatientID") or None,
        age_years=age_of(text_of(demo, "PatientAge"), text_of(demo, "AgeUnits") or "years"),
        sex=sex_of(text_of(demo, "Gender")), device=text_of(test, "AcquisitionDevice")[:128] or None,
        statements=_statements(root), warnings=warnings,
    )


def _rhythm_waveform(root: Element) -> Element:
    for wf in root.iter("Waveform"):
        if text_of(wf, "WaveformType").lower() == "rhythm":
            return wf
    raise IntakeError(IntakeReason.MISSING_ELEMENT, "no <Waveform> of type Rhythm (a Median beat alone is no ECG)")


def _lead_data(rhythm: Element) -> tuple[list[str], np.ndarray, float]:
    labels, rows, scales = [], [], set()
    for ld in rhythm.iter("LeadData"):
        label = text_of(ld, "LeadID")
        rows.append(_samples(ld, label))
        labels.append(label)
        unit = text_of(ld, "LeadAmplitudeUnits").upper() or "MICROVOLTS"
        if unit not in _UNITS_UV:
            raise IntakeError(IntakeReason.UNSUPPORTED_ENCODING, f"lead {label}: amplitude unit {unit[:20]!r}")
        scales.add(positive(text_of(ld, "LeadAmplitudeUnitsPerBit"), f"lead {label} units per bit") * _UNITS_UV[unit])
    if not rows:
        raise IntakeError(IntakeReason.MISSING_ELEMENT, "the Rhythm waveform has no <LeadData>")
    if len({len(r) for r in rows}) != 1 or len(scales) != 1:
        raise IntakeError(IntakeReason.CORRUPT_WAVEFORM, "leads differ in sample count or amplitude scale")
    return labels, np.stack(rows), scales.pop()


def _samples(ld: Element, label: str) -> np.ndarray:
    size = text_of(ld, "LeadSampleSize") or "2"
    if size != "2":
        raise IntakeError(IntakeReason.UNSUPPORTED_ENCODING, f"lead {label}: {size[:8]}-byte samples (only 2)")
    try:
        raw = base64.b64decode(text_of(need(ld, "WaveFormData")), validate=False)
    except (binascii.Error, ValueError):
        raise IntakeError(IntakeReason.CORRUPT_WAVEFORM, f"lead {label}: WaveFormData is not base64") from None
    _check_counts(ld, label, raw)
    return np.frombuffer(raw, dtype="<i2").astype(np.int64)


def _check_counts(ld: Element, label: str, raw: bytes) -> None:
    n_bytes, n_samples, crc = (text_of(ld, t) for t in ("LeadByteCountTotal", "LeadSampleCountTotal", "LeadDataCRC32"))
    if len(raw) % 2 or (n_bytes and int(number(n_bytes, "LeadByteCountTotal")) != len(raw)):
        raise IntakeError(IntakeReason.CORRUPT_WAVEFORM, f"lead {label}: {len(raw)} bytes, header says {n_bytes}")
    if n_samples and int(number(n_samples, "LeadSampleCountTotal")) != len(raw) // 2:
        detail = f"lead {label}: {len(raw) // 2} samples, header says {n_samples}"
        raise IntakeError(IntakeReason.CORRUPT_WAVEFORM, detail)
    if crc and int(number(crc, "LeadDataCRC32")) != zlib.crc32(raw):
        raise IntakeError(IntakeReason.CORRUPT_WAVEFORM, f"lead {label}: CRC-32 mismatch")


def _acquired(test: Element | None) -> datetime | None:
    date, time = text_of(test, "AcquisitionDate"), text_of(test, "AcquisitionTime")
    for fmt in ("%m-%d-%Y %H:%M:%S", "%m/%d/%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(f"{date} {time or '00:00:00'}", fmt)
        except ValueError:
            continue
    return None


def _statements(root: Element) -> tuple[str, ...]:
    """The machine's reading (OriginalDiagnosis when the overreader edited it), minus overreader lines."""
    diagnosis = root.find("OriginalDiagnosis")
    if diagnosis is None:
        diagnosis = root.find("Diagnosis")
    if diagnosis is None:
        return ()
    lines = [text_of(s, "StmtText") for s in diagnosis.iter("DiagnosisStatement")]
    return tuple(line for line in lines if line and not _NOT_INTERPRETATION.search(line))
