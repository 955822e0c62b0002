"""Reading the inputs of echo linkage: ECG event lines, echo tables (CSV or Parquet), EchoNext-style label files.

Only what linkage needs is read here (ids, patient, times, echo columns); signals are decoded and
validated later, when ``ecgscreen train shard`` writes them. Parquet needs pyarrow (the ``parquet``
extra); without it a ``.parquet`` input is refused with a reason rather than misread.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from schemas.codec import DecodeError, parse_timestamp
from schemas.errors import ECGScreenError


class LinkageError(ECGScreenError):
    """Echo linkage input is missing, unreadable or inconsistent (reason ``invalid_linkage_input``)."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_linkage_input", detail)


@dataclass(frozen=True)
class EcgRef:
    ecg_id: str
    patient_ref: str
    acquired_at: datetime


def parse_time(text: object, where: str) -> datetime:
    """ISO 8601 date or date-time; naive values are read as UTC (an hours-wide error is far inside any window)."""
    raw = str(text).strip()
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as e:
        raise LinkageError(f"{where}: {raw!r} is not an ISO 8601 date or time") from e
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def read_event_refs(path: Path) -> Iterator[EcgRef]:
    """(event id, patient, acquisition time) of each ``ecg.event/v1`` line; blank lines skipped."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
                yield EcgRef(str(doc["event_id"]), str(doc["patient_ref"]),
                             parse_timestamp(doc["acquired_at"], f"{path}:{n}.acquired_at"))
            except (orjson.JSONDecodeError, KeyError, TypeError, DecodeError) as e:
                raise LinkageError(f"{path}:{n}: not an ecg.event/v1 line ({e})") from e


def read_table(path: Path) -> list[dict[str, object]]:
    """Rows of a CSV (header row) or Parquet file as dicts of column -> value."""
    if not path.is_file():
        raise LinkageError(f"{path} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [dict(r) for r in csv.DictReader(f)]


def _read_parquet(path: Path) -> list[dict[str, object]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise LinkageError(f"{path}: reading Parquet needs pyarrow (pip install 'ecgscreen[parquet]'), "
                           "or export the table as CSV") from e
    return list(pq.read_table(path).to_pylist())


def require_columns(rows: Sequence[Mapping[str, object]], columns: tuple[str, ...], path: Path) -> None:
    if not rows:
        raise LinkageError(f"{path} has no rows")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise LinkageError(f"{path} lacks column(s) {missing}; it has {sorted(rows[0])}")
