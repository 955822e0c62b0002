"""WFDB records (a ``.hea`` header beside ``.dat``/``.mat`` signal files) read with the ``wfdb`` package.

Lead names go through the shared alias table (``MLII`` -> II, ``avr`` -> aVR, ``vx`` -> X, ...);
leads with unknown names are dropped with a warning while one known lead remains. A header the
library cannot parse (e.g. the base date written before the base time) is refused with
``invalid_header``, never a traceback.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from schemas.vendor._common import (
    MAX_FILE_BYTES,
    IntakeError,
    IntakeReason,
    VendorECG,
    VendorFormat,
    age_of,
    keep_known_leads,
    sex_of,
)

_UNITS_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3}


def record_files(path: Path) -> list[Path]:
    """The header and the signal files it names (for hashing and moving as one record)."""
    header = path.with_suffix(".hea") if path.suffix != ".hea" else path
    files = [header]
    try:
        lines = header.read_text(encoding="latin-1").splitlines()
    except OSError as exc:
        raise IntakeError(IntakeReason.UNREADABLE, f"{exc.strerror or exc}") from None
    for line in lines[1:]:
        name = line.split()[0] if line.strip() and not line.startswith("#") else ""
        candidate = header.parent / name
        if name and "/" not in name and candidate not in files and candidate.exists():
            files.append(candidate)
    return files


def read_wfdb(path: Path) -> VendorECG:
    try:
        import wfdb
    except ImportError:
        raise IntakeError(IntakeReason.MISSING_LIBRARY, "WFDB needs the wfdb package (ecgscreen[wfdb])") from None
    base = path.with_suffix("") if path.suffix in (".hea", ".dat", ".mat") else path
    size = sum(p.stat().st_size for p in record_files(base) if p.exists())
    if size > 16 * MAX_FILE_BYTES:
        raise IntakeError(IntakeReason.FILE_TOO_LARGE, f"record is {size} bytes")
    try:
        header = wfdb.rdheader(str(base))
    except FileNotFoundError as exc:
        raise IntakeError(IntakeReason.UNREADABLE, f"{exc.strerror or exc}") from None
    except Exception as exc:  # the library raises bare ValueError/IndexError/AttributeError on odd headers
        raise IntakeError(IntakeReason.INVALID_HEADER, f"the wfdb library cannot parse it: {type(exc).__name__}: "
                          f"{str(exc)[:160]}") from None
    try:
        rec = wfdb.rdrecord(str(base), physical=True)
    except FileNotFoundError as exc:
        raise IntakeError(IntakeReason.UNREADABLE, f"signal file missing: {exc.filename or exc}") from None
    except Exception as exc:
        raise IntakeError(IntakeReason.CORRUPT_WAVEFORM, f"{type(exc).__name__}: {str(exc)[:160]}") from None
    return _to_vendor(rec, header)


def _to_vendor(rec: Any, header: Any) -> VendorECG:
    p = np.asarray(rec.p_signal, dtype=np.float64).T
    units = [str(u or "mV").strip().lower() for u in getattr(rec, "units", None) or ["mV"] * p.shape[0]]
    to_mv = np.array([_UNITS_TO_MV.get(u, np.nan) for u in units])
    if not np.isfinite(to_mv).all():
        raise IntakeError(IntakeReason.UNSUPPORTED_ENCODING, f"signal units {sorted(set(units))[:4]}")
    adc_gain = np.asarray(getattr(rec, "adc_gain", None) or [1000.0] * p.shape[0], dtype=np.float64)
    gain = np.where(adc_gain > 0, adc_gain / to_mv, 1000.0)
    signal = np.nan_to_num(p * to_mv[:, None])
    leads, signal, gain, warnings = keep_known_leads([str(n) for n in rec.sig_name], signal, gain)
    comments = _comments(getattr(header, "comments", None) or [])
    base = getattr(rec, "base_datetime", None)
    return VendorECG(
        format=VendorFormat.WFDB, version="WFDB", fs=float(rec.fs), leads=leads, signal_mv=signal,
        gain_adc_per_mv=gain, acquired_at=base if isinstance(base, datetime) else None,
        age_years=age_of(comments.get("age", "")), sex=sex_of(comments.get("sex", "")), warnings=warnings,
    )


def _comments(lines: list[str]) -> dict[str, str]:
    """``# age: 81`` / ``#Sex: Male`` header comments (PTB, PhysioNet Challenge); identifiers are not read."""
    out = {}
    for line in lines:
        key, sep, value = str(line).partition(":")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out
