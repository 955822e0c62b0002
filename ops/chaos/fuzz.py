"""Fuzzing of the decoder and the gate, in process: hypothesis plus byte mutation.

The contract under test: ``decode_event`` raises nothing but :class:`DecodeError`
(with a dead-letter reason), and the gate never raises for anything the decoder
accepts, whatever the sample values. Every other exception is counted, with the
first few examples kept for the report.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from ops.chaos.account import records
from ops.chaos.run import Ctx
from schemas.codec import LEAD_NAMES, DecodeError, decode_event, event_to_dict
from schemas.messages import Encoding, Source
from workers.gate import gate_batch


class Found:
    """Unexpected exceptions, by type, with a few reproducers; and the gate inputs already seen."""

    def __init__(self) -> None:
        self.by_type: Counter[str] = Counter()
        self.examples: list[str] = []
        # The gate is a pure function of (samples, rate, leads, rails): most mutations touch only
        # metadata, so a signal already gated is not gated again (it still counts as a case).
        self.gated: set[bytes] = set()

    def add(self, exc: BaseException, what: str) -> None:
        self.by_type[type(exc).__name__] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{what}: {type(exc).__name__}: {str(exc)[:200]}")


def decode_and_gate(payload: bytes, found: Found, gated: Counter[str]) -> None:
    try:
        event = decode_event(payload)
    except DecodeError as err:
        gated[f"rejected:{err.reason.value}"] += 1
        return
    except Exception as exc:
        found.add(exc, f"decode_event({payload[:80]!r}...)")
        return
    key = _gate_key(event)
    if key in found.gated:
        gated["gate:repeat"] += 1
        return
    found.gated.add(key)
    try:
        (q,) = gate_batch(event.signal_mv[None], event.sampling_rate_hz, event.leads, rails_mv=_rails(event))
        gated[f"gate:{q.status.value}"] += 1
    except Exception as exc:
        found.add(exc, f"gate of {event.event_id} ({len(event.leads)} leads x {event.n_samples} at "
                       f"{event.sampling_rate_hz} Hz)")


def _gate_key(event: Any) -> bytes:
    h = hashlib.blake2b(event.signal_mv.tobytes(), digest_size=16)
    h.update(repr((event.sampling_rate_hz, event.leads)).encode())
    if event.rails_mv is not None:
        h.update(event.rails_mv.tobytes())
    return h.digest()


def _rails(event: Any) -> np.ndarray | None:
    return None if event.rails_mv is None else event.rails_mv[None]


def mutate(seed_payload: bytes, rng: random.Random) -> bytes:
    """A few random byte flips, inserts, deletes and block copies."""
    buf = bytearray(seed_payload)
    for _ in range(rng.randint(1, 8)):
        op, i = rng.random(), rng.randrange(max(1, len(buf)))
        if op < 0.4 and buf:
            buf[i] = rng.randrange(256)
        elif op < 0.6:
            buf.insert(i, rng.choice(b'{}[]",:-0123456789eE.nNaI \\'))
        elif op < 0.8 and len(buf) > 1:
            del buf[i: i + rng.randint(1, 16)]
        elif buf:
            j = rng.randrange(len(buf))
            buf[i:i] = buf[j: j + rng.randint(1, 64)]
    return bytes(buf)


def random_event(rng: np.random.Generator) -> bytes:
    """A well-formed event with hostile content: random leads, length, rate and sample values."""
    leads = tuple(rng.choice(LEAD_NAMES, size=int(rng.integers(1, 13)), replace=False))
    n = int(rng.integers(1, 3000))
    fs = float(rng.choice([50.0, 100.0, 250.0, 257.0, 500.0, 1000.0, float(rng.uniform(50, 10_000))]))
    kind = rng.integers(0, 6)
    shape = (len(leads), n)
    x = [np.zeros(shape), rng.normal(0, 1, shape), rng.normal(0, 1e4, shape), np.full(shape, 3.0e4),
         rng.choice([-3e38, 3e38, 1e-38, 0.0], size=shape), np.tile(rng.normal(0, 1, (1, n)), (len(leads), 1))][kind]
    enc = Encoding.FLOAT32_LE_BASE64 if kind in (2, 4) or rng.random() < 0.5 else Encoding.INT16_LE_BASE64
    doc = event_to_dict("fuzz-1", "p", _now(), Source("s"), fs, leads, np.asarray(x, np.float32), encoding=enc)
    return orjson.dumps(doc)


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 1, 1, tzinfo=UTC)


def hypothesis_cases(n: int, run: Callable[[bytes], None]) -> None:
    """Arbitrary JSON and arbitrary bytes through ``run``, ``n`` examples each."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
        | st.text(max_size=12),
        lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=5), max_leaves=16)
    fields = st.sampled_from(["schema", "event_id", "patient_ref", "acquired_at", "source", "sampling_rate_hz",
                              "leads", "n_samples", "encoding", "data", "age_years", "sex", "pacemaker", "x"])
    base = orjson.loads(records(1, 0)[0].encode())
    opts = settings(max_examples=n, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

    @opts
    @given(st.binary(max_size=2048))
    def raw_bytes(payload: bytes) -> None:
        run(payload)

    @opts
    @given(fields, json_values)
    def field_values(name: str, value: object) -> None:
        run(orjson.dumps({**base, name: value}))

    raw_bytes()
    field_values()


async def fuzz(ctx: Ctx) -> None:
    res = ctx.result
    total = ctx.size(600, 100_000)
    found, seen = Found(), Counter[str]()
    t0 = time.monotonic()
    # Most cases are byte mutations (cheap: most fail in the parser); hostile events each cost a gate call.
    n_hyp, n_hostile = total // 10, min(total // 5, 5_000)
    hypothesis_cases(n_hyp, lambda p: decode_and_gate(p, found, seen))
    rng, nrng = random.Random(ctx.cfg.seed), np.random.default_rng(ctx.cfg.seed)
    seeds = [r.encode() for r in records(4, ctx.cfg.seed)] + [_small_event()]
    n_mut = total - 2 * n_hyp - n_hostile
    for k in range(n_mut):
        decode_and_gate(mutate(seeds[k % len(seeds)], rng), found, seen)
    for _ in range(n_hostile):
        decode_and_gate(random_event(nrng), found, seen)
    res.done = ("decode_event then the gate on: arbitrary bytes and JSON field values (hypothesis), byte "
                "mutations of real events (flip/insert/delete/copy), well-formed events with hostile samples")
    res.times = total
    res.figures.update(cases=total, hypothesis=2 * n_hyp, mutations=n_mut, hostile_events=n_hostile,
                       outcomes=dict(sorted(seen.items())), unexpected=dict(found.by_type),
                       examples=found.examples, seconds=round(time.monotonic() - t0, 1))
    res.check("0 unexpected exceptions", not found.by_type)
    res.check(f"{total} cases run", sum(seen.values()) + sum(found.by_type.values()) >= total)


def _small_event() -> bytes:
    x = np.sin(np.linspace(0, 20, 600, dtype=np.float32))[None].repeat(3, 0)
    return orjson.dumps(event_to_dict("fuzz-small", "p", _now(), Source("s"), 60, ("I", "II", "V2"), x))
