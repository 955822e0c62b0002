"""The signal behind each alert: stored as received, with the alert, readable by reviewers only."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from schemas.codec import decode_event, encode_event
from schemas.messages import Encoding, Source
from schemas.waveform import WaveformError, pack_waveform, unpack_waveform
from tests.triage_factory import make_alert, new_prefix, store
from workers.app import alert_waveforms
from workers.pipeline import Outcome, RawMessage
from workers.triage import TriagePermissionError, TriageStore
from workers.triage_acl import Role, apply_acl

LEADS = ("i", "II", "avr", "V1")


def _payload(encoding: Encoding, event_id: str = "e-1") -> bytes:
    x = np.random.default_rng(1).normal(0, 0.4, (len(LEADS), 1000)).astype(np.float32)
    extra = {"gain_adc_per_mv": [200.0, 400.0, 1000.0, 1000.0], "baseline_adc": [0, 10, -5, 0]} \
        if encoding is Encoding.INT16_LE_BASE64 else {}
    return encode_event(event_id, "p-1", datetime(2026, 1, 1, tzinfo=UTC), Source("site-a"), 250.0, LEADS, x,
                        encoding=encoding, age_years=61.0, sex="F", **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize("encoding", list(Encoding))
def test_waveform_keeps_the_samples_as_received(encoding: Encoding) -> None:
    payload = _payload(encoding)
    wave = unpack_waveform(pack_waveform(payload))
    event = decode_event(payload)
    assert wave.leads == ("I", "II", "aVR", "V1") and wave.sampling_rate_hz == 250.0
    assert wave.samples.dtype == (np.int16 if encoding is Encoding.INT16_LE_BASE64 else np.float32)
    assert np.array_equal(wave.signal_mv, event.signal_mv)  # bit for bit what the worker screened
    assert (wave.age_years, wave.sex) == (61.0, event.sex)
    assert b"p-1" not in pack_waveform(payload)  # the patient reference stays in the alert


def test_truncated_waveform_is_refused() -> None:
    with pytest.raises(WaveformError):
        unpack_waveform(pack_waveform(_payload(Encoding.INT16_LE_BASE64))[:-2])


def test_only_alerting_events_get_a_waveform() -> None:
    payload = _payload(Encoding.INT16_LE_BASE64, "e-7")
    alerts = (replace(make_alert(1), event_id="e-7"), replace(make_alert(2), event_id="e-7"))
    quiet = _payload(Encoding.INT16_LE_BASE64, "e-8")
    waves = alert_waveforms([Outcome(RawMessage.of(payload, "t", 0, 0), alerts=alerts),
                             Outcome(RawMessage.of(quiet, "t", 0, 1))])
    assert waves == {"e-7": pack_waveform(payload)}


def test_store_writes_the_waveform_with_the_alert(redis_url: str) -> None:
    prefix = new_prefix()
    blob = pack_waveform(_payload(Encoding.INT16_LE_BASE64, "e-1"))
    blob2 = pack_waveform(_payload(Encoding.FLOAT32_LE_BASE64, "e-2"))

    async def go() -> dict[str, object]:
        s = store(redis_url, prefix)
        r = aioredis.Redis.from_url(redis_url)
        try:
            a1 = make_alert(1, patient="p-1")
            (adm,) = await s.add_alerts([a1], {"e-1": blob})
            no_wave = make_alert(3)  # an alert added without a waveform stores none
            await s.add_alerts([no_wave])
            # A retention on the alert carries over to the waveforms of its later events.
            await r.pexpire(f"{prefix}:alert:al_0001", 3_600_000)
            later = replace(make_alert(2, patient="p-1", score=0.95), event_id="e-2")
            (upd,) = await s.add_alerts([later], {"e-2": blob2})
            return {"stored": await s.waveform("e-1") == blob, "ttl1": await r.pttl(f"{prefix}:wave:e-1"),
                    "ttl2": await r.pttl(f"{prefix}:wave:e-2"), "none": await s.waveform("e-3"),
                    "admissions": (adm.admission.value, upd.admission.value)}
        finally:
            await s.close()
            await r.aclose()

    out = asyncio.run(go())
    assert out["stored"] and out["ttl1"] == -1 and out["none"] is None
    assert 3_500_000 < out["ttl2"] <= 3_600_000  # type: ignore[operator]
    assert out["admissions"] == ("added", "updated")


def test_acl_worker_writes_reviewer_and_auditor_read(redis_url: str) -> None:
    prefix = new_prefix()
    names = {role: f"{role.value}-{prefix}" for role in Role}
    blob = pack_waveform(_payload(Encoding.INT16_LE_BASE64, "e-1"))

    def as_(role: Role) -> TriageStore:
        return TriageStore.from_url(redis_url, prefix, username=names[role], password="pw")

    async def go() -> dict[str, object]:
        admin = aioredis.Redis.from_url(redis_url)
        await apply_acl(admin, prefix, dict.fromkeys(Role, "pw"), names)
        await admin.aclose()
        worker, reviewer, auditor = as_(Role.WORKER), as_(Role.REVIEWER), as_(Role.AUDITOR)
        try:
            await worker.add_alerts([make_alert(1)], {"e-1": blob})
            out: dict[str, object] = {"reviewer_reads": await reviewer.waveform("e-1") == blob,
                                      "auditor_reads": await auditor.waveform("e-1") == blob}
            try:
                await reviewer.add_alerts([make_alert(2)], {"e-2": blob})
                out["reviewer_writes"] = True
            except TriagePermissionError:
                out["reviewer_writes"] = False
            r = aioredis.Redis.from_url(redis_url, username=names[Role.REVIEWER], password="pw")
            try:
                await r.set(f"{prefix}:wave:e-1", b"forged")
                out["reviewer_overwrites"] = True
            except NoPermissionError:
                out["reviewer_overwrites"] = False
            finally:
                await r.aclose()
            return out
        finally:
            for s in (worker, reviewer, auditor):
                await s.close()

    assert asyncio.run(go()) == {"reviewer_reads": True, "auditor_reads": True, "reviewer_writes": False,
                                 "reviewer_overwrites": False}
