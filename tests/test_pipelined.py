"""The pipelined worker's parts: the prep pool (real processes, shared memory) gives the serial
screener's outcomes exactly, and the loop acks strictly in order with at most two batches in flight."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.bundle import Bundle, init_untrained_bundle
from models.engine import make_engine
from ops.feed import SignalFault, malformed_payloads, simulated_records, with_fault
from workers.pipeline import Outcome, RawMessage, Screener
from workers.pipelined import PipelinedLoop
from workers.prep import Prepared, prepare
from workers.prep_pool import PoolClosed, PoolConfig, PrepPool, _split

NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def screener(tmp_path_factory: pytest.TempPathFactory) -> Screener:
    b: Bundle = init_untrained_bundle(tmp_path_factory.mktemp("b") / "bundle", base_width=8)
    with torch.no_grad():
        b.model.heads.bias.fill_(8.0)  # every alerting task fires: explanations are part of the parity
    return Screener(bundle=b, engine=make_engine(b, "torch-cpu"), clock=lambda: NOW)


@pytest.fixture(scope="module")
def messages() -> list[RawMessage]:
    """Clean 500 Hz and 100 Hz records, signal faults, malformed payloads: every path of a batch."""
    recs = list(simulated_records(6, fs=500.0, seed=2, bases=2))
    payloads = [r.encode() for r in recs[:3]]
    payloads += [with_fault(recs[3], SignalFault.ALL_FLAT, 1).encode(),
                 with_fault(recs[4], SignalFault.LEAD_OFF, 2).encode()]
    low = dataclasses.replace(recs[5], event_id="sim-100hz", fs=100.0, signal_mv=recs[5].signal_mv[:, ::5].copy())
    payloads.append(low.encode())
    payloads += [bad for _, bad in malformed_payloads(recs[0].encode())[:3]]
    return [RawMessage.of(p, "ecg.events", 0, i, 1_700_000_000_000) for i, p in enumerate(payloads)]


def _same(a: Sequence[Outcome], b: Sequence[Outcome]) -> None:
    """Identical outcomes but for wall times and the dead letters' own creation time."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.message == y.message and x.alerts == y.alerts
        if x.verdict is not None or y.verdict is not None:
            assert x.verdict is not None and y.verdict is not None
            assert dataclasses.replace(x.verdict, timings_ms={}) == dataclasses.replace(y.verdict, timings_ms={})
        else:
            assert x.deadletter is not None and y.deadletter is not None
            same_time = dataclasses.replace(y.deadletter, created_at=x.deadletter.created_at)
            assert x.deadletter == same_time


@pytest.mark.parametrize("processes", [1, 2])
def test_pool_prepared_batches_give_the_serial_outcomes(screener: Screener, messages: list[RawMessage],
                                                         processes: int) -> None:
    cfg = PoolConfig(screener.bundle.config.input, screener.gate, screener.limits, processes, max_batch=16)
    pool = PrepPool(cfg)
    try:
        async def both() -> tuple[Prepared, Prepared]:  # two batches at once: two slots in use
            return await asyncio.gather(pool.prepare([m.value for m in messages]),
                                        pool.prepare([m.value for m in messages[::-1]]))
        prepared, reversed_ = asyncio.run(both())
    finally:
        pool.close()
    serial = screener.screen(messages)
    assert any(o.alerts for o in serial) and any(o.deadletter for o in serial) and any(
        o.verdict and o.verdict.quality.status.value == "reject" for o in serial)
    _same(screener.screen(messages, prepared), serial)
    _same(screener.screen(messages[::-1], reversed_), screener.screen(messages[::-1]))
    assert prepared.x.flags.owndata or prepared.x.base is not None  # a copy out of the slot
    stages = {k for o in serial if o.verdict for k in o.verdict.timings_ms}
    assert {"decode_ms", "gate_ms", "preprocess_ms", "infer_ms", "explain_ms", "queue_ms"} <= stages


def test_select_keeps_rows_with_their_records(screener: Screener, messages: list[RawMessage]) -> None:
    prep = prepare([m.value for m in messages], screener.bundle.config.input)
    keep = [5, 0, 3, 7, 2]
    part = prep.select(keep)
    alone = prepare([messages[i].value for i in keep], screener.bundle.config.input)
    assert part.masked == alone.masked and part.failures == alone.failures
    assert np.array_equal(part.x, alone.x)


def test_split_covers_the_batch() -> None:
    assert _split(7, 2) == [(0, 4), (4, 7)] and _split(1, 3) == [(0, 1)] and _split(0, 2) == []


class _Event:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _Stream:
    """What the loop needs of a faust stream: ``noack_take`` and ``ack``, recorded."""

    def __init__(self, n_batches: int, size: int) -> None:
        self.batches = [[_Event(b * size + k) for k in range(size)] for b in range(n_batches)]
        self.acked: list[int] = []

    async def noack_take(self, max_: int, within: float) -> AsyncIterator[list[_Event]]:
        for batch in self.batches:
            yield batch

    async def ack(self, event: _Event) -> None:
        self.acked.append(event.offset)


class _Pool:
    async def prepare(self, values: Sequence[bytes]) -> Any:
        await asyncio.sleep(0.01 * (len(values) % 3))  # uneven prep times: later batches can be ready first
        return None


def test_loop_scores_and_stores_in_order_overlapping_them_with_at_most_two_batches_in_flight() -> None:
    stream = _Stream(n_batches=9, size=3)
    steps: list[tuple[str, int]] = []
    running = {"score": 0, "store": 0}
    most = dict(running)

    async def step(name: str, first: int, seconds: float) -> None:
        running[name] += 1
        most[name] = max(most[name], running[name])
        steps.append((name, first))
        await asyncio.sleep(seconds)
        steps.append((f"{name} done", first))
        running[name] -= 1

    async def score(msgs: Sequence[RawMessage], prepared: Any) -> int:
        first = msgs[0].offset
        assert len(stream.acked) >= first - 3  # at most two batches taken and not acked
        await step("score", first, 0.005)
        return first

    async def store(first: int) -> None:
        assert stream.acked == list(range(first))  # the batches before are acked, this one not yet
        await step("store", first, 0.01)

    def raw(e: _Event) -> RawMessage:
        return RawMessage.of(b"x" * (e.offset % 5), "t", 0, e.offset)

    loop = PipelinedLoop(_Pool(), score, store, raw)  # type: ignore[arg-type]

    async def go() -> None:
        await loop.run(stream, 3, 0.01)
        while len(stream.acked) < 27:  # the last batch finishes after the source is exhausted
            await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(go(), 10))
    assert stream.acked == list(range(27)) and most == {"score": 1, "store": 1}
    for name in ("score", "store"):
        assert [f for n, f in steps if n == name] == list(range(0, 27, 3))
    # The model does not wait for the writes: batch N+1 is scored while batch N is stored.
    overlapped = [f for f in range(0, 24, 3)
                  if steps.index(("store", f)) < steps.index(("score", f + 3)) < steps.index(("store done", f))]
    assert overlapped, steps


def test_loop_cancelled_leaves_unfinished_batches_unacked() -> None:
    stream = _Stream(n_batches=4, size=2)
    gate = asyncio.Event()

    async def score(msgs: Sequence[RawMessage], prepared: Any) -> int:
        return msgs[0].offset

    async def store(first: int) -> None:
        if first >= 2:
            await gate.wait()  # batch 1 onwards never becomes durable

    loop = PipelinedLoop(_Pool(), score, store, lambda e: RawMessage.of(b"{}", "t", 0, e.offset))  # type: ignore[arg-type]

    async def go() -> None:
        task = asyncio.create_task(loop.run(stream, 2, 0.01))
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.05)

    asyncio.run(go())
    assert stream.acked == [0, 1]


def test_a_closed_pool_leaves_batches_unacked_and_unscreened() -> None:
    class Closed:
        async def prepare(self, values: Sequence[bytes]) -> Any:
            raise PoolClosed("stopping")

    stream, handled = _Stream(n_batches=3, size=2), []

    async def score(msgs: Sequence[RawMessage], prepared: Any) -> None:
        handled.append(msgs)

    async def store(_: None) -> None:
        handled.append("stored")

    loop = PipelinedLoop(Closed(), score, store, lambda e: RawMessage.of(b"{}", "t", 0, e.offset))  # type: ignore[arg-type]
    asyncio.run(loop.run(stream, 2, 0.01))
    assert stream.acked == [] and handled == []  # not dead-lettered as failures: redelivered after restart


def test_pipelined_worker_module_imports_no_torch_in_pool(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = "import sys, workers.prep_pool, workers.prep; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pool_processes_end_when_the_worker_is_killed(tmp_path: Path) -> None:
    """kill -9 of the worker cannot stop its pool: the pool processes must notice and exit, not linger."""
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import os, sys\n"
        "from models.config import InputSpec\n"
        "from schemas.codec import Limits\n"
        "from workers.gate import GateConfig\n"
        "from workers.prep_pool import PoolConfig, PrepPool\n"
        "pool = PrepPool(PoolConfig(InputSpec(100.0, 1000), GateConfig(), Limits(), 2, 4))\n"
        "pool.warm_up()\n"
        "print(*[p.pid for p in pool._executor._processes.values()], flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr
    children = [int(p) for p in out.stdout.split()]
    assert len(children) == 2
    deadline = time.monotonic() + 15
    alive = children
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in children if _running(pid)]
    assert alive == [], f"pool processes outlived their worker: {alive}"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def _explained(outcomes: Sequence[Outcome]) -> list[bool]:
    return [a.explanation is not None for o in outcomes for a in o.alerts]


def test_a_worker_behind_the_feed_sends_its_alerts_without_explanations(screener: Screener,
                                                                        messages: list[RawMessage]) -> None:
    lag_s = NOW.timestamp() - messages[0].timestamp_ms / 1000  # type: ignore[operator]
    behind = dataclasses.replace(screener, explain_max_lag_s=lag_s - 1)
    within = dataclasses.replace(screener, explain_max_lag_s=lag_s + 1)
    always = screener.screen(messages)
    assert _explained(always) and all(_explained(always))
    skipped = behind.screen(messages)
    assert _explained(skipped) and not any(_explained(skipped))
    # Everything else is the same outcome: the same verdicts, the same alerts but for the explanation.
    assert [dataclasses.replace(a, explanation=None) for o in skipped for a in o.alerts] == \
        [dataclasses.replace(a, explanation=None) for o in always for a in o.alerts]
    assert all(_explained(within.screen(messages)))
    untimed = [dataclasses.replace(m, timestamp_ms=None) for m in messages]  # no broker time: no lag known
    assert all(_explained(behind.screen(untimed)))
