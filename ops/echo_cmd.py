"""`ecgscreen train link-echo | synth-cohort | shard | embed | echo-probe | fit`: echo heads from a site's own data.

The path (README "Training echo heads on your data"): ECG events + an echo table -> ``link-echo``
(labels by the catalog's rules, nearest echo within a window, patient-disjoint splits) ->
``shard`` (signals as memory-mapped arrays + an index) -> ``embed`` (the encoder of a bundle over
the shard) -> ``echo-probe`` (one calibrated linear head per task -> a bundle that records its
label source), or ``fit`` (data-parallel training of the encoder itself, torchrun/DDP). ``synth-cohort``
builds a declared-synthetic linked cohort from PTB-XL to prove the path end to end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ops.cli import print_json
from workers.settings import DEFAULT_BUNDLE, Settings


def register_actions(actions: Any) -> None:
    _link_parser(actions)
    _synth_parser(actions)
    _shard_parser(actions)
    _embed_parser(actions)
    _probe_parser(actions)
    _fit_parser(actions)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- link-echo -------------------------------------------------------------------------------------


def _link_parser(actions: Any) -> None:
    from models.train.echo.link import DEFAULT_WINDOW_DAYS

    p = actions.add_parser("link-echo", help="ECG events + echo table (or EchoNext-style labels) -> linked labels")
    p.add_argument("--events", type=Path, action="append", default=[],
                   help="ecg.event/v1 JSON lines (repeatable; vendor files: convert them with `events convert`)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--echo", type=Path, help="echo table, CSV or Parquet: patient, study time, measurements/grades")
    src.add_argument("--labels", type=Path, help="EchoNext-style label file: ecg_id + the 12 binary columns")
    p.add_argument("--patient-column", default=None, help="patient column (echo table default: patient_ref)")
    p.add_argument("--time-column", default="study_time", help="echo study time column (default study_time)")
    p.add_argument("--window-days", type=float, default=DEFAULT_WINDOW_DAYS,
                   help=f"largest |echo - ECG| time in days (default {DEFAULT_WINDOW_DAYS:g}; see README)")
    p.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--salt", default="ecgscreen-split-v1", help="split hash salt (change it to redraw splits)")
    p.add_argument("--out", type=Path, required=True, help="folder for linked.csv and summary.json")
    p.set_defaults(func=cmd_link_echo)


def cmd_link_echo(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from models.echo_catalog import load_echo_catalog
    from models.train.echo import link as lk
    from models.train.echo.tables import LinkageError, read_event_refs, read_table, require_columns

    cat = load_echo_catalog()
    refs = {r.ecg_id: r for path in args.events for r in read_event_refs(path)}
    if args.echo is not None:
        if not refs:
            raise LinkageError("--echo needs the ECGs: pass --events")
        patient = args.patient_column or "patient_ref"
        table = read_table(args.echo)
        require_columns(table, (patient, args.time_column), args.echo)
        studies = lk.echo_studies(table, patient, args.time_column, cat)
        rows = lk.link(refs.values(), studies, args.window_days, args.fractions, args.salt)
        source = {"echo_table": str(args.echo), "studies": len(studies), "window_days": args.window_days}
    else:
        table = read_table(args.labels)
        rows = lk.echonext_labels(table, refs, args.patient_column, args.fractions, args.salt, cat, args.labels)
        source = {"echonext_labels": str(args.labels)}
    lk.write_manifest(rows, cat.task_ids, args.out / "linked.csv")
    summary = {**source, "ecgs_in": len(refs), "ecgs_linked": len(rows), "manifest": str(args.out / "linked.csv"),
               "fractions": list(args.fractions), "salt": args.salt, "counts": lk.counts(rows, cat.task_ids)}
    (args.out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print_json(summary)
    return 0


# --- the rest of the path (filled in below) --------------------------------------------------------


def _synth_parser(actions: Any) -> None:
    pass


def _shard_parser(actions: Any) -> None:
    pass


def _embed_parser(actions: Any) -> None:
    pass


def _probe_parser(actions: Any) -> None:
    pass


def _fit_parser(actions: Any) -> None:
    _ = DEFAULT_BUNDLE
