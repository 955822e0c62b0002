"""The CPU half of screening a batch: decode, gate, preprocess. No model and no torch.

:func:`prepare` is what the serial screener runs in its thread and what the pipelined
worker's pool processes run on raw payload bytes (``workers.prep_pool``), writing the model
input into shared memory. Its result, :class:`Prepared`, holds no signal outside ``x``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from models.config import InputSpec
from models.preprocess import prepare_many
from schemas.codec import DecodeError, Limits, decode_event
from schemas.messages import ECGEvent, QualityStatus
from workers.gate import GateConfig, RecordQuality, gate_batch


@dataclass(slots=True)
class Stage:
    """Wall time of each stage of one batch, in milliseconds: each mark is the time since the last."""

    last: float = field(default_factory=time.perf_counter)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.marks[f"{name}_ms"] = round((now - self.last) * 1000, 3)
        self.last = now


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one record of a batch could not be screened, in plain fields (it crosses process borders)."""

    stage: str  # "decode" or "preprocess"
    reason: str
    detail: str
    event_id: str | None
    error_type: str


@dataclass(slots=True)
class Prepared:
    """A batch after the CPU stages (decode, gate, preprocess), indexed by position in the batch.

    ``x`` holds the model input of the records in ``masked`` (row k = k-th key in ascending order);
    a record appears in exactly one of ``failures``, ``masked`` or (gate-rejected) neither, and every
    decoded record in ``events``/``qualities``. ``events`` may carry their signal stripped: nothing
    after this point reads it.
    """

    events: dict[int, ECGEvent]
    qualities: dict[int, RecordQuality]
    failures: dict[int, Failure]
    masked: dict[int, tuple[str, ...]]  # runnable records -> spec leads missing or masked
    x: np.ndarray
    timings_ms: dict[str, float]

    def select(self, keep: Sequence[int]) -> Prepared:
        """The same batch restricted to positions ``keep``, renumbered 0.. in that order."""
        rows = {i: k for k, i in enumerate(sorted(self.masked))}
        pos = {old: new for new, old in enumerate(keep)}
        runnable = [i for i in keep if i in self.masked]
        return Prepared(
            events={pos[i]: self.events[i] for i in keep if i in self.events},
            qualities={pos[i]: self.qualities[i] for i in keep if i in self.qualities},
            failures={pos[i]: self.failures[i] for i in keep if i in self.failures},
            masked={pos[i]: self.masked[i] for i in runnable},
            x=self.x[[rows[i] for i in runnable]], timings_ms=dict(self.timings_ms))


def prepare(values: Sequence[bytes], spec: InputSpec, gate: GateConfig | None = None,
            limits: Limits | None = None, out: np.ndarray | None = None) -> Prepared:
    """Decode, gate and preprocess one batch of raw payloads; never raises on bad input.

    Pure CPU work with no model: it runs in the worker's thread (serial screener) or in a pool
    process (pipelined worker), which passes ``out`` in shared memory for the model input.
    """
    stage = Stage()
    events: dict[int, ECGEvent] = {}
    failures: dict[int, Failure] = {}
    for i, value in enumerate(values):
        try:
            events[i] = decode_event(value, limits or Limits())
        except DecodeError as err:
            failures[i] = Failure("decode", err.reason.value, err.detail, err.event_id, type(err).__name__)
    stage.mark("decode")
    qualities = _gate(events, gate or GateConfig())
    stage.mark("gate")
    masked, x = _preprocess(events, qualities, spec, failures, out)
    stage.mark("preprocess")
    return Prepared(events, qualities, failures, masked, x, stage.marks)


def _gate(events: dict[int, ECGEvent], config: GateConfig) -> dict[int, RecordQuality]:
    """Gate events in groups of equal shape, rate and leads (one vectorised call each)."""
    groups: dict[tuple[float, tuple[str, ...], int], list[int]] = defaultdict(list)
    for i, ev in events.items():
        groups[(ev.sampling_rate_hz, ev.leads, ev.n_samples)].append(i)
    out: dict[int, RecordQuality] = {}
    for (fs, leads, _), idx in groups.items():
        x = np.stack([events[i].signal_mv for i in idx])
        rails = _stack_rails([events[i] for i in idx])
        for i, q in zip(idx, gate_batch(x, fs, leads, config, rails), strict=True):
            out[i] = q
    return out


def _preprocess(events: dict[int, ECGEvent], qualities: dict[int, RecordQuality], spec: InputSpec,
                failures: dict[int, Failure], out: np.ndarray | None) -> tuple[dict[int, tuple[str, ...]], np.ndarray]:
    """Model input for the records the gate lets through (vectorised per rate and length)."""
    todo = [i for i in sorted(events) if qualities[i].status is not QualityStatus.REJECT]
    records = [(events[i].signal_mv, events[i].sampling_rate_hz, events[i].leads,
                qualities[i].bad_leads if qualities[i].status is QualityStatus.DEGRADED else ())
               for i in todo]
    view = None if out is None else out[: len(todo)]
    try:
        x, results = prepare_many(records, spec, view)
    except Exception as exc:  # a bug in a vectorised step must not sink the batch: fail its records
        x = np.zeros((len(todo), len(spec.leads), spec.n_samples), np.float32) if view is None else view
        results = [exc] * len(todo)  # type: ignore[list-item]
    masked: dict[int, tuple[str, ...]] = {}
    ok_rows: list[int] = []
    for k, (i, r) in enumerate(zip(todo, results, strict=True)):
        if isinstance(r, Exception):
            failures[i] = Failure("preprocess", "processing_failed", str(r), events[i].event_id, type(r).__name__)
        else:
            masked[i] = r
            ok_rows.append(k)
    if len(ok_rows) < len(todo):  # compact: row k of x belongs to the k-th runnable record
        x[: len(ok_rows)] = x[ok_rows]
        x = x[: len(ok_rows)]
    return masked, x


def _stack_rails(events: Sequence[ECGEvent]) -> np.ndarray | None:
    """Rails for the gate's clipping check; float32 sources have none."""
    if any(ev.rails_mv is None for ev in events):
        return None
    return np.stack([ev.rails_mv for ev in events if ev.rails_mv is not None])
