"""Random event sequences through the add-alert Lua script on a real Redis and through the
reference model (tests/admission_model.py): the same decision for every candidate."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas.messages import Priority
from tests.admission_model import Candidate, Queue
from tests.triage_factory import make_alert, new_prefix, store
from workers.policy import PolicyConfig

H = 3_600_000
WINDOW_H = 72

_specs = st.tuples(st.sampled_from(["p", "q"]), st.integers(0, 100),
                   st.sampled_from([0.55, 0.6, 0.7, 0.8, 0.9, 0.95]),
                   st.sampled_from(list(Priority)))


@st.composite
def sequences(draw: st.DrawFn) -> tuple[list[Candidate], int | None]:
    """Up to 8 distinct candidates, delivered in a drawn order with repeats (redeliveries)."""
    specs = draw(st.lists(_specs, min_size=1, max_size=8))
    pool = [Candidate(f"al_{n:04d}", ep, hour * H, score, prio)
            for n, (ep, hour, score, prio) in enumerate(specs, start=1)]
    order = draw(st.lists(st.integers(0, len(pool) - 1), min_size=1, max_size=12))
    return [pool[i] for i in order], draw(st.sampled_from([None, 1, 1, 2]))


async def _through_redis(url: str, cands: list[Candidate],
                         limit: int | None) -> tuple[list[tuple[str, str, bool]], set[str]]:
    s = store(url, new_prefix(), PolicyConfig(dedup_window_s=WINDOW_H * 3600.0, max_alerts_per_hour=limit))
    try:
        out = []
        for c in cands:
            alert = make_alert(int(c.alert_id[3:]), c.priority, patient=c.episode, score=c.score,
                               event_h=c.event_ms / H)
            (adm,) = await s.add_alerts([alert])
            out.append((adm.admission.value, adm.target, adm.replay))
        return out, {i.alert.alert_id for i in await s.items("site-a", "held", limit=100)}
    finally:
        await s.close()


HELD_THEN_URGENT = ([Candidate("al_0001", "p", 0, 0.8), Candidate("al_0002", "q", 0, 0.6),
                     Candidate("al_0003", "q", H, 0.9, Priority.URGENT)], 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=sequences())
@example(seq=HELD_THEN_URGENT)  # issue 11: the update left an urgent alert in the held queue
def test_lua_admission_equals_the_reference_model(redis_url: str, seq: tuple[list[Candidate], int | None]) -> None:
    cands, limit = seq
    got, held = asyncio.run(_through_redis(redis_url, cands, limit))
    model = Queue(WINDOW_H * H, limit)
    assert got == [(d.admission.value, d.target, d.replay) for d in map(model.add, cands)]
    assert held == model.held()  # and the same alerts wait in the held queue
