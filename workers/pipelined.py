"""The pipelined batch loop: batch N+1's CPU work and inference overlap batch N's writes.

Each batch goes through three steps:

A. prepare (decode, gate, preprocess) in the pool processes (``workers.prep_pool``);
B. the runner's ``score`` (look up recorded outcomes, infer, explain, decide);
C. the runner's ``store`` (triage, topics, outcome ledger), then ack its events.

Step A of a batch starts as soon as it is taken; steps B and C each run strictly one batch
after another, in the order the batches were taken, so batch N+1 is scored while batch N is
stored (the model does not wait for the writes). A batch's events are acked only once its
step C has returned, which is once everything it produced is durable. So acks (and hence
commits) follow offset order exactly as in the serial loop; the duplicate check of batch N+1
sees batch N's outcomes (recorded, or scored and still being stored: the runner keeps those).
At most ``max_in_flight`` (2) batches are taken and not yet acked; taking the next waits for
the oldest, which is the back-pressure on the consumer.

faust's ``noack_take`` leaves acking to us (``take_events`` acks in ``finally`` when the loop
body returns, which here would be before the batch is durable). A batch that never finishes
(the process dies, or shutdown cancels it) is never acked and is redelivered.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from workers.pipeline import RawMessage
from workers.prep import Prepared
from workers.prep_pool import PoolClosed, PrepPool

log = logging.getLogger("ecgscreen.worker")
EX_TEMPFAIL = 75  # as workers.app: "try again later" for a supervisor
S = TypeVar("S")  # a scored batch, as the runner's score returns it and its store takes it
Score = Callable[[Sequence[RawMessage], Prepared | None], Awaitable[S]]
Store = Callable[[S], Awaitable[None]]


@dataclass(frozen=True)
class _Batch:
    task: asyncio.Task[None]
    scored: asyncio.Event  # its step B is over (or never will run)


class PipelinedLoop(Generic[S]):
    def __init__(self, pool: PrepPool, score: Score[S], store: Store[S], to_raw: Callable[[Any], RawMessage],
                 max_in_flight: int = 2) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._pool, self._score, self._store, self._to_raw = pool, score, store, to_raw
        self._max_in_flight = max_in_flight

    async def run(self, stream: Any, max_batch: int, within: float) -> None:
        """Consume ``stream`` (a faust Stream) until cancelled; never acks an unfinished batch."""
        in_flight: deque[_Batch] = deque()
        try:
            async for events in stream.noack_take(max_batch, within=within):
                while len(in_flight) >= self._max_in_flight:
                    await asyncio.shield(in_flight[0].task)
                    in_flight.popleft()
                previous = in_flight[-1] if in_flight else None
                scored = asyncio.Event()
                task = asyncio.create_task(self._one(stream, list(events), scored, previous))
                in_flight.append(_Batch(task, scored))
                while in_flight and in_flight[0].task.done():
                    in_flight.popleft()
            for b in list(in_flight):  # the stream ended: let the last batches finish
                await asyncio.shield(b.task)
        finally:
            for b in in_flight:  # stopping: unfinished batches stay unacked, redelivered after restart
                b.task.cancel()

    async def _one(self, stream: Any, events: list[Any], scored: asyncio.Event, previous: _Batch | None) -> None:
        try:
            await self._steps(stream, events, scored, previous)
        except Exception:
            # score and store never raise by contract; anything else here is a bug that would leave a gap in
            # the acks (commits would stall on it). Stop unacked, as a durable failure does: redelivered.
            log.critical("pipelined batch failed outside the screener; stopping without ack", exc_info=True)
            logging.shutdown()
            os._exit(EX_TEMPFAIL)

    async def _steps(self, stream: Any, events: list[Any], scored: asyncio.Event, previous: _Batch | None) -> None:
        messages = [self._to_raw(e) for e in events]
        try:
            try:
                prepared = await self._prepare(messages)
            except PoolClosed:
                return  # the worker is stopping: leave the batch unacked, it is redelivered
            if previous is not None:
                await previous.scored.wait()  # step B in order
            result = await self._score(messages, prepared)  # never raises: failures become dead letters
        finally:
            scored.set()
        if previous is not None:
            await asyncio.shield(previous.task)  # step C in order; cancelling us must not cancel it
        await self._store(result)  # never raises; returns once durable
        for event in events:  # in offset order within each partition
            await stream.ack(event)

    async def _prepare(self, messages: Sequence[RawMessage]) -> Prepared | None:
        """The pool's work, or None (the screener then prepares in its own thread) if the pool fails."""
        try:
            return await self._pool.prepare([m.value for m in messages])
        except PoolClosed:
            raise
        except Exception:
            log.exception("prep pool failed; preparing this batch in the worker", extra={"batch_size": len(messages)})
            return None
