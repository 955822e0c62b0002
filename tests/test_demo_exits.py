"""`ecgscreen demo` stops everything it started on every way out, and says why in one line."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops.stack import _terminate, stack_down

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def _demo(tmp_path: Path, bundle: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECGSCREEN_")}
    env.update({"ECGSCREEN_STATE_DIR": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1"})
    return subprocess.Popen([sys.executable, "-m", "ops.cli", "demo", "--records", "8", "--bundle", str(bundle)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout_s: float = 240) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"{pattern!r} never printed: {lines}")


def _ports(lines: list[str]) -> tuple[int, int]:
    m = re.search(r"stack: broker 127\.0\.0\.1:(\d+), redis redis://127\.0\.0\.1:(\d+)", "".join(lines))
    assert m, lines
    return int(m[1]), int(m[2])


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _workers_of(state: Path) -> list[int]:
    """Worker processes started for this state dir (their environment names it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if b"ops.cli\x00worker" in (proc / "cmdline").read_bytes() and \
                    str(state).encode() in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
    return pids


def _finish(proc: subprocess.Popen[str], timeout_s: float = 60) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, err


def _cleanup(proc: subprocess.Popen[str], state: Path) -> None:
    """After a failure: stop what the demo left (the very bug under test), so it leaks nothing."""
    proc.kill()
    proc.wait()
    stack_down(state / "demo" / "stack")
    for pid in _workers_of(state):
        _terminate(pid)


def test_unloadable_bundle_stops_the_stack_and_says_why_in_one_line(tmp_path: Path) -> None:
    bundle = tmp_path / "broken"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{not json")
    proc = _demo(tmp_path, bundle)
    try:
        ports = _ports(_read_until(proc, r"^stack: "))
        rc, err = _finish(proc, 240)
    finally:
        _cleanup(proc, tmp_path / "state")
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ecgscreen: worker_failed: "), err
    assert "bundle" in lines[0] and "Traceback" not in err
    assert not any(_listening(p) for p in ports)
    assert _workers_of(tmp_path / "state") == []


def test_sigterm_stops_broker_redis_and_worker(tmp_path: Path) -> None:
    proc = _demo(tmp_path, tmp_path / "untrained")  # made (untrained) on first use
    try:
        lines = _read_until(proc, r"^worker: ready")
        ports = _ports(lines)
        assert all(_listening(p) for p in ports) and _workers_of(tmp_path / "state")
        proc.send_signal(signal.SIGTERM)
        rc, err = _finish(proc, 60)
    finally:
        _cleanup(proc, tmp_path / "state")
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ecgscreen: demo_interrupted: stopped by SIGTERM"), err
    assert not any(_listening(p) for p in ports)
    assert _workers_of(tmp_path / "state") == []
