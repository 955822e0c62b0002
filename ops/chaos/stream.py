"""Scenarios about the worker process itself: killed, stopped, rebalanced, replayed, soaked."""

from __future__ import annotations

import asyncio
import random
import signal
import time

from ops.chaos.account import clean_feed, produce, wait_committed
from ops.chaos.common import chunks, collecting, keys_of, published, settle, summary, wait_progress, wait_some
from ops.chaos.harness import Worker
from ops.chaos.run import Ctx
from ops.demo import FeedItem
from ops.outputs import OutputCollector

EXIT_BOUND_S = 10.0


async def kill9(ctx: Ctx) -> None:
    """SIGKILL the worker at random points of the stream; a successor takes over each time."""
    rig, res = ctx.need_rig(), ctx.result
    kills, n = ctx.size(2, 20), ctx.size(96, 2000)
    items = clean_feed(n, ctx.cfg.seed)
    settings = rig.settings()
    rng = random.Random(ctx.cfg.seed)
    parts = chunks(items, kills + 1)
    recovery: list[float] = []
    async with collecting(settings) as out:
        killed_at: float | None = None
        for k, part in enumerate(parts):
            worker = rig.spawn(f"worker-{k:02d}")
            before = published(out)
            await worker.wait_ready()
            await produce(settings, part)
            if killed_at is not None:
                if await wait_progress(out, before, 120) is None:
                    raise TimeoutError(f"no outcome after restart {k}")
                recovery.append(time.monotonic() - killed_at)
            if k == kills:
                break
            # A random point of this chunk: after 1..len-1 of its outcomes, plus a random few ms.
            await wait_some(out, keys_of(part), rng.randint(1, len(part) - 1), 120)
            await asyncio.sleep(rng.uniform(0, 0.05))
            worker.send(signal.SIGKILL)
            await worker.wait_exit(5)
            killed_at = time.monotonic()
        t = await settle(ctx, settings, items, out)
    redelivered = t.stats.get("duplicates_skipped", 0) + t.republished
    res.done = f"SIGKILL of the worker at a random point of the stream, successor started each time ({n} events)"
    res.times, res.recovery_s = kills, max(recovery, default=None)
    res.figures.update(recovery_s=summary(recovery), redelivered_events=redelivered,
                       duplicates_skipped=t.stats.get("duplicates_skipped", 0), republished=t.republished)
    res.check(f"{kills} kills done", len(recovery) == kills)
    res.check("redelivery observed", redelivered > 0)


async def sigterm(ctx: Ctx) -> None:
    """SIGTERM mid-batch, with the broker frozen, with Redis down: exit within 10 s, nothing lost."""
    rig, res = ctx.need_rig(), ctx.result
    n = ctx.size(20, 300)
    settings = rig.settings()
    items = clean_feed(3 * n, ctx.cfg.seed)
    exits: dict[str, dict[str, object]] = res.figures.setdefault("exits", {})  # kept if a later step fails
    async with collecting(settings) as out:
        for case, part in zip(("mid_batch", "broker_down", "redis_down"), chunks(items, 3), strict=True):
            worker = rig.spawn(f"worker-{case}")
            await worker.wait_ready()
            await produce(settings, part)
            await wait_some(out, keys_of(part), max(1, len(part) // 4), 120)
            exits[case] = await _term_during(ctx, worker, case)
            await _heal(ctx, case)
        successor = rig.spawn("worker-after")
        await successor.wait_ready()
        await settle(ctx, settings, items, out)
    res.done = "SIGTERM while batches are in flight: plain, with the broker frozen (SIGSTOP), with Redis killed"
    res.times = len(exits)
    res.recovery_s = max(float(e["exit_s"]) for e in exits.values())  # type: ignore[arg-type]
    for case, e in exits.items():
        res.check(f"{case}: exited by itself within {EXIT_BOUND_S:.0f} s", e["code"] is not None
                  and float(e["exit_s"]) <= EXIT_BOUND_S)  # type: ignore[arg-type]


async def _term_during(ctx: Ctx, worker: Worker, case: str) -> dict[str, object]:
    rig = ctx.need_rig()
    if case == "broker_down":
        rig.freeze("broker", True)
    elif case == "redis_down":
        rig.kill_redis()
    await asyncio.sleep(1.0 if case != "mid_batch" else 0.0)  # let the fault bite
    code, took = await worker.stop(signal.SIGTERM, timeout_s=30)
    return {"code": code, "exit_s": round(took, 2)}


async def _heal(ctx: Ctx, case: str) -> None:
    rig = ctx.need_rig()
    if case == "broker_down":
        rig.freeze("broker", False)
    elif case == "redis_down":
        await rig.restart_redis()


async def rebalance(ctx: Ctx) -> None:
    """3 workers on 6 partitions; members leave (SIGTERM, or SIGKILL every third time) and join."""
    rig, res = ctx.need_rig(), ctx.result
    cycles, n = ctx.size(2, 8), ctx.size(150, 2000)
    items = clean_feed(n, ctx.cfg.seed)
    settings = rig.settings()
    rng = random.Random(ctx.cfg.seed)
    members = [rig.spawn(f"worker-{i}") for i in range(3)]
    await asyncio.gather(*(w.wait_ready() for w in members))
    rate = n / (cycles * 12.0 + 10.0)  # the feed spans the churn
    leave_codes: list[int | None] = []  # the exit-time bound is the sigterm scenario's; here: data
    leave_s: list[float] = []
    async with collecting(settings) as out:
        feeding = asyncio.create_task(produce(settings, items, rate_per_s=rate))
        for c in range(cycles):
            await asyncio.sleep(rng.uniform(2.0, 4.0) if not ctx.cfg.long else rng.uniform(3.0, 8.0))
            leaving = members.pop(rng.randrange(len(members)))
            sig = signal.SIGKILL if c % 3 == 2 else signal.SIGTERM
            code, took = await leaving.stop(sig, timeout_s=30)
            leave_codes.append(code)
            leave_s.append(round(took, 1))
            joining = rig.spawn(f"worker-{3 + c}")
            members.append(joining)
            await joining.wait_ready()
        await feeding
        await settle(ctx, settings, items, out, timeout_s=240)
    res.done = f"3 workers on 6 partitions, {cycles} leave/join cycles while {n} events stream in"
    res.times = cycles
    res.figures.update(leave_exit_codes=leave_codes, leave_exit_s=leave_s, rate_per_s=round(rate, 1))
    res.check("every leaver stopped by itself (within 30 s)", all(c is not None for c in leave_codes))


async def replay(ctx: Ctx) -> None:
    """1,000 events delivered twice, then the topic replayed from offset 0 by a new group."""
    rig, res = ctx.need_rig(), ctx.result
    n = ctx.size(100, 1000)
    items = clean_feed(n, ctx.cfg.seed)
    settings = rig.settings()
    async with collecting(settings) as out:
        worker = rig.spawn("worker")
        await worker.wait_ready()
        await produce(settings, items + items)  # every event delivered twice
        t = await settle(ctx, settings, items, out)
        entries = t.stats.get("triage_entries_added", 0)
        await worker.stop()
        # The ops replay: the whole topic again, from offset 0, under a fresh consumer group.
        replayer = rig.spawn("replayer", ECGSCREEN_GROUP_ID="ecgscreen-chaos-replay")
        await replayer.wait_ready()
        fresh = rig.settings(ECGSCREEN_GROUP_ID="ecgscreen-chaos-replay")
        res.check("the replay group committed to the end", await wait_committed(fresh, timeout_s=120))
        t2 = await settle(ctx, settings, items, out)
    skipped = t2.stats.get("duplicates_skipped", 0)
    res.done = f"{n} events each delivered twice, then the topic replayed from offset 0 by a new consumer group"
    res.times = 2
    res.events_sent = 2 * 2 * n  # two deliveries, read twice
    res.figures.update(triage_entries_after_first_pass=entries,
                       triage_entries_after_replay=t2.stats.get("triage_entries_added", 0),
                       duplicates_skipped=skipped)
    res.check("0 new triage entries from the replay", t2.stats.get("triage_entries_added", 0) == entries)
    res.check("every delivery after the first skipped", skipped == 3 * n)


async def soak(ctx: Ctx) -> None:
    """A steady rate for a long while: the worker's memory and the events' latency over time."""
    rig, res = ctx.need_rig(), ctx.result
    duration = ctx.cfg.soak_s or ctx.size(15, 1800)
    rate = 4.0
    items = clean_feed(int(duration * rate), ctx.cfg.seed)
    settings = rig.settings()
    worker = rig.spawn("worker")
    await worker.wait_ready()
    samples: list[dict[str, float]] = []
    async with collecting(settings) as out:
        t0 = time.time()
        feeding = asyncio.create_task(produce(settings, items, rate_per_s=rate))
        while not feeding.done():
            samples.append({"t_s": round(time.time() - t0, 1), "rss_mb": _rss_mb(worker)})
            await asyncio.wait([feeding], timeout=max(1.0, duration / 60))
        await feeding
        await settle(ctx, settings, items, out)
        series = _series(out, items, t0, samples, duration)
    first, last = series[0], series[-1]
    res.done = (f"{duration / 60:.1f} min at a steady {rate:g} events/s ({len(items)} events), "
                "worker memory and event latency sampled")
    res.times = 1
    res.figures.update(duration_s=duration, rate_per_s=rate, series=series)
    res.recovery_s = None
    growth = last["rss_mb"] / max(first["rss_mb"], 1.0)
    res.figures["rss_growth"] = round(growth, 3)
    res.check("memory bounded (last window <= 1.25 x first)", growth <= 1.25)
    res.check("latency bounded (p99 of each window < 10 s)", all(w["p99_ms"] < 10_000 for w in series))


def _rss_mb(worker: Worker) -> float:
    from pathlib import Path

    try:
        for line in Path(f"/proc/{worker.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _series(out: OutputCollector, items: list[FeedItem], t0: float, samples: list[dict[str, float]],
            duration: float) -> list[dict[str, float]]:
    """Per window (a tenth of the run): worker RSS, and median/p99 latency of events sent in it."""
    import numpy as np

    period = len(items) / duration
    sent_at = {it.key: t0 + n / period for n, it in enumerate(items)}
    windows = 10
    rows = []
    for w in range(windows):
        lo, hi = w * duration / windows, (w + 1) * duration / windows
        lat = [(out.first_seen_at[k] - t) * 1000 for k, t in sent_at.items()
               if lo <= t - t0 < hi and k in out.first_seen_at]
        rss = [s["rss_mb"] for s in samples if lo <= s["t_s"] < hi] or [0.0]
        rows.append({"t_s": round(hi, 1), "rss_mb": max(rss), "events": len(lat),
                     "median_ms": round(float(np.median(lat)), 1) if lat else -1.0,
                     "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat else -1.0})
    return rows
