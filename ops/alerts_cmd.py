"""`ecgscreen alerts ...`: subscribers of the alert topic (a terminal tail, the FHIR export)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from schemas.codec import encode_alert
from schemas.errors import ConfigError
from schemas.messages import Alert, Priority, TaskGroup
from workers.health import Health, dependency_checks, start_ops_server
from workers.metrics import SubscriberMetrics
from workers.settings import Settings
from workers.subscribers import (
    AlertFilter,
    ExportError,
    FhirExporter,
    FileSink,
    HttpSink,
    RetryPolicy,
    Sink,
    Subscription,
    alert_line,
    consume,
)


def register(sub: Any) -> None:
    p = sub.add_parser("alerts", help="subscribers of the alert topic: tail, FHIR export")
    actions = p.add_subparsers(metavar="ACTION")
    t = actions.add_parser("tail", help="print alerts as they arrive (one line each, or --json)")
    _common(t, default_group=None)
    t.add_argument("--json", action="store_true", help="one ecg.alert/v1 JSON object per line")
    t.set_defaults(func=cmd_tail)
    e = actions.add_parser("export-fhir", help="write each alert as a FHIR R4 transaction Bundle (files or POST)")
    _common(e, default_group="ecgscreen-fhir-export")
    e.add_argument("--dir", type=Path, default=None, help="folder for {id}.json files (default ECGSCREEN_FHIR_DIR)")
    e.add_argument("--endpoint", default=None, help="FHIR base URL to POST to (default ECGSCREEN_FHIR_ENDPOINT)")
    e.set_defaults(func=cmd_export)


def _common(p: argparse.ArgumentParser, default_group: str | None) -> None:
    p.add_argument("--group", default=default_group,
                   help="consumer group (offsets committed after each batch); none: ephemeral")
    p.add_argument("--latest", action="store_true", help="start at the end of the topic, not the beginning")
    p.add_argument("--site", action="append", default=[], help="only this site (repeatable)")
    p.add_argument("--task-group", action="append", default=[], choices=[g.value for g in TaskGroup])
    p.add_argument("--min-priority", choices=[x.value for x in Priority], default=None)
    p.add_argument("--max", type=int, default=None, help="stop after this many alerts")
    p.add_argument("--idle-timeout", type=float, default=None, help="stop after this many seconds of silence")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve /metrics, /healthz, /readyz on this port (default: none)")


def subscription(args: argparse.Namespace, settings: Settings) -> Subscription:
    filt = AlertFilter(sites=frozenset(args.site), groups=frozenset(TaskGroup(g) for g in args.task_group),
                       min_priority=Priority(args.min_priority) if args.min_priority else None)
    return Subscription(bootstrap=settings.kafka.bootstrap, topic=settings.kafka.topics.alerts, group_id=args.group,
                        from_beginning=not args.latest, max_alerts=args.max, idle_timeout_s=args.idle_timeout,
                        filter=filt, session_timeout_s=settings.kafka.session_timeout_s,
                        security=settings.kafka.security)


@contextlib.contextmanager
def observed(name: str, args: argparse.Namespace, settings: Settings) -> Iterator[SubscriberMetrics]:
    """The subscriber's metrics, served with its health on ``--metrics-port`` (when given)."""
    metrics = SubscriberMetrics(name, Health(stall_after_s=settings.ops.stall_after_s))
    checks, _ = dependency_checks(settings.kafka, None)
    server = start_ops_server(settings.ops.metrics_host, args.metrics_port, metrics.registry, metrics.health, checks)
    try:
        yield metrics
    finally:
        if server is not None:
            server.stop()


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    with observed("tail", args, settings) as metrics:
        async def show(alert: Alert) -> None:
            line = encode_alert(alert).decode() if args.json else alert_line(alert)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            metrics.handled("shown")

        asyncio.run(consume(subscription(args, settings), show, metrics))
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    with observed("export-fhir", args, settings) as metrics:
        exporter = FhirExporter(*_sink(args, settings, metrics))

        async def export(alert: Alert) -> None:
            try:
                result = await exporter.export(alert)
            except ExportError:
                metrics.failed("delivery_failed")
                raise
            metrics.handled(result.value)
            sys.stdout.write(f"{result.value:<9} {alert.alert_id}\n")

        asyncio.run(consume(subscription(args, settings), export, metrics))
    sys.stdout.write(" ".join(f"{k.value}={v}" for k, v in exporter.counts.items()) + "\n")
    return 0


def _sink(args: argparse.Namespace, settings: Settings, metrics: SubscriberMetrics) -> tuple[Sink, dict[str, str]]:
    cfg = settings.export
    folder, endpoint = args.dir or cfg.fhir_dir, args.endpoint or cfg.fhir_endpoint
    if (folder is None) == (endpoint is None):
        raise ConfigError("give exactly one of --dir / ECGSCREEN_FHIR_DIR and --endpoint / ECGSCREEN_FHIR_ENDPOINT")
    if folder is not None:
        sink = FileSink(folder)
        return sink, sink.delivered()
    retry = RetryPolicy(max_attempts=cfg.max_attempts, backoff_s=cfg.backoff_s)
    return HttpSink(str(endpoint), retry, cfg.timeout_s, on_failure=metrics.failed), {}
