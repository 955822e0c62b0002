"""Structured logs: an exception is logged with where it happened, never with what it said."""

from __future__ import annotations

import logging
import sys

import orjson

from workers.logs import JsonFormatter

CANARY = "pat-CANARY-4711 sample=123.456"


def _inner(values: list[float]) -> float:
    return values[99]  # IndexError


def _outer() -> None:
    try:
        _inner([0.5])
    except IndexError as exc:
        raise ValueError(CANARY) from exc


def _record() -> logging.LogRecord:
    try:
        _outer()
    except ValueError:
        logger = logging.getLogger("ecgscreen.test")
        return logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "batch failed", (), sys.exc_info())
    raise AssertionError("no exception")


def test_exception_logged_with_frames_but_no_message_text() -> None:
    line = JsonFormatter().format(_record())
    out = orjson.loads(line)
    assert out["exc_type"] == "ValueError"
    cause, outer = out["exc_chain"]
    assert cause["type"] == "IndexError" and outer["type"] == "ValueError"
    assert cause["frames"][-1].endswith(f"in {_inner.__name__}") and "test_logs.py:" in cause["frames"][-1]
    assert any(f.endswith("in _outer") for f in outer["frames"])
    line_no = _inner.__code__.co_firstlineno + 1
    assert f"test_logs.py:{line_no} in _inner" in cause["frames"][-1]
    assert "CANARY" not in line and "123.456" not in line
