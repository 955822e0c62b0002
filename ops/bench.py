"""Throughput benchmark: ECG/s against batch size, per engine, for ECGCLIP-R18 and -R34.

    python -m ops.bench [--archs r18 r34] [--inputs 100x1000 500x5000] [--engines ...] [--batches 1 8 32]

Method (so the figures are honest on a shared, 2-core machine): untrained full-width
models (weights do not change the arithmetic); per cell, ``--warmup`` untimed calls (allocator,
oneDNN primitive caches, compilation, graph capture), then ``--reps`` timed calls of
``Engine.infer`` on the same random batch (host-to-device and calibration included), stopping
early once ``--max-seconds`` of timed work is spent; the MEDIAN time per call gives ECG/s,
and the fastest call is printed beside it ("best"): on cores shared with other work the median
carries their load, the best is the nearer estimate of an idle machine. The load average is
printed in the header.

Threads: on cores shared with other busy processes, PyTorch's OpenMP pool oversubscribes them
and every parallel region waits for descheduled threads. Measured here with two training jobs
running: R18, 12x1000, batch 1 took 0.65 s per call with 2 threads and 0.026 s with 1. Use
``--threads`` to match the cores really available (the worker should do the same).
Ratios compare with the eager float32 engine (``torch-cpu``) measured in the same process on
the same cell. GFLOP/ECG is counted by ``torch.utils.flop_counter`` (multiply-add = 2 FLOP).
Nothing here asserts on timings; tests never run it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Cell:
    engine: str
    arch: str
    input: str
    batch: int
    ecg_per_s: float  # from the median call
    best_ecg_per_s: float  # from the fastest call: closest to an idle machine when others share the cores
    reps: int
    ratio: float | None
    gflop_per_ecg: float


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archs", nargs="+", choices=("r18", "r34"), default=["r18", "r34"])
    p.add_argument("--inputs", nargs="+", default=["100x1000", "500x5000"], help="RATExSAMPLES, e.g. 500x5000")
    p.add_argument("--engines", nargs="+", default=None, help="default: every available engine but torch-cpu-compile")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=10.0, help="timed seconds per cell before stopping early")
    p.add_argument("--base-width", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="also one JSON line per cell")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ops.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p.parse_args(argv)


def _bundle(arch: str, spec_text: str, base_width: int, root: Path) -> Any:
    from models.bundle import init_untrained_bundle
    from models.config import InputSpec

    rate, samples = spec_text.lower().split("x")
    spec = InputSpec(sampling_rate_hz=float(rate), n_samples=int(samples))
    return init_untrained_bundle(root / f"{arch}-{spec_text}", arch=arch, input_spec=spec,  # type: ignore[arg-type]
                                 base_width=base_width)


def gflop_per_ecg(bundle: Any) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    spec = bundle.config.input
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        bundle.model(torch.zeros(1, len(spec.leads), spec.n_samples))
    return counter.get_total_flops() / 1e9


def time_cell(engine: Any, x: np.ndarray, warmup: int, reps: int, max_seconds: float) -> list[float]:
    """Seconds of each timed call (at least one), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        engine.infer(x)
    times: list[float] = []
    while len(times) < reps and sum(times) < max_seconds:
        t0 = time.perf_counter()
        engine.infer(x)
        times.append(time.perf_counter() - t0)
    return times


def run(args: argparse.Namespace) -> list[Cell]:
    from models.engine import available_engines, make_engine

    engines = args.engines or [k for k in available_engines() if k != "torch-cpu-compile"]
    engines = ["torch-cpu", *[e for e in engines if e != "torch-cpu"]]  # the baseline first, always
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            for spec_text in args.inputs:
                bundle = _bundle(arch, spec_text, args.base_width, Path(tmp))
                flops = gflop_per_ecg(bundle)
                spec = bundle.config.input
                base: dict[int, float] = {}
                for kind in engines:
                    engine = make_engine(bundle, kind)
                    for b in args.batches:
                        x = np.random.default_rng(b).standard_normal((b, len(spec.leads), spec.n_samples))
                        times = time_cell(engine, x.astype(np.float32), args.warmup, args.reps, args.max_seconds)
                        rate = b / statistics.median(times)
                        if kind == "torch-cpu":
                            base[b] = rate
                        cell = Cell(engine.name, arch, spec_text, b, rate, b / min(times), len(times),
                                    rate / base[b] if b in base else None, flops)
                        cells.append(cell)
                        _progress(cell, args.json)
    return cells


def _progress(cell: Cell, as_json: bool) -> None:
    ratio = "" if cell.ratio is None else f"{cell.ratio:.2f}x"
    print(f"{cell.engine:<20} {cell.arch:<4} {cell.input:<9} batch {cell.batch:>3}  "
          f"{cell.ecg_per_s:9.1f} ECG/s  {ratio:>6}  (median of {cell.reps}, best {cell.best_ecg_per_s:.1f}; "
          f"{cell.gflop_per_ecg:.2f} GFLOP/ECG, {cell.ecg_per_s * cell.gflop_per_ecg:.1f} GFLOP/s)", flush=True)
    if as_json:
        import orjson

        print(orjson.dumps(cell.__dict__).decode(), flush=True)


def bench(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())  # other processes on the cores skew every figure
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load}, CUDA {'available' if torch.cuda.is_available() else 'not available'}", flush=True)
    started = time.perf_counter()
    cells = run(args)
    print(f"{len(cells)} cells in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return bench(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
