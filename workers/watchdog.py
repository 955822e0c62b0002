"""Broker-loss watchdog: a worker whose broker is gone for good exits, clearly, for its supervisor.

Without it the Kafka client retries for ever: the process looks alive, logs tens of
connection errors a second and does nothing (the fault suite's broker scenario saw
this). With it, once no bootstrap address has accepted a TCP connection for
``lost_after_s``, the worker logs one critical line and exits with ``EX_UNAVAILABLE``
(69); the supervisor restarts it with its own backoff. Nothing is lost by exiting:
offsets are committed only after what an event produced is durable, so uncommitted
work is redelivered. (Readiness while a dependency is away is ``/readyz``'s job,
``workers/health.py``.)

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


class BrokerWatchdog(threading.Thread):
    def __init__(self, bootstrap: str, lost_after_s: float, every_s: float = 1.0,
                 exit_process: Callable[[int], object] = os._exit) -> None:
        super().__init__(name="broker-watchdog", daemon=True)
        self._addresses = bootstrap_addresses(bootstrap)
        self._lost_after_s = lost_after_s
        self._every_s = every_s
        self._exit = exit_process
        self._stopped = threading.Event()
        self._down_since: float | None = None

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self._every_s):
            self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        if reachable(self._addresses):
            if self._down_since is not None:
                log.info("broker reachable again")
            self._down_since = None
            return
        if self._down_since is None:
            self._down_since = now
            log.warning("broker unreachable", extra={"what": "broker"})
        if now - self._down_since >= self._lost_after_s:
            log.critical("broker unreachable past the deadline; exiting for the supervisor to restart",
                         extra={"what": "broker", "elapsed_ms": round((now - self._down_since) * 1000)})
            logging.shutdown()
            self._exit(EX_UNAVAILABLE)
