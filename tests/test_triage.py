"""The triage queue and outcome ledger against a real Redis server."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.messages import Alert, Priority
from tests.admission_model import Candidate, simulate
from tests.test_policy import POLICY_SEQUENCES, WINDOW
from tests.triage_factory import make_alert, new_prefix, store
from workers.policy import Admission, PolicyConfig, SitePolicy
from workers.triage import (
    AlertNotFound,
    AlreadyResolved,
    ClaimConflict,
    InvalidActor,
    RecordedOutcome,
    TriageStore,
    WorklistEmpty,
)
from workers.triage_stats import Resolution, Status, triage_stats


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def prefix() -> str:
    return new_prefix()


async def _with(url: str, prefix: str, fn: Any, policy: PolicyConfig | None = None) -> Any:
    s = store(url, prefix, policy)
    try:
        return await fn(s)
    finally:
        await s.close()


def test_same_alert_written_twice_leaves_one_entry(redis_url: str, prefix: str) -> None:
    async def go(s: TriageStore) -> tuple[list[tuple[Admission, bool]], int, int]:
        first = await s.add_alerts([make_alert(1)])
        again = await s.add_alerts([make_alert(1), make_alert(1)])
        got = [(a.admission, a.replay) for a in first + again]
        return got, await s.worklist_size("site-a"), await s.audit_length()

    added, size, audit = run(_with(redis_url, prefix, go))
    assert added == [(Admission.ADDED, False), (Admission.ADDED, True), (Admission.ADDED, True)]
    assert (size, audit) == (1, 1)


def test_worklist_orders_by_priority_then_age(redis_url: str, prefix: str) -> None:
    async def go(s: TriageStore) -> list[str]:
        await s.add_alerts([make_alert(1), make_alert(2, Priority.URGENT), make_alert(3, Priority.HIGH),
                            make_alert(4, Priority.URGENT), make_alert(5, site="site-b")])
        assert await s.sites() == ["site-a", "site-b"]
        return [a.alert_id for a in await s.worklist("site-a", limit=10)]

    assert run(_with(redis_url, prefix, go)) == ["al_0002", "al_0004", "al_0003", "al_0001"]


def test_stored_alert_round_trips(redis_url: str, prefix: str) -> None:
    alert = replace(make_alert(9), flags=("untrained_model",), expected_ppv=0.25)

    async def go(s: TriageStore) -> list[Alert]:
        await s.add_alerts([alert])
        return await s.worklist("site-a")

    assert run(_with(redis_url, prefix, go)) == [alert]


def test_first_recorded_outcome_stands(redis_url: str, prefix: str) -> None:
    async def go(s: TriageStore) -> list[RecordedOutcome | None]:
        await s.record_outcomes([("e-1", RecordedOutcome("d1", "verdict"))], ttl_s=60)
        await s.record_outcomes([("e-1", RecordedOutcome("d2", "deadletter"))], ttl_s=60)
        return await s.recorded_outcomes(["e-1", "e-2"])

    assert run(_with(redis_url, prefix, go)) == [RecordedOutcome("d1", "verdict"), None]


# --- the Lua script makes the policy's decisions -----------------------------------------------


def _alert_for(cand: Candidate) -> Alert:
    return make_alert(int(cand.alert_id.split("_")[1]), cand.priority, patient=cand.episode, score=cand.score,
                      event_h=cand.event_ms / 3_600_000)


@pytest.mark.parametrize(("name", "cands", "limit", "resolved", "expected"),
                         [s for s in POLICY_SEQUENCES if not s[3]], ids=[s[0] for s in POLICY_SEQUENCES if not s[3]])
def test_lua_admission_matches_the_policy_table(redis_url: str, name: str, cands: list[Candidate],
                                                limit: int | None, resolved: object, expected: object) -> None:
    """Each sequence, then its replay, through Redis: the same decisions as the reference model."""
    policy = PolicyConfig(dedup_window_s=WINDOW / 1000, max_alerts_per_hour=limit)
    alerts = [_alert_for(c) for c in cands] * 2

    async def go(s: TriageStore) -> list[tuple[str, str, bool]]:
        out = []
        for a in alerts:  # one at a time: a batch pipeline would run them in the same order anyway
            (adm,) = await s.add_alerts([a])
            out.append((adm.admission.value, adm.target, adm.replay))
        return out

    got = run(_with(redis_url, new_prefix(), go, policy))
    want = [(d.admission.value, f"al_{int(d.target.split('_')[1]):04d}", d.replay)
            for d in simulate(cands + cands, WINDOW, limit)]
    assert got == want


def test_a_resolved_alert_does_not_absorb_the_next_finding(redis_url: str, prefix: str) -> None:
    async def go(s: TriageStore) -> list[Admission]:
        (first,) = await s.add_alerts([make_alert(1, patient="p")])
        await s.resolve(first.target, "dr-a", Resolution.FALSE_POSITIVE)
        (second,) = await s.add_alerts([make_alert(2, patient="p", event_h=1)])
        return [first.admission, second.admission]

    assert run(_with(redis_url, prefix, go)) == [Admission.ADDED, Admission.ADDED]


def test_update_raises_priority_and_keeps_identity(redis_url: str, prefix: str) -> None:
    async def go(s: TriageStore) -> tuple[list[str], Any]:
        await s.add_alerts([make_alert(1, patient="p", score=0.6), make_alert(2, Priority.HIGH)])
        (upd,) = await s.add_alerts([make_alert(3, Priority.URGENT, patient="p", score=0.99, event_h=2)])
        order = [a.alert_id for a in await s.worklist("site-a")]
        return order, (upd, await s.get("al_0003"))

    order, (upd, item) = run(_with(redis_url, prefix, go))
    assert upd.admission is Admission.UPDATED and upd.target == "al_0001" and upd.publish
    assert order == ["al_0001", "al_0002"]  # now urgent: ahead of the high one
    assert item.alert.alert_id == "al_0001" and item.alert.event_id == "e-3" and item.alert.score == 0.99
    assert item.alert.created_at == make_alert(1).created_at and item.updates == 1 and item.first_event_id == "e-1"


# --- reviewers -------------------------------------------------------------------------------


def test_expired_lease_returns_the_alert(redis_url: str, prefix: str) -> None:
    async def go(s: TriageStore) -> tuple[int, int, str, Status]:
        await s.add_alerts([make_alert(1)])
        claimed, _ = await s.claim("dr-a", site="site-a", lease_s=0.15)
        during = await s.worklist_size("site-a")
        await asyncio.sleep(0.3)  # dr-a disappears
        again, _ = await s.claim("dr-b", site="site-a")  # the claim reaps the expired lease first
        return during, await s.worklist_size("site-a"), again, (await s.get(claimed)).status

    during, after, again, status = run(_with(redis_url, prefix, go))
    assert (during, after, again, status) == (0, 0, "al_0001", Status.CLAIMED)


def test_reap_on_its_own_returns_expired_leases(redis_url: str, prefix: str) -> None:
    async def go(s: TriageStore) -> tuple[int, list[str], list[str]]:
        await s.add_alerts([make_alert(1)])
        await s.claim("dr-a", "al_0001", lease_s=0.1)
        await asyncio.sleep(0.2)
        moved = await s.reap("site-a")
        return moved, [a.alert_id for a in await s.worklist("site-a")], [e.action for e in await s.audit("site-a")]

    moved, ids, actions = run(_with(redis_url, prefix, go))
    assert moved == 1 and ids == ["al_0001"] and actions == ["created", "claimed", "lease_expired"]


def test_claim_resolve_rules(redis_url: str, prefix: str) -> None:
    async def go(s: TriageStore) -> Any:
        await s.add_alerts([make_alert(1), make_alert(2)])
        await s.claim("dr-a", "al_0001")
        with pytest.raises(ClaimConflict):
            await s.claim("dr-b", "al_0001")
        with pytest.raises(ClaimConflict):
            await s.resolve("al_0001", "dr-b", Resolution.CONFIRMED)
        await s.claim("dr-a", "al_0001")  # renewing one's own lease is fine
        await s.resolve("al_0001", "dr-a", Resolution.CONFIRMED, "AF on the rhythm strip")
        with pytest.raises(AlreadyResolved):
            await s.resolve("al_0001", "dr-a", Resolution.FALSE_POSITIVE)
        await s.resolve("al_0002", "dr-b", Resolution.ECHO_ORDERED)  # straight from the worklist
        with pytest.raises(AlertNotFound):
            await s.claim("dr-a", "al_9999")
        with pytest.raises(WorklistEmpty):
            await s.claim("dr-a", site="site-a")
        with pytest.raises(InvalidActor):
            await s.claim("dr a; DROP", site="site-a")
        return await s.get("al_0001")

    item = run(_with(redis_url, prefix, go))
    assert item.status is Status.RESOLVED and item.outcome is Resolution.CONFIRMED
    assert item.note == "AF on the rhythm strip" and item.resolved_by == "dr-a"


def test_reassign_and_snooze(redis_url: str, prefix: str) -> None:
    async def go(s: TriageStore) -> Any:
        await s.add_alerts([make_alert(1), make_alert(2)])
        await s.claim("dr-a", "al_0001")
        await s.reassign("al_0001", "lead", "dr-b")
        holder = (await s.get("al_0001")).actor
        await s.resolve("al_0001", "dr-b", Resolution.CONFIRMED)  # the new holder may resolve
        await s.snooze("al_0002", "dr-a", seconds=0.15)
        hidden = await s.worklist_size("site-a")
        await asyncio.sleep(0.3)
        await s.reap("site-a")
        return holder, hidden, [a.alert_id for a in await s.worklist("site-a")], await s.audit("site-a")

    holder, hidden, back, audit = run(_with(redis_url, prefix, go))
    assert holder == "dr-b" and hidden == 0 and back == ["al_0002"]
    assert [(e.action, e.actor) for e in audit][-4:] == [
        ("reassigned", "lead"), ("resolved", "dr-b"), ("snoozed", "dr-a"), ("snooze_ended", "system")]


def test_rate_limit_holds_then_releases(redis_url: str, prefix: str) -> None:
    policy = PolicyConfig(sites={"site-a": SitePolicy(max_alerts_per_hour=2)})

    async def go(s: TriageStore) -> Any:
        got = await s.add_alerts([make_alert(n) for n in range(1, 5)] + [make_alert(5, Priority.URGENT)])
        held = [i.alert.alert_id for i in await s.items("site-a", "held")]
        await s.resolve("al_0001", "dr-a", Resolution.CONFIRMED)
        moved = await s.reap("site-a")  # the hour is still full: nothing released
        stats = await s.stats()
        return [a.admission for a in got], held, moved, stats

    admissions, held, moved, stats = run(_with(redis_url, prefix, go, policy))
    assert admissions == [Admission.ADDED] * 2 + [Admission.HELD] * 2 + [Admission.ADDED]
    assert held == ["al_0003", "al_0004"] and moved == 0
    assert stats["policy_held"] == 2 and stats["policy_added"] == 3


def test_held_alerts_are_released_when_the_limit_allows(redis_url: str, prefix: str) -> None:
    async def go() -> Any:
        tight = store(redis_url, prefix, PolicyConfig(max_alerts_per_hour=1))
        await tight.add_alerts([make_alert(1), make_alert(2)])
        await tight.close()
        loose = store(redis_url, prefix, PolicyConfig(max_alerts_per_hour=5))  # the site raised its limit
        moved = await loose.reap("site-a")
        ids = [a.alert_id for a in await loose.worklist("site-a")]
        item = await loose.get("al_0002")
        await loose.close()
        return moved, ids, item.status

    assert run(go()) == (1, ["al_0001", "al_0002"], Status.OPEN)


def test_stats_from_the_store(redis_url: str, prefix: str) -> None:
    async def go(s: TriageStore) -> Any:
        created = datetime.now(UTC) - timedelta(minutes=1)
        await s.add_alerts([replace(make_alert(n), expected_ppv=0.3, created_at=created) for n in range(1, 6)])
        for n, outcome in [(1, Resolution.CONFIRMED), (2, Resolution.FALSE_POSITIVE), (3, Resolution.ECHO_ORDERED)]:
            await s.claim("dr-a", f"al_{n:04d}")
            await s.resolve(f"al_{n:04d}", "dr-a", outcome)
        return triage_stats(await s.stats_rows())

    (st,) = run(_with(redis_url, prefix, go))
    assert (st.site, st.task, st.raised, st.open) == ("site-a", "ecg.afib", 5, 2)
    assert st.resolved == {"confirmed": 1, "echo_ordered": 1, "false_positive": 1}
    assert st.adjudicated == 2 and st.observed_ppv == 0.5 and st.expected_ppv == 0.3
    assert st.median_time_to_claim_s is not None and 50 < st.median_time_to_claim_s < 120


def test_merged_candidate_id_resolves_to_its_alert(redis_url: str, prefix: str) -> None:
    async def go(s: TriageStore) -> str:
        await s.add_alerts([make_alert(1, patient="p"), make_alert(2, patient="p", score=0.5,
                                                                    event_h=1)])
        return (await s.get("al_0002")).alert.alert_id

    assert run(_with(redis_url, prefix, go)) == "al_0001"


def test_late_event_within_window_of_replayed_batch(redis_url: str, prefix: str) -> None:
    """A batch replayed after later events arrived still changes nothing."""
    batch1 = [make_alert(1, patient="p", event_h=10), make_alert(2, patient="q")]
    batch2 = [make_alert(3, patient="p", event_h=5, score=0.95)]  # late, higher

    async def go(s: TriageStore) -> Any:
        await s.add_alerts(batch1)
        await s.add_alerts(batch2)
        before = await s.audit_length()
        replay = await s.add_alerts(batch1 + batch2)
        return [(a.admission, a.replay) for a in replay], before, await s.audit_length(), await s.worklist("site-a")

    replay, before, after, wl = run(_with(redis_url, prefix, go))
    assert all(r for _, r in replay) and before == after
    assert sorted(a.alert_id for a in wl) == ["al_0001", "al_0002"]
    assert next(a for a in wl if a.alert_id == "al_0001").score == 0.95
