"""Parity on real parts: the pipelined worker process (prep pool, two batches in flight) publishes
the verdicts and alerts the serial screener computes in-process for the same events."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest

from models.bundle import load_bundle
from models.engine import make_engine
from ops.demo import build_feed, run_worker_process, wait_ready
from ops.feed import simulated_records
from ops.stack import StackInfo
from tests.test_integration import _collect, _produce
from workers.pipeline import RawMessage, Screener
from workers.settings import DEFAULT_BUNDLE, load_settings

pytestmark = pytest.mark.integration
GROUP = "ecgscreen-parity"


def test_pipelined_worker_publishes_the_serial_screeners_verdicts_and_alerts(stack: StackInfo,
                                                                             tmp_path: Path) -> None:
    bundle_path = DEFAULT_BUNDLE.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECGSCREEN_")}
    env.update({**stack.env(), "ECGSCREEN_STATE_DIR": str(tmp_path), "ECGSCREEN_GROUP_ID": GROUP,
                "ECGSCREEN_MAX_BATCH": "8", "ECGSCREEN_MAX_WAIT_S": "0.05", "ECGSCREEN_PREP_PROCESSES": "1",
                "ECGSCREEN_BUNDLE": str(bundle_path), "ECGSCREEN_TOPIC_EVENTS": "ecg.events"})
    settings = load_settings(env)
    # One patient per record: no alert is merged into another patient's open alert by the triage dedup.
    records = [dataclasses.replace(r, patient_ref=f"parity-p{k}")
               for k, r in enumerate(simulated_records(40, fs=500.0, seed=21, bases=3))]
    feed = build_feed(records, seed=21)
    with run_worker_process(env, tmp_path / "worker.log") as proc:
        wait_ready(settings, proc, timeout_s=120)
        asyncio.run(_produce(settings, feed.items))
        out = asyncio.run(_collect(settings, feed.unique_keys))
    bundle = load_bundle(bundle_path)
    serial = Screener(bundle=bundle, engine=make_engine(bundle, "torch-cpu"), policy=settings.policy)
    firsts = {}
    for item in feed.items:  # a duplicate delivery is skipped by the worker: its first copy is the event
        firsts.setdefault(item.key, item.payload)
    outcomes = serial.screen([RawMessage.of(p, "ecg.events", 0, k) for k, p in enumerate(firsts.values())])
    verdicts = {o.verdict.event_id: o.verdict for o in outcomes if o.verdict is not None}
    assert verdicts and set(verdicts) == set(out.verdicts)
    for event_id, v in verdicts.items():
        got = out.verdicts[event_id]
        assert dataclasses.replace(got, timings_ms={}, processed_at=v.processed_at) == dataclasses.replace(
            v, timings_ms={})
    alerts = {a.alert_id: a for o in outcomes for a in o.alerts}
    assert set(out.alerts) == set(alerts)  # a fresh queue, one patient per record: every alert is new
    for alert_id, a in out.alerts.items():
        assert dataclasses.replace(a, created_at=alerts[alert_id].created_at) == alerts[alert_id]
    assert set(out.deadletters) == {o.message.key for o in outcomes if o.deadletter is not None}
