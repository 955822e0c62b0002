"""The Redis-backed triage queue and the worker's outcome ledger.

Data model (``P`` is the configured key prefix, ``ecg`` by default):

===============================  =======  =====================================================
key                              type     what
===============================  =======  =====================================================
``P:alert:{alert_id}``           hash     the alert (``json``), ``status``, ``site``, ``priority``,
                                          ``created_at``; its existence is the idempotency key
``P:worklist:{site}``            zset     open alerts of a site; score orders by priority, then age
``P:sites``                      set      sites that have a worklist
``P:audit``                      stream   append-only log of every triage action
``P:outcome:{event_key}``        string   ``{digest}|{kind}``: the event's outcome is durable
``P:stats``                      hash     counters (duplicate deliveries skipped, ...)
===============================  =======  =====================================================

Every write that must be atomic is one Lua script. The keys of one alert live in
different hash slots, so this targets a single Redis (or a primary with replicas),
not Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from schemas.codec import decode_alert, encode_alert
from schemas.messages import Alert, Priority

# Lower score = nearer the top: priority band first, then oldest first.
_PRIORITY_BAND = {Priority.URGENT: 0, Priority.HIGH: 1, Priority.ROUTINE: 2}
_BAND_WIDTH = 10**13  # > any epoch-milliseconds value for the next few centuries

_ADD_ALERT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'json', ARGV[2], 'status', 'open', 'site', ARGV[3],
           'priority', ARGV[4], 'created_at', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('XADD', KEYS[3], '*', 'action', 'created', 'alert_id', ARGV[1], 'actor', ARGV[7], 'at', ARGV[6])
return 1
"""


@dataclass(frozen=True, slots=True)
class RecordedOutcome:
    digest: str
    kind: str


class TriageStore:
    """Async access to the triage keys; one instance per worker process."""

    def __init__(self, client: aioredis.Redis, prefix: str = "ecg", actor: str = "worker") -> None:
        self._r = client
        self._p = prefix
        self._actor = actor
        self._add_alert = client.register_script(_ADD_ALERT)

    @classmethod
    def from_url(cls, url: str, prefix: str = "ecg", actor: str = "worker") -> TriageStore:
        return cls(aioredis.Redis.from_url(url), prefix, actor)

    async def close(self) -> None:
        await self._r.aclose()

    def _k(self, *parts: str) -> str:
        return ":".join((self._p, *parts))

    async def add_alerts(self, alerts: Sequence[Alert]) -> int:
        """Write alerts atomically each; returns how many were new (replays add none)."""
        if not alerts:
            return 0
        async with self._r.pipeline(transaction=False) as pipe:
            for alert in alerts:
                await self._add_alert(keys=self._alert_keys(alert), args=self._alert_args(alert), client=pipe)
            results = await pipe.execute()
        return sum(int(r) for r in results)

    def _alert_keys(self, alert: Alert) -> list[str]:
        return [self._k("alert", alert.alert_id), self._k("worklist", alert.site), self._k("audit"),
                self._k("sites")]

    def _alert_args(self, alert: Alert) -> list[Any]:
        created_ms = int(alert.created_at.timestamp() * 1000)
        score = _PRIORITY_BAND[alert.priority] * _BAND_WIDTH + created_ms
        return [alert.alert_id, encode_alert(alert), alert.site, alert.priority.value, score,
                alert.created_at.isoformat(), self._actor]

    async def recorded_outcomes(self, event_keys: Sequence[str]) -> list[RecordedOutcome | None]:
        if not event_keys:
            return []
        raw = await self._r.mget([self._k("outcome", k) for k in event_keys])
        return [None if v is None else RecordedOutcome(*_text(v).split("|", 1)) for v in raw]

    async def record_outcomes(self, outcomes: Sequence[tuple[str, RecordedOutcome]], ttl_s: int) -> None:
        """Mark events done. NX: the first recorded outcome of an event id stands."""
        if not outcomes:
            return
        async with self._r.pipeline(transaction=False) as pipe:
            for key, out in outcomes:
                pipe.set(self._k("outcome", key), f"{out.digest}|{out.kind}", ex=ttl_s, nx=True)
            await pipe.execute()

    async def count(self, field: str, n: int = 1) -> None:
        if n:
            await self._r.hincrby(self._k("stats"), field, n)

    async def stats(self) -> dict[str, int]:
        raw = await self._r.hgetall(self._k("stats"))
        return {_text(k): int(v) for k, v in raw.items()}

    async def sites(self) -> list[str]:
        return sorted(_text(s) for s in await self._r.smembers(self._k("sites")))

    async def worklist(self, site: str, limit: int = 10) -> list[Alert]:
        """Open alerts of a site, top of the queue first."""
        ids = await self._r.zrange(self._k("worklist", site), 0, limit - 1)
        if not ids:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            for alert_id in ids:
                pipe.hget(self._k("alert", _text(alert_id)), "json")
            blobs = await pipe.execute()
        return [decode_alert(b) for b in blobs if b is not None]

    async def worklist_size(self, site: str) -> int:
        return int(await self._r.zcard(self._k("worklist", site)))

    async def audit_length(self) -> int:
        return int(await self._r.xlen(self._k("audit")))



def _text(value: object) -> str:
    """redis-py returns bytes (decode_responses off: alert JSON stays bytes end to end)."""
    return value.decode() if isinstance(value, bytes) else str(value)
