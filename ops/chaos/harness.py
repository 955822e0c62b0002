"""The world one scenario runs in: its broker, its Redis, its worker processes, and the accounting.

A :class:`Rig` owns every process it starts and stops them all in ``close`` (workers
first, then the servers), whatever happened before. Workers run as ``ecgscreen worker``
subprocesses in their own sessions, each with its own state dir and readiness marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ops.stack import StackInfo, _terminate, free_port, stack_down, stack_up, start_broker, start_redis
from ops.stack import create_topics as create
from workers.settings import Settings, Topics, load_settings

GROUP = "ecgscreen-chaos"
# Small batches and a short commit interval: more batch boundaries, commits and
# in-flight work for a fault to land in; a short session so a killed member is evicted fast.
WORKER_ENV = {
    "ECGSCREEN_GROUP_ID": GROUP, "ECGSCREEN_MAX_BATCH": "16", "ECGSCREEN_MAX_WAIT_S": "0.05",
    "ECGSCREEN_SESSION_TIMEOUT_S": "6", "ECGSCREEN_COMMIT_INTERVAL_S": "0.5", "ECGSCREEN_TORCH_THREADS": "1",
    "ECGSCREEN_LOG_LEVEL": "INFO", "ECGSCREEN_DURABLE_WRITE_TIMEOUT_S": "60",
}


@dataclass
class Worker:
    """One ``ecgscreen worker`` process."""

    name: str
    proc: subprocess.Popen[bytes]
    state_dir: Path
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    ops_port: int | None = None  # its /metrics, /healthz, /readyz server, when spawned with one

    @property
    def ready_marker(self) -> Path:
        return self.state_dir / "worker.ready"

    def is_ready(self) -> bool:
        return self.ready_marker.exists()

    async def readyz(self) -> bool:
        """What the worker's ``/readyz`` says now (the readiness a supervisor probes)."""
        if self.ops_port is None:
            raise RuntimeError(f"worker {self.name} runs without its ops server")
        url = f"http://127.0.0.1:{self.ops_port}/readyz"

        def get() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        return await asyncio.to_thread(get)

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Seconds from spawn until the worker has its partitions; raises if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.name} not ready after {timeout_s:.0f} s; see {self.log_path}")
            await asyncio.sleep(0.05)
        return time.monotonic() - self.started

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    async def wait_exit(self, timeout_s: float) -> int | None:
        """The exit code, or None if it still runs after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.proc.poll()

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> tuple[int | None, float]:
        """Send ``sig``; (exit code, seconds to exit). A worker still running after ``timeout_s``
        is killed, and the code returned is None: it did not exit by itself."""
        t0 = time.monotonic()
        self.send(sig)
        code = await self.wait_exit(timeout_s)
        took = time.monotonic() - t0
        if code is None:
            self.kill_now()
        return code, took

    def kill_now(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Rig:
    """Broker + Redis + workers for one scenario; ``close`` stops all of them."""

    def __init__(self, root: Path, bundle: Path, partitions: int = 3, worker_env: dict[str, str] | None = None):
        self.root = root
        self.bundle = bundle
        self.partitions = partitions
        self.topics = Topics()
        self.worker_env = {**WORKER_ENV, **(worker_env or {})}
        self.workers: list[Worker] = []
        self.stack: StackInfo | None = None
        self._extra_pids: list[int] = []  # servers restarted by a scenario

    # --- servers -----------------------------------------------------------------------------

    def open(self) -> StackInfo:
        self.stack = stack_up(self.root / "stack", self.topics.all(), self.partitions)
        return self.stack

    @property
    def info(self) -> StackInfo:
        if self.stack is None:
            raise RuntimeError("the rig is not open")
        return self.stack

    def settings(self, **env: str) -> Settings:
        """Settings of a client of this rig (collector, triage reads)."""
        return load_settings({**self.base_env(), **env})

    def base_env(self) -> dict[str, str]:
        return {**self.info.env(), **self.worker_env, "ECGSCREEN_BUNDLE": str(self.bundle)}

    def kill_broker(self) -> None:
        """SIGKILL the broker: with memory storage, every topic and offset is gone."""
        _kill(self.info.kafka_pid)

    async def restart_broker(self, create_topics: bool = True) -> None:
        """An empty broker on the same port, like a supervisor restarting Tansu."""
        proc = await asyncio.to_thread(start_broker, self.info.kafka_port, self.root / "stack")
        self._replace_pid("kafka_pid", proc.pid)
        if create_topics:
            await create(self.info.kafka_bootstrap, self.topics.all(), self.partitions)

    def freeze(self, which: str, frozen: bool) -> None:
        """SIGSTOP/SIGCONT the broker or Redis: connections stay open and nothing answers."""
        pid = self.info.kafka_pid if which == "broker" else self.info.redis_pid
        os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def kill_redis(self) -> None:
        _kill(self.info.redis_pid)

    async def restart_redis(self) -> None:
        """Redis again on the same port and data dir: it reloads its append-only file."""
        proc = await asyncio.to_thread(start_redis, self.info.redis_port, self.root / "stack")
        self._replace_pid("redis_pid", proc.pid)

    def _replace_pid(self, name: str, pid: int) -> None:
        from dataclasses import replace

        self._extra_pids.append(pid)
        self.stack = replace(self.info, kafka_pid=pid) if name == "kafka_pid" else replace(self.info, redis_pid=pid)

    # --- workers -----------------------------------------------------------------------------

    def spawn(self, name: str, ops: bool = False, **env: str) -> Worker:
        state = self.root / "workers" / name
        state.mkdir(parents=True, exist_ok=True)
        (state / "worker.ready").unlink(missing_ok=True)
        full = {k: v for k, v in os.environ.items() if not k.startswith("ECGSCREEN_")}
        port = free_port() if ops else None
        if port is not None:
            env = {**env, "ECGSCREEN_METRICS_PORT": str(port)}
        full.update({**self.base_env(), "ECGSCREEN_STATE_DIR": str(state), **env})
        log_path = self.root / f"{name}.log"
        with open(log_path, "ab") as log:
            # Own session: a Ctrl-C at the terminal reaches the suite, which stops workers in order.
            proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "worker"], env=full, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, cwd=_repo_root())
        worker = Worker(name, proc, state, log_path, ops_port=port)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            if worker.alive():
                worker.send(signal.SIGCONT)
                worker.send(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            worker.kill_now()
        if self.stack is not None:
            for pid in (self.info.kafka_pid, self.info.redis_pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            stack_down(self.root / "stack")
            for pid in self._extra_pids:
                _terminate(pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def log_lines(workers: Sequence[Worker]) -> list[str]:
    return [line for w in workers for line in w.log_text().splitlines()]


def count_reasons(reasons: Sequence[str]) -> dict[str, int]:
    return dict(sorted(Counter(reasons).items()))


