"""`ecgscreen worker --processes N`: N worker processes in one consumer group, one per GPU if given.

Each child is a plain ``ecgscreen worker`` with its own state directory (readiness marker,
faust data dir); the group spreads the topic's partitions over them, so N above the partition
count leaves processes idle. A child that exits is restarted after a pause (its partitions
move to the others meanwhile, and their uncommitted batches are redelivered); SIGTERM or
SIGINT stops every child gracefully and waits for them. Under systemd or Kubernetes, run one
``ecgscreen worker`` per unit or pod instead and let the platform do this job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

RESTART_PAUSE_S = 2.0
STOP_TIMEOUT_S = 30.0


def child_env(base: dict[str, str], state_dir: Path, index: int, gpus: Sequence[str]) -> dict[str, str]:
    env = dict(base)
    env["ECGSCREEN_STATE_DIR"] = str(state_dir / f"worker-{index}")
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]  # one process per GPU: each sees only its own
    return env


def supervise(n: int, state_dir: Path, gpus: Sequence[str] = ()) -> int:
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    envs = [child_env(dict(os.environ), state_dir, i, gpus) for i in range(n)]
    children = [_start(env) for env in envs]
    while not stopping:
        time.sleep(0.5)
        for i, child in enumerate(children):
            if child.poll() is not None and not stopping:
                print(f"ecgscreen: worker {i} exited with {child.returncode}; restarting", file=sys.stderr)
                time.sleep(RESTART_PAUSE_S)
                children[i] = _start(envs[i])
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0


def _start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ops.cli", "worker"], env=env)
