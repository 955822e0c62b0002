"""Plumbing shared by the training loops: determinism, batches, LR schedule, optimiser, logs, progress."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import orjson
import torch
from torch import nn


@contextlib.contextmanager
def deterministic(seed: int, threads: int) -> Iterator[torch.Generator]:
    """Seed torch, fix the thread count, require deterministic kernels; restore all on exit.

    Yields the generator the loop draws batches and augmentations from. The thread count is
    part of the recipe: a float reduction split over another number of threads rounds differently.
    """
    prev = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield torch.Generator().manual_seed(seed)
    finally:
        torch.use_deterministic_algorithms(prev[0])
        torch.set_num_threads(prev[1])


def epoch_batches(n: int, batch_size: int, gen: torch.Generator) -> list[npt.NDArray[np.int64]]:
    """One shuffled pass in full batches; the ragged tail is dropped (a batch of 1 breaks BatchNorm)."""
    order = torch.randperm(n, generator=gen).numpy().astype(np.int64)
    size = min(batch_size, n)
    return [order[i : i + size] for i in range(0, n - size + 1, size)]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // min(batch_size, n))


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """Weight decay on matrices and conv kernels only: decaying norms, biases or the CLIP
    temperature would pull them towards 0 for no regularising benefit."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


class JsonlLog:
    """Append-only JSON lines (one per event), flushed per line so a crash keeps what was logged."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")

    def write(self, **record: Any) -> None:
        if self.path is None:
            return
        with open(self.path, "ab") as f:
            f.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, one line per epoch otherwise)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.label, self.total, self.quiet = label, total, quiet
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()
        self.tty = self.stream.isatty()

    def step(self, done: int, note: str) -> None:
        if self.quiet or not self.tty:
            return
        self.stream.write("\r" + self._line(done, note))
        self.stream.flush()

    def epoch(self, done: int, note: str) -> None:
        if not self.quiet:
            self.stream.write(("\r" if self.tty else "") + self._line(done, note) + "\n")
            self.stream.flush()

    def _line(self, done: int, note: str) -> str:
        frac = done / max(1, self.total)
        bar = "#" * round(20 * frac)
        elapsed = time.perf_counter() - self.started
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        return f"[{self.label}] |{bar:<20}| {done}/{self.total} {note} {elapsed:.0f}s (eta {eta:.0f}s)"

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started
