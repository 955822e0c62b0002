"""Folder ingest on a real Kafka-protocol broker: 50 files, 5 bad, a restart in the middle."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from ops.events_cmd import EventProducer
from ops.ingest import DONE, QUARANTINE, IngestConfig, IngestCounts, ingest_once, watch_dir
from ops.stack import StackInfo
from schemas.vendor import IntakeContext
from workers.settings import Settings, load_settings

pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.integration
SAMPLE = Path(pydicom.data.get_testdata_file("waveform_ecg.dcm"))
REPO = Path(__file__).resolve().parents[1]
BAD = {  # file name -> the reason its quarantine record must give
    "garbage.bin": "unknown_format",
    "bomb.xml": "unsafe_xml",
    "truncated.dcm": "corrupt_waveform",
    "ct.dcm": "wrong_document",
    "no-rhythm.xml": "missing_element",
}


class Crash(Exception):
    """Stands in for the process dying."""


class CrashingSender:
    """Sends through ``real`` but dies at call ``at``: before the send (mid-file) or just after its ack."""

    def __init__(self, real: EventProducer, at: int, after_ack: bool) -> None:
        self.real, self.at, self.after_ack, self.calls = real, at, after_ack, 0

    async def send_all(self, items: Sequence[tuple[str, bytes]]) -> None:
        self.calls += 1
        if self.calls == self.at and not self.after_ack:
            raise Crash
        await self.real.send_all(items)
        if self.calls == self.at:
            raise Crash


def drop_files(inbox: Path, tag: str, n_good: int) -> None:
    """n_good distinct real DICOM ECGs (the pydicom sample under new patient IDs) and the five bad files."""
    inbox.mkdir()
    for i in range(n_good):
        ds = pydicom.dcmread(SAMPLE)
        ds.PatientID = f"{tag}-{i:03d}"
        ds.save_as(inbox / f"ecg-{i:03d}.dcm")
    (inbox / "garbage.bin").write_bytes(os.urandom(4096))
    (inbox / "bomb.xml").write_bytes(b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
                                     b"<RestingECG>&b;</RestingECG>")
    (inbox / "truncated.dcm").write_bytes(SAMPLE.read_bytes()[:3000])
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), inbox / "ct.dcm")
    (inbox / "no-rhythm.xml").write_bytes(b"<RestingECG><Waveform><WaveformType>Median</WaveformType></Waveform>"
                                          b"</RestingECG>")


def config(inbox: Path) -> IngestConfig:
    return IngestConfig(inbox, IntakeContext(site="site-a", secret=b"k" * 32), settle_s=0.0, poll_s=0.1)


async def topic_messages(settings: Settings, wanted: set[str], expected: int,
                         timeout_s: float = 60) -> list[tuple[str, bytes]]:
    """(key, value) of the events topic's messages whose patient_ref is in ``wanted``."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(settings.kafka.topics.events, bootstrap_servers=settings.kafka.bootstrap,
                                group_id=None, auto_offset_reset="earliest", fetch_max_bytes=64 * 1024 * 1024,
                                max_partition_fetch_bytes=16 * 1024 * 1024)
    await consumer.start()
    out: list[tuple[str, bytes]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline, quiet_until = loop.time() + timeout_s, float("inf")
        while loop.time() < min(deadline, quiet_until):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out += [(r.key.decode(), r.value) for r in records
                        if r.key and r.value and orjson.loads(r.value)["patient_ref"] in wanted]
            if len(out) >= expected and quiet_until == float("inf"):
                quiet_until = loop.time() + 1.0  # then a little longer, to see any extra copy
    finally:
        await consumer.stop()
    return out


def refs(tag: str, n: int) -> set[str]:
    from schemas.vendor import patient_ref

    return {patient_ref(f"{tag}-{i:03d}", "site-a", b"k" * 32) for i in range(n)}


def check_quarantine(inbox: Path) -> None:
    reasons = {p.name.removesuffix(".reason.json"): orjson.loads(p.read_bytes())["reason"]
               for p in (inbox / QUARANTINE).glob("*.reason.json")}
    assert reasons == BAD
    assert {p.name for p in (inbox / QUARANTINE).iterdir() if not p.name.endswith(".reason.json")} == set(BAD)


def test_fifty_files_five_bad_and_a_restart_mid_file(stack: StackInfo, tmp_path: Path) -> None:
    settings = load_settings(stack.env())
    inbox = tmp_path / "inbox"
    drop_files(inbox, "restart", 45)

    async def scenario() -> tuple[IngestCounts, IngestCounts]:
        async with EventProducer(settings) as producer:
            first = IngestCounts()
            with pytest.raises(Crash):  # dies converting file 25, before anything of it is sent
                await ingest_once(config(inbox), CrashingSender(producer, at=25, after_ack=False), first)
            second = await ingest_once(config(inbox), producer)
            shutil.copy(inbox / DONE / "ecg-007.dcm", inbox / "ecg-007-again.dcm")  # the same file dropped twice
            third = await ingest_once(config(inbox), producer)
        assert third.duplicates == 1 and third.published == 0
        return first, second

    first, second = asyncio.run(scenario())
    assert first.published == 24 and first.published + second.published == 45
    assert first.quarantined + second.quarantined == 5
    messages = asyncio.run(topic_messages(settings, refs("restart", 45), 45))
    per_id = Counter(key for key, _ in messages)
    assert len(per_id) == 45 and set(per_id.values()) == {1}  # each good file: exactly one event
    check_quarantine(inbox)
    assert len(list((inbox / DONE).iterdir())) == 46 and not any(inbox.glob("*.dcm"))


def test_a_crash_after_the_ack_resends_the_same_bytes_under_the_same_id(stack: StackInfo, tmp_path: Path) -> None:
    settings = load_settings(stack.env())
    inbox = tmp_path / "inbox"
    drop_files(inbox, "ack", 6)

    async def scenario() -> None:
        async with EventProducer(settings) as producer:
            with pytest.raises(Crash):
                await ingest_once(config(inbox), CrashingSender(producer, at=3, after_ack=True))
            await ingest_once(config(inbox), producer)

    asyncio.run(scenario())
    messages = asyncio.run(topic_messages(settings, refs("ack", 6), 7))
    per_id = Counter(key for key, _ in messages)
    assert len(per_id) == 6 and sorted(per_id.values()) == [1, 1, 1, 1, 1, 2]
    twice = next(k for k, n in per_id.items() if n == 2)
    assert len({v for k, v in messages if k == twice}) == 1  # byte-identical: the worker records it once


def test_watch_publishes_files_as_they_arrive(stack: StackInfo, tmp_path: Path) -> None:
    settings = load_settings(stack.env())
    inbox = tmp_path / "inbox"
    drop_files(inbox, "watch", 3)

    async def scenario() -> IngestCounts:
        stop = asyncio.Event()
        async with EventProducer(settings) as producer:
            task = asyncio.create_task(watch_dir(config(inbox), producer, stop))
            for _ in range(200):
                await asyncio.sleep(0.1)
                if len(list((inbox / DONE).iterdir())) == 3 and len(list((inbox / QUARANTINE).iterdir())) == 10:
                    break
            stop.set()
            return await task

    counts = asyncio.run(scenario())
    assert counts.published == 3 and counts.quarantined == 5 and counts.events == 3
    check_quarantine(inbox)


def run_cli(stack: StackInfo, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env(), "ECGSCREEN_INTAKE_SECRETS": '{"site-a": "' + "k" * 32 + '"}', "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def test_ingest_once_and_events_publish_commands(stack: StackInfo, tmp_path: Path) -> None:
    settings = load_settings(stack.env())
    inbox = tmp_path / "inbox"
    drop_files(inbox, "cli", 2)
    out = run_cli(stack, "ingest", "once", str(inbox), "--site", "site-a", "--settle-s", "0")
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout) == {"published": 2, "events": 2, "duplicates": 0, "quarantined": 5,
                                        "reasons": Counter(BAD.values())}
    assert out.stderr.splitlines()[-1] == "ingest: 2 published (2 events), 0 duplicate, 5 quarantined"
    assert "cli-000" not in out.stderr  # no patient identifier in the log
    check_quarantine(inbox)
    # events publish: lines (one of them invalid) straight to the topic
    ds = pydicom.dcmread(SAMPLE)
    ds.PatientID = "pub-000"
    ds.save_as(tmp_path / "pub.dcm")
    from schemas.vendor import convert_file

    line = convert_file(tmp_path / "pub.dcm", config(inbox).ctx).events[0].payload
    (tmp_path / "events.jsonl").write_bytes(line + b"\n{not json\n")
    published = run_cli(stack, "events", "publish", str(tmp_path / "events.jsonl"))
    assert published.returncode == 1 and orjson.loads(published.stdout) == {"published": 1, "invalid": 1}
    assert "ecgscreen: invalid_json: line 2:" in published.stderr
    messages = asyncio.run(topic_messages(settings, refs("cli", 2) | refs("pub", 1), 3))
    assert sorted(Counter(k for k, _ in messages).values()) == [1, 1, 1]


def test_candidates_skip_partial_hidden_and_wfdb_signal_files(tmp_path: Path) -> None:
    from ops.ingest import Settled, candidates

    for name in ("a.xml", "b.xml.part", ".c.xml", "r.hea", "r.dat", "lone.dat"):
        (tmp_path / name).write_bytes(b"x")
    assert sorted(p.name for p in candidates(tmp_path)) == ["a.xml", "lone.dat", "r.hea"]
    settled = Settled(settle_s=5.0)
    assert settled.complete(candidates(tmp_path), now=100.0) == []
    (tmp_path / "r.dat").write_bytes(b"xy")  # the record's signal file still growing
    assert sorted(p.name for p in settled.complete(candidates(tmp_path), now=105.0)) == ["a.xml", "lone.dat"]
    assert sorted(p.name for p in settled.complete(candidates(tmp_path), now=110.0)) == ["a.xml", "lone.dat", "r.hea"]


def test_ingest_killed_mid_run_and_restarted_loses_nothing(stack: StackInfo, tmp_path: Path) -> None:
    """A real process, SIGKILLed wherever it happens to be, then run again: 15 good files, 5 bad."""
    settings = load_settings(stack.env())
    inbox = tmp_path / "inbox"
    drop_files(inbox, "kill", 15)
    env = {**stack.env(), "ECGSCREEN_INTAKE_SECRETS": '{"site-a": "' + "k" * 32 + '"}', "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "ops.cli", "ingest", "once", str(inbox), "--site", "site-a", "--settle-s", "0"]
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if proc.poll() is not None or len(list((inbox / DONE).glob("*"))) >= 5:
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    done_before = len(list((inbox / DONE).glob("*")))
    assert 0 < done_before < 15  # it really died part-way
    out = run_cli(stack, "ingest", "once", str(inbox), "--site", "site-a", "--settle-s", "0")
    assert out.returncode == 0, out.stderr
    messages = asyncio.run(topic_messages(settings, refs("kill", 15), 15))
    per_id = Counter(key for key, _ in messages)
    assert len(per_id) == 15  # no good file lost
    for key, n in per_id.items():  # a copy, if the kill fell between ack and ledger, is byte-identical
        assert n == 1 or len({v for k, v in messages if k == key}) == 1
    assert sum(per_id.values()) <= 16
    check_quarantine(inbox)
