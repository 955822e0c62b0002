"""/healthz, /readyz and /metrics on real parts: a real Redis stopped and restarted, a real broker,
and the worker process itself scraped after it screened a feed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ops.demo import build_feed, run_worker_process, wait_ready
from ops.feed import simulated_records
from ops.ops_view import fetch
from ops.outputs import OutputCollector
from ops.stack import StackInfo, _terminate, free_port, start_redis
from schemas.codec import encode_alert
from tests.test_integration import _produce
from tests.triage_factory import make_alert
from workers.health import Health, OpsServer, Readiness, dependency_checks
from workers.metrics import SubscriberMetrics
from workers.settings import KafkaSettings, RedisSettings, Settings, load_settings
from workers.subscribers import Subscription, consume

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "models" / "bundles" / "ecgclip-r18-ptbxl-100hz"


def _until(probe: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if probe():
            return True
        time.sleep(0.2)
    return False


def _ready(base: str) -> tuple[int, dict[str, object]]:
    status, body = fetch(f"{base}/readyz")
    return status, orjson.loads(body)


def _series(text: str) -> dict[str, float]:
    """'name{label="v",...}' -> value, for every sample of a scrape."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[tuple[int, Path, list[int]]]:
    """A Redis of this test's own (the test stops and restarts it); every pid it ran is stopped after."""
    port = free_port()
    pids = [start_redis(port, tmp_path).pid]
    yield port, tmp_path, pids
    for pid in pids:
        _terminate(pid)


def test_readyz_follows_redis_down_and_back(stack: StackInfo, own_redis: tuple[int, Path, list[int]]) -> None:
    port, state, pids = own_redis
    health = Health(model_loaded=True)
    checks, close = dependency_checks(KafkaSettings(bootstrap=stack.kafka_bootstrap),
                                      RedisSettings(url=f"redis://127.0.0.1:{port}/0"))
    metrics = SubscriberMetrics("probe-test", health)
    server = OpsServer("127.0.0.1", 0, metrics.registry, Readiness(health, checks, metrics.registry), on_close=close)
    base = f"http://127.0.0.1:{server.start()}"
    try:
        status, body = _ready(base)
        assert status == 200 and body["checks"] == {"kafka": "ok", "redis": "ok", "model": "ok", "draining": "ok"}

        _terminate(pids[0])
        assert _until(lambda: _ready(base)[0] == 503), "readyz stayed ready with Redis stopped"
        status, body = _ready(base)
        checks_now = body["checks"]
        assert isinstance(checks_now, dict)
        assert checks_now["kafka"] == "ok" and checks_now["redis"] != "ok" and body["ready"] is False
        assert _series(fetch(f"{base}/metrics")[1])['ecgscreen_dependency_up{dependency="redis"}'] == 0.0
        assert fetch(f"{base}/healthz")[0] == 200  # not ready, but alive: no restart for a Redis outage

        pids.append(start_redis(port, state).pid)
        assert _until(lambda: _ready(base)[0] == 200), "readyz did not recover when Redis returned"
        assert _series(fetch(f"{base}/metrics")[1])['ecgscreen_dependency_up{dependency="redis"}'] == 1.0
    finally:
        server.stop()


def test_readyz_and_healthz_follow_the_process_state(stack: StackInfo) -> None:
    health = Health(model_loaded=False, stall_after_s=5.0)
    checks, _ = dependency_checks(KafkaSettings(bootstrap=stack.kafka_bootstrap), None)
    metrics = SubscriberMetrics("state-test", health)
    server = OpsServer("127.0.0.1", 0, metrics.registry, Readiness(health, checks, metrics.registry))
    base = f"http://127.0.0.1:{server.start()}"
    try:
        status, body = _ready(base)
        assert status == 503 and body["checks"]["model"] == "not loaded yet"  # type: ignore[index]
        assert fetch(f"{base}/healthz")[0] == 200  # alive while the model loads
        health.model_loaded = True
        assert _ready(base)[0] == 200
        health.draining = True
        assert _ready(base)[0] == 503
        health.last_tick = time.monotonic() - 10  # the event loop stopped turning
        status, text = fetch(f"{base}/healthz")
        assert status == 503 and "has not ticked" in text
        health.tick()
        assert fetch(f"{base}/healthz")[0] == 200
    finally:
        server.stop()


def test_kafka_down_is_not_ready() -> None:
    health = Health()
    checks, _ = dependency_checks(KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}"), None)
    metrics = SubscriberMetrics("no-broker", health)
    server = OpsServer("127.0.0.1", 0, metrics.registry, Readiness(health, checks, metrics.registry))
    base = f"http://127.0.0.1:{server.start()}"
    try:
        status, body = _ready(base)
        assert status == 503 and body["checks"]["kafka"] != "ok"  # type: ignore[index]
    finally:
        server.stop()


# --- the worker process ------------------------------------------------------------------------------


async def _collect(settings: Settings, keys: set[str]) -> OutputCollector:
    out = OutputCollector(settings.kafka.bootstrap, settings.kafka.topics)
    await out.start()
    try:
        assert await out.wait_for(keys, timeout_s=240), "not every event got an outcome in time"
    finally:
        await out.stop()
    return out


def _lags(text: str) -> list[float]:
    return [v for k, v in _series(text).items() if k.startswith("ecgscreen_consumer_lag")]


@pytest.fixture(scope="module")
def worker_scrape(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Run the worker with its ops server on a feed; scrape it once everything is accounted for."""
    state = tmp_path_factory.mktemp("ops-worker")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECGSCREEN_")}
    env.update({**stack.env(), "ECGSCREEN_STATE_DIR": str(state), "ECGSCREEN_GROUP_ID": "ecgscreen-ops-test",
                "ECGSCREEN_MAX_BATCH": "8", "ECGSCREEN_MAX_WAIT_S": "0.05", "ECGSCREEN_BUNDLE": str(BUNDLE),
                "ECGSCREEN_METRICS_HOST": "127.0.0.1", "ECGSCREEN_METRICS_PORT": str(port)})
    settings = load_settings(env)
    feed = build_feed(list(simulated_records(12, fs=500.0, seed=11, bases=2)), seed=11)
    base = f"http://127.0.0.1:{port}"
    with run_worker_process(env, state / "worker.log") as proc:
        wait_ready(settings, proc, timeout_s=120)
        asyncio.run(_produce(settings, feed.items))
        out = asyncio.run(_collect(settings, feed.unique_keys))
        # Lag is refreshed by a timer: wait until it shows the drained topic.
        _until(lambda: _lags(fetch(f"{base}/metrics")[1]) == [0.0] * 3, timeout_s=30)
        scraped = {"metrics": fetch(f"{base}/metrics"), "healthz": fetch(f"{base}/healthz"),
                   "readyz": fetch(f"{base}/readyz")}
        proc.send_signal(signal.SIGTERM)  # drain: not ready from the start of shutdown until exit
        drained = _until(lambda: "draining:" in fetch(f"{base}/readyz")[1], timeout_s=30)
    return {"feed": feed, "out": out, "settings": settings, "drained": drained, **scraped}


def test_worker_serves_health_and_metrics(worker_scrape: dict[str, object]) -> None:
    assert worker_scrape["healthz"][0] == 200  # type: ignore[index]
    status, body = worker_scrape["readyz"]  # type: ignore[misc]
    assert status == 200 and orjson.loads(body)["ready"] is True
    status, text = worker_scrape["metrics"]  # type: ignore[misc]
    assert status == 200
    series = _series(text)
    out: OutputCollector = worker_scrape["out"]  # type: ignore[assignment]
    assert series['ecgscreen_events_total{outcome="verdict"}'] == len(out.verdicts)
    assert series['ecgscreen_events_total{outcome="deadletter"}'] == len(out.deadletters)
    by_reason = {k: v for k, v in series.items() if k.startswith("ecgscreen_deadletters_total")}
    assert sum(by_reason.values()) == len(out.deadletters)
    assert sum(v for k, v in series.items() if k.startswith("ecgscreen_gate_records_total")) == len(out.verdicts)
    assert series["ecgscreen_batch_size_sum"] >= len(out.outcome_count)
    assert {'ecgscreen_stage_seconds_count{stage="decode"}', 'ecgscreen_stage_seconds_count{stage="infer"}',
            'ecgscreen_stage_seconds_count{stage="persist"}'} <= set(series)
    assert series["ecgscreen_event_to_verdict_seconds_count"] == len(out.outcome_count)
    # Counted per candidate alert (a suppressed one too); a published alert has its candidate's explanation.
    unexplained = sum(a.explanation is None for a in out.alerts.values())
    assert series["ecgscreen_alerts_unexplained_total"] >= unexplained
    lags = {k: v for k, v in series.items() if k.startswith("ecgscreen_consumer_lag")}
    assert len(lags) == 3 and set(lags.values()) == {0.0}, lags
    info = next(k for k in series if k.startswith("ecgscreen_model_info"))
    sha = next(iter(out.verdicts.values())).model.sha256
    assert f'model_sha256="{sha}"' in info and 'engine="torch-cpu"' in info
    assert series["ecgscreen_ready"] == 1.0
    assert worker_scrape["drained"], "/readyz did not report draining after SIGTERM"


async def _publish_alerts(settings: Settings, n: int) -> None:
    """n alerts of our own and one foreign message beside what the worker published."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(n):
            await producer.send_and_wait(settings.kafka.topics.alerts, encode_alert(make_alert(900 + i)))
        await producer.send_and_wait(settings.kafka.topics.alerts, b"not an alert")
    finally:
        await producer.stop()


def subscriber_scrape(settings: Settings) -> str:
    """An alert-topic subscriber's own /metrics after it read the topic."""
    asyncio.run(_publish_alerts(settings, 3))
    health = Health()
    metrics = SubscriberMetrics("export-fhir", health)
    checks, _ = dependency_checks(settings.kafka, None)
    server = OpsServer("127.0.0.1", 0, metrics.registry, Readiness(health, checks, metrics.registry))
    base = f"http://127.0.0.1:{server.start()}"
    try:
        async def handled(_: object) -> None:
            metrics.handled("written")

        sub = Subscription(settings.kafka.bootstrap, settings.kafka.topics.alerts, group_id=None,
                           idle_timeout_s=2.0)
        asyncio.run(consume(sub, handled, metrics))
        return fetch(f"{base}/metrics")[1]
    finally:
        server.stop()


@pytest.fixture(scope="module")
def subscriber_text(worker_scrape: dict[str, object]) -> str:
    return subscriber_scrape(worker_scrape["settings"])  # type: ignore[arg-type]


def test_subscriber_exposes_lag_and_counts(worker_scrape: dict[str, object], subscriber_text: str) -> None:
    out: OutputCollector = worker_scrape["out"]  # type: ignore[assignment]
    series = _series(subscriber_text)
    handled = series['ecgscreen_subscriber_alerts_total{result="written",subscriber="export-fhir"}']
    assert handled == out.alert_messages + 3
    assert series['ecgscreen_subscriber_failures_total{reason="undecodable",subscriber="export-fhir"}'] == 1
    lags = [v for k, v in series.items() if k.startswith("ecgscreen_subscriber_lag")]
    assert lags and all(v == 0 for v in lags)


# --- the Grafana dashboard and the alert rules query what the processes expose -------------------

METRIC = re.compile(r"\b(?:ecgscreen|process)_[a-z0-9_]+\b")
DASHBOARD = ROOT / "ops" / "deploy" / "grafana" / "dashboards" / "ecgscreen.json"
RULES = ROOT / "ops" / "deploy" / "prometheus" / "alerts.yml"


def _exposed(*texts: str) -> set[str]:
    """Every sample name (and family name) in the scrapes."""
    names = set()
    for text in texts:
        for fam in text_string_to_metric_families(text):
            names.add(fam.name)
            if fam.type == "counter":  # a counter with no samples yet is still exposed as NAME_total
                names.add(f"{fam.name}_total")
            names.update(s.name for s in fam.samples)
    return names


def test_dashboard_loads_and_every_panel_metric_is_exposed(worker_scrape: dict[str, object],
                                                          subscriber_text: str) -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert dash["uid"] == "ecgscreen" and len(panels) >= 15
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    exposed = _exposed(worker_scrape["metrics"][1], subscriber_text)  # type: ignore[index]
    for panel in panels:
        exprs = [t["expr"] for t in panel["targets"]]
        names = {n for e in exprs for n in METRIC.findall(e)}
        assert names, f"panel {panel['title']!r} queries none of our metrics"
        assert names <= exposed, f"panel {panel['title']!r}: {sorted(names - exposed)} not in any /metrics"


def test_alert_rules_query_exposed_metrics(worker_scrape: dict[str, object], subscriber_text: str) -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    exposed = _exposed(worker_scrape["metrics"][1], subscriber_text)  # type: ignore[index]
    for rule in rules:
        names = set(METRIC.findall(rule["expr"]))
        assert names <= exposed, f"{rule['alert']}: {sorted(names - exposed)}"
