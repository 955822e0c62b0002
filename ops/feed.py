"""Sources of ``ecg.event/v1`` payloads: PTB-XL npz+csv, WFDB records, simulation.

Plus the corruptions the demo and tests mix into a feed: signal faults the gate
must catch, and malformed payloads the codec must dead-letter.
"""

from __future__ import annotations

import base64
import csv
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

import numpy as np
import orjson

from schemas.codec import encode_event
from schemas.messages import DeadLetterReason, Sex, Source

STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


@dataclass(frozen=True, slots=True)
class Record:
    """A recording before encoding: (L, N) float32 mV plus what the event carries."""

    event_id: str
    patient_ref: str
    acquired_at: datetime
    site: str
    fs: float
    leads: tuple[str, ...]
    signal_mv: np.ndarray
    age_years: float | None = None
    sex: Sex | None = None
    pacemaker: bool | None = None
    device: str | None = None
    feed: str = "demo"

    def encode(self) -> bytes:
        return encode_event(self.event_id, self.patient_ref, self.acquired_at,
                            Source(self.site, self.device, self.feed), self.fs, self.leads, self.signal_mv,
                            age_years=self.age_years, sex=self.sex, pacemaker=self.pacemaker)


def ptbxl_records(npz_path: Path, csv_path: Path, limit: int | None = None) -> Iterator[Record]:
    """Records of a PTB-XL-style npz (signals (N, T, 12) int16, gain 1000/mV) with its metadata csv."""
    with np.load(npz_path) as z:
        signals, ecg_ids, fs = z["signals"], z["ecg_id"], float(z["fs"])
        leads = tuple(str(n) for n in z["lead_names"])
    meta = _ptbxl_metadata(csv_path)
    count = len(ecg_ids) if limit is None else min(limit, len(ecg_ids))
    for row in range(count):
        m = meta.get(int(ecg_ids[row]), {})
        yield Record(
            event_id=f"ptbxl-{int(ecg_ids[row])}-{int(fs)}hz", patient_ref=_ptbxl_patient(m),
            acquired_at=_ptbxl_date(m.get("recording_date", "")), site=f"ptbxl-site-{_int(m.get('site'), 0)}",
            fs=fs, leads=leads, signal_mv=signals[row].T.astype(np.float32) / 1000.0,
            age_years=_ptbxl_age(m.get("age", "")), sex=_ptbxl_sex(m.get("sex", "")),
            pacemaker=bool(m.get("pacemaker", "").strip()) or None, device=m.get("device") or None,
            feed="ptbxl",
        )


def _ptbxl_metadata(csv_path: Path) -> dict[int, dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        return {int(float(r["ecg_id"])): r for r in csv.DictReader(f)}


def _int(raw: str | None, default: int) -> int:
    try:
        return int(float(raw or ""))
    except ValueError:
        return default


def _ptbxl_patient(m: dict[str, str]) -> str:
    return f"ptbxl-p{_int(m.get('patient_id'), 0)}"


def _ptbxl_date(raw: str) -> datetime:
    # PTB-XL gives local wall-clock time without a zone; treated as UTC here.
    try:
        return datetime.fromisoformat(raw).replace(tzinfo=UTC)
    except ValueError:
        return datetime(1990, 1, 1, tzinfo=UTC)


def _ptbxl_age(raw: str) -> float | None:
    age = _int(raw, -1)
    if age < 0:
        return None
    return 90.0 if age == 300 else float(age)  # PTB-XL codes "older than 89" as 300


def _ptbxl_sex(raw: str) -> Sex | None:
    return {"0": Sex.MALE, "1": Sex.FEMALE}.get(raw.split(".")[0].strip())


def wfdb_records(paths: Sequence[Path], window_s: float | None = None,
                 warn: Callable[[str], None] | None = None) -> Iterator[Record]:
    """Records read by the WFDB adapter (:mod:`schemas.vendor.wfdb`); with ``window_s``, one per window.

    Lead names go through the adapter's alias table (MLII -> II, ...), unknown leads are dropped
    (``warn`` hears of each); an unparseable header raises :class:`~schemas.vendor.IntakeError`
    naming the file. Undated records get now.
    """
    from schemas.vendor import IntakeError, windows
    from schemas.vendor.wfdb import read_wfdb

    for path in paths:
        try:
            ecg = read_wfdb(Path(path))
        except IntakeError as err:
            raise IntakeError(err.reason, f"{path}: {err.detail}") from None
        for warning in ecg.warnings:
            if warn is not None:
                warn(f"{path}: {warning}")
        when = ecg.acquired_at.replace(tzinfo=UTC) if ecg.acquired_at else datetime.now(UTC)
        name = re.sub(r"[^A-Za-z0-9._:-]", "_", Path(path).name)[:100]
        spans = windows(ecg.signal_mv.shape[1], ecg.fs, window_s) if window_s else [(0, ecg.signal_mv.shape[1])]
        for k, (lo, hi) in enumerate(spans):
            event_id = f"wfdb-{name}" if len(spans) == 1 else f"wfdb-{name}-w{k}"
            yield Record(event_id, f"wfdb-{name}", when + timedelta(seconds=lo / ecg.fs), "wfdb", ecg.fs, ecg.leads,
                         ecg.signal_mv[:, lo:hi].astype(np.float32), age_years=ecg.age_years, sex=ecg.sex,
                         feed="wfdb")


def simulated_records(n: int, fs: float = 500.0, seed: int = 0, bases: int = 6) -> Iterator[Record]:
    """12-lead ECGs from neurokit2, varied per record; limb leads obey Einthoven's law.

    Simulating is slow (~1 s per 12-lead record), so a few bases are simulated
    and each record is a scaled, shifted, lightly noised variant of one of them.
    """
    rng = np.random.default_rng(seed)
    templates = _templates(fs, seed, min(bases, n))
    for _ in templates:
        rng.integers(55, 95)  # the heart rate each template drew, so variants keep their stream
    start = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    for i in range(n):
        base = templates[i % len(templates)]
        gain = rng.uniform(0.6, 1.4, size=(base.shape[0], 1)).astype(np.float32)
        sig = np.roll(base, int(rng.integers(0, base.shape[1])), axis=1) * gain
        sig += rng.normal(0, 0.01, size=sig.shape).astype(np.float32)
        yield Record(f"sim-{seed}-{i:05d}", f"sim-p{int(rng.integers(0, max(n // 2, 1)))}",
                     start + timedelta(minutes=i), f"sim-site-{i % 2}", fs, STANDARD_LEADS,
                     _physiological_limbs(sig), age_years=float(rng.integers(25, 90)),
                     sex=Sex.MALE if rng.random() < 0.5 else Sex.FEMALE)


@lru_cache(maxsize=16)
def _templates(fs: float, seed: int, bases: int) -> tuple[np.ndarray, ...]:
    """The simulated bases, kept per process: a fault suite asks for thousands of variants."""
    import neurokit2 as nk

    rng = np.random.default_rng(seed)
    out = []
    for b in range(bases):
        df = nk.ecg_simulate(duration=10, sampling_rate=int(fs), method="multileads",
                             heart_rate=int(rng.integers(55, 95)), random_state=seed * 100 + b)
        out.append(_physiological_limbs(df[list(STANDARD_LEADS)].to_numpy(np.float32).T))
    return tuple(out)


def _physiological_limbs(x: np.ndarray) -> np.ndarray:
    """Rebuild III, aVR, aVL, aVF from I and II (Einthoven, Goldberger)."""
    out = x.copy()
    lead_i, lead_ii = x[0], x[1]
    out[2] = lead_ii - lead_i
    out[3] = -(lead_i + lead_ii) / 2
    out[4] = lead_i - lead_ii / 2
    out[5] = lead_ii - lead_i / 2
    return out


class SignalFault(StrEnum):
    """Faults a real feed shows; the gate should catch each."""

    LEAD_OFF = "lead_off"
    ALL_FLAT = "all_flat"
    SATURATED = "saturated"
    NOISY = "noisy"


def with_fault(rec: Record, fault: SignalFault, seed: int = 0) -> Record:
    rng = np.random.default_rng(seed)
    sig = rec.signal_mv.copy()
    if fault is SignalFault.LEAD_OFF:
        sig[1] = 0.0  # lead II: a limb lead the model needs
    elif fault is SignalFault.ALL_FLAT:
        sig[:] = 0.0
    elif fault is SignalFault.SATURATED:
        sig *= 60.0  # past +-32.767 mV: encode_event clips at the int16 rail
    elif fault is SignalFault.NOISY:
        sig += rng.normal(0, 2.0, size=sig.shape).astype(np.float32)
    return replace(rec, signal_mv=sig, event_id=f"{rec.event_id}-{fault.value}")


def malformed_payloads(valid: bytes) -> list[tuple[DeadLetterReason, bytes]]:
    """Broken variants of a valid payload, each with the dead-letter reason it must get.

    Each variant carries its own event id (where it has a readable one), so that it
    is a distinct event and not a conflicting copy of the valid one.
    """
    doc = orjson.loads(valid)
    eid = doc["event_id"]

    def mutate(suffix: str, **changes: object) -> bytes:
        return orjson.dumps({**doc, "event_id": f"{eid}-{suffix}", **changes})

    data = doc["data"]
    nan_block = base64.b64encode(np.full(len(doc["leads"]) * doc["n_samples"], np.nan, "<f4").tobytes())
    return [
        (DeadLetterReason.INVALID_JSON, mutate("json")[:-40]),
        (DeadLetterReason.TRUNCATED_BASE64, mutate("trunc", data=data[:-3])),
        (DeadLetterReason.LENGTH_MISMATCH, mutate("short", data=data[: (len(data) // 2) // 4 * 4])),
        (DeadLetterReason.UNKNOWN_ENCODING, mutate("enc", encoding={"type": "int24-be-hex"})),
        (DeadLetterReason.NON_FINITE, mutate("nan", encoding={"type": "float32-le-base64"},
                                             data=nan_block.decode())),
        (DeadLetterReason.UNKNOWN_LEAD, mutate("lead", leads=["I", "II", "XYZ", *doc["leads"][3:]])),
        (DeadLetterReason.MISSING_FIELD, orjson.dumps({k: v for k, v in orjson.loads(mutate("nopat")).items()
                                                       if k != "patient_ref"})),
        (DeadLetterReason.NESTING_TOO_DEEP, mutate("deep", source={"site": {"a": {"b": {"c": [[[1]]]}}}})),
        (DeadLetterReason.INVALID_EVENT_ID, orjson.dumps({**doc, "event_id": "has spaces/and slashes"})),
    ]
