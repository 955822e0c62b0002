"""`ecgscreen model ...`: model bundles."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ops.cli import print_json
from workers.settings import Settings


def register(sub: Any) -> None:
    p = sub.add_parser("model", help="model bundles")
    actions = p.add_subparsers(metavar="ACTION")
    i = actions.add_parser("init-untrained", help="write a randomly initialised bundle (integration testing)")
    i.add_argument("out", type=Path)
    i.add_argument("--arch", choices=("r18", "r34"), default="r18")
    i.add_argument("--seed", type=int, default=0)
    i.set_defaults(func=cmd_init_untrained)


def cmd_init_untrained(args: argparse.Namespace, settings: Settings) -> int:
    from models.bundle import init_untrained_bundle

    bundle = init_untrained_bundle(args.out, arch=args.arch, seed=args.seed)
    print_json({"path": str(args.out), "sha256": bundle.sha256, "trained": False})
    return 0
