"""Redis ACL users: the worker only adds, reviewers claim and resolve, the auditor only reads."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from schemas.errors import ConfigError
from schemas.messages import Priority
from tests.triage_factory import make_alert, new_prefix
from workers.policy import Admission, PolicyConfig
from workers.settings import RedisSettings, load_settings
from workers.triage import TriagePermissionError, TriageStore
from workers.triage_acl import Role, apply_acl
from workers.triage_stats import Resolution


@pytest.fixture
def users(redis_url: str) -> tuple[str, dict[Role, str]]:
    prefix = new_prefix()
    names = {role: f"{role.value}-{prefix}" for role in Role}

    async def go() -> None:
        admin = aioredis.Redis.from_url(redis_url)
        await apply_acl(admin, prefix, dict.fromkeys(Role, "pw-" + prefix), names)
        await admin.aclose()

    asyncio.run(go())
    return prefix, names


def _as(redis_url: str, prefix: str, user: str) -> TriageStore:
    return TriageStore.from_url(redis_url, prefix, actor="worker", username=user, password="pw-" + prefix)


def test_acl_roles(redis_url: str, users: tuple[str, dict[Role, str]]) -> None:
    prefix, names = users

    async def go() -> dict[str, Any]:
        worker = _as(redis_url, prefix, names[Role.WORKER])
        reviewer = _as(redis_url, prefix, names[Role.REVIEWER])
        auditor = _as(redis_url, prefix, names[Role.AUDITOR])
        out: dict[str, Any] = {}
        try:
            (adm,) = await worker.add_alerts([make_alert(1)])
            out["worker_adds"] = adm.admission
            out["worker_resolves"] = await _refused(worker.resolve("al_0001", "w", Resolution.FALSE_POSITIVE))
            out["worker_claims"] = await _refused(worker.claim("w", "al_0001"))
            out["reviewer_adds"] = await _refused(reviewer.add_alerts([make_alert(2)]))
            await reviewer.claim("dr-a", "al_0001")
            await reviewer.resolve("al_0001", "dr-a", Resolution.CONFIRMED)
            out["auditor_claims"] = await _refused(auditor.claim("aud", site="site-a"))
            out["auditor_verifies"] = (await auditor.verify("site-a")).ok
            out["auditor_reads"] = (await auditor.get("al_0001")).outcome
            out["worker_sees_resolved"] = (await worker.add_alerts([make_alert(3, patient="p-1")]))[0].admission
        finally:
            for s in (worker, reviewer, auditor):
                await s.close()
        return out

    assert asyncio.run(go()) == {
        "worker_adds": Admission.ADDED, "worker_resolves": True, "worker_claims": True, "reviewer_adds": True,
        "auditor_claims": True, "auditor_verifies": True, "auditor_reads": Resolution.CONFIRMED,
        "worker_sees_resolved": Admission.ADDED,
    }


def test_worker_cannot_resolve_with_a_handwritten_script(redis_url: str, users: tuple[str, dict[Role, str]]) -> None:
    """ACLs bind inside Lua: a worker cannot write review state however it tries."""
    prefix, names = users

    async def go() -> None:
        r = aioredis.Redis.from_url(redis_url, username=names[Role.WORKER], password="pw-" + prefix)
        try:
            await r.eval("return redis.call('HSET', KEYS[1], 'status', 'resolved')", 1, f"{prefix}:state:al_0001")
        finally:
            await r.aclose()

    # An ACL refusal, not any error (a typo in the script would raise a plain ResponseError).
    with pytest.raises(NoPermissionError):  # redis-py's class for a NOPERM reply
        asyncio.run(go())


def test_worker_may_release_a_held_alert_made_urgent_but_not_drop_a_listed_one(
        redis_url: str, users: tuple[str, dict[Role, str]]) -> None:
    """The worker's one ZREM (a selector on the held queue) is what the urgent-update rule needs."""
    prefix, names = users
    policy = PolicyConfig(max_alerts_per_hour=1)

    async def go() -> tuple[Admission, list[str]]:
        worker = TriageStore.from_url(redis_url, prefix, policy=policy, username=names[Role.WORKER],
                                      password="pw-" + prefix)
        raw = aioredis.Redis.from_url(redis_url, username=names[Role.WORKER], password="pw-" + prefix)
        try:
            await worker.add_alerts([make_alert(1), make_alert(2, patient="p", score=0.6)])
            (upd,) = await worker.add_alerts([make_alert(3, Priority.URGENT, patient="p", score=0.99, event_h=1)])
            with pytest.raises(NoPermissionError):
                await raw.zrem(f"{prefix}:worklist:site-a", "al_0001")
            return upd.admission, [a.alert_id for a in await worker.worklist("site-a")]
        finally:
            await worker.close()
            await raw.aclose()

    assert asyncio.run(go()) == (Admission.UPDATED, ["al_0002", "al_0001"])


async def _refused(pending: Any) -> bool:
    try:
        await pending
    except TriagePermissionError:
        return True
    return False


@pytest.mark.parametrize(("env", "expected"), [
    ({}, {}),
    ({"ECGSCREEN_REDIS_USERNAME": "ecgscreen-worker", "ECGSCREEN_REDIS_PASSWORD": "s3cret"},
     {"username": "ecgscreen-worker", "password": "s3cret"}),
    ({"ECGSCREEN_REDIS_URL": "rediss://redis.example:6380/0", "ECGSCREEN_REDIS_SSL_CA_CERTS": "/etc/ca.pem",
      "ECGSCREEN_REDIS_SSL_CERTFILE": "/etc/c.pem", "ECGSCREEN_REDIS_SSL_KEYFILE": "/etc/k.pem"},
     {"ssl_ca_certs": "/etc/ca.pem", "ssl_certfile": "/etc/c.pem", "ssl_keyfile": "/etc/k.pem",
      "ssl_cert_reqs": "required", "ssl_check_hostname": True}),
])
def test_redis_client_options_from_settings(env: dict[str, str], expected: dict[str, Any]) -> None:
    redis = load_settings(env).redis
    assert redis.client_kwargs() == expected
    assert "s3cret" not in repr(redis)
    aioredis.Redis.from_url(redis.url, **redis.client_kwargs())  # redis-py accepts them


def test_tls_files_without_rediss_url_are_refused() -> None:
    with pytest.raises(ConfigError):
        RedisSettings(ssl_ca_certs="/etc/ca.pem").client_kwargs()


def test_wrong_password_is_not_a_silent_success(redis_url: str, users: tuple[str, dict[Role, str]]) -> None:
    prefix, names = users

    async def go() -> None:
        s = TriageStore.from_url(redis_url, prefix, username=names[Role.WORKER], password=uuid.uuid4().hex)
        try:
            await s.add_alerts([make_alert(1)])
        finally:
            await s.close()

    with pytest.raises(Exception, match=r"(?i)auth|password|WRONGPASS"):
        asyncio.run(go())
