"""The worker's faust consumer waits at most the configured fetch wait (faust hard-codes 1.5 s)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import faust

from workers.faust_transport import KafkaTransport, use_transport
from workers.settings import load_settings


def test_the_configured_fetch_wait_reaches_the_aiokafka_consumer(tmp_path: Path) -> None:
    settings = load_settings({"ECGSCREEN_FETCH_MAX_WAIT_S": "0.25", "ECGSCREEN_STATE_DIR": str(tmp_path)})

    async def build() -> int:
        app = faust.App("fetch-wait-test", broker="kafka://127.0.0.1:1", datadir=str(tmp_path), web_enabled=False)
        transport = use_transport(app, settings.kafka.fetch_max_wait_s)
        assert app.transport is transport
        consumer = app.consumer
        # Built only, never started: no broker is contacted.
        made = consumer._thread._create_worker_consumer(transport)  # type: ignore[attr-defined]
        return int(made._fetch_max_wait_ms)

    assert asyncio.run(build()) == 250
    assert KafkaTransport.fetch_max_wait_ms == 1500  # the class keeps faust's value; instances get settings'


def test_the_default_fetch_wait_is_short() -> None:
    assert load_settings({}).kafka.fetch_max_wait_s <= 0.2
