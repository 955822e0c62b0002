"""`replay backfill --via-topic T`: publish the events to a topic that any number of workers consume.

For an archive of millions: partitions are the unit of scale. Run the workers on it with
``ECGSCREEN_TOPIC_EVENTS=T ECGSCREEN_BACKFILL=1`` (their alerts are then flagged ``backfill`` and go
to the backfill review queue, as with an in-process backfill) and a group id of their own. The
events keep their ids, so the workers' outcome ledger skips any already handled, live or backfilled.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ops.events_cmd import EventProducer
from ops.replay import checkpoint as ckpt
from ops.replay.progress import Progress
from ops.replay.sources import SourceOptions, event_key, read
from workers.settings import Settings

CHUNK = 256  # events sent together, then checkpointed once every ack is in


async def publish(args: argparse.Namespace, settings: Settings, opts: SourceOptions) -> dict[str, Any]:
    fp = ckpt.fingerprint(mode="via-topic", topic=args.via_topic, sources=args.sources, limit=args.limit)
    path = args.checkpoint or settings.state_dir / "replay" / f"via-topic-{fp}.json"
    cp = ckpt.load(path, fp)
    opts.plan = cp.plan
    target = settings.with_overrides(kafka=_topic(settings, args.via_topic))
    progress, started, n, chunk = Progress(None, cp.done), time.perf_counter(), 0, []
    async with EventProducer(target) as producer:
        async for item in read(args.sources, opts):
            n += 1
            if n <= cp.done:
                continue
            if args.limit is not None and n > args.limit:
                break
            chunk.append((event_key(item.value) or f"n{n}", item.value))
            if len(chunk) == CHUNK:
                await _flush(producer, chunk, cp, path, progress, args.dry_run)
        await _flush(producer, chunk, cp, path, progress, args.dry_run)
    progress.close()
    seconds = time.perf_counter() - started
    return {"mode": "backfill", "via_topic": args.via_topic, "published": cp.counts.get("published", 0),
            "dry_run": args.dry_run, "seconds": round(seconds, 2)}


async def _flush(producer: EventProducer, chunk: list[tuple[str, bytes]], cp: ckpt.Checkpoint, path: Any,
                 progress: Progress, dry_run: bool) -> None:
    if not chunk:
        return
    if not dry_run:
        await producer.send_all(chunk)
    cp.done += len(chunk)
    cp.counts["published"] = cp.counts.get("published", 0) + len(chunk)
    ckpt.save(path, cp)
    progress.update(len(chunk), cp.counts)
    chunk.clear()


def _topic(settings: Settings, topic: str) -> Any:
    import dataclasses

    return dataclasses.replace(settings.kafka, topics=dataclasses.replace(settings.kafka.topics, events=topic))
