"""HL7 v3 annotated ECG (FDA aECG): the RHYTHM series' first sequence set.

A sequence set holds one time sequence (``TIME_ABSOLUTE`` or ``TIME_RELATIVE``: head and
increment) and one ``SLIST_PQ`` per lead (``MDC_ECG_LEAD_*`` code, origin + scale * digits).
Representative beats (derived series) are ignored. Interpretation statements are annotations.
"""

from __future__ import annotations

import re
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

ROOT = "AnnotatedECG"
_TIME_UNITS_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_AMPLITUDE_UV = {"uv": 1.0, "mv": 1000.0, "v": 1e6}
_MAX_DIGITS_CHARS = 24 * 1024 * 1024


def read_aecg(root: Element) -> VendorECG:
    if root.tag != ROOT:
        raise IntakeError(IntakeReason.WRONG_DOCUMENT, f"root element is <{root.tag}>, not <{ROOT}>")
    series = _rhythm_series(root)
    seq_set = need(series, "component/sequenceSet", "sequenceSet")
    fs, start = _time(seq_set)
    labels, signal, gain = _leads(seq_set)
    leads, signal, gain, warnings = keep_known_leads(labels, signal, gain)
    subject = root.find(".//trialSubject")
    person = None if subject is None else subject.find("subjectDemographicPerson")
    gender = person.find("administrativeGenderCode") if person is not None else None
    acquired = start or _hl7_time(_low(root))
    return VendorECG(
        format=VendorFormat.AECG, version="HL7 v3 aECG", fs=fs, leads=leads, signal_mv=signal,
        gain_adc_per_mv=gain, acquired_at=acquired, age_years=_age(person, acquired),
        patient_id=_subject_id(subject),
        sex=sex_of(gender.get("code", "") if gender is not None else ""),
        device=text_of(series, ".//manufacturedSeriesDevice/manufacturerModelName")[:128] or None,
        statements=_statements(root), warnings=warnings,
    )


def _code(el: Element) -> str:
    code = el.find("code")
    return "" if code is None else code.get("code", "")


def _subject_id(subject: Element | None) -> str | None:
    ident = None if subject is None else subject.find("id")
    return (ident.get("extension") or ident.get("root")) if ident is not None else None


def _rhythm_series(root: Element) -> Element:
    for series in root.findall("component/series"):
        code = series.find("code")
        if code is not None and code.get("code") == "RHYTHM":
            return series
    raise IntakeError(IntakeReason.MISSING_ELEMENT, "no RHYTHM <series> (representative beats alone are no ECG)")


def _time(seq_set: Element) -> tuple[float, datetime | None]:
    for seq in seq_set.findall("component/sequence"):
        code = seq.find("code")
        kind = "" if code is None else code.get("code", "")
        if kind in ("TIME_ABSOLUTE", "TIME_RELATIVE"):
            inc = need(seq, "value/increment", "increment")
            step = positive(inc.get("value"), "time increment") * _TIME_UNITS_S.get(inc.get("unit", "s"), np.nan)
            if not np.isfinite(step):
                raise IntakeError(IntakeReason.UNSUPPORTED_ENCODING, f"time unit {inc.get('unit')!r}")
            head = seq.find("value/head")
            start = _hl7_time(head.get("value", "")) if kind == "TIME_ABSOLUTE" and head is not None else None
            return 1.0 / step, start
    raise IntakeError(IntakeReason.MISSING_ELEMENT, "no TIME_ABSOLUTE/TIME_RELATIVE sequence")


def _leads(seq_set: Element) -> tuple[list[str], np.ndarray, np.ndarray]:
    labels, rows, gains = [], [], []
    for seq in seq_set.findall("component/sequence"):
        code = _code(seq)
        if not code.startswith("MDC_ECG_LEAD_"):
            continue
        value = need(seq, "value", "value")
        scale, origin = need(value, "scale"), value.find("origin")
        uv_per = positive(scale.get("value"), f"{code} scale") * _unit(scale)
        origin_uv = 0.0 if origin is None else number(origin.get("value", "0"), f"{code} origin") * _unit(origin)
        digits = _digits(text_of(value, "digits"), code)
        rows.append((origin_uv + digits * uv_per) / 1000.0)
        gains.append(1000.0 / uv_per)
        labels.append(code.removeprefix("MDC_ECG_LEAD_"))
    if not rows:
        raise IntakeError(IntakeReason.MISSING_ELEMENT, "the sequence set has no MDC_ECG_LEAD_* sequence")
    if len({len(r) for r in rows}) != 1:
        raise IntakeError(IntakeReason.CORRUPT_WAVEFORM, "leads differ in sample count")
    return labels, np.stack(rows), np.asarray(gains)


def _unit(el: Element) -> float:
    factor = _AMPLITUDE_UV.get(el.get("unit", "uV").lower())
    if factor is None:
        raise IntakeError(IntakeReason.UNSUPPORTED_ENCODING, f"amplitude unit {el.get('unit', '')[:12]!r}")
    return factor


def _digits(text: str, code: str) -> np.ndarray:
    if len(text) > _MAX_DIGITS_CHARS:
        raise IntakeError(IntakeReason.FILE_TOO_LARGE, f"{code}: digits too long")
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise IntakeError(IntakeReason.CORRUPT_WAVEFORM, f"{code}: digits are not integers") from None
    if values.size == 0:
        raise IntakeError(IntakeReason.CORRUPT_WAVEFORM, f"{code}: no samples")
    return values


def _age(person: Element | None, acquired: datetime | None) -> float | None:
    """Whole years from birthTime (YYYYMMDD...) to the acquisition date."""
    birth = None if person is None else person.find("birthTime")
    raw = "" if birth is None else birth.get("value", "")
    if acquired is None or len(raw) < 8 or not raw[:8].isdigit():
        return None
    try:
        born = datetime.strptime(raw[:8], "%Y%m%d").date()
    except ValueError:
        return None
    day = acquired.date()
    return age_of(str(day.year - born.year - ((day.month, day.day) < (born.month, born.day))))


def _low(root: Element) -> str:
    low = root.find("effectiveTime/low")
    return "" if low is None else low.get("value", "")


def _hl7_time(value: str) -> datetime | None:
    """HL7 TS (YYYYMMDDHHMMSS[.fff][+ZZZZ]); a zone offset is kept, otherwise local time."""
    match = re.fullmatch(r"(\d{14})(?:\.\d+)?([+-]\d{4})?", value.strip())
    if not match:
        return None
    try:
        zone = match.group(2) or ""
        return datetime.strptime(match.group(1) + zone, "%Y%m%d%H%M%S" + ("%z" if zone else ""))
    except ValueError:
        return None


def _statements(root: Element) -> tuple[str, ...]:
    out = []
    for ann in root.iter("annotation"):
        code = ann.find("code")
        if code is not None and code.get("code") == "MDC_ECG_INTERPRETATION_STATEMENT":
            text = " ".join(text_of(ann, "value").split()).strip(" ,")
            if text:
                out.append(text)
    return tuple(out)
