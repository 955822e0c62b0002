"""`ecgscreen gate ...`: run the signal-quality gate on files, and check it against PTB-XL."""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ops.cli import DEFAULT_SHARED_DATA, print_json
from workers.gate import RecordQuality, gate_batch
from workers.settings import Settings

_CHUNK = 256  # events read before gating (bounded memory on long JSONL files)
_BATCH = 64
_PTBXL_ID = re.compile(r"^ptbxl-(\d+)-")


def register(sub: Any) -> None:
    p = sub.add_parser("gate", help="signal-quality gate: run it on files, check it against PTB-XL")
    actions = p.add_subparsers(metavar="ACTION")
    r = actions.add_parser("run", help="one JSON line per record: id, status, reasons, bad_leads, indices")
    r.add_argument("inputs", type=Path, nargs="+", metavar="FILE", help="NPZ CSV (PTB-XL style) or EVENTS.jsonl")
    r.add_argument("--limit", type=int, default=None, help="first N records of an npz")
    r.set_defaults(func=cmd_run)
    c = actions.add_parser("check", help="agreement with PTB-XL noise annotations, neurokit2, synthetic faults")
    c.add_argument("--data-dir", type=Path, default=DEFAULT_SHARED_DATA)
    c.add_argument("--rate", type=int, choices=(500, 100), default=500)
    c.add_argument("--limit", type=int, default=120, help="records for the neurokit2 baseline (default 120)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--no-baseline", action="store_true", help="skip neurokit2 (gate figures only)")
    c.add_argument("--records", type=int, default=None, help="use only the first N records (quick look)")
    c.add_argument("--json", action="store_true", help="print the report as one JSON object instead")
    c.set_defaults(func=cmd_check)
    f = actions.add_parser("fit-precordial", help="fit the precordial-order model on PTB-XL (writes its JSON)")
    f.add_argument("--data-dir", type=Path, default=DEFAULT_SHARED_DATA)
    f.add_argument("--out", type=Path, default=None, help="default: the gate's shipped precordial_model.json")
    f.set_defaults(func=cmd_fit_precordial)


def _line(key: str, ident: object, q: RecordQuality) -> dict[str, Any]:
    return {key: ident, "status": q.status.value, "reasons": [r.value for r in q.reasons],
            "bad_leads": list(q.bad_leads), "indices": q.indices}


def _npz_lines(npz: Path, csv_path: Path, limit: int | None) -> Iterator[dict[str, Any]]:
    from ops.feed import ptbxl_records
    from ops.gate_check import rails_for

    records = list(ptbxl_records(npz, csv_path, limit))
    for start in range(0, len(records), _BATCH):
        chunk = records[start : start + _BATCH]
        x = np.stack([rec.signal_mv for rec in chunk])
        for rec, q in zip(chunk, gate_batch(x, chunk[0].fs, chunk[0].leads, rails_mv=rails_for(*x.shape[:2])),
                          strict=True):
            match = _PTBXL_ID.match(rec.event_id)
            yield _line("ecg_id", int(match.group(1)) if match else rec.event_id, q)


def _gate_events(events: Sequence[Any]) -> list[RecordQuality]:
    """Gate decoded events in groups of equal rate, leads and length; results in input order."""
    groups: dict[tuple[float, tuple[str, ...], int], list[int]] = defaultdict(list)
    for i, e in enumerate(events):
        groups[(e.sampling_rate_hz, e.leads, e.n_samples)].append(i)
    out: list[RecordQuality | None] = [None] * len(events)
    for (fs, leads, _), idx in groups.items():
        x = np.stack([events[i].signal_mv for i in idx])
        rails = None if any(events[i].rails_mv is None for i in idx) else np.stack([events[i].rails_mv for i in idx])
        for i, q in zip(idx, gate_batch(x, fs, leads, rails_mv=rails), strict=True):
            out[i] = q
    return [q for q in out if q is not None]


def _jsonl_lines(path: Path) -> Iterator[dict[str, Any]]:
    """Gate each event of a JSONL file, ``_CHUNK`` lines at a time; undecodable lines say why."""
    from schemas.codec import DecodeError, decode_event

    with open(path, "rb") as f:
        numbered = enumerate(f, start=1)
        while chunk := [(n, line.rstrip(b"\r\n")) for n, line in itertools.islice(numbered, _CHUNK)]:
            decoded = []
            for n, payload in chunk:
                if not payload.strip():
                    continue
                try:
                    decoded.append(decode_event(payload))
                except DecodeError as err:
                    yield {"line": n, "event_id": None, "error": str(err.reason), "detail": err.detail}
            for e, q in zip(decoded, _gate_events(decoded), strict=True):
                yield _line("event_id", e.event_id, q)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    files = list(args.inputs)
    if len(files) == 2:
        lines = _npz_lines(files[0], files[1], args.limit)
    elif len(files) == 1:
        lines = _jsonl_lines(files[0])
    else:
        print("ecgscreen gate run: give NPZ CSV or one EVENTS.jsonl", file=sys.stderr)
        return 2
    failed = 0
    for line in lines:
        failed += "error" in line
        print_json(line)
    return 1 if failed else 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from ops.gate_check import format_report, run_check

    if not (args.data_dir / f"ptbxl_folds1-8_{args.rate}hz.npz").exists():
        print(f"ecgscreen gate check: no PTB-XL data in {args.data_dir}", file=sys.stderr)
        return 2
    report = run_check(args.data_dir, args.rate, args.limit, args.seed, baseline=not args.no_baseline,
                       records=args.records)
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
    return 0


def cmd_fit_precordial(args: argparse.Namespace, settings: Settings) -> int:
    from ops.gate_fit import default_output, fit_precordial, write_model

    if not (args.data_dir / "ptbxl_folds1-8_100hz.npz").exists():
        print(f"ecgscreen gate fit-precordial: no PTB-XL data in {args.data_dir}", file=sys.stderr)
        return 2
    model, provenance = fit_precordial(args.data_dir)
    out = args.out or default_output()
    write_model(model, out)
    weights = [round(float(w), 3) for w in model.weights]
    print_json({"out": str(out), "records": provenance["records"], "weights": weights,
                "fit_gain_quantiles": provenance["fit_gain_quantiles"],
                "suggested_thresholds": provenance["suggested_thresholds"]})
    return 0
