"""Where replayed events come from: one spec string per source, read in a fixed order.

Specs (``ecgscreen replay MODE SOURCE...``):

- ``kafka:TOPIC[:P,P...]`` with ``--from-offset/--to-offset`` (per partition, end exclusive) and
  ``--since/--until`` (event time: the embedded broker cannot look offsets up by time, so the
  partitions are scanned and filtered by ``acquired_at``);
- ``FILE.jsonl`` (``ecg.event/v1`` lines), ``NPZ`` (PTB-XL style, its metadata csv beside it or
  ``NPZ:CSV``), a folder (WFDB records, through the WFDB adapter), any other file (a vendor
  export: MUSE, Philips, aECG, DICOM, SCP, through :mod:`schemas.vendor`).

Every source yields :class:`Item` in the same order on every run, so a checkpoint is the number
of items already done (:mod:`ops.replay.checkpoint`). Kafka end offsets are fixed on the first
run and kept in the checkpoint, so a resumed scan covers the same range.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from schemas.codec import peek_event_id
from schemas.errors import ECGScreenError


class SourceError(ECGScreenError):
    """A source spec that cannot be read as given."""

    def __init__(self, detail: str) -> None:
        super().__init__("bad_source", detail)


@dataclass(frozen=True, slots=True)
class Item:
    """One replayed payload and where it came from (topic/partition/offset for dead letters)."""

    value: bytes
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class KafkaRange:
    bootstrap: str
    from_offset: int | None = None
    to_offset: int | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass
class SourceOptions:
    kafka: KafkaRange
    site: str | None = None  # vendor/WFDB conversion: the site whose patient_ref secret keys events
    intake: Any = None  # schemas.vendor.IntakeContext, built by the CLI from settings
    plan: dict[str, Any] = field(default_factory=dict)  # kept in the checkpoint (Kafka end offsets)
    refused: int = 0  # vendor files the converters refused (each named on stderr)


def describe(spec: str) -> str:
    """A source's kind, for logs and the summary (no file names: they may carry an MRN)."""
    return _kind(spec)


def _kind(spec: str) -> str:
    if spec.startswith("kafka:"):
        return "kafka"
    path = Path(spec.split(":", 1)[0] if spec.endswith(".csv") and ":" in spec else spec)
    if path.is_dir():
        return "wfdb-folder"
    if path.suffix == ".jsonl":
        return "jsonl"
    if path.suffix == ".npz":
        return "npz"
    return "vendor"


async def read(specs: Sequence[str], opts: SourceOptions) -> AsyncIterator[Item]:
    """Every item of every source, in order."""
    for n, spec in enumerate(specs):
        kind = _kind(spec)
        if kind == "kafka":
            async for item in _kafka(spec, opts, f"s{n}"):
                yield item
            continue
        for item in _file_items(spec, kind, opts):
            yield item
            await asyncio.sleep(0)  # let the pipeline's other stages run between items


def _file_items(spec: str, kind: str, opts: SourceOptions) -> Iterator[Item]:
    if kind == "jsonl":
        yield from _jsonl(Path(spec))
    elif kind == "npz":
        yield from _npz(spec)
    else:
        yield from _vendor(Path(spec), kind, opts)


def _jsonl(path: Path) -> Iterator[Item]:
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    yield Item(line.rstrip(b"\r\n"), "file:jsonl", 0, n)
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from None


def _npz(spec: str) -> Iterator[Item]:
    from ops.feed import ptbxl_records

    npz, _, csv = spec.partition(":") if spec.count(":") == 1 and spec.endswith(".csv") else (spec, "", "")
    npz_path = Path(npz)
    csv_path = Path(csv) if csv else _metadata_beside(npz_path)
    for n, rec in enumerate(ptbxl_records(npz_path, csv_path)):
        yield Item(rec.encode(), "file:npz", 0, n)


def _metadata_beside(npz: Path) -> Path:
    found = sorted(npz.parent.glob("*metadata*.csv"))
    if not found:
        raise SourceError(f"{npz}: no *metadata*.csv beside it; give NPZ:CSV")
    return found[0]


def _vendor(path: Path, kind: str, opts: SourceOptions) -> Iterator[Item]:
    """Vendor files and WFDB folders through the intake converters (schemas.vendor)."""
    from ops.events_cmd import convert_safely
    from schemas.vendor.convert import FormatChoice

    if opts.intake is None:
        raise SourceError("vendor and WFDB sources need --site (its patient_ref secret keys the events)")
    files = sorted(path.rglob("*.hea")) if kind == "wfdb-folder" else [path]
    choice = FormatChoice.WFDB if kind == "wfdb-folder" else FormatChoice.AUTO
    offset = 0
    for f in files:
        try:
            conversion = convert_safely(f, opts.intake, choice)
        except ECGScreenError as err:  # a bad file is reported and counted; the rest still replays
            print(f"ecgscreen: {err.reason}: {f}: {err.detail}", file=sys.stderr)
            opts.refused += 1
            continue
        for event in conversion.events:
            yield Item(event.payload, f"file:{kind}", 0, offset)
            offset += 1


# --- Kafka ---------------------------------------------------------------------------------------


def parse_kafka(spec: str) -> tuple[str, list[int] | None]:
    _, topic, *rest = spec.split(":")
    if not topic:
        raise SourceError(f"{spec}: give kafka:TOPIC or kafka:TOPIC:P,P")
    try:
        parts = [int(p) for p in rest[0].split(",")] if rest and rest[0] else None
    except ValueError:
        raise SourceError(f"{spec}: partitions are integers, e.g. kafka:ecg.events:0,2") from None
    return topic, parts


async def _kafka(spec: str, opts: SourceOptions, key: str) -> AsyncIterator[Item]:
    """Scan the chosen partitions one after another, each from its start offset to its end offset
    (fixed on the first run), filtering by ``acquired_at`` when an event-time range is given."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic, chosen = parse_kafka(spec)
    r = opts.kafka
    consumer = AIOKafkaConsumer(bootstrap_servers=r.bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024,
                                fetch_max_bytes=32 * 1024 * 1024)
    await consumer.start()
    try:
        parts = chosen if chosen is not None else sorted(consumer.partitions_for_topic(topic) or [])
        if not parts:
            raise SourceError(f"topic {topic} has no partitions (does it exist?)")
        tps = [TopicPartition(topic, p) for p in parts]
        if key not in opts.plan:
            opts.plan[key] = {str(tp.partition): await _end(consumer, tp, e)
                              for tp, e in (await consumer.end_offsets(tps)).items()}
        ends = opts.plan[key]
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            lo = max(starts[tp], r.from_offset or 0)
            hi = min(int(ends[str(tp.partition)]), r.to_offset if r.to_offset is not None else 2**62)
            async for item in _scan(consumer, tp, lo, hi, r):
                yield item
    finally:
        await consumer.stop()


async def _end(consumer: Any, tp: Any, reported: int) -> int:
    """The partition's end offset, fixed for this replay. Tansu reports the last record batch's
    base offset + 1, so the records after it in that batch are found by reading from there."""
    if reported == 0:
        return 0
    consumer.assign([tp])
    consumer.seek(tp, reported - 1)
    for _ in range(30):
        got = (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
        if got:
            return max(reported, got[-1].offset + 1)
    return reported


async def _scan(consumer: Any, tp: Any, lo: int, hi: int, r: KafkaRange) -> AsyncIterator[Item]:
    if lo >= hi:
        return
    consumer.assign([tp])
    consumer.seek(tp, lo)
    nxt, idle = lo, 0
    while nxt < hi:
        batch = await consumer.getmany(tp, timeout_ms=1000)
        msgs = [m for m in batch.get(tp, []) if m.offset >= nxt]
        idle = 0 if msgs else idle + 1
        if idle >= 60:  # a minute without the records the end offset promised: say so, do not hang
            raise SourceError(f"{tp.topic}[{tp.partition}]: no records after offset {nxt} (end {hi})")
        for msg in msgs:
            if msg.offset >= hi:
                return
            nxt = msg.offset + 1
            if _in_time(msg.value or b"", r):
                yield Item(msg.value or b"", tp.topic, tp.partition, msg.offset, msg.timestamp)


def _in_time(value: bytes, r: KafkaRange) -> bool:
    """Event-time filter on ``acquired_at``; a payload without a readable one is kept (it dead-letters)."""
    if r.since is None and r.until is None:
        return True
    when = acquired_at(value)
    if when is None:
        return True
    return (r.since is None or when >= r.since) and (r.until is None or when < r.until)


def acquired_at(value: bytes) -> datetime | None:
    from schemas.codec import parse_timestamp

    try:
        doc = orjson.loads(value)
        return parse_timestamp(doc["acquired_at"]) if isinstance(doc, dict) else None
    except Exception:  # any malformed payload: no time, kept for the screener to dead-letter
        return None


def event_key(value: bytes) -> str | None:
    return peek_event_id(value)
