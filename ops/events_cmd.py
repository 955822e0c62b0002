"""`ecgscreen events convert` (vendor files -> ecg.event/v1 lines) and `events publish` (lines -> Kafka)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import zoneinfo
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

from schemas.codec import DecodeError, decode_event
from schemas.errors import ConfigError, ECGScreenError
from schemas.vendor import Conversion, FormatChoice, IntakeContext, IntakeError, IntakeReason, convert_file
from workers.settings import Settings

DEFAULT_SITE = "default"


def register_actions(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("convert", help="vendor ECG files (MUSE, Philips, aECG, DICOM, SCP-ECG, WFDB) -> event lines")
    c.add_argument("files", type=Path, nargs="+")
    c.add_argument("--format", choices=[f.value for f in FormatChoice], default="auto")
    c.add_argument("--site", default=DEFAULT_SITE, help="site whose patient_ref secret keys the events")
    c.add_argument("--window-s", type=float, default=10.0, help="longer records become windows of this length")
    c.add_argument("--keep-going", action="store_true", help="convert the other files after one fails")
    c.add_argument("--report-manifest", type=Path, default=None,
                   help="append the machine's interpretation statements per event id (JSON lines)")
    c.set_defaults(func=cmd_convert)
    p = sub.add_parser("publish", help="ecg.event/v1 JSON lines -> the events topic (acks=all)")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_publish)


def intake_context(settings: Settings, site: str, window_s: float = 10.0, feed: str = "intake") -> IntakeContext:
    """The conversion context of ``site`` from settings; a site without a secret is a config error."""
    secret = settings.intake.secrets.get(site)
    if secret is None:
        raise ConfigError(f"no patient_ref secret for site {site!r}: add it to ECGSCREEN_INTAKE_SECRETS "
                          '(a JSON object {"site": "secret of 16+ characters"})')
    try:
        zone = zoneinfo.ZoneInfo(settings.intake.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"ECGSCREEN_INTAKE_TZ={settings.intake.timezone!r} is not an IANA time zone") from None
    if not 1.0 <= window_s <= 600.0:
        raise ConfigError(f"--window-s={window_s:g} must lie in [1, 600]")
    return IntakeContext(site=site, secret=secret, window_s=window_s, timezone=zone, feed=feed)


def convert_safely(path: Path, ctx: IntakeContext, choice: FormatChoice) -> Conversion:
    """:func:`convert_file` where an adapter's unforeseen failure on odd input is an IntakeError too."""
    try:
        return convert_file(path, ctx, choice)
    except ECGScreenError:
        raise
    except Exception as exc:  # bad input must never crash the intake; the type names what to look at
        raise IntakeError(IntakeReason.CONVERSION_FAILED, f"{type(exc).__name__}: {str(exc)[:200]}") from None


def error_line(code: str, path: Path, detail: str) -> str:
    return f"ecgscreen: {code}: {path}: {detail}"


def cmd_convert(args: argparse.Namespace, settings: Settings) -> int:
    ctx = intake_context(settings, args.site, args.window_s)
    choice = FormatChoice(args.format)
    failed = 0
    manifest = open(args.report_manifest, "ab") if args.report_manifest else None  # noqa: SIM115
    try:
        for path in args.files:
            try:
                conversion = convert_safely(path, ctx, choice)
            except ECGScreenError as err:
                print(error_line(str(err.reason), path, err.detail), file=sys.stderr)
                failed += 1
                if not args.keep_going:
                    return 1
                continue
            _emit(conversion, path, manifest)
    finally:
        if manifest is not None:
            manifest.close()
    return 1 if failed else 0


def _emit(conversion: Conversion, path: Path, manifest: IO[bytes] | None) -> None:
    for warning in conversion.warnings:
        print(error_line("warning", path, warning), file=sys.stderr)
    out = sys.stdout.buffer
    for event in conversion.events:
        out.write(event.payload + b"\n")
    out.flush()
    if manifest is not None:
        manifest.writelines(manifest_lines(conversion))
        manifest.flush()


def manifest_lines(conversion: Conversion) -> Iterator[bytes]:
    """One JSON line per event with statements: the ECG-report pair for training, keyed by event id."""
    for event in conversion.events:
        if event.statements:
            yield orjson.dumps({"event_id": event.event_id, "format": conversion.format.value,
                                "version": conversion.version, "statements": list(event.statements)}) + b"\n"


# --------------------------------------------------------------------------- publish


@dataclass(frozen=True, slots=True)
class PublishCounts:
    published: int
    invalid: int


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    counts = asyncio.run(publish_lines(settings, _lines(args.file)))
    print(orjson.dumps({"published": counts.published, "invalid": counts.invalid}).decode())
    return 1 if counts.invalid else 0


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    yield n, line.rstrip(b"\r\n")
    except OSError as exc:
        raise ECGScreenError("unreadable", f"{path}: {exc.strerror or exc}") from None


async def publish_lines(settings: Settings, lines: Iterable[tuple[int, bytes]]) -> PublishCounts:
    """Validate each line with the codec, then send it keyed by its event id with acks=all."""
    published = invalid = 0
    async with EventProducer(settings) as producer:
        for n, payload in lines:
            try:
                event = decode_event(payload)
            except DecodeError as err:
                print(f"ecgscreen: {err.reason}: line {n}: {err.detail}", file=sys.stderr)
                invalid += 1
                continue
            await producer.send(event.event_id, payload)
            published += 1
    return PublishCounts(published, invalid)


class EventProducer:
    """An aiokafka producer for the events topic that waits for every acknowledgement (acks=all)."""

    def __init__(self, settings: Settings) -> None:
        from aiokafka import AIOKafkaProducer

        self.topic = settings.kafka.topics.events
        self._producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all",
                                          max_request_size=8 * 1024 * 1024, request_timeout_ms=30_000)

    async def __aenter__(self) -> EventProducer:
        try:
            await self._producer.start()
        except Exception as exc:
            await self._producer.stop()
            raise ECGScreenError("kafka_unavailable", f"{type(exc).__name__}: {exc}") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, key: str, payload: bytes) -> None:
        await self.send_all([(key, payload)])

    async def send_all(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Send a file's events together; returns once every one is acknowledged (else kafka_unavailable)."""
        try:
            futures = [await self._producer.send(self.topic, payload, key=key.encode()) for key, payload in items]
            await asyncio.gather(*futures)
        except Exception as exc:  # aiokafka's errors: the broker is away or refused the batch
            raise ECGScreenError("kafka_unavailable", f"{type(exc).__name__}: {str(exc)[:200]}") from None
