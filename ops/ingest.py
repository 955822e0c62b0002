"""`ecgscreen ingest watch|once DIR`: vendor files dropped in a folder -> events on Kafka.

Per complete file, in this order: convert; publish every event with acks=all and wait for the
acknowledgements; append statements to the report manifest; record the file's content hash in
the ledger (``DIR/.ingest/published/``); move the file to ``done/`` (or delete it). A file that
fails goes to ``quarantine/`` beside a ``.reason.json``.

What a restart does: a file still in DIR is processed again from the start. Its event ids come
from its content hash, so a file dropped twice, or re-read after a crash that came after its
ledger entry, publishes nothing new. The one window left is a crash after Kafka acknowledged a
file's events and before the ledger entry: those events are sent again, byte-identical and
under the same ids, and the worker records one outcome per event id.

Hospital file names often carry an MRN, so the progress line and the ledger name no file; the
quarantine record does, beside the file it describes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import orjson

from ops.events_cmd import EventProducer, convert_safely, intake_context, manifest_lines
from schemas.errors import ECGScreenError
from schemas.vendor import Conversion, FormatChoice, IntakeContext
from workers.settings import Settings

DONE, QUARANTINE, STATE = "done", "quarantine", ".ingest"
_PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".filepart")
_COMPANIONS = (".dat", ".mat", ".xyz")  # WFDB signal files travel with their .hea


class Sender(Protocol):
    async def send_all(self, items: Sequence[tuple[str, bytes]]) -> None: ...


@dataclass(frozen=True, slots=True)
class IngestConfig:
    inbox: Path
    ctx: IntakeContext
    choice: FormatChoice = FormatChoice.AUTO
    delete_done: bool = False
    manifest: Path | None = None
    settle_s: float = 2.0
    poll_s: float = 1.0


@dataclass(slots=True)
class IngestCounts:
    published: int = 0  # files whose events are on the topic
    events: int = 0
    duplicates: int = 0  # files whose content was published before
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (f"ingest: {self.published} published ({self.events} events), {self.duplicates} duplicate, "
                f"{self.quarantined} quarantined")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="publish vendor ECG files dropped into a folder")
    actions = p.add_subparsers(metavar="ACTION")
    for name, helptext in (("watch", "poll DIR until SIGTERM"), ("once", "process what DIR holds now, then exit")):
        a = actions.add_parser(name, help=helptext)
        a.add_argument("dir", type=Path)
        a.add_argument("--site", default="default", help="site of the files (its secret keys patient_ref)")
        a.add_argument("--format", choices=[f.value for f in FormatChoice], default="auto")
        a.add_argument("--window-s", type=float, default=10.0)
        a.add_argument("--settle-s", type=float, default=2.0, help="a file is complete once unchanged this long")
        a.add_argument("--poll-s", type=float, default=1.0)
        a.add_argument("--report-manifest", type=Path, default=None)
        a.set_defaults(func=cmd_watch if name == "watch" else cmd_once)


def _config(args: argparse.Namespace, settings: Settings) -> IngestConfig:
    ctx = intake_context(settings, args.site, args.window_s, feed="ingest")
    return IngestConfig(args.dir, ctx, FormatChoice(args.format), settings.intake.done == "delete",
                        args.report_manifest, max(0.0, args.settle_s), max(0.05, args.poll_s))


def cmd_once(args: argparse.Namespace, settings: Settings) -> int:
    counts = asyncio.run(_run(settings, _config(args, settings), watch=False))
    print(orjson.dumps(asdict(counts)).decode())
    return 0


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    counts = asyncio.run(_run(settings, _config(args, settings), watch=True))
    print(orjson.dumps(asdict(counts)).decode())
    return 0


async def _run(settings: Settings, cfg: IngestConfig, watch: bool) -> IngestCounts:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with EventProducer(settings) as producer:
        if watch:
            return await watch_dir(cfg, producer, stop)
        return await ingest_once(cfg, producer)


# --------------------------------------------------------------------------- the folder


def prepare(inbox: Path) -> None:
    if not inbox.is_dir():
        raise ECGScreenError("unreadable", f"{inbox} is not a directory")
    for sub in (DONE, QUARANTINE, f"{STATE}/published"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)


def candidates(inbox: Path) -> list[Path]:
    """Files directly in DIR that may be ECGs, oldest first (hidden and partial uploads skipped)."""
    found = []
    for entry in os.scandir(inbox):
        name = entry.name
        if not entry.is_file(follow_symlinks=False) or name.startswith(".") or name.endswith(".reason.json"):
            continue
        if name.lower().endswith(_PARTIAL_SUFFIXES) or _is_companion(inbox, name):
            continue
        found.append((entry.stat().st_mtime_ns, name))
    return [inbox / name for _, name in sorted(found)]


def _is_companion(inbox: Path, name: str) -> bool:
    path = Path(name)
    return path.suffix.lower() in _COMPANIONS and (inbox / path.with_suffix(".hea").name).exists()


def _members(path: Path) -> list[Path]:
    if path.suffix.lower() != ".hea":
        return [path]
    return [path, *(p for p in (path.with_suffix(s) for s in _COMPANIONS) if p.exists())]


class Settled:
    """Remembers each file's (size, mtime) and since when it has held them: complete = held settle_s."""

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self._seen: dict[Path, tuple[tuple[tuple[int, int], ...], float]] = {}

    def complete(self, paths: Sequence[Path], now: float | None = None) -> list[Path]:
        now = time.monotonic() if now is None else now
        ready = []
        for path in paths:
            try:  # a WFDB record is complete when its header and signal files all are
                key = tuple((s.st_size, s.st_mtime_ns) for s in (m.stat() for m in _members(path)))
            except FileNotFoundError:
                continue
            prev = self._seen.get(path)
            since = prev[1] if prev is not None and prev[0] == key else now
            self._seen[path] = (key, since)
            if now - since >= self.settle_s:
                ready.append(path)
        return ready

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)


# --------------------------------------------------------------------------- one file


async def ingest_file(path: Path, cfg: IngestConfig, producer: Sender, counts: IngestCounts) -> None:
    members = _members(path)
    try:
        conversion = convert_safely(path, cfg.ctx, cfg.choice)
    except ECGScreenError as err:
        quarantine(cfg.inbox, members, str(err.reason), err.detail)
        counts.quarantined += 1
        counts.reasons[str(err.reason)] = counts.reasons.get(str(err.reason), 0) + 1
        return
    ledger = cfg.inbox / STATE / "published" / f"{conversion.sha256}.json"
    if ledger.exists():
        counts.duplicates += 1
    else:
        await producer.send_all([(e.event_id, e.payload) for e in conversion.events])
        _append_manifest(cfg.manifest, conversion)
        _write_atomic(ledger, orjson.dumps({"events": [e.event_id for e in conversion.events],
                                            "at": datetime.now(UTC).isoformat()}))
        counts.published += 1
        counts.events += len(conversion.events)
    _finish(cfg, members, conversion.sha256)


def _append_manifest(manifest: Path | None, conversion: Conversion) -> None:
    lines = list(manifest_lines(conversion))
    if manifest is None or not lines:
        return
    with open(manifest, "ab") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())


def _finish(cfg: IngestConfig, members: list[Path], sha256: str) -> None:
    for member in members:
        if cfg.delete_done:
            member.unlink(missing_ok=True)
        else:
            os.replace(member, _free_name(cfg.inbox / DONE, member.name, sha256[:12]))


def quarantine(inbox: Path, members: list[Path], reason: str, detail: str) -> None:
    """Move the file(s) aside with a machine-readable reason; the reason is written first."""
    target = _free_name(inbox / QUARANTINE, members[0].name, datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f"))
    record = {"file": members[0].name, "reason": reason, "detail": detail,
              "quarantined_at": datetime.now(UTC).isoformat()}
    _write_atomic(target.with_name(target.name + ".reason.json"), orjson.dumps(record, option=orjson.OPT_INDENT_2))
    for member in members:
        os.replace(member, target if member == members[0] else target.with_name(member.name))


def _free_name(folder: Path, name: str, tag: str) -> Path:
    target = folder / name
    return target if not target.exists() else folder / f"{Path(name).stem}.{tag}{Path(name).suffix}"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------- loops


async def ingest_once(cfg: IngestConfig, producer: Sender, counts: IngestCounts | None = None) -> IngestCounts:
    """Process every complete file DIR holds now (files changed within settle_s wait for the next run)."""
    prepare(cfg.inbox)
    counts = counts or IngestCounts()
    for path in _aged(candidates(cfg.inbox), cfg.settle_s):
        await ingest_file(path, cfg, producer, counts)
        print(counts.line(), file=sys.stderr, flush=True)
    return counts


def _aged(paths: list[Path], settle_s: float) -> list[Path]:
    now = time.time()
    return [p for p in paths if all(now - m.stat().st_mtime >= settle_s for m in _members(p))]


async def watch_dir(cfg: IngestConfig, producer: Sender, stop: asyncio.Event) -> IngestCounts:
    prepare(cfg.inbox)
    counts, settled = IngestCounts(), Settled(cfg.settle_s)
    while not stop.is_set():
        for path in settled.complete(candidates(cfg.inbox)):
            try:
                await ingest_file(path, cfg, producer, counts)
            except ECGScreenError as err:  # Kafka away: the file stays in DIR and is tried on the next scan
                print(f"ecgscreen: {err.reason}: {err.detail}; retrying in {cfg.poll_s:g} s", file=sys.stderr)
                break
            settled.forget(path)
            print(counts.line(), file=sys.stderr, flush=True)
            if stop.is_set():
                break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), cfg.poll_s)
    return counts
