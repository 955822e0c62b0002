"""Scenarios about the worker's dependencies: Redis refusing, hanging or slow; the broker lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ops.chaos.account import clean_feed, offsets, produce, wait_committed
from ops.chaos.common import chunks, collecting, keys_of, settle
from ops.chaos.harness import Worker
from ops.chaos.proxy import Mode, TcpProxy
from ops.chaos.run import Ctx
from ops.demo import FeedItem
from ops.outputs import OutputCollector
from ops.stack import create_topics
from workers.settings import Settings

# The worker's durable-write deadline in the Redis scenario: short, so "past the deadline" fits the suite.
REDIS_DEADLINE_S = 12


async def redis_faults(ctx: Ctx) -> None:
    """Redis behind a proxy the scenario steers: refusing, blackholed, slow, then hung past the deadline."""
    rig, res = ctx.need_rig(), ctx.result
    proxy = TcpProxy(rig.info.redis_port, delay_s=0.25)
    proxy.start()
    try:
        await _redis_phases(ctx, proxy)
    finally:
        proxy.close()
    res.done = ("Redis through a loopback TCP proxy: refusing, blackholed and slow (each while events arrive, "
                f"then healed), then blackholed past the {REDIS_DEADLINE_S} s durable-write deadline")


async def _redis_phases(ctx: Ctx, proxy: TcpProxy) -> None:
    rig, res = ctx.need_rig(), ctx.result
    url = f"redis://127.0.0.1:{proxy.port}/0"
    fault_s, per = ctx.size(5, 8), ctx.size(16, 200)  # each < REDIS_DEADLINE_S
    items = clean_feed(5 * per, ctx.cfg.seed)
    parts = chunks(items, 5)
    settings = rig.settings()
    worker = rig.spawn("worker", ops=True, ECGSCREEN_REDIS_URL=url)
    await worker.wait_ready()
    phases: dict[str, dict[str, Any]] = {}
    async with collecting(settings) as out:
        await produce(settings, parts[0])
        await out.wait_for(keys_of(parts[0]), 120)
        await wait_committed(settings)
        for mode, part in zip((Mode.REFUSE, Mode.BLACKHOLE, Mode.SLOW), parts[1:4], strict=True):
            phases[mode.value] = await _fault(settings, out, worker, proxy, mode, part, fault_s)
        phases["blackhole_past_deadline"] = await _hang_past_deadline(settings, worker, proxy, parts[4])
        successor = rig.spawn("worker-successor", ECGSCREEN_REDIS_URL=url)
        await successor.wait_ready()
        await settle(ctx, settings, items, out)
    res.times = 4
    res.figures["phases"] = phases
    res.recovery_s = max(float(p["recovery_s"]) for p in phases.values()
                         if p.get("recovery_s") is not None)
    for name in ("refuse", "blackhole"):
        p = phases[name]
        res.check(f"{name}: no commit while Redis writes fail", not p["committed_moved"])
        res.check(f"{name}: no outcome published while Redis fails", p["outcomes_during"] == 0)
        res.check(f"{name}: worker reported not ready (/readyz 503)", p["not_ready_seen"])
        res.check(f"{name}: resumed without loss after healing", p["recovery_s"] is not None)
    res.check("slow: screening goes on while Redis is slow", phases["slow"]["outcomes_during"] > 0)
    res.check("slow: resumed without loss", phases["slow"]["recovery_s"] is not None)
    hung = phases["blackhole_past_deadline"]
    res.check("hung past the deadline: clear exit (75) for the supervisor", hung["exit_code"] == 75)


async def _fault(settings: Settings, out: OutputCollector, worker: Worker, proxy: TcpProxy, mode: Mode,
                 part: list[FeedItem], fault_s: float) -> dict[str, Any]:
    await wait_committed(settings)  # the previous phase's last commit must not count as this one's
    before, _ = await offsets(settings)
    proxy.set_mode(mode)
    await produce(settings, part)
    keys = keys_of(part)
    ready: list[bool] = []
    moved = False
    t0 = time.monotonic()
    while time.monotonic() - t0 < fault_s:
        ready.append(await worker.readyz())
        now, _ = await offsets(settings)
        moved = moved or now != before
        await asyncio.sleep(0.5)
    during = sum(1 for k in keys if k in out.outcome_count)
    proxy.set_mode(Mode.PASS)
    healed = time.monotonic()
    done = await out.wait_for(keys, 120)
    return {"fault_s": fault_s, "outcomes_during": during, "all_during": during == len(keys),
            "committed_moved": moved if mode is not Mode.SLOW else None, "not_ready_seen": not all(ready),
            "worker_alive": worker.alive(), "recovery_s": round(time.monotonic() - healed, 2) if done else None}


async def _hang_past_deadline(settings: Settings, worker: Worker, proxy: TcpProxy, part: list[FeedItem],
                              ) -> dict[str, Any]:
    """Redis hangs for good: the worker must give up after its deadline with exit 75, not hang."""
    proxy.set_mode(Mode.BLACKHOLE)
    t0 = time.monotonic()
    await produce(settings, part)
    bound = REDIS_DEADLINE_S * 2 + 20
    code = await worker.wait_exit(bound)
    took = time.monotonic() - t0
    if code is None:
        worker.kill_now()
    proxy.set_mode(Mode.PASS)
    return {"exit_code": code, "exit_s": round(took, 1), "bound_s": bound}


# The worker's broker-loss deadline in the broker scenario (production default: 60 s).
BROKER_DEADLINE_S = 6


async def broker_loss(ctx: Ctx) -> None:
    """SIGKILL of Tansu (memory storage: topics and offsets gone), then an empty broker on the same port:
    first without topics, then with them recreated (as `ecgscreen stack up` or the platform team does)."""
    rig, res = ctx.need_rig(), ctx.result
    outage_s, per = ctx.size(15, 60), ctx.size(24, 300)
    feed = clean_feed(2 * per, ctx.cfg.seed)
    before_items, after_items = feed[:per], feed[per:]
    settings = rig.settings()
    worker = rig.spawn("worker")
    await worker.wait_ready()
    async with collecting(settings) as out:
        await produce(settings, before_items)
        await out.wait_for(keys_of(before_items), 120)
        await wait_committed(settings)
    outage = await _observe(worker, rig.kill_broker, outage_s)
    await rig.restart_broker(create_topics=False)
    starting = rig.spawn("worker-no-topics")
    await _started(starting)  # measure the steady state, not the imports
    empty = await _observe(starting, lambda: None, ctx.size(8, 30))
    empty["topics_seen"] = await _partitions(rig.info.kafka_bootstrap)  # what the worker's requests left behind
    await create_topics(rig.info.kafka_bootstrap, rig.topics.all(), rig.partitions)
    back = await _after_topics(ctx, after_items)
    res.done = (f"broker SIGKILLed for {outage_s} s (Tansu keeps topics in memory: all gone), back empty without "
                "topics, then with the topics recreated")
    res.times, res.events_sent = 1, 2 * per
    res.figures.update(broker_lost_exit_s=BROKER_DEADLINE_S, outage=outage, empty_broker_no_topics=empty, after=back)
    res.recovery_s = back.get("recovery_s")
    res.check(f"broker gone: clear exit 69 within {BROKER_DEADLINE_S} s + 10 s, no endless retry",
              outage["exit_code"] == 69 and outage["exit_s"] <= BROKER_DEADLINE_S + 10)
    res.check("broker gone: no CPU spin (< 20% of a core)", outage["cpu_share"] < 0.2)
    res.check("empty broker, no topics: no crash loop, no spin (< 20% of a core)",
              empty["exit_code"] is None and empty["cpu_share"] < 0.2)
    res.check("topics recreated: every new event screened, offsets committed", back["lost"] == 0
              and back["offsets_committed_to_end"])
    res.notes.append(_broker_story(outage, empty, back))


async def _started(worker: Worker, timeout_s: float = 120.0) -> None:
    """Until faust has started (the model is loaded and the consumer runs), plus a few seconds."""
    deadline = time.monotonic() + timeout_s
    while "[^Worker]: Starting" not in worker.log_text() and time.monotonic() < deadline and worker.alive():
        await asyncio.sleep(0.2)
    await asyncio.sleep(3.0)


async def _observe(worker: Worker, fault: Callable[[], None], window_s: float) -> dict[str, Any]:
    """Inject ``fault`` and watch ``worker`` for up to ``window_s``: exit, readiness, CPU and log rate."""
    cpu0, lines0 = _cpu_s(worker) or 0.0, len(worker.log_text().splitlines())
    fault()
    t0 = time.monotonic()
    code = await worker.wait_exit(window_s)
    took = time.monotonic() - t0
    cpu = (_cpu_s(worker) or cpu0) - cpu0 if code is None else None
    out = {"exit_code": code, "exit_s": round(took, 1) if code is not None else None, "ready": worker.is_ready(),
           "cpu_share": round(cpu / took, 3) if cpu is not None else 0.0,
           "log_lines_per_s": round((len(worker.log_text().splitlines()) - lines0) / took, 1)}
    if code is None:
        await worker.stop(signal.SIGTERM, timeout_s=30)
    return out


async def _partitions(bootstrap: str) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if not t.startswith("__")]
        described = await admin.describe_topics(topics)
        return {d["topic"]: len(d["partitions"]) for d in described}
    finally:
        await admin.close()


async def _after_topics(ctx: Ctx, items: list[FeedItem]) -> dict[str, Any]:
    rig = ctx.need_rig()
    settings = rig.settings()
    worker = rig.spawn("worker-restarted")  # the supervisor's restart after the exit
    t0 = time.monotonic()
    await worker.wait_ready()
    async with collecting(settings) as out:
        await produce(settings, items)
        ok = await out.wait_for(keys_of(items), ctx.size(90, 240))
        recovery = time.monotonic() - t0
        committed = await wait_committed(settings, timeout_s=30)
        missing = len(keys_of(items) - set(out.outcome_count))
    return {"all_screened": ok, "lost": missing, "recovery_s": round(recovery, 1) if ok else None,
            "offsets_committed_to_end": committed}


def _cpu_s(worker: Worker, since: float | None = None) -> float | None:
    try:
        fields = Path(f"/proc/{worker.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total - since if since is not None else total


def _broker_story(outage: dict[str, Any], empty: dict[str, Any], back: dict[str, Any]) -> str:
    if outage["exit_code"] is not None:
        first = f"the worker exited with code {outage['exit_code']} after {outage['exit_s']} s"
    else:
        first = (f"the worker kept running and retrying ({outage['cpu_share']:.0%} of a core, "
                 f"{outage['log_lines_per_s']} log lines/s)")
    if empty["exit_code"] is not None:
        second = f"a worker started on the empty broker without topics exited with {empty['exit_code']}"
    else:
        state = "got ready" if empty["ready"] else "stayed not ready"
        made = ", ".join(f"{t} ({n} partitions)" for t, n in sorted(empty.get("topics_seen", {}).items()))
        second = (f"a worker started on the empty broker without topics {state}; topics then on the broker: "
                  f"{made or 'none'} ({empty['cpu_share']:.0%} of a core, {empty['log_lines_per_s']} log lines/s)")
    return (f"When the broker disappeared {first}; {second}; after ops created the topics (existing ones kept) "
            f"a restarted worker screened {'every' if back['lost'] == 0 else 'NOT every'} new event.")
