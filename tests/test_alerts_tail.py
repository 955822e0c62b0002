"""`ecgscreen alerts tail` and the subscription it runs on: filters as tables, then a real broker."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ops.cli import main
from ops.stack import StackInfo
from schemas.codec import decode_alert, encode_alert
from schemas.messages import Alert, Priority, TaskGroup, TaskRef
from tests.triage_factory import make_alert
from workers.settings import Topics
from workers.subscribers import AlertFilter, Subscription, alert_line, consume

LVEF = TaskRef("echo.lvef_le_40", "LVEF <= 40%", TaskGroup.ECHO)


@pytest.mark.parametrize(("filt", "alert", "expected"), [
    (AlertFilter(), make_alert(1), True),
    (AlertFilter(sites=frozenset({"site-b"})), make_alert(1), False),
    (AlertFilter(sites=frozenset({"site-a", "site-b"})), make_alert(1), True),
    (AlertFilter(groups=frozenset({TaskGroup.ECHO})), make_alert(1), False),
    (AlertFilter(groups=frozenset({TaskGroup.ECHO})), make_alert(1, task=LVEF), True),
    (AlertFilter(min_priority=Priority.HIGH), make_alert(1, Priority.ROUTINE), False),
    (AlertFilter(min_priority=Priority.HIGH), make_alert(1, Priority.HIGH), True),
    (AlertFilter(min_priority=Priority.HIGH), make_alert(1, Priority.URGENT), True),
])
def test_filter_table(filt: AlertFilter, alert: Alert, expected: bool) -> None:
    assert filt.matches(alert) is expected


def test_line_names_the_alert_not_the_patient() -> None:
    line = alert_line(replace(make_alert(3, Priority.URGENT), expected_ppv=0.25, flags=("untrained_model",)))
    assert "urgent" in line and "al_0003" in line and "event e-3" in line and "25.0%" in line
    assert "untrained_model" in line and "p-3" not in line


ALERTS = [make_alert(1), make_alert(2, Priority.URGENT, site="site-b"), make_alert(3, Priority.HIGH, task=LVEF),
          make_alert(4, Priority.URGENT)]


@pytest.fixture(scope="module")
def alert_topic(stack: StackInfo) -> str:
    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for a in ALERTS:
                await producer.send_and_wait(Topics().alerts, encode_alert(a), key=a.patient_ref.encode())
        finally:
            await producer.stop()

    asyncio.run(produce())
    return stack.kafka_bootstrap


def _tail(bootstrap: str, filt: AlertFilter, group: str | None = None, max_alerts: int | None = None) -> list[str]:
    got: list[str] = []

    async def keep(alert: Alert) -> None:
        got.append(alert.alert_id)

    sub = Subscription(bootstrap, Topics().alerts, group_id=group, max_alerts=max_alerts, idle_timeout_s=1.0,
                       filter=filt, session_timeout_s=6.0)
    asyncio.run(consume(sub, keep))
    return sorted(got)


@pytest.mark.integration
def test_tail_filters_on_a_real_broker(alert_topic: str) -> None:
    assert _tail(alert_topic, AlertFilter(), max_alerts=4) == ["al_0001", "al_0002", "al_0003", "al_0004"]
    assert _tail(alert_topic, AlertFilter(sites=frozenset({"site-a"}), min_priority=Priority.HIGH)) == [
        "al_0003", "al_0004"]
    assert _tail(alert_topic, AlertFilter(groups=frozenset({TaskGroup.ECHO}))) == ["al_0003"]


async def _committed(bootstrap: str, group: str) -> tuple[int, int]:
    """The group's committed offsets against the topic's end (an offset fetch; no group join)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(Topics().alerts, p) for p in sorted(consumer.partitions_for_topic(Topics().alerts) or [])]
        ends = await consumer.end_offsets(tps)
        return sum([await consumer.committed(tp) or 0 for tp in tps]), sum(ends.values())
    finally:
        await consumer.stop()


@pytest.mark.integration
def test_consumer_group_commits_what_it_handled(alert_topic: str) -> None:
    """So a restarted subscriber resumes after it (rejoining the group here would wait out the old session)."""
    assert len(_tail(alert_topic, AlertFilter(), group="tail-test", max_alerts=4)) == 4
    committed, end = asyncio.run(_committed(alert_topic, "tail-test"))
    assert committed == end == len(ALERTS)


@pytest.mark.integration
def test_cli_tail_prints_json(alert_topic: str, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ECGSCREEN_KAFKA_BOOTSTRAP", alert_topic)
    assert main(["alerts", "tail", "--json", "--min-priority", "urgent", "--idle-timeout", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    got = [decode_alert(line.encode()) for line in lines]
    assert sorted(a.alert_id for a in got) == ["al_0002", "al_0004"]
    assert orjson.loads(lines[0])["schema"] == "ecg.alert/v1"


@pytest.mark.integration
def test_cli_export_fhir_writes_one_bundle_per_alert(alert_topic: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ECGSCREEN_KAFKA_BOOTSTRAP", alert_topic)
    monkeypatch.setenv("ECGSCREEN_SESSION_TIMEOUT_S", "6")
    assert main(["alerts", "export-fhir", "--dir", str(tmp_path), "--group", "fhir-test", "--max", "4"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "written=4 updated=0 duplicate=0"
    files = sorted(tmp_path.glob("*.json"))
    assert [f.name for f in files] == [f"al-{n:04d}.json" for n in range(1, 5)]
    kinds = [e["resource"]["resourceType"] for e in orjson.loads(files[1].read_bytes())["entry"]]
    assert kinds == ["RiskAssessment", "Flag", "Communication"]  # al_0002 is urgent
