"""Scenarios about what arrives: poison and absurd input, a NaN-producing model, a privacy canary."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from ops.chaos.account import clean_feed, item, produce, records, wait_committed
from ops.chaos.common import collecting, keys_of, settle
from ops.chaos.inputs import (
    NOT_FROM_PAYLOAD,
    Poison,
    canary_needles,
    canary_payloads,
    catalogue,
    conflict_of,
    covered_reasons,
    nan_bundle,
)
from ops.chaos.run import Ctx
from ops.demo import FeedItem
from ops.outputs import OutputCollector
from schemas.messages import DeadLetterReason, QualityStatus
from workers.settings import Settings

# Dead-letter reasons a NaN-producing model may rightly give its records (the worker's choice:
# a per-record dead letter); a verdict without alerts is the other right answer.
NAN_MODEL_REASONS = {"processing_failed", "non_finite_output", "non_finite_score", "model_output_invalid"}


async def poison(ctx: Ctx) -> None:
    """Good throughput alone, then with every poison mixed in; then a model that returns NaN."""
    rig, res = ctx.need_rig(), ctx.result
    n = ctx.size(64, 1500)
    good = clean_feed(3 * n, ctx.cfg.seed)
    base, mixed_good, sparse_good = good[:n], good[n:2 * n], good[2 * n:]
    poisons = catalogue(records(1, ctx.cfg.seed + 1)[0].encode(), "poison")
    conflict = conflict_of(mixed_good[0].payload)
    mixed = _interleave(mixed_good, [*poisons, conflict])
    settings = rig.settings()
    worker = rig.spawn("worker")
    await worker.wait_ready()
    figures = res.figures
    async with collecting(settings) as out:
        figures["baseline_good_per_s"] = await _throughput(settings, out, base, base)
        figures["mixed_good_per_s"] = await _throughput(settings, out, mixed, mixed_good)
        sparse: list[FeedItem] = []
        if ctx.cfg.long:  # the rate: 1 in 1,000, the heaviest poisons
            heavy = [p for p in poisons if p.kind in ("payload_10mib", "n_samples_1e9", "leads_200")]
            sparse = _interleave(sparse_good[: 1000 * len(heavy)], heavy)
            figures["sparse_good_per_s"] = await _throughput(settings, out, sparse, sparse_good)
        wrong = _wrong_outcomes(out, [*poisons, conflict])
        items = base + mixed + sparse
        await settle(ctx, settings, items, out, both={item(conflict.payload, "").key})
    worker_alive = worker.alive()
    await worker.stop()
    nan = await _nan_model(ctx)
    ratio = figures["mixed_good_per_s"] / figures["baseline_good_per_s"]
    figures.update(poison_rate=f"1 in {len(mixed) // (len(poisons) + 1)}", good_throughput_ratio=round(ratio, 2),
                   wrong_outcomes=wrong, nan_model=nan, poison_kinds=[p.kind for p in poisons])
    codec_reasons = {r.value for r in DeadLetterReason} - NOT_FROM_PAYLOAD
    res.done = (f"every codec reason, 10 MiB payloads, n_samples 1e9, 200 leads, rate 0, NaN/Inf, all-zero, "
                f"a reused id mixed into {n} good events; then a NaN-producing model")
    res.times = len(poisons) + 1 + (len(sparse) - len(sparse_good[: len(sparse)]) if sparse else 0)
    res.events_sent += nan["events"]
    res.check("every codec reason in the mix", covered_reasons(poisons) >= codec_reasons)
    res.check("every poison got its right outcome", not wrong)
    res.check("worker never stalled or exited", worker_alive)
    res.check("good throughput with poison >= 0.7 x without", ratio >= 0.7)
    res.check("NaN model: every event an outcome, no stall, no alert", bool(nan["ok"]))


def _interleave(good: Sequence[FeedItem], bad: Sequence[Poison]) -> list[FeedItem]:
    """Poisons spread evenly through the good events (a conflict only after its original)."""
    out = list(good)
    step = max(1, len(good) // (len(bad) + 1))
    for k, p in enumerate(reversed(bad)):
        out.insert(len(good) - k * step, item(p.payload, f"poison:{p.kind}:{p.expected}"))
    return out


async def _throughput(settings: Settings, out: OutputCollector, items: Sequence[FeedItem],
                      good: Sequence[FeedItem]) -> float:
    """Good events screened per second, the whole batch published as a backlog first."""
    t0 = time.monotonic()
    await produce(settings, items)
    await out.wait_for(keys_of(items), 600)
    return round(len(good) / (time.monotonic() - t0), 2)


def _wrong_outcomes(out: OutputCollector, poisons: Sequence[Poison]) -> dict[str, str]:
    wrong: dict[str, str] = {}
    for p in poisons:
        key = item(p.payload, "").key
        if p.expected == "reject":
            v = out.verdicts.get(key)
            got = f"verdict:{v.quality.status.value}" if v else "none"
            ok = v is not None and v.quality.status is QualityStatus.REJECT
        else:
            d = out.deadletters.get(key)
            got = f"deadletter:{d.reason.value}" if d else ("verdict" if key in out.verdicts else "none")
            ok = got == p.expected
        if not ok:
            wrong[p.kind] = got
    return wrong


async def _nan_model(ctx: Ctx) -> dict[str, Any]:
    """A worker on a bundle whose scores are all NaN: each record must end, none may alert or stall."""
    rig = ctx.need_rig()
    bundle = nan_bundle(ctx.bundle, ctx.root / "nan-bundle")
    items = clean_feed(ctx.size(16, 96), ctx.cfg.seed + 7)
    settings = rig.settings()
    worker = rig.spawn("worker-nan-model", ECGSCREEN_BUNDLE=str(bundle))
    await worker.wait_ready()
    t0 = time.monotonic()
    async with collecting(settings) as out:
        await produce(settings, items)
        done = await out.wait_for(keys_of(items), ctx.size(60, 180))
        took = time.monotonic() - t0
        committed = await wait_committed(settings, timeout_s=20)
        keys = keys_of(items)
        reasons = sorted({d.reason.value for k, d in out.deadletters.items() if k in keys})
        alerts = sum(1 for a in out.alerts.values() if a.event_id in keys)
        verdicts = sum(1 for k in keys if k in out.verdicts)
    alive = worker.alive()
    code, _ = await worker.stop()
    right = set(reasons) <= NAN_MODEL_REASONS
    return {"events": len(items), "all_outcomes": done, "seconds": round(took, 1), "committed": committed,
            "deadletter_reasons": reasons, "verdicts": verdicts, "alerts": alerts, "alive_after": alive,
            "exit_code": code, "ok": done and committed and alive and alerts == 0 and right}


async def privacy(ctx: Ctx) -> None:
    """A canary patient and canary sample values through every path; grep everything the worker wrote."""
    rig, res = ctx.need_rig(), ctx.result
    valid = records(1, ctx.cfg.seed + 3)[0].encode()
    canaries = [item(p, f"canary:{k}") for k, p in canary_payloads(valid, "canary")]
    conflict = item(orjson.dumps({**orjson.loads(canaries[0].payload), "age_years": 99}), "canary:conflict")
    items = [*clean_feed(ctx.size(16, 200), ctx.cfg.seed), *canaries, conflict, canaries[0]]
    settings = rig.settings()
    worker = rig.spawn("worker", ECGSCREEN_LOG_LEVEL="DEBUG")  # the most a log can say
    await worker.wait_ready()
    async with collecting(settings) as out:
        await produce(settings, items)
        await settle(ctx, settings, items, out, both={conflict.key})
        letters = [orjson.dumps({"detail": d.detail, "extra": d.extra, "reason": d.reason.value})
                   for d in out.deadletters.values()]
    await worker.stop()
    metrics = await _metrics_text(settings)
    needles = canary_needles(valid)
    hits = {
        "logs": _hits(needles, [worker.log_text()]),
        "metrics": _hits(needles, [metrics]),
        "deadletter_details": _hits(needles, [b.decode() for b in letters]),
    }
    res.done = ("a canary patient ref and canary sample values, clean and malformed (NaN, bad lead, bad "
                "patient ref, short data, flat, reused id), through the worker at DEBUG log level")
    res.times = len(canaries) + 1
    res.figures.update(hits=hits, needles=len(needles), log_bytes=len(worker.log_text()),
                       deadletters_checked=len(letters))
    for where, n in hits.items():
        res.check(f"0 canary hits in {where}", n == 0)


async def _metrics_text(settings: Settings) -> str:
    """What the worker exposes as figures: its Redis counters and the triage stats rows."""
    from workers.triage import TriageStore

    store = TriageStore.from_settings(settings.redis, settings.policy, actor="chaos")
    try:
        rows = await store.stats_rows()
        return orjson.dumps({"stats": await store.stats(), "rows": [repr(r) for r in rows]}).decode()
    finally:
        await store.close()


def _hits(needles: Sequence[str], texts: Sequence[str]) -> int:
    return sum(text.count(n) for n in needles for text in texts)
