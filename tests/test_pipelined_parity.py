"""Parity on real parts: the pipelined worker process (prep pool, two batches in flight) publishes
the verdicts and alerts the serial screener computes in-process for the same events.

Identical in every decision (quality, masked leads, alert ids, tasks, priorities, explained leads
and windows); scores agree to float rounding only, because the worker's micro-batches are cut by
arrival time, and the CPU conv kernels round differently per batch size (a few 1e-7: measured,
the serial loop does the same). Same batches give bit-identical outcomes: tests/test_pipelined.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from models.bundle import load_bundle
from models.engine import make_engine
from ops.demo import build_feed, run_worker_process, wait_ready
from ops.feed import simulated_records
from ops.stack import StackInfo
from schemas.messages import Alert
from tests.test_integration import _collect, _produce
from workers.pipeline import RawMessage, Screener
from workers.settings import DEFAULT_BUNDLE, load_settings

pytestmark = pytest.mark.integration
GROUP = "ecgscreen-parity"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_pipelined_worker_publishes_the_serial_screeners_verdicts_and_alerts(stack: StackInfo,
                                                                             tmp_path: Path) -> None:
    bundle_path = DEFAULT_BUNDLE.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECGSCREEN_")}
    env.update({**stack.env(), "ECGSCREEN_STATE_DIR": str(tmp_path), "ECGSCREEN_GROUP_ID": GROUP,
                "ECGSCREEN_MAX_BATCH": "8", "ECGSCREEN_MAX_WAIT_S": "0.05", "ECGSCREEN_PREP_PROCESSES": "1",
                "ECGSCREEN_BUNDLE": str(bundle_path), "ECGSCREEN_TOPIC_EVENTS": "ecg.events",
                "ECGSCREEN_EXPLAIN_MAX_LAG_S": "86400",  # explain however slow this machine is today
                # The default bundle alerts at worklist operating points (specificity >= 0.97), so simulated
                # records rarely alert: a site threshold near 0 makes every eligible record raise AF, so that
                # alerts and their explanations are compared too.
                "ECGSCREEN_SITE_POLICY": orjson.dumps({f"sim-site-{i}": {"thresholds": {"ecg.afib": 1e-9}}
                                                       for i in range(2)}).decode()})
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
    firsts: dict[str, bytes] = {}
    for item in feed.items:  # a duplicate delivery is skipped by the worker: its first copy is the event
        firsts.setdefault(item.key, item.payload)
    outcomes = serial.screen([RawMessage.of(p, "ecg.events", 0, k) for k, p in enumerate(firsts.values())])
    verdicts = {o.verdict.event_id: o.verdict for o in outcomes if o.verdict is not None}
    assert verdicts and set(verdicts) == set(out.verdicts)
    for event_id, v in verdicts.items():
        got = out.verdicts[event_id]
        assert got.scores == pytest.approx(v.scores, abs=1e-5)
        assert dataclasses.replace(got, timings_ms={}, processed_at=v.processed_at, scores=v.scores) == \
            dataclasses.replace(v, timings_ms={})
    alerts = {a.alert_id: a for o in outcomes for a in o.alerts}
    assert alerts and set(out.alerts) == set(alerts)  # a fresh queue, one patient per record: all are new
    for alert_id, got_alert in out.alerts.items():
        want = alerts[alert_id]
        assert got_alert.score == pytest.approx(want.score, abs=1e-5)
        assert got_alert.expected_ppv == pytest.approx(want.expected_ppv, abs=1e-5)
        assert _decisions(got_alert) == _decisions(want)
    assert set(out.deadletters) == {o.message.key for o in outcomes if o.deadletter is not None}


def _decisions(alert: Alert) -> tuple[object, ...]:
    """An alert without its creation time and with its figures rounded to what float noise cannot move."""
    ex = alert.explanation
    where = None if ex is None else (ex.method, ex.top_leads, tuple((w.lead, w.start_s, w.end_s) for w in ex.windows))
    return (dataclasses.replace(alert, created_at=NOW, score=0.0, expected_ppv=None,
                                explanation=None), where)
