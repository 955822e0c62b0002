"""The worker's watchdog: readiness follows Redis and the broker; exit 69 once the broker is gone for long."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ops.stack import free_port
from workers.watchdog import EX_UNAVAILABLE, Watchdog, bootstrap_addresses, reachable, redis_write_probe


def test_bootstrap_addresses() -> None:
    assert bootstrap_addresses("127.0.0.1:9093, kafka-2:19092") == [("127.0.0.1", 9093), ("kafka-2", 19092)]
    assert bootstrap_addresses("kafka") == [("kafka", 9092)]


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


class Dog:
    """A watchdog driven tick by tick, with a fake clock-free exit and a switchable Redis."""

    def __init__(self, bootstrap: str, marker: Path, lost_after_s: float = 3600.0) -> None:
        self.redis_ok = True
        self.exits: list[int] = []
        self.dog = Watchdog(bootstrap, lambda: self.redis_ok, marker, lost_after_s, exit_process=self.exits.append)


def test_ready_marker_follows_redis(tmp_path: Path, listening: int) -> None:
    marker = tmp_path / "worker.ready"
    d = Dog(f"127.0.0.1:{listening}", marker)
    d.dog.tick()
    assert not marker.exists()  # never declares ready before the app has its partitions
    marker.write_text("1\n")  # the app's rebalance hook
    d.dog.tick()
    assert marker.exists()
    d.redis_ok = False
    d.dog.tick()
    assert not marker.exists()
    d.redis_ok = True
    d.dog.tick()
    assert marker.exists()
    assert d.exits == []


def test_a_raising_probe_counts_as_not_writable(tmp_path: Path, listening: int) -> None:
    marker = tmp_path / "worker.ready"
    marker.write_text("1\n")

    def boom() -> bool:
        raise ConnectionError("refused")

    Watchdog(f"127.0.0.1:{listening}", boom, marker, 3600.0, exit_process=lambda code: None).tick()
    assert not marker.exists()


def test_exits_69_once_the_broker_is_gone_past_the_deadline(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    assert not reachable([("127.0.0.1", port)], timeout_s=0.2)
    d = Dog(f"127.0.0.1:{port}", tmp_path / "worker.ready", lost_after_s=0.0)
    d.dog.tick()
    assert d.exits == []  # 0 turns the broker deadline off
    d = Dog(f"127.0.0.1:{port}", tmp_path / "worker.ready", lost_after_s=0.05)
    d.dog.tick()
    assert d.exits == []  # down, but not yet for long
    time.sleep(0.1)
    d.dog.tick()
    assert d.exits == [EX_UNAVAILABLE]


def test_stays_while_any_bootstrap_address_answers(tmp_path: Path, listening: int) -> None:
    d = Dog(f"127.0.0.1:{free_port()},127.0.0.1:{listening}", tmp_path / "worker.ready", lost_after_s=0.01)
    for _ in range(3):
        d.dog.tick()
    assert d.exits == []


def test_redis_write_probe(redis_url: str) -> None:
    assert redis_write_probe(redis_url, "ecg:health:test", {})()
    dead = redis_write_probe(f"redis://127.0.0.1:{free_port()}/0", "ecg:health:test", {}, timeout_s=0.5)
    with pytest.raises(redis.exceptions.ConnectionError):
        dead()
