"""The same alert written 100 times at once from several processes leaves one worklist entry."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from multiprocessing.synchronize import Barrier

from tests.triage_factory import make_alert, new_prefix, store

PROCESSES, WRITES_EACH = 4, 25


def _writer(url: str, prefix: str, start: Barrier, results: mp.Queue) -> None:  # type: ignore[type-arg]
    async def go() -> list[tuple[str, bool]]:
        s = store(url, prefix)
        try:
            await s.add_alerts([])  # connect before the barrier, so the writes race
            start.wait(timeout=30)
            got = await asyncio.gather(*(s.add_alerts([make_alert(7)]) for _ in range(WRITES_EACH)))
            return [(a.admission.value, a.replay) for (a,) in got]
        finally:
            await s.close()

    results.put(asyncio.run(go()))


def test_hundred_concurrent_writes_from_processes_leave_one_entry(redis_url: str) -> None:
    prefix = new_prefix()
    ctx = mp.get_context("spawn")  # no fork of a process that may hold torch threads
    start, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(redis_url, prefix, start, results)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    outcomes = [x for _ in procs for x in results.get(timeout=60)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    async def check() -> tuple[int, int, int]:
        s = store(redis_url, prefix)
        try:
            return await s.worklist_size("site-a"), await s.audit_length("site-a"), len(await s.stats_rows())
        finally:
            await s.close()

    assert len(outcomes) == PROCESSES * WRITES_EACH == 100
    assert sum(not replay for _, replay in outcomes) == 1  # exactly one write created it
    assert {adm for adm, _ in outcomes} == {"added"}
    assert asyncio.run(check()) == (1, 1, 1)
