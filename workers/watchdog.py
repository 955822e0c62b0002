"""The worker's watchdog: readiness that follows its dependencies, and a clear exit when the broker is gone.

Readiness. The app writes ``worker.ready`` once its partitions are assigned. While
Redis does not take a write (down, refusing, hung, read-only, out of memory) or no
broker address answers, the worker can screen nothing durably, so the watchdog
removes the marker and puts it back once both answer again: a supervisor's probe
sees "not ready" during the fault, not only in the logs.

Broker loss. Without the watchdog the Kafka client retries for ever: the process
looks alive, logs tens of connection errors a second and does nothing (the fault
suite's broker scenario saw this). Once no bootstrap address has accepted a TCP
connection for ``lost_after_s``, the worker logs one critical line and exits with
``EX_UNAVAILABLE`` (69); the supervisor restarts it with its own backoff. Nothing is
lost by exiting: offsets are committed only after what an event produced is
durable, so uncommitted work is redelivered.

A thread, not a task of the event loop, so that it also acts when the loop is stuck.
A frozen broker (connections accepted, nothing answered) is not "lost" here: that
hang is bounded by the durable-write deadline instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from workers.settings import Settings

log = logging.getLogger("ecgscreen.worker")
EX_UNAVAILABLE = 69


def bootstrap_addresses(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` -> [(host, port)]; a missing port is Kafka's 9092."""
    out = []
    for part in bootstrap.split(","):
        host, _, port = part.strip().rpartition(":")
        out.append((host, int(port)) if host else (port, 9092))
    return out


def reachable(addresses: list[tuple[str, int]], timeout_s: float = 1.0) -> bool:
    for host, port in addresses:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout_s):
            return True
    return False


class Watchdog(threading.Thread):
    """Probes the broker (TCP) and Redis (a small write) every ``every_s``; see the module docstring."""

    def __init__(self, bootstrap: str, redis_writable: Callable[[], bool], ready_marker: Path,
                 lost_after_s: float, every_s: float = 1.0,
                 exit_process: Callable[[int], object] = os._exit) -> None:
        super().__init__(name="watchdog", daemon=True)
        self._addresses = bootstrap_addresses(bootstrap)
        self._redis_writable = redis_writable
        self._marker = ready_marker
        self._lost_after_s = lost_after_s
        self._every_s = every_s
        self._exit = exit_process
        self._stopped = threading.Event()
        self._broker_down_since: float | None = None
        self._failing: tuple[str, ...] = ()
        self._assigned = False  # the app has written the marker at least once

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self._every_s):
            self.tick()

    def tick(self) -> None:
        broker = reachable(self._addresses)
        failing = tuple(name for name, ok in (("broker", broker), ("redis", self._safe_redis())) if not ok)
        self._readiness(failing)
        self._broker_deadline(broker)

    def _safe_redis(self) -> bool:
        try:
            return self._redis_writable()
        except Exception:
            return False

    def _readiness(self, failing: tuple[str, ...]) -> None:
        self._assigned = self._assigned or self._marker.exists()
        if failing and not self._failing:
            log.warning("not ready: a dependency does not answer", extra={"what": ",".join(failing)})
        elif self._failing and not failing:
            log.info("dependencies answer again; ready", extra={"what": ",".join(self._failing)})
        self._failing = failing
        if failing:
            self._marker.unlink(missing_ok=True)
        elif self._assigned and not self._marker.exists():
            self._marker.write_text(f"{os.getpid()}\n")

    def _broker_deadline(self, broker_up: bool) -> None:
        now = time.monotonic()
        if broker_up or self._lost_after_s <= 0:
            self._broker_down_since = None
            return
        self._broker_down_since = self._broker_down_since or now
        if now - self._broker_down_since >= self._lost_after_s:
            log.critical("broker unreachable past the deadline; exiting for the supervisor to restart",
                         extra={"what": "broker", "elapsed_ms": round((now - self._broker_down_since) * 1000)})
            logging.shutdown()
            self._exit(EX_UNAVAILABLE)


def redis_write_probe(url: str, key: str, client_kwargs: dict[str, object], timeout_s: float = 2.0,
                      ) -> Callable[[], bool]:
    """A probe that SETs ``key`` (expiring) and says whether Redis took the write."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                  **client_kwargs)

    def probe() -> bool:
        return bool(client.set(key, str(time.time()), px=10_000))

    return probe


def start_watchdog(settings: Settings) -> Watchdog:
    """The watchdog of this worker process, running."""
    key = f"{settings.redis.key_prefix}:health:{socket.gethostname()}:{os.getpid()}"
    probe = redis_write_probe(settings.redis.url, key, settings.redis.client_kwargs())
    dog = Watchdog(settings.kafka.bootstrap, probe, settings.state_dir / "worker.ready", settings.broker_lost_exit_s)
    dog.start()
    return dog
