"""Start-up of the worker process: settings -> ops server -> bundle -> engine -> screener -> faust."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import faust
import numpy as np
from faust.worker import Worker

from models.bundle import load_bundle
from models.engine import EngineOptions, make_engine
from workers.app import EX_TEMPFAIL, BatchRunner, create_app
from workers.health import Health, dependency_checks, start_ops_server
from workers.logs import configure_logging
from workers.metrics import WorkerMetrics, attach
from workers.pipeline import Screener
from workers.prep_pool import PoolConfig, PrepPool
from workers.settings import Settings
from workers.watchdog import BrokerWatchdog

log = logging.getLogger("ecgscreen.worker")


def build_screener(settings: Settings, metrics: WorkerMetrics | None = None) -> Screener:
    bundle = load_bundle(settings.bundle_path)
    options = EngineOptions(threads=settings.torch_threads, **settings.engine_tuning.options())  # type: ignore[arg-type]
    engine = make_engine(bundle, settings.engine, options)
    spec = bundle.config.input
    started = time.perf_counter()
    # Warm up once so the first real batch does not pay for thread pools and allocator growth.
    engine.infer(np.zeros((1, len(spec.leads), spec.n_samples), np.float32))
    log.info("model loaded", extra={
        "bundle": str(settings.bundle_path), "model_sha256": bundle.sha256, "trained": bundle.config.trained,
        "engine": engine.name, "tasks": len(bundle.task_ids),
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1)})
    if not bundle.config.trained:
        log.warning("bundle is UNTRAINED: its scores and alerts mean nothing clinically")
    if metrics is not None:
        ref = bundle.ref
        metrics.set_model(ref.name, ref.version, bundle.sha256, engine.name, bundle.config.trained)
    return Screener(bundle=bundle, engine=engine, policy=settings.policy,
                    explain_max_lag_s=settings.batch.explain_max_lag_s)


def build_pool(settings: Settings, screener: Screener) -> PrepPool | None:
    """The prep pool of the pipelined loop, its processes started; None for the serial loop."""
    if settings.batch.prep_processes == 0:
        return None
    started = time.perf_counter()
    pool = PrepPool(PoolConfig(screener.bundle.config.input, screener.gate, screener.limits,
                               settings.batch.prep_processes, settings.batch.max_batch))
    pool.warm_up()
    log.info("prep pool started", extra={"processes": settings.batch.prep_processes,
                                          "elapsed_ms": round((time.perf_counter() - started) * 1000, 1)})
    return pool


# SIGTERM to exit: within the 10 s a supervisor (Kubernetes, systemd) commonly waits before SIGKILL.
SHUTDOWN_DEADLINE_S = 8.0


def run_worker(settings: Settings, shutdown_deadline_s: float = SHUTDOWN_DEADLINE_S) -> None:
    """Run until SIGTERM/SIGINT; faust commits acked offsets on the way out, within the deadline.

    /healthz answers from the start (alive while the model loads), /readyz once the
    model is loaded and the broker and Redis answer, until shutdown begins.
    """
    configure_logging(settings.log_level)
    # aiokafka logs message keys and values at DEBUG ("Sending (key=... value=...)", raw produce
    # requests): patient refs and alert contents. Found by the fault suite's privacy canary.
    logging.getLogger("aiokafka").setLevel(logging.INFO)
    settings.state_dir.mkdir(parents=True, exist_ok=True)  # faust makes only the last level of its datadir
    (settings.state_dir / "worker.ready").unlink(missing_ok=True)
    metrics = WorkerMetrics()
    health = Health(stall_after_s=settings.ops.stall_after_s, model_loaded=False)
    checks, close = dependency_checks(settings.kafka, settings.redis)
    server = start_ops_server(settings.ops.metrics_host, settings.ops.metrics_port, metrics.registry, health,
                              checks, close)
    try:
        screener = build_screener(settings, metrics)
        app, runner = create_app(settings, screener, metrics, build_pool(settings, screener))
        if settings.broker_lost_exit_s > 0:  # exit 69 when the broker is gone, instead of retrying for ever
            BrokerWatchdog(settings.kafka.bootstrap, settings.broker_lost_exit_s).start()
        health.model_loaded = True
        attach(app, metrics, health, settings.kafka.topics.events)

        def draining() -> None:
            health.draining = True

        worker = _Worker(app, runner, shutdown_deadline_s, on_stop=draining, loglevel=settings.log_level,
                         quiet=True, redirect_stdouts=False)
        worker.execute_from_commandline()
    finally:
        if server is not None:
            server.stop()


class _Worker(Worker):
    """faust's worker with a bounded, safe stop.

    On SIGTERM the batch in flight first becomes durable (or the runner exits 75 without ack),
    then faust stops and commits what was acked. faust's stop is not bounded: with the broker
    gone, aiokafka's consumer ``stop()`` waits for its coordination task, a last offset commit
    and a LeaveGroup request, each limited only by the request timeout (about 70 s measured
    here). A watchdog thread ends that wait at the deadline: exit 75 without committing, which
    loses nothing (uncommitted batches are redelivered, and their recorded outcomes make the
    repeats duplicates).
    """

    def __init__(self, app: faust.App, runner: BatchRunner, deadline_s: float,
                 on_stop: Callable[[], None] = lambda: None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._runner = runner
        self._deadline_s = deadline_s
        self._on_stop = on_stop
        self._stop_requested = False

    def _on_sigterm(self) -> None:
        self._request_stop(signal.SIGTERM)

    def _on_sigint(self) -> None:
        self._request_stop(signal.SIGINT)

    def _request_stop(self, sig: signal.Signals) -> None:
        if self._stop_requested:
            return
        self._stop_requested = True
        log.info("stop requested", extra={"what": sig.name})
        self._runner.stopping = True
        self._on_stop()  # /readyz says draining from now on
        watchdog = threading.Timer(self._deadline_s, _deadline_passed, args=(self._deadline_s,))
        watchdog.daemon = True
        watchdog.start()
        self.add_future(self._stop_when_idle(sig))

    async def _stop_when_idle(self, sig: signal.Signals) -> None:
        await self._runner.wait_idle()
        self._schedule_shutdown(sig)


def _deadline_passed(deadline_s: float) -> None:
    log.critical("shutdown deadline passed; exiting without commit (uncommitted batches are redelivered)",
                 extra={"elapsed_ms": deadline_s * 1000, "exit_code": EX_TEMPFAIL})
    logging.shutdown()
    os._exit(EX_TEMPFAIL)
