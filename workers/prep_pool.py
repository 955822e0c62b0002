"""A pool of processes for the CPU half of a batch (decode, gate, preprocess).

The worker's own process runs the model; this pool runs :func:`workers.prep.prepare` on the
raw payload bytes of the NEXT batch meanwhile, so the two overlap on separate cores. What
crosses process borders:

- in: the payload bytes (as received from Kafka: the pool decodes them, so no decoded
  array is ever pickled) and where to write;
- out: the model input (B, L, N) float32, written by the pool straight into a shared-memory
  slot the worker owns, and small metadata (event fields without the signal, gate
  qualities, failures, stage times) by pickle.

Slots: one per batch being prepared (``slots``, at least the pipeline's batches in flight),
each sized for ``max_batch`` records; a batch is split into one contiguous chunk per
process, each writing its rows at its own offset. The worker copies the rows out (about
1.5 MB for 32 records at 100 Hz, well under a millisecond) and frees the slot at once, so a
slot's lifetime never spans the model call.

Processes start with ``spawn``: the worker runs threads (faust, the model executor), and
forking a threaded process is unsafe. Pool processes import no torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from models.config import InputSpec
from schemas.codec import Limits
from schemas.messages import ECGEvent
from workers.gate import GateConfig, RecordQuality
from workers.prep import Failure, Prepared, prepare

log = logging.getLogger("ecgscreen.prep_pool")
NO_SIGNAL = np.zeros((0, 0), np.float32)  # stands in for a signal that stayed in the pool process


class PoolClosed(RuntimeError):
    """The pool was closed (the worker is stopping): the batch must be left unacked, not screened."""


@dataclass(frozen=True)
class PoolConfig:
    spec: InputSpec
    gate: GateConfig
    limits: Limits
    processes: int
    max_batch: int
    slots: int = 2


@dataclass(frozen=True, slots=True)
class _Chunk:
    """One process's part of a batch, as it comes back by pickle: no arrays."""

    events: dict[int, dict[str, Any]]  # ECGEvent fields, signal and rails left out
    qualities: dict[int, RecordQuality]
    failures: dict[int, Failure]
    masked: dict[int, tuple[str, ...]]
    timings_ms: dict[str, float]


# --- in the pool process -------------------------------------------------------------------------

_state: dict[str, Any] = {}  # per pool process: its config and attached slots (set by _init)


def _init(cfg: PoolConfig, parent_pid: int) -> None:
    _state["cfg"] = cfg
    _state["slots"] = {}
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()


def _exit_with_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """End this process once the worker is gone.

    A worker killed with SIGKILL (the OOM killer, a supervisor's last resort) cannot stop its
    pool, and a pool process waits on its task queue for ever: without this, every kill -9
    would leave orphans holding memory.
    """
    while os.getppid() == parent_pid:
        time.sleep(every_s)
    os._exit(0)


def _slot(name: str) -> SharedMemory:
    slots: dict[str, SharedMemory] = _state["slots"]
    if name not in slots:
        slots[name] = SharedMemory(name=name)
    return slots[name]


def _prepare_chunk(values: list[bytes], slot: str, row0: int) -> _Chunk:
    cfg: PoolConfig = _state["cfg"]
    shm = _slot(slot)
    shape = (cfg.max_batch, len(cfg.spec.leads), cfg.spec.n_samples)
    rows = np.ndarray(shape, np.float32, buffer=shm.buf)[row0: row0 + len(values)]
    p = prepare(values, cfg.spec, cfg.gate, cfg.limits, out=rows)  # runnable rows land first, in order
    fields = {i: {f.name: getattr(ev, f.name) for f in dataclasses.fields(ev)
                  if f.name not in ("signal_mv", "rails_mv")} for i, ev in p.events.items()}
    return _Chunk(fields, p.qualities, p.failures, p.masked, p.timings_ms)


# --- in the worker -------------------------------------------------------------------------------


class PrepPool:
    """``await pool.prepare(values)`` -> :class:`Prepared`, computed in the pool's processes."""

    def __init__(self, cfg: PoolConfig) -> None:
        self.cfg = cfg
        self._row_bytes = len(cfg.spec.leads) * cfg.spec.n_samples * 4
        self._shm = [SharedMemory(create=True, size=cfg.max_batch * self._row_bytes) for _ in range(cfg.slots)]
        self._free: asyncio.Queue[int] | None = None
        self._closed = False
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.cfg.processes, mp_context=get_context("spawn"),
                                   initializer=_init, initargs=(self.cfg, os.getpid()))

    def warm_up(self) -> None:
        """Start every process now (imports, first gate call) rather than on the first batch."""
        list(self._executor.map(_prepare_chunk, [[]] * self.cfg.processes,
                                [self._shm[0].name] * self.cfg.processes, [0] * self.cfg.processes))

    async def prepare(self, values: Sequence[bytes]) -> Prepared:
        if self._closed:
            raise PoolClosed("the prep pool is closed")
        if len(values) > self.cfg.max_batch:
            raise ValueError(f"batch of {len(values)} exceeds the pool's max_batch {self.cfg.max_batch}")
        if self._free is None:  # made on the event loop that uses it
            self._free = asyncio.Queue()
            for k in range(self.cfg.slots):
                self._free.put_nowait(k)
        slot = await self._free.get()
        try:
            prepared = await self._run(values, slot)
        finally:
            self._free.put_nowait(slot)
        if self._closed:  # closed while this batch was out: its chunks may be cut short
            raise PoolClosed("the prep pool closed during the batch")
        return prepared

    async def _run(self, values: Sequence[bytes], slot: int) -> Prepared:
        bounds = _split(len(values), self.cfg.processes)
        name = self._shm[slot].name
        try:
            futures = [asyncio.wrap_future(self._executor.submit(_prepare_chunk, list(values[a:b]), name, a))
                       for a, b in bounds]
            chunks = await asyncio.gather(*futures)
        except BrokenProcessPool:
            if self._closed:
                raise PoolClosed("the prep pool closed during the batch") from None
            log.error("prep pool process died; restarting the pool")
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._start()
            raise
        return self._merge(chunks, bounds, slot)

    def _merge(self, chunks: Sequence[_Chunk], bounds: Sequence[tuple[int, int]], slot: int) -> Prepared:
        spec = self.cfg.spec
        table = np.ndarray((self.cfg.max_batch, len(spec.leads), spec.n_samples), np.float32,
                           buffer=self._shm[slot].buf)
        events: dict[int, ECGEvent] = {}
        qualities: dict[int, RecordQuality] = {}
        failures: dict[int, Failure] = {}
        masked: dict[int, tuple[str, ...]] = {}
        rows: list[np.ndarray] = []
        for c, (a, _) in zip(chunks, bounds, strict=True):
            events.update({a + i: ECGEvent(**f, signal_mv=NO_SIGNAL) for i, f in c.events.items()})
            qualities.update({a + i: q for i, q in c.qualities.items()})
            failures.update({a + i: f for i, f in c.failures.items()})
            masked.update({a + i: m for i, m in c.masked.items()})
            rows.append(table[a: a + len(c.masked)])
        x = np.concatenate(rows) if rows else table[:0].copy()  # a copy: the slot is reused at once
        timings = {k: max(c.timings_ms.get(k, 0.0) for c in chunks) for k in chunks[0].timings_ms} if chunks else {}
        return Prepared(events, qualities, failures, masked, x, timings)

    def close(self) -> None:
        """Stop the processes without waiting for a chunk in progress (its batch is then left unacked)."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        for shm in self._shm:
            with contextlib.suppress(BufferError):  # a view still alive: the mapping goes with the process
                shm.close()
            shm.unlink()


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous (start, stop) bounds of at most ``parts`` non-empty chunks covering range(n)."""
    size = max(1, -(-n // max(1, parts)))
    return [(a, min(n, a + size)) for a in range(0, n, size)]
