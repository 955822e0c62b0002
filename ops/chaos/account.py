"""Feeds in, outcomes out: what a scenario sent, what came back, and what the triage queue holds.

Three independent ways to catch a duplicate triage entry, since a replay that slipped
past the idempotency key could show up in any of them:

- an admission audited twice for one (event, task) candidate;
- two unresolved alerts of one (site, patient, task) episode within the dedup window;
- the ``triage_entries_added`` counter above the number of alert records.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ops.demo import FeedItem
from ops.feed import Record, simulated_records
from ops.outputs import OutputCollector
from workers.pipeline import RawMessage
from workers.settings import Settings

ADMISSIONS = {"created", "held", "updated", "suppressed"}


TEMPLATE_SEED = 11


@lru_cache(maxsize=8)
def _records(n: int) -> tuple[Record, ...]:
    # 100 Hz, the bundle's own rate: a tenth of the bytes of 500 Hz, so thousands of
    # events fit in the broker's memory and the suite's time. One set of simulated bases
    # per process (simulating is the slow part); ``records`` names the variants per use.
    return tuple(simulated_records(n, fs=100.0, seed=TEMPLATE_SEED, bases=3))


def records(n: int, seed: int) -> list[Record]:
    """``n`` distinct events whose ids carry ``seed``, so that sets with different seeds never collide."""
    return [replace(r, event_id=f"ev{seed}-{i:05d}") for i, r in enumerate(_records(max(n, 3))[:n])]


def item(payload: bytes, kind: str) -> FeedItem:
    return FeedItem(RawMessage.of(payload, "", 0, 0).key, payload, kind)


def clean_feed(n: int, seed: int) -> list[FeedItem]:
    return [item(r.encode(), "clean") for r in records(n, seed)]


async def produce(settings: Settings, items: Sequence[FeedItem], rate_per_s: float | None = None) -> float:
    """Publish ``items`` in order (acks=all); returns the seconds it took."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", linger_ms=5,
                                max_request_size=16 * 1024 * 1024, request_timeout_ms=30_000)
    await producer.start()
    t0 = time.monotonic()
    try:
        pending = []
        for n, it in enumerate(items):
            pending.append(await producer.send(settings.kafka.topics.events, it.payload, key=it.key.encode()))
            if rate_per_s:
                await _pace(t0, n + 1, rate_per_s)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - t0


async def _pace(t0: float, sent: int, rate_per_s: float) -> None:
    ahead = t0 + sent / rate_per_s - time.monotonic()
    if ahead > 0:
        await asyncio.sleep(ahead)


async def wait_outcomes(out: OutputCollector, keys: Iterable[str], timeout_s: float) -> float | None:
    """Seconds until every key has an outcome; None on timeout."""
    t0 = time.monotonic()
    return time.monotonic() - t0 if await out.wait_for(keys, timeout_s) else None


async def offsets(settings: Settings) -> tuple[dict[int, int], dict[int, int]]:
    """(committed, end) offsets of the worker group on the events topic, per partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, group_id=settings.kafka.group_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        topic = settings.kafka.topics.events
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        ends = await consumer.end_offsets(tps)
        committed = {tp.partition: await consumer.committed(tp) or 0 for tp in tps}
        return committed, {tp.partition: ends[tp] for tp in tps}
    finally:
        await consumer.stop()


async def wait_committed(settings: Settings, timeout_s: float = 15.0) -> bool:
    """True once the group has committed every offset (the worker commits on an interval)."""
    deadline = time.monotonic() + timeout_s
    while True:
        committed, ends = await offsets(settings)
        if committed == ends:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)


@dataclass
class Tally:
    """The accounting of one run: every figure the result table shows comes from here."""

    sent: int
    distinct: int
    lost: int
    republished: int  # events whose outcome was published more than once (at-least-once redelivery)
    flipped: int  # events that got both a verdict and a dead letter: never allowed
    deadlettered: dict[str, int]
    alerts: int
    triage: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def duplicated(self) -> int:
        return sum(self.triage.values())

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "distinct": self.distinct, "lost": self.lost, "republished": self.republished,
                "flipped": self.flipped, "deadlettered": self.deadlettered, "alerts": self.alerts,
                "triage_duplicates": self.triage, "stats": self.stats}


async def tally(settings: Settings, items: Sequence[FeedItem], out: OutputCollector,
                both: set[str] | None = None) -> Tally:
    keys = {i.key for i in items}
    reasons = Counter(d.reason.value for k, d in out.deadletters.items() if k in keys)
    dups, stats = await triage_duplicates(settings)
    return Tally(
        sent=len(items), distinct=len(keys), lost=len(keys - set(out.outcome_count)),
        republished=sum(1 for k in keys if out.outcome_count.get(k, 0) > 1),
        flipped=len((keys & set(out.verdicts) & set(out.deadletters)) - (both or set())),
        deadlettered=dict(sorted(reasons.items())), alerts=len(out.alerts), triage=dups, stats=stats)


async def triage_duplicates(settings: Settings) -> tuple[dict[str, int], dict[str, int]]:
    """The three duplicate checks of the module docstring, and the worker's counters."""
    r = aioredis.Redis.from_url(settings.redis.url, **settings.redis.client_kwargs())
    p = settings.redis.key_prefix
    try:
        sites = sorted(_s(x) for x in await r.smembers(f"{p}:sites"))
        alerts: dict[str, dict[str, str]] = {}
        admissions: Counter[tuple[str, str]] = Counter()
        for site in sites:
            for aid in map(_s, await r.zrange(f"{p}:alerts:{site}", 0, -1)):
                raw = await r.hgetall(f"{p}:alert:{aid}")
                alerts[aid] = {_s(k): _s(v) for k, v in raw.items() if k != b"json"}
            for _, entry in await _audit(r, f"{p}:audit:{site}"):
                if _s(entry.get(b"action", b"")) in ADMISSIONS:
                    target = alerts.get(_s(entry[b"alert_id"]), {})
                    event = orjson.loads(entry.get(b"detail", b"{}")).get("event_id", "")
                    admissions[(event, target.get("task", "?"))] += 1
        stats = {_s(k): int(v) for k, v in (await r.hgetall(f"{p}:stats")).items()}
    finally:
        await r.aclose()
    return {
        "admitted_twice": sum(n - 1 for n in admissions.values() if n > 1),
        "episode_overlaps": _overlaps(alerts, settings),
        "counter_excess": max(0, stats.get("triage_entries_added", 0) - _added(alerts)),
    }, stats


async def _audit(r: aioredis.Redis, key: str) -> list[tuple[Any, dict[bytes, bytes]]]:
    out: list[tuple[Any, dict[bytes, bytes]]] = []
    start = "-"
    while True:
        chunk: list[Any] = await r.xrange(key, min=start, count=1000) or []
        out += chunk
        if len(chunk) < 1000:
            return out
        start = "(" + _s(chunk[-1][0])


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _added(alerts: dict[str, dict[str, str]]) -> int:
    return sum(a.get("admission") == "added" for a in alerts.values())


def _overlaps(alerts: dict[str, dict[str, str]], settings: Settings) -> int:
    """Pairs of alerts in one episode closer than the dedup window: the second should have merged."""
    episodes: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for a in alerts.values():
        episodes[a["episode"]].append((int(a["anchor_ms"]), a["site"]))
    n = 0
    for anchors in episodes.values():
        anchors.sort()
        for (t0, site), (t1, _) in itertools.pairwise(anchors):
            n += t1 - t0 < settings.policy.window_ms(site)
    return n
