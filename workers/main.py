"""Start-up of the worker process: settings -> ops server -> bundle -> engine -> screener -> faust."""

from __future__ import annotations

import logging
import time

import numpy as np

from models.bundle import load_bundle
from models.engine import EngineOptions, make_engine
from workers.app import create_app
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
    return Screener(bundle=bundle, engine=engine, policy=settings.policy)


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


def run_worker(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; faust commits acked offsets on the way out.

    /healthz answers from the start (alive while the model loads), /readyz once the
    model is loaded and the broker and Redis answer, until shutdown begins.
    """
    from faust.worker import Worker

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
        app = create_app(settings, screener, metrics, build_pool(settings, screener))
        if settings.broker_lost_exit_s > 0:  # exit 69 when the broker is gone, instead of retrying for ever
            BrokerWatchdog(settings.kafka.bootstrap, settings.broker_lost_exit_s).start()
        health.model_loaded = True
        attach(app, metrics, health, settings.kafka.topics.events)
        worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
        worker.execute_from_commandline()
    finally:
        if server is not None:
            server.stop()
