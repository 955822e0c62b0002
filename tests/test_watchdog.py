"""The broker-loss watchdog: exit 69 once no bootstrap address answers for long enough, never before."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from ops.stack import free_port
from workers.watchdog import EX_UNAVAILABLE, BrokerWatchdog, bootstrap_addresses, reachable


def test_bootstrap_addresses() -> None:
    assert bootstrap_addresses("127.0.0.1:9093, kafka-2:19092") == [("127.0.0.1", 9093), ("kafka-2", 19092)]
    assert bootstrap_addresses("kafka") == [("kafka", 9092)]


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


def _dog(bootstrap: str, lost_after_s: float) -> tuple[BrokerWatchdog, list[int]]:
    exits: list[int] = []
    return BrokerWatchdog(bootstrap, lost_after_s, exit_process=exits.append), exits


def test_exits_69_once_the_broker_is_gone_past_the_deadline() -> None:
    port = free_port()  # nothing listens there
    assert not reachable([("127.0.0.1", port)], timeout_s=0.2)
    dog, exits = _dog(f"127.0.0.1:{port}", lost_after_s=0.05)
    dog.tick()
    assert exits == []  # down, but not yet for long
    time.sleep(0.1)
    dog.tick()
    assert exits == [EX_UNAVAILABLE]


def test_stays_while_any_bootstrap_address_answers(listening: int) -> None:
    dog, exits = _dog(f"127.0.0.1:{free_port()},127.0.0.1:{listening}", lost_after_s=0.0)
    for _ in range(3):
        dog.tick()
    assert exits == []


def test_a_broker_that_comes_back_resets_the_clock(listening: int) -> None:
    dog, exits = _dog(f"127.0.0.1:{listening}", lost_after_s=0.05)
    dog._down_since = time.monotonic() - 10  # it was down a while ago
    dog.tick()
    assert exits == [] and dog._down_since is None
