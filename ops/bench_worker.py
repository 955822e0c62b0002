"""Load benchmark of the whole worker: offered rate -> sustained throughput and end-to-end latency.

    python -m ops.bench_worker [--rates 5 20 50 100] [--max-events 600] [--engine torch-cpu] [--threads 1]
    ecgscreen bench worker ...   (the same)

Starts the embedded stack (broker + Redis) and the worker as its own process, exactly as
``ecgscreen worker`` runs in production, then for each offered rate publishes real-record
events (PTB-XL from ``--data-dir`` when present, else neurokit2-simulated) on a fixed schedule,
and a last run publishes a backlog as fast as possible (saturation). Per run:

- sustained throughput: outcomes per second between the 10th and 90th percentile outcome
  (ramp-up and tail excluded); for paced runs also outcomes / (first publish -> last outcome);
- end-to-end latency p50/p95/p99: from the publish call to the broker timestamp of the
  event's outcome message (verdict or dead letter), same host clock;
- time per ECG of each stage (decode, gate, preprocess, infer, explain from the verdicts;
  persist from the worker's batch log lines): each stage is single-threaded, so its wall time
  is its CPU time, except when other processes take the core;
- CPU seconds per ECG of the worker and its prep processes together (from /proc).

The bound: the model alone (same bundle, engine, torch threads, max_batch, real preprocessed
records), timed in this process before, between and after the ``--saturation-runs`` runs while
the worker idles; its median call over all of them (see :func:`rate`). The figure to read is
the median saturation run against it.

Also timed in this process, one batch of real records, stage by stage, as the serial loop
before the pipelined worker did it (record-by-record preprocessing, one backward pass per
alert) and as it does now (vectorised preprocessing, one backward pass per batch).

Writes a Markdown report (default ``docs/performance.md``) and a plot beside it. Nothing
asserts on timings; tests never run this.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ops.feed import Record, ptbxl_records, simulated_records

EXPLAIN_ALWAYS_S = 86400.0  # the largest ECGSCREEN_EXPLAIN_MAX_LAG_S: every alert explained
ALWAYS_TOPIC = "ecg.events.bench-explain-all"
STAGES = ("decode_ms", "gate_ms", "preprocess_ms", "infer_ms", "explain_ms", "persist_ms")


@dataclass(frozen=True)
class BenchConfig:
    rates: tuple[float, ...] = (5.0, 20.0, 50.0, 100.0)
    seconds: float = 20.0  # per paced run
    max_events: int = 600  # saturation run backlog
    saturation_runs: int = 3  # each bracketed by model-only timings: the machine's speed drifts
    engine: str = "torch-cpu"
    threads: int = 1
    max_batch: int = 32
    max_wait_s: float = 0.2
    prep_processes: int = 1
    explain_max_lag_s: float = 2.0  # the worker's default (workers.settings.BatchSettings)
    partitions: int = 6
    bundle: Path = Path("models/bundles/ecgclip-r18-ptbxl-100hz")
    data_dir: Path = Path("../shared/data")
    rate_hz: int = 100  # which PTB-XL file feeds the events
    out: Path = Path("docs/performance.md")
    state_dir: Path = Path(".ecgscreen/bench")


@dataclass
class RunResult:
    label: str
    offered: float | None  # ECG/s; None = as fast as possible
    events: int
    outcomes: int
    throughput: float  # sustained, p10-p90 outcomes
    throughput_span: float  # outcomes / (first publish -> last outcome)
    latency_ms: dict[str, float]
    stage_ms_per_ecg: dict[str, float]
    cpu_ms_per_ecg: float
    mean_batch: float
    alerts: int  # published alerts of this run's events (latest view of each)
    explained: int  # of which carry an explanation
    latencies: list[float] = field(default_factory=list, repr=False)


def load_records(cfg: BenchConfig, n: int) -> tuple[list[Record], str]:
    npz = cfg.data_dir / f"ptbxl_folds1-8_{cfg.rate_hz}hz.npz"
    if npz.exists():
        recs = list(ptbxl_records(npz, cfg.data_dir / "ptbxl_folds1-8_metadata.csv", limit=n))
        return recs, f"PTB-XL {cfg.rate_hz} Hz records ({len(recs)} distinct) from {cfg.data_dir}"
    recs = list(simulated_records(min(n, 60), fs=float(cfg.rate_hz), seed=3, bases=6))
    return recs, f"neurokit2-simulated 12-lead ECGs at {cfg.rate_hz} Hz ({len(recs)} variants; no PTB-XL here)"


def payloads(records: Sequence[Record], n: int, tag: str) -> list[tuple[str, bytes]]:
    """n events cycling over the records, each with an event id of its own and a patient of this run."""
    out = []
    for k in range(n):
        # A patient of this run only: the triage dedup would otherwise fold a run's alerts into the
        # open alerts of an earlier run with the same record, and none would be published.
        rec = records[k % len(records)]
        rec = dataclasses.replace(rec, event_id=f"bench-{tag}-{k:05d}", patient_ref=f"{rec.patient_ref}-{tag}")
        out.append((rec.event_id, rec.encode()))
    return out


# --- the model alone ---------------------------------------------------------------------------


def model_only(cfg: BenchConfig, records: Sequence[Record], reps: int = 30) -> list[float]:
    """Seconds per call of the bundle's engine on max_batch real preprocessed records."""
    import torch

    from models.bundle import load_bundle
    from models.engine import EngineOptions, make_engine
    from models.preprocess import prepare_batch

    torch.set_num_threads(cfg.threads)
    bundle = load_bundle(cfg.bundle)
    engine = make_engine(bundle, cfg.engine, EngineOptions(threads=cfg.threads))
    batch = [records[k % len(records)] for k in range(cfg.max_batch)]
    x, _ = prepare_batch([(r.signal_mv, r.fs, r.leads, ()) for r in batch], bundle.config.input)
    for _ in range(3):
        engine.infer(x)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        engine.infer(x)
        times.append(time.perf_counter() - t0)
    return times


def rate(times: Sequence[float], batch: int) -> float:
    """ECG/s of the median call: the model alone's typical speed over the calls timed.

    This shared machine's speed drifts by up to 40% in spells of a few seconds (call times of one
    engine on one batch, back to back: 99 to 155 ms), so the bound pools every call timed before,
    between and after the runs rather than trusting the spell one timing happened to fall in."""
    return batch / statistics.median(times)


# --- stages of one batch, before and after -------------------------------------------------------


def stage_table(cfg: BenchConfig, records: Sequence[Record]) -> dict[str, dict[str, float]]:
    """ms for one batch of max_batch records: the old serial path vs the current one, same process."""
    import torch

    from models.bundle import load_bundle
    from models.engine import EngineOptions, make_engine
    from models.explain import explain, explain_many
    from models.preprocess import prepare_record
    from workers.pipeline import RawMessage, Screener
    from workers.prep import prepare

    torch.set_num_threads(cfg.threads)
    bundle = load_bundle(cfg.bundle)
    engine = make_engine(bundle, cfg.engine, EngineOptions(threads=cfg.threads))
    screener = Screener(bundle=bundle, engine=engine)
    msgs = [RawMessage.of(p, "bench", 0, k) for k, (_, p) in enumerate(payloads(records, cfg.max_batch, "stages"))]
    spec = bundle.config.input
    screener.screen(msgs)  # warm
    prep = prepare([m.value for m in msgs], spec)
    t0 = time.perf_counter()
    for i in sorted(prep.masked):
        ev = prep.events[i]
        prepare_record(ev.signal_mv, ev.sampling_rate_hz, ev.leads, spec, prep.qualities[i].bad_leads)
    per_record_ms = (time.perf_counter() - t0) * 1000
    outcomes = screener.screen(msgs, prep)
    timings = next(o.verdict.timings_ms for o in outcomes if o.verdict is not None)
    rows = sorted(prep.masked)
    pairs = [(rows.index(i), bundle.task_ids.index(a.task.id)) for i, o in enumerate(outcomes)
             for a in o.alerts if i in prep.masked]
    pairs = pairs or [(0, 0), (1, 0), (2, 0)]  # no alert in this batch: time three as a stand-in
    t0 = time.perf_counter()
    for r, t in pairs:
        explain(engine, prep.x[r], t)
    per_alert_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    explain_many(engine, prep.x[[r for r, _ in pairs]], [t for _, t in pairs])
    batched_ms = (time.perf_counter() - t0) * 1000
    common = {k: prep.timings_ms[k] for k in ("decode_ms", "gate_ms")}
    return {
        "before": {**common, "preprocess_ms": per_record_ms, "infer_ms": timings["infer_ms"],
                   "explain_ms": per_alert_ms, "explained_pairs": float(len(pairs))},
        "after": {**common, "preprocess_ms": prep.timings_ms["preprocess_ms"], "infer_ms": timings["infer_ms"],
                  "explain_ms": batched_ms, "explained_pairs": float(len(pairs))},
    }


# --- the worker under load -----------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process and its live children (the prep pool), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if entry.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _batch_logs(log: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    data = log.read_bytes()
    lines = []
    for line in data[offset:].splitlines():
        if b'"batch done"' in line:
            try:
                lines.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return lines, len(data)


async def _publish(bootstrap: str, topic: str, items: Sequence[tuple[str, bytes]], rate: float | None,
                   ) -> dict[str, float]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=8 * 1024 * 1024,
                                linger_ms=2 if rate is None else 0)
    await producer.start()
    sent: dict[str, float] = {}
    pending = []
    try:
        t0 = time.monotonic()
        for k, (key, value) in enumerate(items):
            if rate is not None:
                delay = t0 + k / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent[key] = time.time()
            pending.append(await producer.send(topic, value, key=key.encode()))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def _run_load(cfg: BenchConfig, settings: Any, pid: int, log: Path, items: Sequence[tuple[str, bytes]],
                    rate: float | None, label: str) -> RunResult:
    from ops.outputs import OutputCollector

    collector = OutputCollector(settings.kafka.bootstrap, settings.kafka.topics)
    await collector.start()
    _, offset = _batch_logs(log, 0)
    cpu0 = _cpu_seconds(pid)
    try:
        sent = await _publish(settings.kafka.bootstrap, settings.kafka.topics.events, items, rate)
        await collector.wait_for(sent, timeout_s=600)
    finally:
        await collector.stop()
    cpu = _cpu_seconds(pid) - cpu0
    await asyncio.sleep(0.3)
    batches, _ = _batch_logs(log, offset)
    return _result(label, rate, sent, collector, batches, cpu)


def _result(label: str, rate: float | None, sent: dict[str, float], out: Any, batches: list[dict[str, Any]],
            cpu: float) -> RunResult:
    done = {k: out.first_seen_at[k] for k in sent if k in out.first_seen_at}
    lat = sorted((done[k] - sent[k]) * 1000 for k in done)
    times = np.sort(np.array(list(done.values())))
    lo, hi = np.percentile(times, [10, 90]) if len(times) > 1 else (0.0, 0.0)
    sustained = (0.8 * len(times)) / (hi - lo) if hi > lo else float("nan")
    span = len(times) / (times[-1] - min(sent.values())) if len(times) else float("nan")
    stage: dict[str, float] = {}
    verdicts = [v for k, v in out.verdicts.items() if k in sent]
    for name in STAGES[:-1]:
        vals = [v.timings_ms[name] / v.timings_ms["batch_size"] for v in verdicts if name in v.timings_ms]
        stage[name] = float(np.mean(vals)) if vals else float("nan")
    n_logged = sum(b.get("batch_size", 0) for b in batches)
    stage["persist_ms"] = sum(b.get("persist_ms", 0.0) for b in batches) / n_logged if n_logged else float("nan")
    pct = {f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)} if lat else {}
    mean_batch = n_logged / len(batches) if batches else float("nan")
    alerts = [a for a in out.alerts.values() if a.event_id in sent]
    return RunResult(label, rate, len(sent), len(done), sustained, span, pct, stage,
                     cpu * 1000 / max(1, len(done)), mean_batch, len(alerts),
                     sum(a.explanation is not None for a in alerts), latencies=lat)


def run(cfg: BenchConfig, say: Any = print) -> dict[str, Any]:
    from ops.demo import ensure_bundle, run_worker_process, wait_ready
    from ops.stack import embedded_stack
    from workers.settings import Topics, load_settings

    n_max = max(cfg.max_events, *(int(r * cfg.seconds) for r in cfg.rates))
    records, origin = load_records(cfg, min(n_max, 1500))
    say(f"feed: {origin}")
    stages = stage_table(cfg, records)
    say(f"one batch, before: {_fmt(stages['before'])}\none batch, after:  {_fmt(stages['after'])}")
    timings: list[list[float]] = []
    topics = Topics()
    state = cfg.state_dir.resolve()
    results: list[RunResult] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, embedded_stack(Path(tmp) / "stack", (*topics.all(), ALWAYS_TOPIC),
                                                              cfg.partitions) as st:
        env = _worker_env(cfg, st.env(), state)
        settings = load_settings(env)
        ensure_bundle(settings.bundle_path, say)
        log = state / "worker.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.unlink(missing_ok=True)
        (state / "worker.ready").unlink(missing_ok=True)
        with run_worker_process(env, log) as proc:
            wait_ready(settings, proc, timeout_s=180)
            asyncio.run(_run_load(cfg, settings, proc.pid, log, payloads(records, 40, "warm"), 20.0, "warm-up"))
            for offered in cfg.rates:
                items = payloads(records, max(20, int(offered * cfg.seconds)), f"{offered:g}")
                results.append(asyncio.run(_run_load(cfg, settings, proc.pid, log, items, offered, f"{offered:g}")))
                say(_line(results[-1]))
            timings.append(model_only(cfg, records))
            say(f"model only: {rate(timings[-1], cfg.max_batch):.1f} ECG/s")
            for k in range(1, cfg.saturation_runs + 1):
                results.append(asyncio.run(_run_load(cfg, settings, proc.pid, log,
                                                     payloads(records, cfg.max_events, f"max{k}"), None, f"max{k}")))
                timings.append(model_only(cfg, records))
                say(f"{_line(results[-1])}\nmodel only: {rate(timings[-1], cfg.max_batch):.1f} ECG/s")
        if cfg.explain_max_lag_s < EXPLAIN_ALWAYS_S:
            results.append(_saturation_explaining_all(cfg, env, records, state))
            say(_line(results[-1]))
    return {"config": cfg, "origin": origin, "results": results, "stages": stages,
            "model_only": [rate(t, cfg.max_batch) for t in timings],
            "bound": rate([t for ts in timings for t in ts], cfg.max_batch), "load": (load_before, os.getloadavg())}


def _saturation_explaining_all(cfg: BenchConfig, env: dict[str, str], records: Sequence[Record],
                               state: Path) -> RunResult:
    """The saturation run again, by a worker that explains every alert however far behind it is
    (on a topic of its own, so that it starts with the same backlog): the price of explanations."""
    from ops.demo import run_worker_process, wait_ready
    from workers.settings import load_settings

    env = {**env, "ECGSCREEN_EXPLAIN_MAX_LAG_S": str(EXPLAIN_ALWAYS_S), "ECGSCREEN_TOPIC_EVENTS": ALWAYS_TOPIC,
           "ECGSCREEN_GROUP_ID": "ecgscreen-bench-explain-all"}
    settings = load_settings(env)
    log = state / "worker-always.log"
    log.unlink(missing_ok=True)
    (state / "worker.ready").unlink(missing_ok=True)
    with run_worker_process(env, log) as proc:
        wait_ready(settings, proc, timeout_s=180)
        return asyncio.run(_run_load(cfg, settings, proc.pid, log, payloads(records, cfg.max_events, "max-all"),
                                     None, "max-all"))


def _worker_env(cfg: BenchConfig, stack_env: dict[str, str], state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECGSCREEN_")}
    env.update(stack_env)
    env.update({"ECGSCREEN_STATE_DIR": str(state), "ECGSCREEN_GROUP_ID": "ecgscreen-bench",
                "ECGSCREEN_ENGINE": cfg.engine, "ECGSCREEN_TORCH_THREADS": str(cfg.threads),
                "ECGSCREEN_MAX_BATCH": str(cfg.max_batch), "ECGSCREEN_MAX_WAIT_S": str(cfg.max_wait_s),
                "ECGSCREEN_PREP_PROCESSES": str(cfg.prep_processes), "ECGSCREEN_BUNDLE": str(cfg.bundle),
                "ECGSCREEN_EXPLAIN_MAX_LAG_S": str(cfg.explain_max_lag_s),
                "ECGSCREEN_LOG_LEVEL": "INFO"})
    return env


def _fmt(stages: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in stages.items())


def _line(r: RunResult) -> str:
    lat = " ".join(f"{k} {v:.0f} ms" for k, v in r.latency_ms.items())
    return (f"offered {r.label:>4}: {r.outcomes}/{r.events} outcomes, sustained {r.throughput:.1f} ECG/s, "
            f"latency {lat}, CPU {r.cpu_ms_per_ecg:.1f} ms/ECG, mean batch {r.mean_batch:.1f}, "
            f"alerts explained {r.explained}/{r.alerts}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchConfig()
    p.add_argument("--rates", nargs="+", type=float, default=list(d.rates), help="offered ECG/s of the paced runs")
    p.add_argument("--seconds", type=float, default=d.seconds, help="length of each paced run")
    p.add_argument("--max-events", type=int, default=d.max_events, help="backlog of each as-fast-as-possible run")
    p.add_argument("--saturation-runs", type=int, default=d.saturation_runs,
                   help="as-fast-as-possible runs, each between two model-only timings")
    p.add_argument("--engine", default=d.engine)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (worker and model-only alike)")
    p.add_argument("--max-batch", type=int, default=d.max_batch)
    p.add_argument("--max-wait", type=float, default=d.max_wait_s, help="seconds a batch waits to fill")
    p.add_argument("--prep-processes", type=int, default=d.prep_processes, help="0: the serial loop")
    p.add_argument("--explain-max-lag", type=float, default=d.explain_max_lag_s,
                   help="ECGSCREEN_EXPLAIN_MAX_LAG_S of the worker (86400: explain every alert)")
    p.add_argument("--partitions", type=int, default=d.partitions)
    p.add_argument("--bundle", type=Path, default=d.bundle)
    p.add_argument("--data-dir", type=Path, default=d.data_dir)
    p.add_argument("--rate-hz", type=int, choices=(100, 500), default=d.rate_hz, help="PTB-XL file of the feed")
    p.add_argument("--out", type=Path, default=d.out, help="Markdown report (a PNG plot is written beside it)")
    p.add_argument("--state-dir", type=Path, default=d.state_dir)


def config_from(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(rates=tuple(args.rates), seconds=args.seconds, max_events=args.max_events,
                       saturation_runs=args.saturation_runs,
                       engine=args.engine, threads=args.threads, max_batch=args.max_batch, max_wait_s=args.max_wait,
                       prep_processes=args.prep_processes, explain_max_lag_s=args.explain_max_lag,
                       partitions=args.partitions, bundle=args.bundle,
                       data_dir=args.data_dir, rate_hz=args.rate_hz, out=args.out, state_dir=args.state_dir)


def main(argv: Sequence[str] | None = None) -> int:
    from ops.bench_report import write_report

    p = argparse.ArgumentParser(prog="python -m ops.bench_worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    cfg = config_from(args)
    report = run(cfg)
    command = "python -m ops.bench_worker " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(report, cfg.out, command.strip())
    print(f"wrote {cfg.out} and {cfg.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
