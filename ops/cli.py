"""`ecgscreen`: the one command for people at a terminal and for scripts."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson

from schemas.errors import ECGScreenError
from workers.settings import Settings, load_settings

DEFAULT_SHARED_DATA = Path("../shared/data")
# Command groups that live beside the area they serve; each has register(subparsers).
COMMAND_MODULES = ("ops.model_cmd", "ops.triage_cmd", "ops.alerts_cmd", "ops.train_cmd", "ops.gate_cmd",
                   "ops.ingest", "ops.web.cmd", "ops.bench_cmd",
                   "ops.chaos.cmd", "ops.replay.cli")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        settings = load_settings()
        return int(args.func(args, settings) or 0)
    except ECGScreenError as err:
        print(f"ecgscreen: {err.reason}: {err.detail}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ecgscreen", description=__doc__)
    sub = p.add_subparsers(metavar="COMMAND")
    _stack_commands(sub.add_parser("stack", help="embedded Kafka-protocol broker + Redis on loopback"))
    w = sub.add_parser("worker", help="run the screening worker (until SIGTERM)")
    w.add_argument("--processes", type=int, default=1,
                   help="worker processes in the consumer group, supervised (default 1; at most the partitions)")
    w.add_argument("--gpus", default="", help="comma-separated GPU ids, one per process in turn (e.g. 0,1)")
    w.set_defaults(func=cmd_worker)
    d = sub.add_parser("demo", help="run the demo pipeline on the embedded stack and print a summary")
    d.add_argument("--records", type=int, default=150, help="records in the feed (default 150)")
    d.add_argument("--data-dir", type=Path, default=DEFAULT_SHARED_DATA,
                   help="PTB-XL npz+csv folder; simulated ECGs when absent (default ../shared/data)")
    d.add_argument("--rate", type=float, default=50.0, help="events per second published (default 50)")
    d.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the settings' bundle)")
    d.add_argument("--json", action="store_true", help="print the summary as JSON too")
    d.add_argument("--with-echo-example", action="store_true",
                   help="echo heads trained on a SYNTHETIC linked cohort (built once; alerts flagged synthetic_labels)")
    d.set_defaults(func=cmd_demo)
    _event_commands(sub.add_parser("events", help="validate and produce ecg.event/v1 payloads"))
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return p


def _stack_commands(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(metavar="ACTION")
    up = sub.add_parser("up", help="start broker and Redis, create topics")
    up.add_argument("--partitions", type=int, default=None)
    up.add_argument("--kafka-port", type=int, default=0)
    up.add_argument("--redis-port", type=int, default=0)
    up.set_defaults(func=cmd_stack_up)
    sub.add_parser("down", help="stop them").set_defaults(func=cmd_stack_down)
    sub.add_parser("status", help="where they run").set_defaults(func=cmd_stack_status)


def _event_commands(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(metavar="ACTION")
    v = sub.add_parser("validate", help="one JSON line per input line: {line, ok, reason}")
    v.add_argument("file", type=Path)
    v.set_defaults(func=cmd_events_validate)
    n = sub.add_parser("from-npz", help="events from a PTB-XL-style npz + metadata csv")
    n.add_argument("npz", type=Path)
    n.add_argument("csv", type=Path)
    n.add_argument("--limit", type=int, default=None)
    n.set_defaults(func=cmd_events_from_npz)
    f = sub.add_parser("from-wfdb", help="events from WFDB records (header path, with or without .hea)")
    f.add_argument("paths", type=Path, nargs="+")
    f.add_argument("--window-s", type=float, default=10.0, help="longer records become windows of this length")
    f.set_defaults(func=cmd_events_from_wfdb)
    importlib.import_module("ops.events_cmd").register_actions(sub)  # convert, publish


def cmd_stack_up(args: argparse.Namespace, settings: Settings) -> int:
    from ops.stack import stack_up

    parts = args.partitions or settings.kafka.partitions
    info = stack_up(settings.state_dir / "stack", settings.kafka.topics.all(), parts,
                    args.kafka_port, args.redis_port)
    print_json({"kafka_bootstrap": info.kafka_bootstrap, "redis_url": info.redis_url,
                 "topics": info.topics, "partitions": info.partitions, "env": info.env()})
    return 0


def cmd_stack_down(args: argparse.Namespace, settings: Settings) -> int:
    from ops.stack import stack_down

    stopped = stack_down(settings.state_dir / "stack")
    print("stopped" if stopped else "no stack recorded")
    return 0


def cmd_stack_status(args: argparse.Namespace, settings: Settings) -> int:
    from ops.stack import stack_status

    status = stack_status(settings.state_dir / "stack")
    print_json(status)
    return 0 if status["running"] else 3


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    if args.processes > 1 or args.gpus:
        from ops.supervise import supervise

        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
        return supervise(max(1, args.processes), settings.state_dir, gpus)
    from workers.main import run_worker

    run_worker(settings)
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from ops.demo import DemoConfig, run_demo

    cfg = DemoConfig(state_dir=settings.state_dir / "demo", data_dir=args.data_dir, n_records=args.records,
                     rate_per_s=args.rate, bundle_path=args.bundle)
    if args.with_echo_example:
        from ops.echo_demo import BANNER, echo_example_bundle

        print(BANNER)
        bundle = echo_example_bundle(cfg.state_dir, args.data_dir, args.bundle or settings.bundle_path)
        cfg = dataclasses.replace(cfg, bundle_path=bundle, allow_synthetic_labels=True)
    summary = run_demo(cfg)
    if args.with_echo_example:
        print(BANNER)
    if args.json:
        print_json(summary)
    return 0 if summary["events_without_outcome"] == 0 and summary["events_with_more_than_one_outcome"] == 0 else 1


def cmd_events_validate(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.codec import DecodeError, decode_event

    bad = 0
    with open(args.file, "rb") as f:
        for n, line in enumerate(f, start=1):
            try:
                decode_event(line.rstrip(b"\r\n"))
                reason = None
            except DecodeError as err:
                reason, bad = str(err.reason), bad + 1
            print_json({"line": n, "ok": reason is None, "reason": reason})
    return 1 if bad else 0


def cmd_events_from_npz(args: argparse.Namespace, settings: Settings) -> int:
    from ops.feed import ptbxl_records

    write_lines(r.encode() for r in ptbxl_records(args.npz, args.csv, args.limit))
    return 0


def cmd_events_from_wfdb(args: argparse.Namespace, settings: Settings) -> int:
    from ops.feed import wfdb_records

    def warn(text: str) -> None:
        print(f"ecgscreen: warning: {text}", file=sys.stderr)

    write_lines(r.encode() for r in wfdb_records(args.paths, args.window_s, warn))
    return 0


def write_lines(lines: Iterable[bytes]) -> None:
    out = sys.stdout.buffer
    for line in lines:
        out.write(line + b"\n")
    out.flush()


def print_json(obj: object) -> None:
    sys.stdout.write(orjson.dumps(obj, default=str).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
