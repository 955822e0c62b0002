"""DICOM waveforms (12-lead, general ECG, ambulatory ECG storage) read with pydicom.

The first multiplex group labelled RHYTHM (else the first group that is not a median beat) is
the recording. Channels are named from their Channel Source code (SCPECG ``5.6.3-9-N`` or MDC
``2:N``, both with the SCP-ECG lead numbers) and scaled by pydicom's ``waveform_array``
(sensitivity x correction factor, baseline) from the channel's units to mV.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import numpy as np

from schemas.vendor._common import (
    SCP_LEAD_NUMBERS,
    IntakeError,
    IntakeReason,
    VendorECG,
    VendorFormat,
    age_of,
    keep_known_leads,
    sex_of,
)

ECG_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG",
    "1.2.840.10008.5.1.4.1.1.9.1.2": "general ECG",
    "1.2.840.10008.5.1.4.1.1.9.1.3": "ambulatory ECG",
}
_UNITS_TO_MV = {"uv": 1e-3, "mv": 1.0, "v": 1e3}


def read_dicom(data: bytes) -> VendorECG:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise IntakeError(IntakeReason.MISSING_LIBRARY, "DICOM needs the pydicom package") from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError) as exc:
        raise IntakeError(IntakeReason.CORRUPT_WAVEFORM, f"not a readable DICOM file: {type(exc).__name__}") from None
    sop = str(ds.get("SOPClassUID", ""))
    if sop not in ECG_SOP_CLASSES:
        raise IntakeError(IntakeReason.WRONG_DOCUMENT, f"SOP class {sop[:64] or '?'} is not an ECG waveform")
    index, group = _rhythm_group(ds)
    try:
        array = np.asarray(ds.waveform_array(index), dtype=np.float64).T  # (channels, samples)
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise IntakeError(IntakeReason.CORRUPT_WAVEFORM, f"waveform data does not decode: {exc}"[:200]) from None
    labels, to_mv, gain = _channels(group)
    leads, signal, gain, warnings = keep_known_leads(labels, array * to_mv[:, None], gain)
    return VendorECG(
        format=VendorFormat.DICOM, version=ECG_SOP_CLASSES[sop], fs=float(group.SamplingFrequency),
        leads=leads, signal_mv=signal, gain_adc_per_mv=gain, acquired_at=_acquired(ds),
        patient_id=str(ds.get("PatientID", "")).strip() or None,
        age_years=_age(str(ds.get("PatientAge", ""))), sex=sex_of(str(ds.get("PatientSex", ""))),
        device=str(ds.get("ManufacturerModelName", "")).strip()[:128] or None,
        statements=_statements(ds), warnings=warnings,
    )


def _rhythm_group(ds: Any) -> tuple[int, Any]:
    groups = list(ds.get("WaveformSequence", []))
    labels = [str(g.get("MultiplexGroupLabel", "")).upper() for g in groups]
    for i, label in enumerate(labels):
        if label == "RHYTHM":
            return i, groups[i]
    for i, label in enumerate(labels):
        if "MEDIAN" not in label and "BEAT" not in label:
            return i, groups[i]
    raise IntakeError(IntakeReason.MISSING_ELEMENT, "no rhythm multiplex group in WaveformSequence")


def _channels(group: Any) -> tuple[list[str], np.ndarray, np.ndarray]:
    labels, to_mv, gain = [], [], []
    for ch in group.ChannelDefinitionSequence:
        labels.append(_lead_name(ch))
        units = ch.get("ChannelSensitivityUnitsSequence")
        unit = str(units[0].CodeValue) if units else "uV"
        factor = _UNITS_TO_MV.get(unit.lower())
        if factor is None:
            raise IntakeError(IntakeReason.UNSUPPORTED_ENCODING, f"channel sensitivity unit {unit[:12]!r}")
        step = float(ch.get("ChannelSensitivity", 1.0)) * float(ch.get("ChannelSensitivityCorrectionFactor", 1.0))
        to_mv.append(factor)
        gain.append(1.0 / (abs(step) * factor) if step else 1000.0)
    return labels, np.asarray(to_mv), np.asarray(gain)


def _lead_name(ch: Any) -> str:
    source = ch.get("ChannelSourceSequence")
    if not source:
        return str(ch.get("ChannelLabel", "?"))
    code, meaning = str(source[0].get("CodeValue", "")), str(source[0].get("CodeMeaning", ""))
    number = code.rsplit("-", 1)[-1] if code.startswith("5.6.3-9-") else code.removeprefix("2:")
    if number.isdigit() and int(number) in SCP_LEAD_NUMBERS:
        return SCP_LEAD_NUMBERS[int(number)]
    return meaning.split("(")[0].strip() or code


def _acquired(ds: Any) -> datetime | None:
    stamp = str(ds.get("AcquisitionDateTime", "")).split(".")[0].split("+")[0].split("-")[0]
    if len(stamp) < 14:
        stamp = str(ds.get("ContentDate", "")) + str(ds.get("ContentTime", "")).split(".")[0]
    try:
        return datetime.strptime(stamp[:14], "%Y%m%d%H%M%S")
    except ValueError:
        return None


def _age(raw: str) -> float | None:
    raw = raw.strip()  # DICOM AS: nnnD / nnnW / nnnM / nnnY
    return age_of(raw[:-1], raw[-1:]) if len(raw) == 4 else None


def _statements(ds: Any) -> tuple[str, ...]:
    out = []
    for ann in ds.get("WaveformAnnotationSequence", []):
        text = str(ann.get("UnformattedTextValue", "")).strip()
        if text:
            out.append(text)
    return tuple(out)
