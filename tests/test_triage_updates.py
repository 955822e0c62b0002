"""Updates of an alert wherever it sits (held, claimed, snoozed), reassignment and late replays.

The rule (workers/triage_lua.py, ADD_ALERT): a higher score updates the episode's open alert in
place, at its new rank, wherever it is: in the worklist, held by the rate limit, claimed by a
reviewer (who keeps the lease and sees the new content) or snoozed. An update that makes the
alert urgent overrides that: urgent alerts are never held, so a held one goes to the worklist at
once, and a snoozed one wakes at the next reap; a claimed one stays with its reviewer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from schemas.messages import Priority
from tests.triage_factory import make_alert, new_prefix, store
from workers.policy import Admission, PolicyConfig, SitePolicy
from workers.triage import ClaimConflict, TriageStore
from workers.triage_stats import Resolution, Status

LIMIT_1 = PolicyConfig(sites={"site-a": SitePolicy(max_alerts_per_hour=1)})


async def _with(url: str, fn: Any, policy: PolicyConfig | None = None, **kw: Any) -> Any:
    s = store(url, new_prefix(), policy, **kw)
    try:
        return await fn(s)
    finally:
        await s.close()


async def _ids(s: TriageStore, queue: str) -> list[str]:
    return [i.alert.alert_id for i in await s.items("site-a", queue)]


def test_held_alert_made_urgent_leaves_the_held_queue(redis_url: str) -> None:
    async def go(s: TriageStore) -> Any:
        await s.add_alerts([make_alert(1), make_alert(2, patient="p", score=0.6)])  # the second is held
        before = await _ids(s, "held")
        (upd,) = await s.add_alerts([make_alert(3, Priority.URGENT, patient="p", score=0.99, event_h=1)])
        return before, upd, await _ids(s, "held"), await _ids(s, "worklist"), await s.get("al_0002")

    before, upd, held, worklist, item = asyncio.run(_with(redis_url, go, LIMIT_1))
    assert before == ["al_0002"] and upd.admission is Admission.UPDATED and upd.target == "al_0002"
    assert held == [] and worklist == ["al_0002", "al_0001"]  # urgent: top of the worklist
    assert item.status is Status.OPEN and item.alert.priority is Priority.URGENT


def test_held_alert_updated_but_not_urgent_stays_held(redis_url: str) -> None:
    async def go(s: TriageStore) -> Any:
        await s.add_alerts([make_alert(1), make_alert(2, patient="p", score=0.6)])
        await s.add_alerts([make_alert(3, Priority.HIGH, patient="p", score=0.8, event_h=1)])
        return await _ids(s, "held"), await _ids(s, "worklist"), (await s.get("al_0002")).status

    assert asyncio.run(_with(redis_url, go, LIMIT_1)) == (["al_0002"], ["al_0001"], Status.HELD)


def test_claimed_alert_updated_stays_with_its_reviewer(redis_url: str) -> None:
    async def go(s: TriageStore) -> Any:
        await s.add_alerts([make_alert(1, patient="p", score=0.6)])
        _, lease = await s.claim("dr-a", "al_0001")
        await s.add_alerts([make_alert(2, Priority.URGENT, patient="p", score=0.99, event_h=1)])
        item = await s.get("al_0001")
        return lease, item, await _ids(s, "worklist"), await _ids(s, "claimed")

    lease, item, worklist, claimed = asyncio.run(_with(redis_url, go))
    assert worklist == [] and claimed == ["al_0001"]
    assert item.status is Status.CLAIMED and item.actor == "dr-a" and item.lease_until_ms == lease
    assert item.alert.score == 0.99 and item.alert.priority is Priority.URGENT and item.updates == 1


def test_snoozed_alert_made_urgent_wakes_at_the_next_reap(redis_url: str) -> None:
    async def go(s: TriageStore) -> Any:
        await s.add_alerts([make_alert(1, patient="p", score=0.6), make_alert(2, patient="q", score=0.6)])
        await s.snooze("al_0001", "dr-a", seconds=3600)
        await s.snooze("al_0002", "dr-a", seconds=3600)
        await s.add_alerts([make_alert(3, Priority.URGENT, patient="p", score=0.99, event_h=1),
                            make_alert(4, Priority.HIGH, patient="q", score=0.8, event_h=1)])
        moved = await s.reap("site-a")
        return moved, await _ids(s, "worklist"), await _ids(s, "snoozed"), (await s.get("al_0001")).status

    moved, worklist, snoozed, status = asyncio.run(_with(redis_url, go))
    assert moved == 1 and worklist == ["al_0001"] and status is Status.OPEN
    assert snoozed == ["al_0002"]  # raised to high, not urgent: the reviewer's snooze stands


def test_reassign_by_someone_who_does_not_hold_the_claim(redis_url: str) -> None:
    """A lead may hand a claimed alert on (audited under the lead's name); the old holder loses it."""
    async def go(s: TriageStore) -> Any:
        await s.add_alerts([make_alert(1)])
        await s.claim("dr-a", "al_0001")
        await s.reassign("al_0001", "lead-1", "dr-b")
        with pytest.raises(ClaimConflict):
            await s.resolve("al_0001", "dr-a", Resolution.CONFIRMED)
        with pytest.raises(ClaimConflict):
            await s.claim("dr-a", "al_0001")
        item = await s.get("al_0001")
        return item.actor, item.status, [(e.action, e.actor) for e in await s.audit("site-a")]

    actor, status, audit = asyncio.run(_with(redis_url, go))
    assert actor == "dr-b" and status is Status.CLAIMED
    assert audit == [("created", "worker"), ("claimed", "dr-a"), ("reassigned", "lead-1")]


def test_replay_after_the_idempotency_key_expired_adds_nothing(redis_url: str) -> None:
    """The outcome ledger and idempotency keys share a TTL: past it an event is screened again."""
    batch = [make_alert(1, patient="p", score=0.8), make_alert(2, patient="p", score=0.9, event_h=1),
             make_alert(3, patient="p", score=0.5, event_h=2)]

    async def go(s: TriageStore) -> Any:
        first = await s.add_alerts(batch)
        audit, stats = await s.audit_length(), await s.stats()
        await asyncio.sleep(2.2)  # idem_ttl_s=1: the keys are gone
        again = await s.add_alerts(batch)
        return first, again, audit, stats, await s.audit_length(), await s.stats(), await _ids(s, "worklist")

    first, again, audit, stats, audit2, stats2, worklist = asyncio.run(_with(redis_url, go, idem_ttl_s=1))
    assert [(a.admission, a.target) for a in first] == [
        (Admission.ADDED, "al_0001"), (Admission.UPDATED, "al_0001"), (Admission.SUPPRESSED, "al_0001")]
    # The stored alert answers for itself; merged candidates are judged again against it and,
    # its score being theirs or higher, change nothing a subscriber would act on.
    assert [(a.admission, a.target, a.replay) for a in again] == [
        (Admission.ADDED, "al_0001", True), (Admission.SUPPRESSED, "al_0001", False),
        (Admission.SUPPRESSED, "al_0001", False)]
    assert worklist == ["al_0001"] and stats2["triage_entries_added"] == stats["triage_entries_added"] == 1
    assert audit2 == audit + 2  # the two suppressions are audited; no entry is created or updated
