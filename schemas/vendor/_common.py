"""What every vendor adapter shares: its error type, the decoded form, lead names, safe XML.

An adapter turns one vendor file into a :class:`VendorECG` (signal in mV plus the few header
fields an event carries) and nothing else; :mod:`schemas.vendor.events` turns that into
validated ``ecg.event/v1`` payloads. Raw patient identifiers live only inside a VendorECG and
never reach an event, a log line or an error detail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from xml.etree.ElementTree import Element

import numpy as np

from schemas.codec import LEAD_NAMES
from schemas.errors import ECGScreenError
from schemas.messages import Sex

MAX_FILE_BYTES = 32 * 1024 * 1024  # a 12-lead resting ECG export is well under 2 MiB


class VendorFormat(StrEnum):
    MUSE = "muse"
    PHILIPS = "philips"
    AECG = "aecg"
    DICOM = "dicom"
    SCP = "scp"
    WFDB = "wfdb"


class IntakeReason(StrEnum):
    """Why a vendor file was refused. Stable: quarantine records and scripts switch on these."""

    UNREADABLE = "unreadable"
    FILE_TOO_LARGE = "file_too_large"
    UNKNOWN_FORMAT = "unknown_format"
    UNSAFE_XML = "unsafe_xml"
    MALFORMED_XML = "malformed_xml"
    WRONG_DOCUMENT = "wrong_document"
    UNSUPPORTED_VERSION = "unsupported_version"
    MISSING_ELEMENT = "missing_element"
    INVALID_VALUE = "invalid_value"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    CORRUPT_WAVEFORM = "corrupt_waveform"
    NO_KNOWN_LEADS = "no_known_leads"
    INVALID_HEADER = "invalid_header"
    MISSING_LIBRARY = "missing_library"
    EVENT_INVALID = "event_invalid"
    CONVERSION_FAILED = "conversion_failed"  # an adapter failed in a way it did not foresee (a bug to fix)


class IntakeError(ECGScreenError):
    """A vendor file could not be turned into events; ``reason`` is an :class:`IntakeReason`."""

    reason: IntakeReason

    def __init__(self, reason: IntakeReason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason


@dataclass(frozen=True, slots=True, eq=False)
class VendorECG:
    """One decoded vendor ECG. ``signal_mv`` is (L, N) float64 mV; ``gain_adc_per_mv`` (L,) is the
    source's own quantum (1 / mV per unit), so an int16 event carries its samples exactly.

    ``patient_id`` is the raw identifier from the file: only :func:`schemas.vendor.events.patient_ref`
    may read it. ``statements`` are the machine's interpretation, for the report manifest only.
    """

    format: VendorFormat
    version: str
    fs: float
    leads: tuple[str, ...]
    signal_mv: np.ndarray
    gain_adc_per_mv: np.ndarray
    acquired_at: datetime | None = None
    patient_id: str | None = field(default=None, repr=False)
    age_years: float | None = None
    sex: Sex | None = None
    pacemaker: bool | None = None
    device: str | None = None
    statements: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------- lead names

# Names that vendors and WFDB headers use for the leads ecg.event/v1 knows (matched case-insensitively).
# One table for every adapter; README's intake section lists it.
LEAD_ALIASES: dict[str, str] = {
    "mli": "I", "mlii": "II", "mliii": "III", "d1": "I", "d2": "II", "d3": "III",
    "-avr": "", "avr": "aVR", "avl": "aVL", "avf": "aVF",
    "vx": "X", "vy": "Y", "vz": "Z", "v7": "V7", "v8": "V8", "v9": "V9",
    "v3r": "V3R", "v4r": "V4R", "v5r": "V5R",
}  # fmt: skip
# SCP-ECG lead numbers (EN 1064 table), shared by DICOM's SCPECG and MDC (2:N) channel codes.
SCP_LEAD_NUMBERS: dict[int, str] = {
    1: "I", 2: "II", 3: "V1", 4: "V2", 5: "V3", 6: "V4", 7: "V5", 8: "V6", 9: "V7", 11: "V3R", 12: "V4R",
    13: "V5R", 16: "X", 17: "Y", 18: "Z", 61: "III", 62: "aVR", 63: "aVL", 64: "aVF", 66: "V8", 67: "V9",
}  # fmt: skip
_KNOWN = {name.lower(): name for name in LEAD_NAMES}


def canonical_lead(name: str) -> str | None:
    """The ecg.event/v1 name for a vendor lead label, or None when it names no known lead."""
    key = re.sub(r"\s+", " ", name.strip()).lower().removeprefix("lead ")  # "Lead II" as DICOM labels it
    return LEAD_ALIASES.get(key, _KNOWN.get(key)) or None


def keep_known_leads(
    labels: list[str], signal: np.ndarray, gain: np.ndarray
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, tuple[str, ...]]:
    """Drop leads with unknown or repeated names (a warning each); refuse when none is left."""
    keep, names, warnings = [], [], []
    for i, label in enumerate(labels):
        name = canonical_lead(label)
        if name is None or name in names:
            warnings.append(f"dropped lead {label!r} ({'unknown name' if name is None else 'repeated'})")
            continue
        keep.append(i)
        names.append(name)
    if not keep:
        raise IntakeError(IntakeReason.NO_KNOWN_LEADS, f"none of the leads {labels[:16]} is a known lead name")
    return tuple(names), signal[keep], gain[keep], tuple(warnings)


def with_derived_limb_leads(
    leads: tuple[str, ...], units: np.ndarray, uv_per_unit: float
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Add III, aVR, aVL, aVF from I and II (Einthoven, Goldberger) where absent, exactly.

    ``units`` are integer samples at ``uv_per_unit``. Goldberger's leads need half steps, so all
    leads are returned at twice the resolution: every derived sample is then an integer and the
    identities hold exactly in the event's int16 samples, not just to float rounding.
    """
    if "I" not in leads or "II" not in leads:
        gain = np.full(len(leads), 1000.0 / uv_per_unit)
        return leads, units * uv_per_unit / 1000.0, gain
    doubled = units.astype(np.int64) * 2
    lead_i, lead_ii = doubled[leads.index("I")], doubled[leads.index("II")]
    derived = {"III": lead_ii - lead_i, "aVR": -(lead_i + lead_ii) // 2,
               "aVL": lead_i - lead_ii // 2, "aVF": lead_ii - lead_i // 2}
    extra = [name for name in ("III", "aVR", "aVL", "aVF") if name not in leads]
    out = np.concatenate([doubled, np.array([derived[n] for n in extra]).reshape(len(extra), -1)])
    names = _standard_order((*leads, *extra))
    order = [(*leads, *extra).index(n) for n in names]
    half_uv = uv_per_unit / 2.0
    return names, out[order] * half_uv / 1000.0, np.full(len(names), 1000.0 / half_uv)


def _standard_order(names: tuple[str, ...]) -> tuple[str, ...]:
    rank = {name: i for i, name in enumerate(LEAD_NAMES)}
    return tuple(sorted(names, key=lambda n: rank.get(n, len(rank))))


# --------------------------------------------------------------------------- XML


def parse_xml(data: bytes) -> Element:
    """Parse untrusted XML: size-checked before parsing, no entities, no external references.

    Namespaces are stripped from tags (vendors differ in them, never in the local names that
    matter). The encoding comes from the BOM or the declaration (UTF-16 Philips, Latin-1 MUSE).
    """
    import defusedxml
    import defusedxml.ElementTree as SafeET

    if len(data) > MAX_FILE_BYTES:
        raise IntakeError(IntakeReason.FILE_TOO_LARGE, f"{len(data)} bytes; the limit is {MAX_FILE_BYTES}")
    try:
        root = SafeET.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        raise IntakeError(IntakeReason.UNSAFE_XML, f"refused: {type(exc).__name__}") from None
    except SafeET.ParseError as exc:
        raise IntakeError(IntakeReason.MALFORMED_XML, str(exc)) from None
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.rsplit("}", 1)[1]
    return root


def xml_root_name(data: bytes) -> str | None:
    """The local name of the root element, from the first 4 KiB, without parsing the document."""
    head = data[:4096]
    text = head.decode("utf-16" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else "latin-1", errors="ignore")
    text = re.sub(r"<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>]*>", "", text, flags=re.S)
    match = re.search(r"<\s*(?:[A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)", text)
    return match.group(1) if match else None


def need(el: Element, path: str, what: str | None = None) -> Element:
    found = el.find(path)
    if found is None:
        raise IntakeError(IntakeReason.MISSING_ELEMENT, f"no <{what or path}> element")
    return found


def text_of(el: Element | None, path: str = ".") -> str:
    found = None if el is None else el.find(path)
    return (found.text or "").strip() if found is not None else ""


def number(raw: Any, what: str) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise IntakeError(IntakeReason.INVALID_VALUE, f"{what}={str(raw)[:40]!r} is not a number") from None
    if not np.isfinite(value):
        raise IntakeError(IntakeReason.INVALID_VALUE, f"{what} is not finite")
    return value


def positive(raw: Any, what: str) -> float:
    value = number(raw, what)
    if value <= 0:
        raise IntakeError(IntakeReason.INVALID_VALUE, f"{what}={value:g} must be positive")
    return value


def sex_of(raw: str) -> Sex | None:
    key = raw.strip().lower()
    return {"m": Sex.MALE, "male": Sex.MALE, "f": Sex.FEMALE, "female": Sex.FEMALE}.get(key)


def age_of(raw: str, unit: str = "years") -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    scale = {"years": 1.0, "y": 1.0, "months": 1 / 12, "m": 1 / 12, "weeks": 7 / 365.25, "w": 7 / 365.25,
             "days": 1 / 365.25, "d": 1 / 365.25, "hours": 1 / 8766, "h": 1 / 8766}.get(unit.strip().lower())
    if scale is None or not 0 <= value * scale <= 130:
        return None
    return round(value * scale, 3)
