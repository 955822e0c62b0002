"""Structured logs: one JSON object per line.

Only whitelisted context fields are written, so a waveform array or a patient
identifier passed by mistake in ``extra`` never reaches the log; events are
named by their event id alone.
"""

from __future__ import annotations

import logging
import sys
import traceback
from datetime import UTC, datetime

import orjson

CONTEXT_FIELDS = (
    "event_id", "alert_id", "stage", "error", "batch_size", "fresh", "duplicates", "conflicts",
    "verdicts", "deadletters", "alerts", "new_triage", "elapsed_ms", "attempt", "what", "engine",
    "bundle", "model_sha256", "trained", "topic", "partition", "offset", "reason", "tasks", "exit_code",
    "decode_ms", "gate_ms", "preprocess_ms", "infer_ms", "explain_ms", "persist_ms", "processes",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if name in record.__dict__:
                out[name] = record.__dict__[name]
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc_chain"] = exception_chain(record.exc_info[1])
        return orjson.dumps(out, default=str).decode()


def exception_chain(exc: BaseException | None) -> list[dict[str, object]]:
    """Each exception of the chain (``raise ... from`` and implicit context), root cause first,
    as its type and its frames (``file:line in function``, innermost last).

    Never the message or local values: exception text from numeric or parsing code can
    quote a waveform sample or a patient field, so only where it happened is logged.
    """
    chain: list[dict[str, object]] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        frames = [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)]
        chain.insert(0, {"type": type(exc).__name__, "frames": frames})
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return chain


def configure_logging(level: str) -> None:
    """Send the project's loggers to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("ecgscreen")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
