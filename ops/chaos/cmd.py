"""`ecgscreen chaos run [SCENARIO] [--long]` and `ecgscreen chaos report`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from workers.settings import Settings


def register(sub: Any) -> None:
    p = sub.add_parser("chaos", help="the fault suite: scenarios on a real broker and Redis, and their table")
    actions = p.add_subparsers(metavar="ACTION")
    r = actions.add_parser("run", help="run one scenario (or all) and write its JSON result")
    r.add_argument("scenario", nargs="?", default="all", help="a scenario name, or all (default)")
    r.add_argument("--long", action="store_true", help="the full sizes (thousands of events, 30 min soak)")
    r.add_argument("--results", type=Path, default=Path("docs/chaos"), help="where JSON results go")
    r.add_argument("--work-dir", type=Path, default=None, help="scratch space (default STATE_DIR/chaos)")
    r.add_argument("--seed", type=int, default=11)
    r.add_argument("--bundle", type=Path, default=None, help="model bundle (default: small untrained R18)")
    r.add_argument("--soak-s", type=float, default=None, help="soak duration in seconds (long: 1800)")
    r.set_defaults(func=cmd_run)
    rep = actions.add_parser("report", help="write docs/reliability.md from the JSON results")
    rep.add_argument("--results", type=Path, default=Path("docs/chaos"))
    rep.add_argument("--out", type=Path, default=Path("docs/reliability.md"))
    rep.set_defaults(func=cmd_report)
    actions.add_parser("list", help="the scenarios").set_defaults(func=cmd_list)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from ops.chaos.run import ChaosConfig, run_scenario
    from ops.chaos.scenarios import SCENARIOS

    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"ecgscreen: unknown scenario {unknown[0]!r}; one of {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    cfg = ChaosConfig(long=args.long, work_dir=args.work_dir or settings.state_dir / "chaos",
                      results_dir=args.results, seed=args.seed, bundle=args.bundle, soak_s=args.soak_s)
    failed = 0
    for name in names:
        command = "ecgscreen chaos run " + shlex.join([name, *(["--long"] if args.long else []),
                                                       *([f"--soak-s={args.soak_s:g}"] if args.soak_s else [])])
        res = run_scenario(SCENARIOS[name], cfg, command)
        failed += not res.passed
        bad = [k for k, ok in res.checks.items() if not ok]
        print(f"{name:<10} {'PASS' if res.passed else 'FAIL'}  {res.duration_s:6.1f} s  "
              f"sent {res.events_sent} lost {res.lost} dup {res.duplicated}"
              + (f"  error: {res.error}" if res.error else "") + (f"  failed: {'; '.join(bad)}" if bad else ""))
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from ops.chaos.report import write_report

    rows = write_report(args.results, args.out)
    print(f"wrote {args.out} ({rows} scenario rows)")
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from ops.chaos.scenarios import SCENARIOS

    for s in SCENARIOS.values():
        print(f"{s.name:<10} {s.title}")
    return 0
