"""Reads what the worker published (verdicts, alerts, dead letters) and accounts for it.

Used by the demo and the integration tests: an ephemeral consumer (no group, from
the earliest offset) that keys every outcome by the event it belongs to.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer

from schemas.codec import decode_alert, decode_deadletter, decode_verdict
from schemas.messages import Alert, DeadLetter, Verdict
from workers.settings import Topics


class OutputCollector:
    """Outcomes are counted by message key as they arrive (the worker keys verdicts and dead
    letters by event) and decoded only when read: while a benchmark runs, the collector takes
    as little CPU from the worker on the same cores as it can."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self._topics = topics
        self._consumer = AIOKafkaConsumer(topics.verdicts, topics.alerts, topics.deadletter,
                                          bootstrap_servers=bootstrap, group_id=None,
                                          auto_offset_reset="earliest", enable_auto_commit=False)
        self._task: asyncio.Task[None] | None = None
        self._verdicts: dict[str, Verdict] = {}
        self._alerts: dict[str, Alert] = {}
        self._deadletters: dict[str, DeadLetter] = {}
        self._raw: list[tuple[str, str, bytes]] = []  # (topic, key, value), not decoded yet
        self.alert_messages = 0
        self.outcome_count: Counter[str] = Counter()
        self.first_seen_at: dict[str, float] = {}

    @property
    def verdicts(self) -> dict[str, Verdict]:
        self._decode()
        return self._verdicts

    @property
    def alerts(self) -> dict[str, Alert]:
        self._decode()
        return self._alerts

    @property
    def deadletters(self) -> dict[str, DeadLetter]:
        self._decode()
        return self._deadletters

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for rec in records:
                    self._take(rec.topic, rec.key or b"", rec.value or b"", rec.timestamp / 1000.0)

    def _take(self, topic: str, key: bytes, value: bytes, ts: float) -> None:
        event_key = key.decode()
        self._raw.append((topic, event_key, value))
        if topic == self._topics.alerts:
            self.alert_messages += 1
            return
        self.outcome_count[event_key] += 1
        self.first_seen_at.setdefault(event_key, ts)

    def _decode(self) -> None:
        raw, self._raw = self._raw, []
        for topic, key, value in raw:
            if topic == self._topics.alerts:
                alert = decode_alert(value)
                self._alerts[alert.alert_id] = alert
            elif topic == self._topics.verdicts:
                verdict = decode_verdict(value)
                if verdict.event_id != key:  # the worker keys a verdict by its event: counted by that key
                    raise ValueError(f"verdict of {verdict.event_id!r} published under key {key!r}")
                self._verdicts[key] = verdict
            else:
                self._deadletters[key] = decode_deadletter(value)

    async def wait_for(self, keys: Iterable[str], timeout_s: float) -> bool:
        """True once every key has an outcome; False on timeout."""
        wanted = set(keys)
        deadline = time.monotonic() + timeout_s
        while not wanted <= self.outcome_count.keys():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True
