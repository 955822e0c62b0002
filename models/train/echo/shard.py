"""A sharded on-disk training set: model-ready signals as memory-mapped ``.npy`` shards plus an index.

Layout of a shard folder::

    shards.json          format, input spec (the bundle's), tasks, shard sizes, what was skipped and why
    x-00000.npy ...      float32 (n, leads, samples), each prepared by models.preprocess.prepare_record
    index.parquet        one row per record: row, shard, offset, ecg_id, patient_ref, split, one float per task
    (index.csv)          the same when pyarrow is not installed (the ``parquet`` extra)

Signals are stored model-ready (the bundle's resampling, band-pass, crop/pad, normalisation) so
that training and embedding read exactly what the worker will score, and a DataLoader worker does
nothing but slice a memory map: the page cache, not Python, carries the I/O. Labels are floats,
NaN where unknown; a loss masks them out.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import torch
from torch.utils.data import Dataset

from models.config import InputSpec
from models.preprocess import prepare_record
from models.train.echo.link import LinkedEcg
from schemas.codec import DecodeError, decode_event

FORMAT = "ecgscreen.shards/1"
META_FILE = "shards.json"
DEFAULT_SHARD_SIZE = 2048


def _has_pyarrow() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class ShardIndex:
    """The index as columns: row order = global record order."""

    shard: npt.NDArray[np.int64]
    offset: npt.NDArray[np.int64]
    ecg_id: tuple[str, ...]
    patient_ref: tuple[str, ...]
    split: tuple[str, ...]
    labels: npt.NDArray[np.float32]  # (n, tasks), NaN unknown
    tasks: tuple[str, ...]

    def rows(self, split: str | None = None) -> npt.NDArray[np.int64]:
        return np.array([i for i, s in enumerate(self.split) if split is None or s == split], dtype=np.int64)


def write_shards(events: Iterable[Path], linked: Sequence[LinkedEcg], tasks: Sequence[str], spec: InputSpec,
                 out: Path, shard_size: int = DEFAULT_SHARD_SIZE) -> dict[str, Any]:
    """Stream the events, keep the linked ones, prepare and write them in shards; return the summary."""
    wanted = {r.ecg_id: r for r in linked}
    out.mkdir(parents=True, exist_ok=True)
    buf: list[npt.NDArray[np.float32]] = []
    index: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    sizes: list[int] = []
    for ecg_id, x, reason in _prepared(events, wanted, spec):
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        r = wanted.pop(ecg_id)
        index.append({"row": len(index), "shard": len(sizes), "offset": len(buf), "ecg_id": r.ecg_id,
                      "patient_ref": r.patient_ref, "split": r.split,
                      **{t: r.labels.get(t, math.nan) for t in tasks}})
        buf.append(x)
        if len(buf) == shard_size:
            sizes.append(_flush(out, len(sizes), buf))
    if buf:
        sizes.append(_flush(out, len(sizes), buf))
    if wanted:
        skipped["linked_but_no_event"] = len(wanted)
    kind = _write_index(out, index, tasks)
    meta = {"format": FORMAT, "input": spec.to_dict(), "tasks": list(tasks), "shards": sizes, "records": len(index),
            "index": kind, "skipped": skipped}
    (out / META_FILE).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return meta


def _prepared(events: Iterable[Path], wanted: Mapping[str, LinkedEcg],
              spec: InputSpec) -> Iterable[tuple[str, npt.NDArray[np.float32], str | None]]:
    empty = np.zeros(0, np.float32)
    for path in events:
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    ev = decode_event(line.rstrip(b"\r\n"))
                except DecodeError as e:
                    yield "", empty, f"invalid_event:{e.reason}"
                    continue
                if ev.event_id in wanted:
                    x, _ = prepare_record(ev.signal_mv, ev.sampling_rate_hz, ev.leads, spec)
                    yield ev.event_id, x.astype(np.float32), None


def _flush(out: Path, k: int, buf: list[npt.NDArray[np.float32]]) -> int:
    np.save(out / f"x-{k:05d}.npy", np.stack(buf))
    n = len(buf)
    buf.clear()
    return n


def _write_index(out: Path, index: list[dict[str, Any]], tasks: Sequence[str]) -> str:
    columns = ["row", "shard", "offset", "ecg_id", "patient_ref", "split", *tasks]
    if _has_pyarrow():
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = {c: [r[c] for r in index] for c in columns}
        schema = pa.schema([("row", pa.int64()), ("shard", pa.int64()), ("offset", pa.int64()),
                            ("ecg_id", pa.string()), ("patient_ref", pa.string()), ("split", pa.string()),
                            *[(t, pa.float32()) for t in tasks]])
        pq.write_table(pa.Table.from_pydict(data, schema=schema), out / "index.parquet")
        return "index.parquet"
    with open(out / "index.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(index)
    return "index.csv"


def read_meta(folder: Path) -> dict[str, Any]:
    meta = orjson.loads((folder / META_FILE).read_bytes())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder}: not a shard folder of format {FORMAT}")
    return dict(meta)


def read_index(folder: Path) -> ShardIndex:
    meta = read_meta(folder)
    tasks = tuple(meta["tasks"])
    if meta["index"] == "index.parquet":
        import pyarrow.parquet as pq

        cols = pq.read_table(folder / "index.parquet").to_pydict()
    else:
        with open(folder / "index.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        cols = {c: [r[c] for r in rows] for c in (rows[0] if rows else {})}
    labels = np.array([[float(v) if v not in ("", None) else math.nan for v in cols[t]] for t in tasks],
                      dtype=np.float32).T.reshape(-1, len(tasks))
    return ShardIndex(np.asarray(cols["shard"], np.int64), np.asarray(cols["offset"], np.int64),
                      tuple(map(str, cols["ecg_id"])), tuple(map(str, cols["patient_ref"])),
                      tuple(map(str, cols["split"])), labels, tasks)


class ShardDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(x, y) by global row; shards are memory-mapped on first use in each DataLoader worker process."""

    def __init__(self, folder: Path, tasks: Sequence[str] | None = None) -> None:
        self.folder = folder
        self.index = read_index(folder)
        cols = [self.index.tasks.index(t) for t in (tasks or self.index.tasks)]
        self.labels = self.index.labels[:, cols]
        self._maps: dict[int, npt.NDArray[np.float32]] = {}

    def __len__(self) -> int:
        return int(self.index.shard.size)

    def _shard(self, k: int) -> npt.NDArray[np.float32]:
        if k not in self._maps:  # opened lazily: a forked worker must not share the parent's file state
            self._maps[k] = np.load(self.folder / f"x-{k:05d}.npy", mmap_mode="r")
        return self._maps[k]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.array(self._shard(int(self.index.shard[i]))[int(self.index.offset[i])])  # copy out of the map
        return torch.from_numpy(x), torch.from_numpy(self.labels[i].copy())
