"""The replay tool on real parts: a real broker and Redis (tests/conftest.py), the live worker process.

- backfill run twice adds no triage entry; its alerts are flagged and in the backfill queue only;
- shadow writes nothing outside its namespace (Redis prefix, topics);
- a run stopped part-way and resumed from its checkpoint writes every event's verdict exactly once;
- audit of the live worker's verdicts with the same bundle: 0 differences (replay == live);
  another bundle: differences.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from ops.cli import main
from ops.feed import simulated_records
from ops.stack import StackInfo
from workers.settings import DEFAULT_BUNDLE
from workers.triage import TriageStore

pytestmark = pytest.mark.integration
N = 12
SITES = ("sim-site-0", "sim-site-1")


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ecg.event/v1 lines; one patient per record, so no alert merges into another's."""
    path = tmp_path_factory.mktemp("replay") / "events.jsonl"
    recs = [dataclasses.replace(r, patient_ref=f"replay-p{k}") for k, r in enumerate(simulated_records(N, seed=5,
                                                                                                         bases=2))]
    path.write_bytes(b"".join(r.encode() + b"\n" for r in recs))
    return path


def _env(monkeypatch: pytest.MonkeyPatch, stack: StackInfo, tmp: Path, prefix: str) -> None:
    for k in [k for k in os.environ if k.startswith("ECGSCREEN_")]:
        monkeypatch.delenv(k)
    for k, v in stack.env().items():
        monkeypatch.setenv(k, v)
    # Every record alerts on LVH and AF (the default bundle's alerting tasks) at threshold 0.001,
    # so the triage checks have entries to count.
    policy = {s: {"thresholds": {"ecg.lvh": 0.001, "ecg.afib": 0.001}} for s in SITES}
    monkeypatch.setenv("ECGSCREEN_SITE_POLICY", orjson.dumps(policy).decode())
    monkeypatch.setenv("ECGSCREEN_REDIS_PREFIX", prefix)
    monkeypatch.setenv("ECGSCREEN_STATE_DIR", str(tmp))
    monkeypatch.setenv("ECGSCREEN_BUNDLE", str(DEFAULT_BUNDLE.resolve()))
    monkeypatch.setenv("ECGSCREEN_ENGINE", "torch-cpu")
    monkeypatch.setenv("ECGSCREEN_MAX_BATCH", "4")


def _replay(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["replay", *argv])
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    assert out, captured.err[-2000:]
    return code, orjson.loads(out[-1])


async def _keys(url: str) -> set[str]:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    try:
        return {k.decode() if isinstance(k, bytes) else k for k in await r.keys("*")}
    finally:
        await r.aclose()


async def _messages(bootstrap: str, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        ends = await consumer.end_offsets(tps)
        out: list[bytes] = []
        for tp in tps:
            if ends[tp] == 0:
                continue
            consumer.assign([tp])
            consumer.seek(tp, 0)
            while await consumer.position(tp) < ends[tp]:
                got = await consumer.getmany(tp, timeout_ms=1000)
                out += [m.value or b"" for m in got.get(tp, [])]
        return out
    finally:
        await consumer.stop()


async def _store_view(url: str, prefix: str) -> tuple[dict[str, int], dict[str, int], list[list[str]]]:
    store = TriageStore.from_url(url, prefix)
    try:
        backfill = {s: len(await store.items(s, "backfill", 1000)) for s in SITES}
        worklist = {s: await store.worklist_size(s) for s in SITES}
        flags = [list(i.alert.flags) for s in SITES for i in await store.items(s, "backfill", 1000)]
        return backfill, worklist, flags
    finally:
        await store.close()


def test_backfill_twice_adds_no_triage_entry(stack: StackInfo, events: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, stack, tmp_path, "bf")
    code, first = _replay(capsys, "backfill", str(events), "--checkpoint", str(tmp_path / "a.json"))
    assert code == 0 and first["events"] == N and first["verdicts"] == N and first["triage_added"] > 0
    backfill, worklist, flags = asyncio.run(_store_view(stack.redis_url, "bf"))
    assert sum(backfill.values()) == first["triage_added"]
    assert worklist == {s: 0 for s in SITES}  # today's worklist untouched
    assert flags and all("backfill" in f for f in flags)
    code, second = _replay(capsys, "backfill", str(events), "--checkpoint", str(tmp_path / "b.json"))
    assert code == 0 and second["duplicates"] == N and second.get("triage_added", 0) == 0
    assert asyncio.run(_store_view(stack.redis_url, "bf"))[0] == backfill


def test_shadow_writes_only_to_its_namespace(stack: StackInfo, events: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, stack, tmp_path, "live")
    live_topics = ("ecg.events", "ecg.verdicts", "ecg.alerts", "ecg.deadletter")
    keys_before = asyncio.run(_keys(stack.redis_url))
    topics_before = {t: len(asyncio.run(_messages(stack.kafka_bootstrap, t))) for t in live_topics}
    code, out = _replay(capsys, "shadow", str(events), "--bundle", str(DEFAULT_BUNDLE.resolve()),
                        "--shadow-suffix", ".sh1", "--checkpoint", str(tmp_path / "s.json"))
    assert code == 0 and out["verdicts"] == N
    new_keys = asyncio.run(_keys(stack.redis_url)) - keys_before
    assert new_keys and all(k.startswith("live-shadow:") for k in new_keys)
    assert {t: len(asyncio.run(_messages(stack.kafka_bootstrap, t))) for t in live_topics} == topics_before
    assert len(asyncio.run(_messages(stack.kafka_bootstrap, "ecg.verdicts.sh1"))) == N


def test_interrupted_replay_resumes_each_event_exactly_once(stack: StackInfo, events: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, stack, tmp_path, "resume")
    cp = tmp_path / "cp.json"
    args = ["shadow", str(events), "--bundle", str(DEFAULT_BUNDLE.resolve()), "--shadow-suffix", ".sh2",
            "--checkpoint", str(cp)]
    code, first = _replay(capsys, *args, "--stop-after", "5")
    assert code == 130 and first["interrupted"] and 0 < first["events"] < N
    assert orjson.loads(cp.read_bytes())["done"] == first["events"]
    code, second = _replay(capsys, *args)
    assert code == 0 and not second["interrupted"] and second["resumed_from"] == first["events"]
    assert second["events"] == N  # counts carry over from the checkpoint
    written = asyncio.run(_messages(stack.kafka_bootstrap, "ecg.verdicts.sh2"))
    ids = Counter(orjson.loads(v)["event_id"] for v in written)
    assert len(ids) == N and set(ids.values()) == {1}
    code, third = _replay(capsys, *args)  # finished: nothing more is written
    assert code == 0 and third["resumed_from"] == N
    assert len(asyncio.run(_messages(stack.kafka_bootstrap, "ecg.verdicts.sh2"))) == N


def test_audit_of_the_live_workers_verdicts(stack: StackInfo, events: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The live worker scores the events; a replay of its events topic with the same bundle agrees
    with every verdict it recorded (replay == live), and another bundle gives a diff."""
    from ops.demo import run_worker_process, wait_ready
    from workers.settings import load_settings

    _env(monkeypatch, stack, tmp_path, "audit")
    env = {**os.environ, "ECGSCREEN_GROUP_ID": "replay-audit", "ECGSCREEN_MAX_WAIT_S": "0.05"}
    settings = load_settings(env)
    with run_worker_process(env, tmp_path / "worker.log") as proc:
        wait_ready(settings, proc, timeout_s=180)
        assert main(["events", "publish", str(events)]) == 0
        capsys.readouterr()
        for _ in range(240):
            if len(asyncio.run(_messages(stack.kafka_bootstrap, "ecg.verdicts"))) >= N:
                break
            time.sleep(1.0)
    recorded = asyncio.run(_messages(stack.kafka_bootstrap, "ecg.verdicts"))
    assert len({orjson.loads(v)["event_id"] for v in recorded}) == N, [orjson.loads(v)["event_id"] for v in recorded]
    code, same = _replay(capsys, "audit", "kafka:ecg.events", "--checkpoint", str(tmp_path / "a.json"))
    audit = same["audit"]
    assert code == 0 and audit["compared"] == N and audit["differing_events"] == 0, (audit, same)
    assert main(["model", "init-untrained", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    code, other = _replay(capsys, "audit", "kafka:ecg.events", "--bundle", str(tmp_path / "other"),
                          "--checkpoint", str(tmp_path / "b.json"), "--report", str(tmp_path / "report"))
    diff = other["audit"]
    assert code == 0 and diff["compared"] == N and "scores" in diff["differences"]
    assert (tmp_path / "report" / "report.md").exists() and (tmp_path / "report" / "scores_scatter.png").exists()


def test_kafka_source_partitions_offsets_and_event_time(stack: StackInfo, events: Path) -> None:
    from datetime import timedelta

    from aiokafka import AIOKafkaProducer

    from ops.replay.sources import KafkaRange, SourceOptions, acquired_at, read
    from ops.stack import create_topics

    lines = events.read_bytes().splitlines()
    times = sorted(t for t in (acquired_at(v) for v in lines) if t is not None)

    async def scenario() -> dict[str, list[tuple[int, int]]]:
        await create_topics(stack.kafka_bootstrap, ["replay.src"], 3)
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            await asyncio.gather(*[await producer.send("replay.src", v, key=str(k).encode())
                                   for k, v in enumerate(lines)])
        finally:
            await producer.stop()

        async def got(spec: str, r: KafkaRange) -> list[tuple[int, int]]:
            return [(i.partition, i.offset) async for i in read([spec], SourceOptions(r))]

        bs = stack.kafka_bootstrap
        return {"all": await got("kafka:replay.src", KafkaRange(bs)),
                "p1": await got("kafka:replay.src:1", KafkaRange(bs)),
                "p1_from1": await got("kafka:replay.src:1", KafkaRange(bs, from_offset=1, to_offset=3)),
                "time": await got("kafka:replay.src", KafkaRange(bs, since=times[3],
                                                                  until=times[8] + timedelta(seconds=1)))}

    out = asyncio.run(scenario())
    assert len(out["all"]) == N and len(set(out["all"])) == N
    p1 = [x for x in out["all"] if x[0] == 1]
    assert out["p1"] == p1 and out["p1_from1"] == [x for x in p1 if 1 <= x[1] < 3]
    assert len(out["time"]) == 6  # acquired_at in [times[3], times[8]]


def test_backfill_via_topic_publishes_each_event_once_and_resumes(stack: StackInfo, events: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """For an archive too big for one process: the events go to a topic, byte for byte, each once,
    and a second run after the first finished publishes nothing more."""
    _env(monkeypatch, stack, tmp_path, "via")
    args = ["backfill", str(events), "--via-topic", "ecg.events.backfill-test",
            "--checkpoint", str(tmp_path / "v.json")]
    code, first = _replay(capsys, *args)
    assert code == 0 and first["published"] == N
    code, again = _replay(capsys, *args)
    assert code == 0 and again["published"] == N  # the checkpoint's count: nothing new was sent
    sent = asyncio.run(_messages(stack.kafka_bootstrap, "ecg.events.backfill-test"))
    assert sorted(sent) == sorted(events.read_bytes().splitlines())


def test_wfdb_and_vendor_sources_replay_through_the_intake_converters(stack: StackInfo, shared_data: Path,
                                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    _env(monkeypatch, stack, tmp_path, "wfdb")
    monkeypatch.setenv("ECGSCREEN_INTAKE_SECRETS", orjson.dumps({"site-a": "k" * 32}).decode())
    folder = tmp_path / "wfdb"
    folder.mkdir()
    for name in ("00001_hr", "00106_hr"):
        for ext in (".hea", ".dat"):
            shutil.copy(shared_data / "wfdb" / "ptbxl" / "records500" / f"{name}{ext}", folder)
    muse = shared_data / "vendor" / "muse" / "musephi-muse_ecg1.xml"
    code, out = _replay(capsys, "shadow", str(folder), str(muse), "--bundle", str(DEFAULT_BUNDLE.resolve()),
                        "--site", "site-a", "--dry-run", "--checkpoint", str(tmp_path / "w.json"))
    assert code == 0 and out["events"] == 3 and out["verdicts"] == 3 and out.get("deadletters", 0) == 0, out


def test_ctrl_c_stops_after_the_batch_in_progress_and_the_resumed_run_finishes(
        stack: StackInfo, events: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A real SIGINT to a paced (``--rate-limit``) replay process: it exits 130 with its checkpoint
    at what it wrote; the resumed run writes the rest, every event's verdict exactly once."""
    import signal
    import subprocess
    import sys

    _env(monkeypatch, stack, tmp_path, "sigint")
    cp = tmp_path / "cp.json"
    args = ["shadow", str(events), "--bundle", str(DEFAULT_BUNDLE.resolve()), "--shadow-suffix", ".sig",
            "--checkpoint", str(cp)]
    proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "replay", *args, "--rate-limit", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 120
        while not (cp.exists() and orjson.loads(cp.read_bytes()).get("done", 0) > 0):
            assert proc.poll() is None and time.monotonic() < deadline, "no batch written"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    first = orjson.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 130 and first["interrupted"] and 0 < first["events"] < N, first
    assert orjson.loads(cp.read_bytes())["done"] == first["events"]
    code, second = _replay(capsys, *args)
    assert code == 0 and second["resumed_from"] == first["events"] and second["events"] == N
    written = asyncio.run(_messages(stack.kafka_bootstrap, "ecg.verdicts.sig"))
    ids = Counter(orjson.loads(v)["event_id"] for v in written)
    assert len(ids) == N and set(ids.values()) == {1}
