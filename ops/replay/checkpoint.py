"""Where an interrupted replay resumes: items done, counts so far, and the source plan.

Written atomically (temp file + rename) after each batch's outputs are durable, and only then:
so an item is in ``done`` only once what it produced is written. A resumed run skips ``done``
items; one started with other sources, mode or bundle refuses the file rather than skip the
wrong items (``fingerprint``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from schemas.errors import ECGScreenError


class CheckpointMismatch(ECGScreenError):
    def __init__(self, path: Path) -> None:
        super().__init__("checkpoint_mismatch", f"{path} belongs to another replay (sources, mode or bundle differ); "
                         "delete it or pass another --checkpoint")


@dataclass
class Checkpoint:
    fingerprint: str
    done: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    finished: bool = False


def fingerprint(**parts: object) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()[:32]


def load(path: Path | None, fp: str) -> Checkpoint:
    """The checkpoint at ``path`` for this replay, or a fresh one."""
    if path is None or not path.exists():
        return Checkpoint(fp)
    doc = orjson.loads(path.read_bytes())
    if doc.get("fingerprint") != fp:
        raise CheckpointMismatch(path)
    return Checkpoint(fp, int(doc["done"]), dict(doc.get("counts", {})), dict(doc.get("plan", {})),
                      bool(doc.get("finished", False)))


def save(path: Path | None, cp: Checkpoint) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps({"fingerprint": cp.fingerprint, "done": cp.done, "counts": cp.counts,
                              "plan": cp.plan, "finished": cp.finished}, option=orjson.OPT_INDENT_2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
