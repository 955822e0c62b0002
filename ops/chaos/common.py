"""Small pieces the scenarios share: an output collector for a block, progress waits, figures."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Iterable, Sequence

from ops.chaos.account import Tally, tally, wait_committed
from ops.chaos.run import Ctx
from ops.demo import FeedItem
from ops.outputs import OutputCollector
from workers.settings import Settings


@contextlib.asynccontextmanager
async def collecting(settings: Settings) -> AsyncIterator[OutputCollector]:
    out = OutputCollector(settings.kafka.bootstrap, settings.kafka.topics)
    await out.start()
    try:
        yield out
    finally:
        await out.stop()


def published(out: OutputCollector) -> int:
    """Outcome messages seen so far (a republished one counts again)."""
    return sum(out.outcome_count.values())


async def wait_progress(out: OutputCollector, above: int, timeout_s: float) -> float | None:
    """Seconds until more than ``above`` outcomes were published; None on timeout."""
    t0 = time.monotonic()
    while published(out) <= above:
        if time.monotonic() - t0 > timeout_s:
            return None
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def wait_some(out: OutputCollector, keys: set[str], n: int, timeout_s: float) -> bool:
    """True once at least ``n`` of ``keys`` have an outcome."""
    deadline = time.monotonic() + timeout_s
    while sum(1 for k in keys if k in out.outcome_count) < n:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def chunks(items: Sequence[FeedItem], n: int) -> list[list[FeedItem]]:
    size = -(-len(items) // n)
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def keys_of(items: Iterable[FeedItem]) -> set[str]:
    return {i.key for i in items}


def summary(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"n": len(values), "median": round(statistics.median(values), 2), "max": round(max(values), 2)}


async def settle(ctx: Ctx, settings: Settings, items: Sequence[FeedItem], out: OutputCollector,
                 timeout_s: float = 180.0, both: set[str] | None = None) -> Tally:
    """Wait for every event's outcome and the group's commits, then account and fill the result.

    ``both``: event ids sent twice with different content on purpose (the second copy's
    dead letter, ``event_id_conflict``, stands beside the first copy's verdict)."""
    res = ctx.result
    res.check("every event has an outcome", await out.wait_for(keys_of(items), timeout_s))
    res.check("offsets committed to the end", await wait_committed(settings))
    await asyncio.sleep(1.0)  # a (wrong) second outcome would arrive now
    t = await tally(settings, items, out, both or set())
    res.events_sent, res.lost, res.duplicated, res.deadlettered = t.sent, t.lost, t.duplicated, t.deadlettered
    res.figures["tally"] = t.as_dict()
    res.check("0 lost", t.lost == 0)
    res.check("0 duplicate triage entries", t.duplicated == 0)
    res.check("no event got both a verdict and a dead letter", t.flipped == 0)
    return t
