"""`ecgscreen bench worker`: the worker's load benchmark (see ops.bench_worker)."""

from __future__ import annotations

import argparse
from typing import Any

from workers.settings import Settings


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks that need the whole stack")
    actions = p.add_subparsers(metavar="ACTION")
    w = actions.add_parser("worker", help="offered rate -> throughput and latency; writes docs/performance.md")
    from ops.bench_worker import add_arguments

    add_arguments(w)
    w.set_defaults(func=cmd_bench_worker)


def cmd_bench_worker(args: argparse.Namespace, settings: Settings) -> int:
    from ops.bench_report import write_report
    from ops.bench_worker import config_from, run

    cfg = config_from(args)
    report = run(cfg)
    write_report(report, cfg.out, "ecgscreen bench worker " + _flags(args))
    print(f"wrote {cfg.out} and {cfg.out.with_suffix('.png')}")
    return 0


def _flags(args: argparse.Namespace) -> str:
    skip = {"func"}
    parts = []
    for k, v in sorted(vars(args).items()):
        if k in skip:
            continue
        value = " ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) if isinstance(v, list | tuple) else v
        parts.append(f"--{k.replace('_', '-')} {value}")
    return " ".join(parts)
