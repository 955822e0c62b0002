"""End to end on real parts: Tansu broker + Redis + the worker process.

Sends >= 200 events (about 10% malformed, some delivered twice) and checks the
accounting the product promises: exactly one outcome per event, dead letters
with the right reasons, no duplicate triage entries, committed offsets.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from ops.chaos.account import offsets
from ops.demo import FeedItem, build_feed, ensure_bundle, run_worker_process, wait_ready
from ops.feed import simulated_records
from ops.outputs import OutputCollector
from ops.stack import StackInfo
from schemas.waveform import pack_waveform
from workers.settings import Settings, load_settings
from workers.triage import TriageStore

pytestmark = pytest.mark.integration
GROUP = "ecgscreen-it"


@pytest.fixture(scope="module")
def settings(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    state = tmp_path_factory.mktemp("worker")
    # An untrained bundle of its own: this test is about plumbing and accounting, and
    # its verdicts must say the model is untrained.
    env = {**stack.env(), "ECGSCREEN_STATE_DIR": str(state), "ECGSCREEN_GROUP_ID": GROUP,
           "ECGSCREEN_MAX_BATCH": "16", "ECGSCREEN_MAX_WAIT_S": "0.1",
           "ECGSCREEN_BUNDLE": str(state / "bundles" / "untrained-r18")}
    return load_settings(env)


def _worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECGSCREEN_")}
    env.update({"ECGSCREEN_KAFKA_BOOTSTRAP": settings.kafka.bootstrap, "ECGSCREEN_REDIS_URL": settings.redis.url,
                "ECGSCREEN_STATE_DIR": str(settings.state_dir), "ECGSCREEN_GROUP_ID": GROUP,
                "ECGSCREEN_MAX_BATCH": "16", "ECGSCREEN_MAX_WAIT_S": "0.1",
                "ECGSCREEN_BUNDLE": str(settings.bundle_path)})
    return env


async def _produce(settings: Settings, items: list[FeedItem]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all",
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        for item in items:
            await producer.send_and_wait(settings.kafka.topics.events, item.payload, key=item.key.encode())
    finally:
        await producer.stop()


async def _collect(settings: Settings, keys: set[str]) -> OutputCollector:
    out = OutputCollector(settings.kafka.bootstrap, settings.kafka.topics)
    await out.start()
    try:
        assert await out.wait_for(keys, timeout_s=240), "not every event got an outcome in time"
        await asyncio.sleep(2.0)  # let any (wrong) second outcome arrive before we count
    finally:
        await out.stop()
    return out


async def _triage(settings: Settings) -> tuple[list[str], dict[str, int]]:
    """Every triage entry (worklist and held) and the counters.

    Alert ids are deterministic, so a second entry for one finding would carry another id:
    the test is that no (first event, task) pair has two entries.
    """
    store = TriageStore.from_url(settings.redis.url, settings.redis.key_prefix)
    try:
        items = [i for site in await store.sites() for q in ("worklist", "held")
                 for i in await store.items(site, q, limit=10_000)]
        per_finding = Counter((i.first_event_id, i.alert.task.id) for i in items)
        assert per_finding and max(per_finding.values()) == 1, per_finding.most_common(3)
        return [i.alert.alert_id for i in items], await store.stats()
    finally:
        await store.close()


@pytest.fixture(scope="module")
def run_result(settings: Settings, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    feed = build_feed(list(simulated_records(185, fs=500.0, seed=3, bases=4)), seed=3)
    assert len(feed.items) >= 200
    ensure_bundle(settings.bundle_path, say=lambda _: None)
    log = Path(settings.state_dir) / "worker.log"
    with run_worker_process(_worker_env(settings), log) as proc:
        wait_ready(settings, proc, timeout_s=120)
        asyncio.run(_produce(settings, feed.items))
        out = asyncio.run(_collect(settings, feed.unique_keys))
    assert proc.returncode == 0, log.read_text()[-3000:]
    return feed, out


def test_every_event_has_exactly_one_outcome(run_result) -> None:  # type: ignore[no-untyped-def]
    feed, out = run_result
    assert set(out.outcome_count) == feed.unique_keys
    assert Counter(out.outcome_count.values()) == Counter({1: len(feed.unique_keys)})


def test_malformed_events_are_dead_lettered_with_their_reason(run_result) -> None:  # type: ignore[no-untyped-def]
    feed, out = run_result
    malformed = [i for i in feed.items if i.kind.startswith("malformed:")]
    assert len(malformed) >= 0.08 * len(feed.items)
    for item in malformed:
        assert item.key in out.deadletters, item.kind
        assert out.deadletters[item.key].reason.value == item.kind.split(":", 1)[1]
    assert set(out.deadletters) == {i.key for i in malformed}  # nothing else is dead-lettered


def test_signal_faults_get_a_quality_verdict(run_result) -> None:  # type: ignore[no-untyped-def]
    feed, out = run_result
    faulty = [i for i in feed.items if i.kind in {"lead_off", "all_flat", "saturated", "noisy"}]
    assert faulty
    for item in faulty:
        assert out.verdicts[item.key].quality.status.value in {"reject", "degraded"}, item.kind
    assert all(not out.verdicts[i.key].scores for i in faulty if i.kind == "all_flat")


def test_no_duplicate_triage_entries(run_result, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    feed, out = run_result
    ids, stats = asyncio.run(_triage(settings))  # asserts one entry per (event, task)
    assert set(ids) == set(out.alerts)
    assert stats.get("triage_entries_added", 0) + stats.get("policy_held", 0) == len(ids)
    assert stats.get("duplicates_skipped", 0) == sum(i.kind == "duplicate" for i in feed.items)


def test_offsets_are_committed(run_result, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    committed, ends = asyncio.run(offsets(settings))
    assert sum(ends.values()) == len(run_result[0].items)
    assert committed == ends


def test_verdicts_say_the_model_is_untrained(run_result) -> None:  # type: ignore[no-untyped-def]
    _, out = run_result
    assert out.verdicts and all(not v.model.trained for v in out.verdicts.values())
    assert all("untrained_model" in a.flags for a in out.alerts.values())


async def _waves(settings: Settings, event_ids: list[str]) -> dict[str, bytes | None]:
    store = TriageStore.from_url(settings.redis.url, settings.redis.key_prefix)
    try:
        return {e: await store.waveform(e) for e in event_ids}
    finally:
        await store.close()


def test_alerting_events_keep_their_signal_as_received(run_result, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    feed, out = run_result
    payloads = {i.key: i.payload for i in feed.items}
    alerting = {k for k, v in out.verdicts.items() if v.alert_ids}
    stored = asyncio.run(_waves(settings, sorted(out.verdicts)))
    assert alerting and alerting != set(out.verdicts)
    assert {k for k, blob in stored.items() if blob is not None} == alerting  # none for the others
    assert all(stored[k] == pack_waveform(payloads[k]) for k in alerting)
