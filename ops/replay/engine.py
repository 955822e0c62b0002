"""The replay loop: the live worker's pipelined stages over a file or topic source.

Three stages overlap, so that only the model is on the critical path:

1. read: items from the sources (skipping those a checkpoint says are done), paced by
   ``--rate-limit``, cut into full batches of ``max_batch``; each batch's decode, gate and
   preprocessing start at once in the prep pool's processes (``workers.prep_pool``);
2. score: in batch order, the duplicate check against the sink's outcome ledger
   (``workers.pipeline.classify``, as the live worker), then ``Screener.finish`` (infer, explain,
   decide) in a model thread; with a baseline screener (shadow ``--report``), it scores too;
3. write: the sink writes the batch (as the live worker would), the report collects it, and
   only then the checkpoint counts the batch done.

Ctrl-C (SIGINT) or SIGTERM stops reading; the batch being scored and written is finished and
checkpointed, batches only prepared are dropped (a resumed run redoes them). A second Ctrl-C
aborts at once; the checkpoint is still never ahead of what was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.replay import checkpoint as ckpt
from ops.replay.progress import Progress
from ops.replay.sinks import Sink
from ops.replay.sources import Item, SourceOptions, read
from schemas.errors import ECGScreenError
from schemas.messages import DeadLetterReason
from workers.pipeline import Outcome, RawMessage, Screener, classify, dead
from workers.prep import Prepared
from workers.prep_pool import PoolConfig, PrepPool

log = logging.getLogger("ecgscreen.replay")


@dataclass
class Job:
    specs: Sequence[str]
    opts: SourceOptions
    screener: Screener
    sink: Sink
    baseline: Screener | None = None
    on_batch: Callable[[Sequence[Outcome], Sequence[Outcome] | None], None] | None = None
    max_batch: int = 32
    prep_processes: int = 1
    rate_limit: float | None = None  # events/s
    checkpoint: Path | None = None
    fingerprint: str = ""
    total: int | None = None  # for the progress bar's ETA, when the source knows it
    limit: int | None = None  # at most this many items in all (--limit)
    stop_after: int | None = None  # items; tests interrupt a run at a known point with it


@dataclass
class Summary:
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False
    resumed_from: int = 0

    @property
    def events(self) -> int:
        return self.counts.get("events", 0)

    def as_dict(self) -> dict[str, Any]:
        rate = self.counts.get("screened", 0) / self.seconds if self.seconds > 0 else 0.0
        return {**self.counts, "seconds": round(self.seconds, 2), "screened_per_s": round(rate, 1),
                "interrupted": self.interrupted, "resumed_from": self.resumed_from}


_Batch = tuple[list[RawMessage], "asyncio.Task[Prepared]"]


async def run(job: Job) -> Summary:
    cp = ckpt.load(job.checkpoint, job.fingerprint)
    job.opts.plan = cp.plan
    summary = Summary(counts=dict(cp.counts), resumed_from=cp.done)
    if cp.finished:
        log.info("checkpoint says this replay finished; nothing to do")
        await job.sink.close()
        return summary
    spec = job.screener.bundle.config.input
    pool = PrepPool(PoolConfig(spec, job.screener.gate, job.screener.limits, max(1, job.prep_processes),
                               job.max_batch, slots=3))
    stop = asyncio.Event()
    progress = Progress(job.total, cp.done)
    started = time.perf_counter()
    with _signals(stop), ThreadPoolExecutor(1, thread_name_prefix="replay-model") as model:
        try:
            await asyncio.get_running_loop().run_in_executor(None, pool.warm_up)
            prepared: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=2)
            scored: asyncio.Queue[tuple[list[RawMessage], list[Outcome], list[Outcome] | None, int] | None] = \
                asyncio.Queue(maxsize=1)
            tasks = [asyncio.create_task(_read(job, cp.done, pool, prepared, stop)),
                     asyncio.create_task(_score(job, prepared, scored, model, stop)),
                     asyncio.create_task(_write(job, cp, scored, summary, progress))]
            await _all(tasks)
        finally:
            pool.close()
            await job.sink.close()
            progress.close()
    summary.seconds = time.perf_counter() - started
    summary.interrupted = stop.is_set()
    if not stop.is_set():
        cp.finished = True
        ckpt.save(job.checkpoint, cp)
    return summary


async def _all(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for the stages; the first to fail cancels the others and raises."""
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


@contextlib.contextmanager
def _signals(stop: asyncio.Event) -> Any:
    loop = asyncio.get_running_loop()

    def first() -> None:
        if stop.is_set():  # the second: abort now
            raise KeyboardInterrupt
        log.warning("stopping after the batch in progress (again to abort)")
        stop.set()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, first)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _batches(job: Job, skip: int, stop: asyncio.Event) -> AsyncIterator[list[RawMessage]]:
    """Full batches of the items after ``skip``, paced to ``rate_limit`` events/s."""
    n, batch, t0, sent = 0, [], time.monotonic(), 0
    limit = None if job.stop_after is None else skip + job.stop_after
    async for item in read(job.specs, job.opts):
        if stop.is_set() or (limit is not None and n >= limit) or (job.limit is not None and n >= job.limit):
            break
        n += 1
        if n <= skip:
            continue
        batch.append(_raw(item))
        if job.rate_limit:
            sent += 1
            ahead = sent / job.rate_limit - (time.monotonic() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
        if len(batch) == job.max_batch:
            yield batch
            batch = []
    if batch and not stop.is_set():
        yield batch
    if limit is not None and n >= limit:
        stop.set()


async def _read(job: Job, skip: int, pool: PrepPool, out: asyncio.Queue[_Batch | None], stop: asyncio.Event) -> None:
    try:
        async for batch in _batches(job, skip, stop):
            task = asyncio.create_task(pool.prepare([m.value for m in batch]))
            await out.put((batch, task))
    finally:
        await out.put(None)


async def _score(job: Job, inq: asyncio.Queue[_Batch | None], out: asyncio.Queue[Any], model: ThreadPoolExecutor,
                 stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    try:
        while (got := await inq.get()) is not None:
            messages, task = got
            prepared = await task
            if stop.is_set() and job.stop_after is None:
                await _drain(inq)  # only prepared: dropped, redone on resume
                break
            recorded = await job.sink.recorded([m.key for m in messages])
            fresh, dups, conflicts = classify(messages, recorded)
            batch = [messages[i] for i in fresh]
            part = prepared.select(fresh)
            outcomes = await loop.run_in_executor(model, job.screener.finish, batch, part) if batch else []
            base = None
            if job.baseline is not None:
                base = await loop.run_in_executor(model, job.baseline.finish, batch, part) if batch else []
            outcomes += [_conflict(messages[i], job.screener) for i in conflicts]
            await out.put((messages, outcomes, base, len(dups)))
    finally:
        await out.put(None)


async def _drain(inq: asyncio.Queue[_Batch | None]) -> None:
    while (got := await inq.get()) is not None:
        got[1].cancel()


async def _write(job: Job, cp: ckpt.Checkpoint, inq: asyncio.Queue[Any], summary: Summary,
                 progress: Progress) -> None:
    while (got := await inq.get()) is not None:
        messages, outcomes, base, dups = got
        extra = await job.sink.write(outcomes, dups)
        if job.on_batch is not None:
            job.on_batch(outcomes, base)
        c = summary.counts
        _add(c, events=len(messages), duplicates=dups, screened=len(outcomes),
             verdicts=sum(o.kind == "verdict" for o in outcomes),
             deadletters=sum(o.kind == "deadletter" for o in outcomes),
             alerts=sum(len(o.alerts) for o in outcomes), **extra)
        cp.done += len(messages)
        cp.counts = dict(c)
        ckpt.save(job.checkpoint, cp)
        progress.update(len(messages), c)


def _add(counts: dict[str, int], **more: int) -> None:
    for k, v in more.items():
        counts[k] = counts.get(k, 0) + v


def _raw(item: Item) -> RawMessage:
    return RawMessage.of(item.value, item.topic, item.partition, item.offset, item.timestamp_ms)


def _conflict(msg: RawMessage, screener: Screener) -> Outcome:
    err = ECGScreenError(DeadLetterReason.EVENT_ID_CONFLICT.value,
                         "this event id was already recorded with different content; "
                         "send corrections under a new event id")
    return dead(msg, err, screener.limits)
