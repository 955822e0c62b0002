"""`ecgscreen demo`: the whole pipeline on the embedded stack, then a summary.

Starts a broker and Redis, publishes a feed (real PTB-XL records when
../shared/data exists, else simulated 12-lead ECGs) mixed with faulty signals,
malformed payloads and duplicate deliveries, runs the worker as its own process,
waits until every event has an outcome, and accounts for each one; it ends with
the triage stats and two alerts as a subscriber of the alert topic sees them,
the first also as FHIR R4.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ops.feed import Record, SignalFault, malformed_payloads, ptbxl_records, simulated_records, with_fault
from ops.ops_view import ops_view
from ops.outputs import OutputCollector
from ops.stack import StackInfo, embedded_stack, free_port
from ops.triage_cmd import stats_lines
from schemas.errors import ECGScreenError
from schemas.messages import Alert
from workers.fhir import alert_bundle, to_json
from workers.settings import DEFAULT_BUNDLE, Settings, Topics, load_settings
from workers.subscribers import Subscription, alert_line, consume
from workers.triage import TriageStore
from workers.triage_stats import triage_stats

T = TypeVar("T")


@dataclass(frozen=True)
class DemoConfig:
    state_dir: Path = Path(".ecgscreen/demo")
    data_dir: Path | None = None
    n_records: int = 150
    rate_per_s: float = 50.0
    partitions: int = 6
    seed: int = 7
    timeout_s: float = 300.0
    bundle_path: Path | None = None
    allow_synthetic_labels: bool = False  # the echo example's synthetic-label heads may alert (flagged)


@dataclass(frozen=True, slots=True)
class FeedItem:
    key: str
    payload: bytes
    kind: str  # "clean", a SignalFault, "malformed:<reason>" or "duplicate"


@dataclass
class Feed:
    items: list[FeedItem] = field(default_factory=list)

    @property
    def unique_keys(self) -> set[str]:
        return {i.key for i in self.items}


def build_feed(records: Sequence[Record], seed: int) -> Feed:
    """Clean records, ~10% with signal faults, ~10% malformed, ~4% sent twice."""
    from workers.pipeline import RawMessage

    rng = np.random.default_rng(seed)
    faults = list(SignalFault)
    feed = Feed()

    def add(payload: bytes, kind: str) -> None:
        feed.items.append(FeedItem(RawMessage.of(payload, "", 0, 0).key, payload, kind))

    for n, rec in enumerate(records):
        if n % 10 == 3:
            fault = faults[(n // 10) % len(faults)]
            add(with_fault(rec, fault, seed + n).encode(), fault.value)
        else:
            add(rec.encode(), "clean")
        if n % 10 == 5:
            variants = malformed_payloads(rec.encode())
            reason, bad = variants[(n // 10) % len(variants)]
            add(bad, f"malformed:{reason.value}")
    clean = [i for i in feed.items if i.kind == "clean"]
    for item in rng.choice(len(clean), size=max(len(clean) // 25, 2), replace=False):
        feed.items.append(FeedItem(clean[item].key, clean[item].payload, "duplicate"))
    return feed


def demo_records(cfg: DemoConfig) -> tuple[list[Record], str]:
    data = cfg.data_dir
    if data is not None and (data / "ptbxl_folds1-8_100hz.npz").exists():
        csv = data / "ptbxl_folds1-8_metadata.csv"
        n500 = cfg.n_records // 4
        recs = list(ptbxl_records(data / "ptbxl_folds1-8_500hz.npz", csv, limit=n500))
        recs += list(ptbxl_records(data / "ptbxl_folds1-8_100hz.npz", csv, limit=cfg.n_records - n500))
        return recs, f"PTB-XL records from {data} ({n500} at 500 Hz, {cfg.n_records - n500} at 100 Hz)"
    recs = list(simulated_records(cfg.n_records, fs=500.0, seed=cfg.seed))
    return recs, "neurokit2-simulated 12-lead ECGs at 500 Hz (../shared/data not found)"


class DemoError(ECGScreenError):
    """The demo stopped before its summary; what it started is stopped, ``detail`` says why."""


class _Stopped(KeyboardInterrupt):  # asyncio re-raises only KeyboardInterrupt and SystemExit from a task
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.name = signal.Signals(signum).name


_UNWIND = (signal.SIGTERM, signal.SIGHUP)


def _raise_stopped(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind the stack like Ctrl-C does, so every ``with`` below them stops
    what it started (the servers run in sessions of their own: no signal reaches them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, _raise_stopped) for sig in _UNWIND}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _arun(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, but a SIGTERM/SIGHUP cancels the coroutine, so its ``finally`` blocks close
    their Kafka clients, and then unwinds as from a synchronous step."""
    unwinding = all(signal.getsignal(sig) is _raise_stopped for sig in _UNWIND)
    got: list[int] = []

    async def main() -> T:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()

        def cancel(sig: int) -> None:
            got.append(sig)
            if task is not None:
                task.cancel()

        for sig in _UNWIND if unwinding else ():
            loop.add_signal_handler(sig, cancel, sig)
        try:
            return await coro
        finally:
            for sig in _UNWIND if unwinding else ():
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if got:
            raise _Stopped(got[0]) from None
        raise
    finally:
        for sig in _UNWIND if unwinding else ():
            signal.signal(sig, _raise_stopped)  # remove_signal_handler left the default


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print) -> dict[str, object]:
    """Run the demo end to end; returns the summary it printed.

    Every way out (a signal, Ctrl-C, a worker that fails to start) stops the broker, Redis and
    worker it started and raises :class:`DemoError`, which the CLI prints as one line.
    """
    try:
        with _signals_unwind():
            return _run_demo(cfg, say)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM/SIGHUP as _Stopped
        name = stop.name if isinstance(stop, _Stopped) else "SIGINT"
        raise DemoError("demo_interrupted", f"stopped by {name}; the broker, Redis and worker it "
                        "started are stopped") from None


def _run_demo(cfg: DemoConfig, say: Callable[[str], None]) -> dict[str, object]:
    records, origin = demo_records(cfg)
    feed = build_feed(records, cfg.seed)
    say(f"feed: {len(feed.items)} messages ({len(feed.unique_keys)} distinct events) from {origin}")
    topics = Topics()
    # Each demo starts from an empty Redis: the broker forgets everything on restart
    # (memory storage), so a kept AOF would mark the new feed as already processed.
    shutil.rmtree(cfg.state_dir / "stack", ignore_errors=True)
    (cfg.state_dir / "worker.log").unlink(missing_ok=True)
    (cfg.state_dir / "worker.ready").unlink(missing_ok=True)  # a stale marker would start the feed too early
    with embedded_stack(cfg.state_dir / "stack", topics.all(), cfg.partitions) as stack:
        say(f"stack: broker {stack.kafka_bootstrap}, redis {stack.redis_url}")
        env = _worker_env(cfg, stack)
        settings = load_settings(env)
        ensure_bundle(settings.bundle_path, say)
        with run_worker_process(env, cfg.state_dir / "worker.log") as worker:
            wait_ready(settings, worker, timeout_s=120)
            say("worker: ready; publishing the feed")
            summary = _arun(_exchange(settings, feed, cfg))
            summary.update(ops_view(f"http://127.0.0.1:{settings.ops.metrics_port}"))  # before the worker stops
        summary.update(_arun(_triage_view(settings)))
        summary.update(_arun(_subscriber_view(settings)))
    print_summary(summary, say)
    return summary


def _worker_env(cfg: DemoConfig, stack: StackInfo) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECGSCREEN_")}
    env.update(stack.env())
    env["ECGSCREEN_STATE_DIR"] = str(cfg.state_dir)
    env["ECGSCREEN_GROUP_ID"] = "ecgscreen-demo"
    env["ECGSCREEN_LOG_LEVEL"] = "INFO"
    env["ECGSCREEN_METRICS_HOST"] = "127.0.0.1"
    env["ECGSCREEN_METRICS_PORT"] = str(free_port())
    if cfg.bundle_path is not None:
        env["ECGSCREEN_BUNDLE"] = str(cfg.bundle_path)
    if cfg.allow_synthetic_labels:
        env["ECGSCREEN_ALLOW_SYNTHETIC_LABELS"] = "true"
    return env


def ensure_bundle(path: Path, say: Callable[[str], None] = print) -> None:
    """A missing bundle is made untrained on first use (deterministic seed), except the committed
    trained default: writing random weights under the trained bundle's name would be worse than failing."""
    if (path / "bundle.json").exists():
        return
    from models.bundle import BundleError, BundleReason, init_untrained_bundle

    if path.resolve() == DEFAULT_BUNDLE.resolve():
        raise BundleError(BundleReason.MISSING_FILE,
                          f"the committed trained bundle {path} is missing: restore it from git, run from the "
                          "repository root, or pass --bundle / ECGSCREEN_BUNDLE")
    init_untrained_bundle(path)
    say(f"bundle: created UNTRAINED R18 bundle at {path}")


class run_worker_process:
    """The worker as its own process, stopped with SIGTERM (graceful: commits offsets)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._env, self._log_path = env, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> subprocess.Popen[bytes]:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "worker"], env=self._env,
                                         stdout=log, stderr=subprocess.STDOUT)
        return self.proc

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)  # it stops within its own 8 s shutdown deadline
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_ready(settings: Settings, proc: subprocess.Popen[bytes], timeout_s: float,
               log: Path | None = None) -> None:
    """Until the worker says it is ready; :class:`DemoError` when it exits or takes too long."""
    ready = settings.state_dir / "worker.ready"
    log = log or settings.state_dir / "worker.log"
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if proc.poll() is not None:
            raise DemoError("worker_failed", f"the worker exited with code {proc.returncode} before it was "
                            f"ready: {_last_error(log)} (its log: {log})")
        if time.monotonic() > deadline:
            raise DemoError("worker_not_ready", f"the worker was not ready after {timeout_s:.0f} s; see {log}")
        time.sleep(0.1)


def _last_error(log: Path) -> str:
    """The line that says why: the CLI's one-line error, else the last critical/error log line."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    said = [ln for ln in lines if ln.startswith("ecgscreen: ")]
    if said:
        return said[-1].removeprefix("ecgscreen: ")
    errors = [ln for ln in lines if '"level":"critical"' in ln or '"level":"error"' in ln]
    return (errors or lines or ["empty log"])[-1][:300]


async def _exchange(settings: Settings, feed: Feed, cfg: DemoConfig) -> dict[str, object]:
    from aiokafka import AIOKafkaProducer

    sent_at: dict[str, float] = {}
    async with contextlib.AsyncExitStack() as clients:
        # Each client's stop is registered as it is made: one cut short by a signal is closed too.
        collector = OutputCollector(settings.kafka.bootstrap, settings.kafka.topics)
        clients.push_async_callback(collector.stop)
        await collector.start()
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all",
                                    max_request_size=8 * 1024 * 1024)
        clients.push_async_callback(producer.stop)
        await producer.start()
        for item in feed.items:
            sent_at.setdefault(item.key, time.time())
            await producer.send_and_wait(settings.kafka.topics.events, item.payload, key=item.key.encode())
            await asyncio.sleep(1.0 / cfg.rate_per_s)
        await collector.wait_for(feed.unique_keys, cfg.timeout_s)
    return _account(feed, collector, sent_at)


def _account(feed: Feed, out: OutputCollector, sent_at: dict[str, float]) -> dict[str, object]:
    latencies = [(ts - sent_at[k]) * 1000 for k, ts in out.first_seen_at.items() if k in sent_at]
    counts = Counter(out.outcome_count.values())
    done = [ts for k, ts in out.first_seen_at.items() if k in sent_at]
    span = max(done) - min(sent_at.values()) if done else 0.0
    return {
        "messages_sent": len(feed.items),
        "distinct_events": len(feed.unique_keys),
        "duplicate_deliveries_sent": sum(i.kind == "duplicate" for i in feed.items),
        "verdicts_by_quality": dict(Counter(v.quality.status.value for v in out.verdicts.values())),
        "alerts_by_task": dict(Counter(a.task.id for a in out.alerts.values())),
        "deadletters_by_reason": dict(Counter(d.reason.value for d in out.deadletters.values())),
        "events_with_exactly_one_outcome": counts.get(1, 0),
        "events_with_more_than_one_outcome": sum(n for c, n in counts.items() if c > 1),
        "events_without_outcome": len(feed.unique_keys - set(out.outcome_count)),
        "latency_ms_median": round(float(np.median(latencies)), 1) if latencies else None,
        "latency_ms_p99": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
        # Events with an outcome over the span from the first publish to the last outcome.
        "throughput_ecg_per_s": round(len(done) / span, 1) if span > 0 else None,
        "model_trained": all(v.model.trained for v in out.verdicts.values()),
        "model": next((f"{v.model.name} {v.model.version} sha256:{v.model.sha256[:12]}"
                       for v in out.verdicts.values()), None),
    }


async def _triage_view(settings: Settings) -> dict[str, object]:
    store = TriageStore.from_settings(settings.redis, settings.policy, actor="demo")
    try:
        top: list[Alert] = []
        for site in await store.sites():
            top += await store.worklist(site, limit=5)
        sizes = {site: await store.worklist_size(site) for site in await store.sites()}
        stats = triage_stats(await store.stats_rows())
        return {"triage_open_by_site": sizes, "triage_counters": await store.stats(),
                "triage_top": [_alert_line(a) for a in top[:8]],
                "triage_stats": [dataclasses.asdict(x) for x in stats], "triage_stats_table": stats_lines(stats)}
    finally:
        await store.close()


async def _subscriber_view(settings: Settings) -> dict[str, object]:
    """What the alert topic's second users see: two alerts tailed, the first as FHIR R4."""
    tailed: list[Alert] = []

    async def keep(alert: Alert) -> None:
        tailed.append(alert)

    sub = Subscription(settings.kafka.bootstrap, settings.kafka.topics.alerts, max_alerts=2, idle_timeout_s=5.0)
    await consume(sub, keep)
    return {"tailed_alerts": [alert_line(a) for a in tailed],
            "fhir_example": alert_bundle(tailed[0]) if tailed else None}


def _alert_line(a: Alert) -> str:
    flags = f" [{', '.join(a.flags)}]" if a.flags else ""
    return (f"{a.priority.value:<8} {a.site:<14} {a.task.id:<12} score {a.score:.3f} (thr {a.threshold:.2f}) "
            f"event {a.event_id}{flags}")


def print_summary(s: dict[str, object], say: Callable[[str], None] = print) -> None:
    untrained = "  ** UNTRAINED MODEL: scores and alerts are not clinically meaningful **"
    banner = "" if s.get("model_trained") else untrained
    say("")
    say("=== ecgscreen demo summary ===" + banner)
    for key in ("model", "messages_sent", "distinct_events", "duplicate_deliveries_sent",
                "verdicts_by_quality", "alerts_by_task", "deadletters_by_reason",
                "events_with_exactly_one_outcome", "events_with_more_than_one_outcome",
                "events_without_outcome", "latency_ms_median", "latency_ms_p99", "throughput_ecg_per_s",
                "triage_open_by_site", "triage_counters"):
        say(f"{key:<36} {s.get(key)}")
    say("top of the triage queue:")
    for line in s.get("triage_top", []) or []:  # type: ignore[attr-defined]
        say(f"  {line}")
    say("triage stats (ecgscreen triage stats):")
    for line in s.get("triage_stats_table", []) or []:  # type: ignore[attr-defined]
        say(f"  {line}")
    say("two alerts from the alert topic (ecgscreen alerts tail):")
    for line in s.get("tailed_alerts", []) or ["(no alerts)"]:  # type: ignore[attr-defined]
        say(f"  {line}")
    say(f"the worker's ops endpoints ({s.get('ops_url')}):")
    for key in ("healthz", "readyz"):
        say(f"  /{key}: {s.get(key)}")
    say("  /metrics (excerpt):")
    for line in s.get("metrics", []) or []:  # type: ignore[attr-defined]
        say(f"    {line}")
    if s.get("fhir_example") is not None:
        say("the first as FHIR R4 (ecgscreen alerts export-fhir):")
        say(to_json(s["fhir_example"]).decode())  # type: ignore[arg-type]
    if banner:
        say(banner.strip())
