"""Alerts with real waveforms and the web app for the web tests (not a test module)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis

from schemas.messages import Explanation, Priority, Quality, QualityStatus, TaskGroup, TaskRef, Window
from schemas.waveform import pack_waveform
from tests.conftest import SHARED_DATA
from tests.triage_factory import make_alert
from workers.settings import load_settings
from workers.triage import TriageStore
from workers.triage_acl import Role, apply_acl

PASSWORD = "web-test"
USER_HEADER = "X-Remote-User"
SITE = "site-web"
AFIB = TaskRef("ecg.afib", "Atrial fibrillation", TaskGroup.ECG)
LVEF = TaskRef("echo.lvef_lt_40", "LVEF < 40%", TaskGroup.ECHO)
HCM = TaskRef("rare.hcm", "Hypertrophic cardiomyopathy", TaskGroup.RARE)
EXPLAINED = Explanation("gradient_x_input", ("V2", "II", "aVL"),
                        (Window("V2", 5.5, 6.5, 0.3), Window("II", 2.0, 3.0, 0.2)))


def record_payload() -> tuple[bytes, str]:
    """One real PTB-XL 500 Hz record when ../shared/data is there, else a simulated one; (payload, origin)."""
    from ops.feed import ptbxl_records, simulated_records

    npz = SHARED_DATA / "ptbxl_folds1-8_500hz.npz"
    if npz.exists():
        rec = next(ptbxl_records(npz, SHARED_DATA / "ptbxl_folds1-8_metadata.csv", limit=1))
        return rec.encode(), "ptbxl"
    return next(simulated_records(1, fs=500.0)).encode(), "simulated"


def alerts(event_id: str) -> list[Any]:
    """Four alerts at SITE, from the record's event: urgent ecg, high echo (degraded), routine rare, routine ecg."""
    degraded = Quality(QualityStatus.DEGRADED, ("lead_flat",), ("aVL",))
    return [
        replace(make_alert(1, Priority.URGENT, SITE, task=AFIB), event_id=event_id, patient_ref="pat-ALPHA-1",
                explanation=EXPLAINED, expected_ppv=0.42, flags=("late_event",)),
        replace(make_alert(2, Priority.HIGH, SITE, task=LVEF), event_id=event_id, patient_ref="pat-ALPHA-1",
                quality=degraded, explanation=EXPLAINED, expected_ppv=0.31),
        replace(make_alert(3, Priority.ROUTINE, SITE, task=HCM), event_id=event_id, patient_ref="pat-ALPHA-1"),
        replace(make_alert(4, Priority.ROUTINE, SITE), event_id=event_id, patient_ref="pat-BRAVO-2"),
    ]


def fill(redis_url: str, prefix: str) -> tuple[dict[Role, str], str]:
    """ACL users for ``prefix``; the worker user admits the alerts with the record's waveform."""
    payload, origin = record_payload()
    blob = pack_waveform(payload)
    event_id = blob.split(b'"event_id":"', 1)[1].split(b'"', 1)[0].decode()

    async def go() -> dict[Role, str]:
        admin = aioredis.Redis.from_url(redis_url)
        names = await apply_acl(admin, prefix, dict.fromkeys(Role, PASSWORD),
                                {r: f"{r.value}-{prefix}" for r in Role})
        await admin.aclose()
        worker = TriageStore.from_url(redis_url, prefix, username=names[Role.WORKER], password=PASSWORD)
        await worker.add_alerts(alerts(event_id), {event_id: blob})
        await worker.close()
        return names

    return asyncio.run(go()), origin


def web_settings(redis_url: str, prefix: str, names: dict[Role, str], **more: str) -> Any:
    return load_settings({"ECGSCREEN_REDIS_URL": redis_url, "ECGSCREEN_REDIS_PREFIX": prefix,
                          "ECGSCREEN_WEB_USER_HEADER": USER_HEADER,
                          "ECGSCREEN_WEB_REDIS_USERNAME": names[Role.REVIEWER],
                          "ECGSCREEN_WEB_REDIS_PASSWORD": PASSWORD, **more})


def store_as(redis_url: str, prefix: str, names: dict[Role, str], role: Role = Role.AUDITOR) -> TriageStore:
    return TriageStore.from_url(redis_url, prefix, username=names[role], password=PASSWORD)
