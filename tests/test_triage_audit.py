"""The hash-chained audit trail: verifies when intact, names the entry someone edited."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.triage_factory import make_alert, new_prefix, store
from workers.triage import TriageStore
from workers.triage_audit import GENESIS, AuditEntry, ChainBreak, canonical, entry_hash, verify_chain
from workers.triage_stats import Resolution


@pytest.mark.parametrize("message", ["", "abc", "a" * 55, "a" * 56, "a" * 64, "x" * 119, "é∆\x1f" * 50,
                                     GENESIS + "v1\x1fsite\x1fresolved"])
def test_lua_sha256_is_sha256(redis_url: str, message: str) -> None:
    async def go() -> str:
        s = store(redis_url, "sha")
        try:
            return await s.lua_sha256(message)
        finally:
            await s.close()

    assert asyncio.run(go()) == hashlib.sha256(message.encode()).hexdigest()


async def _history(s: TriageStore) -> None:
    await s.add_alerts([make_alert(1), make_alert(2)])
    await s.claim("dr-a", "al_0001")
    await s.resolve("al_0001", "dr-a", Resolution.CONFIRMED, "seen on the strip")
    await s.snooze("al_0002", "dr-b", 3600)


async def _rewrite(url: str, prefix: str, edit: Any) -> None:
    """Tamper as someone with raw write access would: rebuild the stream with one entry changed."""
    r = aioredis.Redis.from_url(url, decode_responses=True)
    key = f"{prefix}:audit:site-a"
    entries = await r.xrange(key)
    await r.delete(key)
    for n, (sid, fields) in enumerate(entries):
        fields = edit(n, dict(fields))
        if fields is not None:
            await r.xadd(key, fields, id=sid)
    await r.aclose()


def _verify(url: str, prefix: str, edit: Any = None) -> Any:
    async def go() -> Any:
        s = store(url, prefix)
        try:
            await _history(s)
            if edit is not None:
                await _rewrite(url, prefix, edit)
            return await s.verify("site-a"), await s.audit("site-a")
        finally:
            await s.close()

    return asyncio.run(go())


def test_audit_chain_verifies(redis_url: str) -> None:
    check, entries = _verify(redis_url, new_prefix())
    assert check.ok and check.entries == 5
    assert [e.action for e in entries] == ["created", "created", "claimed", "resolved", "snoozed"]
    assert entries[0].prev == GENESIS and all(b.prev == a.hash for a, b in itertools.pairwise(entries))
    assert entries[3].actor == "dr-a" and "seen on the strip" in entries[3].detail


def test_edited_entry_is_detected(redis_url: str) -> None:
    def edit(n: int, f: dict[str, str]) -> dict[str, str]:
        return {**f, "detail": f["detail"].replace("confirmed", "false_positive")} if n == 3 else f

    check, entries = _verify(redis_url, new_prefix(), edit)
    assert not check.ok and check.reason is ChainBreak.HASH_MISMATCH and check.broken_at == entries[3].stream_id


def test_edited_actor_with_recomputed_hash_breaks_the_next_link(redis_url: str) -> None:
    def edit(n: int, f: dict[str, str]) -> dict[str, str]:
        if n != 2:
            return f
        f = {**f, "actor": "dr-z"}
        canon = canonical("site-a", f["action"], f["alert_id"], f["actor"], int(f["at"]), f["detail"])
        return {**f, "hash": entry_hash(f["prev"], canon)}

    check, entries = _verify(redis_url, new_prefix(), edit)
    assert not check.ok and check.reason is ChainBreak.PREV_MISMATCH and check.broken_at == entries[3].stream_id


def test_deleted_entry_and_truncated_tail_are_detected(redis_url: str) -> None:
    deleted, _ = _verify(redis_url, new_prefix(), lambda n, f: None if n == 1 else f)
    assert not deleted.ok and deleted.reason is ChainBreak.PREV_MISMATCH
    truncated, _ = _verify(redis_url, new_prefix(), lambda n, f: None if n == 4 else f)
    assert not truncated.ok and truncated.reason is ChainBreak.HEAD_MISMATCH


def test_verify_chain_table() -> None:
    def entry(n: int, prev: str, detail: str = "") -> AuditEntry:
        h = entry_hash(prev, canonical("s", "claimed", "a", "x", n, detail))
        return AuditEntry(f"{n}-0", "s", "claimed", "a", "x", n, detail, prev, h)

    e1 = entry(1, GENESIS)
    e2 = entry(2, e1.hash)
    assert verify_chain("s", [], None).ok
    assert verify_chain("s", [e1, e2], e2.hash).ok
    assert verify_chain("s", [e2], e2.hash).reason is ChainBreak.PREV_MISMATCH
    assert verify_chain("s", [e1, e2], e1.hash).reason is ChainBreak.HEAD_MISMATCH
