"""Vendor file -> validated ``ecg.event/v1`` payloads: format sniffing, windows, ids, privacy.

* The event id derives from the SHA-256 of the file's bytes (and the window index), so the same
  file converted twice, anywhere, yields the same ids and the same payloads.
* ``patient_ref`` is HMAC-SHA256 of the file's patient ID under the site's secret: stable per
  site, not reversible without the secret, and never the raw identifier. Names, free text and
  the file's own identifiers go nowhere; interpretation statements only to the report manifest.
* Records longer than ``window_s`` become consecutive windows (a trailing partial window is
  dropped when at least one full window exists); shorter ones are one event.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from pathlib import Path

from schemas.codec import EncodeError, encode_event
from schemas.messages import Source
from schemas.vendor._common import (
    MAX_FILE_BYTES,
    IntakeError,
    IntakeReason,
    VendorECG,
    VendorFormat,
    parse_xml,
    xml_root_name,
)


class FormatChoice(StrEnum):
    AUTO = "auto"
    MUSE = "muse"
    PHILIPS = "philips"
    AECG = "aecg"
    DICOM = "dicom"
    SCP = "scp"
    WFDB = "wfdb"


_XML_ROOTS = {"RestingECG": VendorFormat.MUSE, "restingecgdata": VendorFormat.PHILIPS,
              "AnnotatedECG": VendorFormat.AECG}
UNIDENTIFIED = "unidentified"  # patient_ref of a file without a patient ID


@dataclass(frozen=True, slots=True)
class IntakeContext:
    """Where converted events come from and how they are keyed."""

    site: str
    secret: bytes  # the site's patient_ref key (settings: ECGSCREEN_INTAKE_SECRETS)
    window_s: float = 10.0
    timezone: tzinfo = UTC  # of vendor timestamps that carry no offset
    feed: str = "intake"
    undated: datetime | None = None  # acquisition time of files without one; None refuses them


@dataclass(frozen=True, slots=True)
class ConvertedEvent:
    event_id: str
    payload: bytes
    statements: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Conversion:
    """All events of one file, with what the adapter had to say about it."""

    format: VendorFormat
    version: str
    sha256: str
    events: tuple[ConvertedEvent, ...]
    warnings: tuple[str, ...]


def read_bytes(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """A file's bytes, refused before reading when it exceeds ``limit``."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise IntakeError(IntakeReason.FILE_TOO_LARGE, f"{size} bytes; the limit is {limit}")
        return path.read_bytes()
    except OSError as exc:
        raise IntakeError(IntakeReason.UNREADABLE, exc.strerror or type(exc).__name__) from None


def sniff(data: bytes, name: str = "") -> VendorFormat:
    """The vendor format of a file from its first bytes (and, for WFDB only, its name)."""
    if data[128:132] == b"DICM":
        return VendorFormat.DICOM
    if name.lower().endswith(".hea"):
        return VendorFormat.WFDB
    root = xml_root_name(data) if data.lstrip(b"\xef\xbb\xbf\xff\xfe\x00 \t\r\n")[:1] in (b"<",) else None
    if root in _XML_ROOTS:
        return _XML_ROOTS[root]
    from schemas.vendor.scp import looks_like_scp

    if looks_like_scp(data):
        return VendorFormat.SCP
    found = f"an XML document with root <{root}>" if root else "no known signature"
    raise IntakeError(IntakeReason.UNKNOWN_FORMAT, f"{found} (MUSE, Philips, aECG, DICOM, SCP-ECG or WFDB .hea)")


def decode_file(path: Path, choice: FormatChoice = FormatChoice.AUTO) -> tuple[VendorECG, str]:
    """Decode one file into a :class:`VendorECG` and the SHA-256 of its bytes (all of a WFDB record's)."""
    if choice is FormatChoice.WFDB or (choice is FormatChoice.AUTO and path.suffix.lower() == ".hea"):
        from schemas.vendor.wfdb import read_wfdb, record_files

        digest = hashlib.sha256()
        parts = record_files(path)
        for part in parts:
            digest.update(read_bytes(part))
        return _dated(read_wfdb(path), parts[0]), digest.hexdigest()
    data = read_bytes(path)
    return decode_bytes(data, choice, path.name), hashlib.sha256(data).hexdigest()


def _dated(ecg: VendorECG, header: Path) -> VendorECG:
    """Research WFDB records often carry no base date; their header's mtime stands in (stable per copy)."""
    if ecg.acquired_at is not None:
        return ecg
    when = datetime.fromtimestamp(header.stat().st_mtime, UTC).replace(microsecond=0)
    note = "no base date/time in the header: acquisition time taken from the header file's mtime"
    return replace(ecg, acquired_at=when, warnings=(*ecg.warnings, note))


def decode_bytes(data: bytes, choice: FormatChoice = FormatChoice.AUTO, name: str = "") -> VendorECG:
    fmt = sniff(data, name) if choice is FormatChoice.AUTO else VendorFormat(choice.value)
    return _READERS[fmt](data)


def _muse(data: bytes) -> VendorECG:
    from schemas.vendor.muse import read_muse

    return read_muse(parse_xml(data))


def _philips(data: bytes) -> VendorECG:
    from schemas.vendor.philips import read_philips

    return read_philips(parse_xml(data))


def _aecg(data: bytes) -> VendorECG:
    from schemas.vendor.aecg import read_aecg

    return read_aecg(parse_xml(data))


def _dicom(data: bytes) -> VendorECG:
    from schemas.vendor.dicom import read_dicom

    return read_dicom(data)


def _scp(data: bytes) -> VendorECG:
    from schemas.vendor.scp import read_scp

    return read_scp(data)


def _wfdb_bytes(data: bytes) -> VendorECG:
    raise IntakeError(IntakeReason.UNKNOWN_FORMAT, "a WFDB record is read from its .hea path, not from bytes")


_READERS: dict[VendorFormat, Callable[[bytes], VendorECG]] = {
    VendorFormat.MUSE: _muse, VendorFormat.PHILIPS: _philips, VendorFormat.AECG: _aecg,
    VendorFormat.DICOM: _dicom, VendorFormat.SCP: _scp, VendorFormat.WFDB: _wfdb_bytes,
}


def patient_ref(patient_id: str | None, site: str, secret: bytes) -> str:
    """HMAC-SHA256(secret, site NUL id), 32 hex digits; the same patient at one site maps to one ref."""
    if not patient_id or not patient_id.strip():
        return UNIDENTIFIED
    mac = hmac.new(secret, f"{site}\x00{patient_id.strip()}".encode(), hashlib.sha256)
    return f"pr-{mac.hexdigest()[:32]}"


def convert_file(path: Path, ctx: IntakeContext, choice: FormatChoice = FormatChoice.AUTO) -> Conversion:
    ecg, digest = decode_file(path, choice)
    return to_events(ecg, digest, ctx)


def to_events(ecg: VendorECG, sha256: str, ctx: IntakeContext) -> Conversion:
    """The validated ``ecg.event/v1`` payloads of one decoded file (one per window)."""
    ref = patient_ref(ecg.patient_id, ctx.site, ctx.secret)
    start = _aware(ecg.acquired_at or ctx.undated, ctx.timezone)
    events = []
    for k, (lo, hi) in enumerate(windows(ecg.signal_mv.shape[1], ecg.fs, ctx.window_s)):
        event_id = f"{ecg.format.value}-{sha256[:40]}-{k}"
        try:
            payload = encode_event(
                event_id, ref, start + timedelta(seconds=lo / ecg.fs), Source(ctx.site, ecg.device, ctx.feed),
                ecg.fs, ecg.leads, ecg.signal_mv[:, lo:hi], gain_adc_per_mv=ecg.gain_adc_per_mv,
                age_years=ecg.age_years, sex=ecg.sex, pacemaker=ecg.pacemaker,
            )
        except EncodeError as exc:
            raise IntakeError(IntakeReason.EVENT_INVALID, exc.detail) from None
        events.append(ConvertedEvent(event_id, payload, ecg.statements))
    return Conversion(ecg.format, ecg.version, sha256, tuple(events), ecg.warnings)


def windows(n_samples: int, fs: float, window_s: float) -> list[tuple[int, int]]:
    """[lo, hi) sample ranges of whole windows; one range of everything when shorter than one window."""
    width = max(1, round(window_s * fs))
    if n_samples <= width:
        return [(0, n_samples)]
    return [(lo, lo + width) for lo in range(0, n_samples - width + 1, width)]


def _aware(moment: datetime | None, zone: tzinfo) -> datetime:
    if moment is None:
        raise IntakeError(IntakeReason.MISSING_ELEMENT, "no acquisition time in the file")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)
