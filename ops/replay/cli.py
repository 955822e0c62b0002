"""`ecgscreen replay backfill|shadow|audit SOURCE...`: re-run historical ECGs through the live pipeline.

- backfill: verdicts and alerts written as the live worker would (triage store, live topics),
  deduplicated against the outcome ledger; alerts flagged ``backfill`` go to the site's backfill
  review queue (``triage list --queue backfill``), outside the rate limit. ``--via-topic T``
  publishes the events to T instead, for workers run with ``ECGSCREEN_TOPIC_EVENTS=T
  ECGSCREEN_BACKFILL=1`` (the same policy, scaled by partitions).
- shadow --bundle NEW: scored by NEW, written only to the shadow namespace (Redis prefix
  ``<prefix>-shadow``, topics ``<topic>.shadow``); ``--report`` also scores with the live bundle.
- audit: recomputes verdicts and compares them with the recorded ones (``--verdicts``); exit 3
  when a bundle identical to the recorded one disagrees.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from ops.cli import print_json
from ops.replay import checkpoint as ckpt
from ops.replay.compare import Pairs, row_of_verdict
from ops.replay.engine import Job, Summary, run
from ops.replay.sinks import NullSink, Sink, StoreSink, shadow_topics
from ops.replay.sources import KafkaRange, SourceOptions, describe
from schemas.codec import parse_timestamp
from workers.settings import Settings

EXIT_DIFFERENT = 3
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C/SIGTERM (or --stop-after): rerun the command to resume


def register(sub: Any) -> None:
    p = sub.add_parser("replay", help="backfill a site, shadow a new bundle, audit past decisions")
    modes = p.add_subparsers(metavar="MODE")
    for mode, text in (("backfill", "write verdicts and alerts as the live worker would (backfill queue)"),
                       ("shadow", "score with a candidate bundle into the shadow namespace only"),
                       ("audit", "recompute verdicts and compare them with the recorded ones")):
        m = modes.add_parser(mode, help=text)
        _common(m)
        m.set_defaults(func=cmd_replay, mode=mode)
        if mode == "backfill":
            m.add_argument("--via-topic", default=None, help="publish the events to this topic for workers instead")
        if mode == "shadow":
            m.add_argument("--shadow-prefix", default=None, help="Redis prefix (default: <prefix>-shadow)")
            m.add_argument("--shadow-suffix", default=".shadow", help="suffix of the shadow topics")
        if mode == "audit":
            m.add_argument("--verdicts", default=None,
                           help="recorded verdicts: kafka:TOPIC or FILE.jsonl (default: the verdicts topic)")


def _common(m: argparse.ArgumentParser) -> None:
    m.add_argument("sources", nargs="+", help="kafka:TOPIC[:P,P], FILE.jsonl, NPZ[:CSV], WFDB folder, vendor file")
    m.add_argument("--bundle", type=Path, default=None, help="bundle to score with (default: the worker's)")
    m.add_argument("--report", type=Path, default=None, help="write the diff report (Markdown, PNG, JSON) here")
    m.add_argument("--labels", type=Path, default=None, help="PTB-XL data folder for AUROC/PRAUC in the report")
    m.add_argument("--rate-limit", type=float, default=None, help="events/s at most (spare the live worker)")
    m.add_argument("--checkpoint", type=Path, default=None,
                   help="resume file (default: .ecgscreen/replay/<mode>-<fingerprint>.json)")
    m.add_argument("--dry-run", action="store_true", help="screen and count, write nothing")
    m.add_argument("--limit", type=int, default=None, help="at most this many events")
    m.add_argument("--stop-after", type=int, default=None,
                   help="stop as Ctrl-C would once this many events are written (drills, tests)")
    m.add_argument("--max-batch", type=int, default=None, help="model batch (default: ECGSCREEN_MAX_BATCH)")
    m.add_argument("--prep-processes", type=int, default=None, help="prep pool processes (default: settings, >= 1)")
    m.add_argument("--site", default=None, help="vendor/WFDB sources: the site whose secret keys patient_ref")
    m.add_argument("--from-offset", type=int, default=None)
    m.add_argument("--to-offset", type=int, default=None, help="exclusive, per partition")
    m.add_argument("--since", default=None, help="event time (acquired_at) from, RFC 3339")
    m.add_argument("--until", default=None, help="event time (acquired_at) before, RFC 3339")


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    if args.mode == "shadow" and args.bundle is None:
        print("ecgscreen: shadow needs --bundle NEW (the candidate)", file=sys.stderr)
        return 2
    if getattr(args, "via_topic", None):
        from ops.replay.via_topic import publish

        print_json(asyncio.run(publish(args, settings, _opts(args, settings))))
        return 0
    return asyncio.run(_replay(args, settings))


def _opts(args: argparse.Namespace, settings: Settings) -> SourceOptions:
    r = KafkaRange(settings.kafka.bootstrap, args.from_offset, args.to_offset, _time(args.since), _time(args.until))
    intake = None
    if args.site is not None:
        from ops.events_cmd import intake_context

        intake = intake_context(settings, args.site)
    return SourceOptions(r, args.site, intake)


def _time(text: str | None) -> datetime | None:
    return None if text is None else parse_timestamp(text, "--since/--until")


async def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from workers.main import build_screener

    live = settings.with_overrides(policy=dataclasses.replace(settings.policy, backfill=args.mode == "backfill"))
    # Explanations only where a person reads the alert (backfill); shadow and audit decide the same without them.
    explain = args.mode == "backfill"
    screener = dataclasses.replace(build_screener(live.with_overrides(bundle_path=args.bundle or settings.bundle_path)),
                                   explain_alerts=explain)
    baseline = None
    if args.mode == "shadow" and args.report is not None:
        baseline = dataclasses.replace(build_screener(live), explain_alerts=False)
    pairs = Pairs("recorded verdicts" if args.mode == "audit" else "live bundle", screener.bundle.ref.name)
    if args.mode == "audit":
        for v in await _recorded(args, settings):
            pairs.a[v.event_id] = row_of_verdict(v, v.scores)
    opts = _opts(args, settings)
    fp = ckpt.fingerprint(mode=args.mode, sources=args.sources, bundle=screener.bundle.sha256, dry=args.dry_run,
                          range=dataclasses.asdict(opts.kafka), limit=args.limit)
    job = Job(args.sources, opts, screener, _sink(args, settings), baseline, pairs.add_outcomes,
              max_batch=args.max_batch or settings.batch.max_batch,
              prep_processes=args.prep_processes or max(1, settings.batch.prep_processes),
              rate_limit=args.rate_limit, checkpoint=args.checkpoint or _default_cp(settings, args.mode, fp),
              fingerprint=fp, limit=args.limit, stop_after=args.stop_after)
    summary = await run(job)
    return _finish(args, summary, pairs, screener, opts)


def _default_cp(settings: Settings, mode: str, fp: str) -> Path:
    return settings.state_dir / "replay" / f"{mode}-{fp}.json"


def _sink(args: argparse.Namespace, settings: Settings) -> Sink:
    from workers.triage import TriageStore

    if args.mode == "audit" or args.dry_run:  # a dry run touches neither Redis nor Kafka
        return NullSink()
    r = settings.redis
    if args.mode == "shadow":
        r = dataclasses.replace(r, key_prefix=args.shadow_prefix or f"{r.key_prefix}-shadow")
    store = TriageStore.from_settings(r, settings.policy, actor="replay")
    topics = settings.kafka.topics if args.mode == "backfill" else shadow_topics(settings.kafka.topics,
                                                                                  args.shadow_suffix)
    create = settings.kafka.partitions if args.mode == "shadow" else 0
    return StoreSink(store, settings.kafka.bootstrap, topics, r.outcome_ttl_s, create)


async def _recorded(args: argparse.Namespace, settings: Settings) -> list[Any]:
    from ops.replay.sources import read
    from schemas.codec import decode_verdict

    spec = args.verdicts or f"kafka:{settings.kafka.topics.verdicts}"
    opts = SourceOptions(KafkaRange(settings.kafka.bootstrap))
    out, bad = [], 0
    async for item in read([spec], opts):
        try:
            out.append(decode_verdict(item.value))
        except Exception:  # not a verdict: nothing to compare it with
            bad += 1
    if bad:
        print(f"ecgscreen: warning: {bad} recorded messages are not ecg.verdict/v1; skipped", file=sys.stderr)
    return out


def _finish(args: argparse.Namespace, summary: Summary, pairs: Pairs, screener: Any, opts: SourceOptions) -> int:
    result: dict[str, Any] = {"mode": args.mode, "sources": [describe(s) for s in args.sources],
                              "dry_run": args.dry_run, "refused_files": opts.refused, **summary.as_dict()}
    code = 0
    if args.mode == "audit":
        same = all(pairs.a[k].model == pairs.b[k].model for k in pairs.b if k in pairs.a)
        result["audit"] = {"recorded": len(pairs.a), **pairs.audit(same_model=same)}
        if same and result["audit"]["differing_events"]:
            code = EXIT_DIFFERENT
    if args.report is not None:
        from ops.replay.report import ptbxl_labels, write

        labels = ptbxl_labels(args.labels, screener.bundle.task_ids) if args.labels else None
        write(args.report, pairs, labels, "ecgscreen " + shlex.join(sys.argv[1:]))
        result["report"] = str(args.report / "report.md")
    print_json(result)
    return EXIT_INTERRUPTED if summary.interrupted else code
