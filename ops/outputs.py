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
    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self._topics = topics
        self._consumer = AIOKafkaConsumer(topics.verdicts, topics.alerts, topics.deadletter,
                                          bootstrap_servers=bootstrap, group_id=None,
                                          auto_offset_reset="earliest", enable_auto_commit=False)
        self._task: asyncio.Task[None] | None = None
        self.verdicts: dict[str, Verdict] = {}
        self.alerts: dict[str, Alert] = {}
        self.alert_messages = 0
        self.deadletters: dict[str, DeadLetter] = {}
        self.outcome_count: Counter[str] = Counter()
        self.first_seen_at: dict[str, float] = {}

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
        if topic == self._topics.alerts:
            alert = decode_alert(value)
            self.alerts[alert.alert_id] = alert
            self.alert_messages += 1
            return
        if topic == self._topics.verdicts:
            verdict = decode_verdict(value)
            event_key = verdict.event_id
            self.verdicts[event_key] = verdict
        else:
            event_key = key.decode()
            self.deadletters[event_key] = decode_deadletter(value)
        self.outcome_count[event_key] += 1
        self.first_seen_at.setdefault(event_key, ts)

    async def wait_for(self, keys: Iterable[str], timeout_s: float) -> bool:
        """True once every key has an outcome; False on timeout."""
        wanted = set(keys)
        deadline = time.monotonic() + timeout_s
        while not wanted <= self.outcome_count.keys():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True
