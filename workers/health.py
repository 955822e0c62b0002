"""The small HTTP server of every long-running process: ``/metrics``, ``/healthz``, ``/readyz``.

It runs in its own thread with its own event loop, so that it answers while the
model loads (alive, not ready) and its probes do not queue behind the worker's
batches; the worker's loop proves it is alive by ticking (:meth:`Health.tick`).

- ``/healthz``: 200 while the process's loop has ticked within ``stall_after_s``
  (or has not started yet: the model is loading); 503 when it is stuck.
- ``/readyz``: 200 when every readiness check passes (broker and Redis reachable,
  model loaded, not draining), else 503; the body says which failed and why.
- ``/metrics``: Prometheus text format of the process's registry.

Checks also run every ``refresh_s`` in the background, so ``ecgscreen_ready`` and
``ecgscreen_dependency_up`` on ``/metrics`` stay current without a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from aiohttp import web
from aiokafka.client import AIOKafkaClient
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from schemas.errors import ConfigError
from workers.kafka_auth import aiokafka_auth
from workers.settings import KafkaSettings, RedisSettings

log = logging.getLogger("ecgscreen.health")
Check = Callable[[], Awaitable[None]]  # raises when the dependency is not usable
CHECK_TIMEOUT_S = 3.0


@dataclass
class Health:
    """What the process tells its probes; set from any thread (plain attribute writes)."""

    stall_after_s: float = 60.0
    model_loaded: bool = True  # processes without a model leave it True
    draining: bool = False
    last_tick: float | None = None  # time.monotonic() of the loop's last tick; None: not started

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        if self.last_tick is None:
            return True, "starting"
        stalled = time.monotonic() - self.last_tick
        if stalled > self.stall_after_s:
            return False, f"event loop has not ticked for {stalled:.0f} s"
        return True, "ok"


@dataclass
class Readiness:
    """Named checks, run concurrently with a timeout each; the state's own conditions first."""

    health: Health
    checks: Mapping[str, Check]
    registry: CollectorRegistry
    _gauges: tuple[Gauge, Gauge] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        up = Gauge("ecgscreen_dependency_up", "1 when the last readiness check of a dependency passed",
                   ["dependency"], registry=self.registry)
        ready = Gauge("ecgscreen_ready", "1 when the process is ready (see /readyz)", registry=self.registry)
        self._gauges = (up, ready)

    async def run(self) -> tuple[bool, dict[str, str]]:
        results = dict(zip(self.checks, await asyncio.gather(*(_run(c) for c in self.checks.values())),
                           strict=True))
        results["model"] = "ok" if self.health.model_loaded else "not loaded yet"
        results["draining"] = "draining: finishing the batch in hand, then leaving the group" \
            if self.health.draining else "ok"
        ok = all(v == "ok" for v in results.values())
        assert self._gauges is not None
        up, ready = self._gauges
        for name in self.checks:
            up.labels(name).set(results[name] == "ok")
        ready.set(ok)
        return ok, results


async def _run(check: Check) -> str:
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_S:.0f} s"
    except Exception as exc:  # any failure is a reason to be not ready, never a crash of the probe
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return "ok"


def kafka_check(kafka: KafkaSettings) -> Check:
    """The brokers answer a metadata request (a fresh connection each time, with the worker's credentials)."""

    async def check() -> None:
        client = AIOKafkaClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=int(CHECK_TIMEOUT_S * 1000),
                                **aiokafka_auth(kafka.security))
        try:
            await client.bootstrap()
        finally:
            await client.close()

    return check


def redis_check(settings: RedisSettings) -> tuple[Check, Callable[[], Awaitable[None]]]:
    """Redis answers PING as this process's ACL user; returns the check and a closer of its client."""
    client = aioredis.Redis.from_url(settings.url, socket_timeout=2.0, socket_connect_timeout=2.0,
                                     **settings.client_kwargs())

    async def check() -> None:
        await client.ping()

    return check, client.aclose


class OpsServer:
    """aiohttp on a daemon thread; ``start`` returns once it listens (or raises why it cannot)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, readiness: Readiness,
                 refresh_s: float = 5.0, on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        self.host, self.port = host, port
        self.registry, self.readiness = registry, readiness
        self._refresh_s, self._on_close = refresh_s, on_close
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ops-http", daemon=True)
        self._runner: web.AppRunner | None = None
        self._refresher: asyncio.Task[None] | None = None

    def start(self) -> int:
        """Listen; returns the port (useful with port 0 in tests)."""
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the bound port when asked for port 0
        self._refresher = asyncio.create_task(self._refresh())
        log.info("ops server listening", extra={"what": f"http://{self.host}:{self.port}"})
        return self.port

    async def _stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._runner is not None:
            await self._runner.cleanup()
        if self._on_close is not None:
            await self._on_close()

    async def _refresh(self) -> None:
        while True:
            await self.readiness.run()
            await asyncio.sleep(self._refresh_s)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, why = self.readiness.health.alive()
        return web.json_response({"alive": ok, "detail": why}, status=200 if ok else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, results = await self.readiness.run()
        return web.json_response({"ready": ok, "checks": results}, status=200 if ok else 503)


def start_ops_server(host: str, port: int, registry: CollectorRegistry, health: Health,
                     checks: Mapping[str, Check], on_close: Callable[[], Awaitable[None]] | None = None,
                     ) -> OpsServer | None:
    """Start the server (None when ``port`` is 0: turned off); a port in use is a configuration error."""
    if port == 0:
        return None
    server = OpsServer(host, port, registry, Readiness(health, checks, registry), on_close=on_close)
    try:
        server.start()
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port} for /metrics, /healthz, /readyz ({err.strerror}); "
                          "set ECGSCREEN_METRICS_PORT (0: off) or --metrics-port") from None
    return server


def dependency_checks(kafka: KafkaSettings, redis: RedisSettings | None,
                      ) -> tuple[dict[str, Check], Callable[[], Awaitable[None]] | None]:
    """The broker check, and Redis's when the process uses Redis; with a closer for the Redis client."""
    checks: dict[str, Check] = {"kafka": kafka_check(kafka)}
    if redis is None:
        return checks, None
    checks["redis"], close = redis_check(redis)
    return checks, close
