"""Philips SierraECG / PhilipsECG XML 1.03, 1.04, 1.04.01, 1.04.02 (PageWriter, HeartStart, IntelliSpace).

Waveforms are base64, either plain int16 or XLI-compressed (LZW + second differences, one chunk
per lead), decoded by the ``sierraecg`` package's codec. XLI files store III, aVR, aVL, aVF as
residuals of their Einthoven/Goldberger estimates; they are reconstructed here as the package's
own reader does (for plain int16 too), but in int64 where it uses int16, which can overflow.
Amplitude is ``resolution`` uV per unit.
"""

from __future__ import annotations

import base64
import binascii
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
)

ROOT = "restingecgdata"
VERSIONS = ("1.03", "1.04", "1.04.01", "1.04.02")
_STD12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def read_philips(root: Element) -> VendorECG:
    if root.tag != ROOT:
        raise IntakeError(IntakeReason.WRONG_DOCUMENT, f"root element is <{root.tag}>, not a SierraECG <{ROOT}>")
    version = _version(root)
    signal_info = need(root, "dataacquisition/signalcharacteristics", "signalcharacteristics")
    waves = need(root, "waveforms/parsedwaveforms", "parsedwaveforms")
    fs = positive(waves.get("samplespersecond") or text_of(signal_info, "samplingrate"), "sampling rate")
    uv = positive(waves.get("resolution") or text_of(signal_info, "resolution")
                  or text_of(signal_info, "signalresolution"), "resolution")
    labels = _labels(waves, signal_info)
    units = _decode(waves, labels, fs)
    gain = np.full(len(labels), 1000.0 / uv)
    leads, signal, gain, warnings = keep_known_leads(labels, units * uv / 1000.0, gain)
    patient = root.find("patient/generalpatientdata")
    return VendorECG(
        format=VendorFormat.PHILIPS, version=version, fs=fs, leads=leads, signal_mv=signal,
        gain_adc_per_mv=gain, acquired_at=_acquired(root.find("dataacquisition")),
        patient_id=text_of(patient, "patientid") or None, age_years=_age(patient),
        sex=sex_of(text_of(patient, "sex")), pacemaker=_paced(patient),
        device=text_of(root, "dataacquisition/machine")[:128] or None, statements=_statements(root),
        warnings=warnings,
    )


def _version(root: Element) -> str:
    kind, version = text_of(root, "documentinfo/documenttype"), text_of(root, "documentinfo/documentversion")
    if kind not in ("SierraECG", "PhilipsECG") or version not in VERSIONS:
        raise IntakeError(IntakeReason.UNSUPPORTED_VERSION,
                          f"{kind[:20] or '?'} {version[:12] or '?'}; supported: {', '.join(VERSIONS)}")
    return version


def _labels(waves: Element, signal_info: Element) -> list[str]:
    named = (waves.get("leadlabels") or "").split()
    if named:
        return named[: int(number(waves.get("numberofleads") or len(named), "numberofleads"))]
    count = int(number(text_of(signal_info, "numberchannelsvalid") or text_of(signal_info, "numberchannelsallocated")
                       or "12", "number of channels"))
    if count > len(_STD12):
        raise IntakeError(IntakeReason.UNSUPPORTED_ENCODING, f"{count} channels without lead labels")
    return list(_STD12[:count])


def _decode(waves: Element, labels: list[str], fs: float) -> np.ndarray:
    if (waves.get("dataencoding") or "Base64") != "Base64":
        raise IntakeError(IntakeReason.UNSUPPORTED_ENCODING, f"waveform encoding {waves.get('dataencoding')!r}")
    try:
        data = base64.b64decode("".join((waves.text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        raise IntakeError(IntakeReason.CORRUPT_WAVEFORM, "parsedwaveforms is not base64") from None
    method = waves.get("compressmethod") or waves.get("compression") or "Uncompressed"
    n = round(number(waves.get("durationperchannel") or 0, "durationperchannel") * fs / 1000)
    if method == "XLI":
        return _reconstruct(_xli(data, len(labels), n), labels)
    if method != "Uncompressed":
        raise IntakeError(IntakeReason.UNSUPPORTED_ENCODING, f"waveform compression {method[:20]!r}")
    if n <= 0 or len(data) != 2 * n * len(labels):
        raise IntakeError(IntakeReason.CORRUPT_WAVEFORM, f"{len(data)} bytes for {len(labels)} leads x {n} samples")
    return _reconstruct(np.frombuffer(data, dtype="<i2").reshape(len(labels), n).astype(np.int64), labels)


def _xli(data: bytes, n_leads: int, n: int) -> np.ndarray:
    try:
        from sierraecg.xli import xli_decode
    except ImportError:
        raise IntakeError(IntakeReason.MISSING_LIBRARY, "XLI needs the sierraecg package") from None
    try:
        chunks = xli_decode(data, [""] * n_leads)
    except (IndexError, ValueError, OverflowError) as exc:
        raise IntakeError(IntakeReason.CORRUPT_WAVEFORM, f"XLI data does not decode: {type(exc).__name__}") from None
    chunks = chunks[:n_leads]  # PageWriters append spare channels beyond the labelled leads
    if len(chunks) != n_leads or any(len(c) < n for c in chunks) or n <= 0:
        raise IntakeError(IntakeReason.CORRUPT_WAVEFORM,
                          f"XLI holds {len(chunks)} leads of {sorted({len(c) for c in chunks})} samples; "
                          f"the header says {n_leads} x {n}")
    return np.stack([np.asarray(c[:n], dtype=np.int64) for c in chunks])


def _reconstruct(x: np.ndarray, labels: list[str]) -> np.ndarray:
    """SierraECG stores III, aVR, aVL, aVF as residuals against estimates from I and II (the vendor's scheme)."""
    if [canon.lower() for canon in labels[:6]] != [s.lower() for s in _STD12[:6]]:
        return x
    lead_i, lead_ii = x[0], x[1]
    x = x.copy()
    x[2] = lead_ii - lead_i - x[2]
    x[3] = -x[3] - np.floor_divide(lead_i + lead_ii, 2)
    x[4] = np.floor_divide(lead_i - x[2], 2) - x[4]
    x[5] = np.floor_divide(lead_ii + x[2], 2) - x[5]
    return x


def _acquired(acq: Element | None) -> datetime | None:
    if acq is None:
        return None
    try:
        return datetime.strptime(f"{acq.get('date', '')} {acq.get('time', '')}", "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None


def _age(patient: Element | None) -> float | None:
    age = None if patient is None else patient.find("age")
    if age is None:
        return None
    for unit in ("years", "months", "weeks", "days", "hours"):
        if text_of(age, unit):
            return age_of(text_of(age, unit), unit)
    return None


def _paced(patient: Element | None) -> bool | None:
    status = text_of(patient, "pacestatus").lower()
    return {"paced": True, "pacemaker": True, "notpaced": False, "not paced": False}.get(status)


def _statements(root: Element) -> tuple[str, ...]:
    out: list[str] = []
    for interp in root.iter("interpretation"):
        for st in interp.iter("statement"):  # 1.03
            out.append(" ".join(filter(None, (text_of(st, "leftstatement"), text_of(st, "rightstatement")))))
        for st in interp.iter("unparsedstatement"):  # 1.04
            out.append(" ".join(filter(None, (text_of(st, "lhsstatement"), text_of(st, "rhsstatement")))))
        severity = text_of(interp, "severity")
        if severity:
            out.append(severity)
    return tuple(s for s in out if s)
