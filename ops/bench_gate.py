"""Throughput of the vectorised signal-quality gate against the naive neurokit2 loop.

    python -m ops.bench_gate [--data-dir ../shared/data] [--batch 64] [--reps 7] [--naive-records 8]

Method: 500 Hz x 10 s x 12 leads. Input: the first ``--batch`` PTB-XL records of the 500 Hz
npz when ``--data-dir`` has it, else simulated ECGs (neurokit2, then Einthoven limb leads).
Gate: ``gate_batch`` on the whole batch, one warm-up call, then ``--reps`` timed calls;
ECG/s = batch / median time per call. Naive loop: for each record and each lead,
``nk.ecg_clean`` then ``nk.ecg_quality(method="zhao2018")`` - what a per-record worker
would do - timed per record over ``--naive-records`` records after one warm-up record;
ECG/s = 1 / median time per record. Both run in this process, one after the other, on one
thread each (scipy.fft's default), so the ratio is like for like. Wall-clock times on a
shared machine: rerun for a spread. Nothing asserts on timings; tests never run this.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
FS = 500
SAMPLES = 5000


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ops.bench_gate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--naive-records", type=int, default=8)
    return p.parse_args(argv)


def load_batch(data_dir: Path, batch: int) -> tuple[np.ndarray, str]:
    """(batch, 12, 5000) float32 mV and where it came from."""
    npz = data_dir / "ptbxl_folds1-8_500hz.npz"
    if npz.exists():
        with np.load(npz) as z:
            x = z["signals"][:batch].transpose(0, 2, 1).astype(np.float32) / np.float32(1000.0)
        if x.shape[0] == batch:
            return np.ascontiguousarray(x), f"PTB-XL {npz}"
    from ops.feed import simulated_records

    recs = [r.signal_mv for r in simulated_records(batch, fs=FS, seed=0)]
    return np.stack(recs).astype(np.float32), "simulated (neurokit2)"


def time_gate(x: np.ndarray, reps: int) -> list[float]:
    from workers.gate import gate_batch

    gate_batch(x, FS, LEADS)  # warm-up: allocator, FFT plans
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        gate_batch(x, FS, LEADS)
        times.append(time.perf_counter() - start)
    return times


def naive_record(record: np.ndarray) -> list[str]:
    import neurokit2 as nk

    out = []
    for lead in record:
        try:
            cleaned = nk.ecg_clean(lead.astype(np.float64), sampling_rate=FS)
            out.append(str(nk.ecg_quality(cleaned, sampling_rate=FS, method="zhao2018")))
        except Exception:  # the naive worker would have to survive unreadable leads too
            out.append("error")
    return out


def time_naive(x: np.ndarray, records: int) -> list[float]:
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive_record(x[0])  # warm-up: imports, numba/scipy caches
        for k in range(min(records, x.shape[0])):
            start = time.perf_counter()
            naive_record(x[k])
            times.append(time.perf_counter() - start)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    x, source = load_batch(args.data_dir, args.batch)
    gate_t = time_gate(x, args.reps)
    naive_t = time_naive(x, args.naive_records)
    gate_rate = x.shape[0] / statistics.median(gate_t)
    naive_rate = 1.0 / statistics.median(naive_t)
    print(f"input: {source}, {x.shape[0]} x {x.shape[1]} leads x {x.shape[2]} samples at {FS} Hz")
    print(f"gate  (gate_batch, batch {x.shape[0]}, {len(gate_t)} reps): median "
          f"{1000 * statistics.median(gate_t):.1f} ms/batch = {gate_rate:.0f} ECG/s "
          f"(min {x.shape[0] / max(gate_t):.0f}, max {x.shape[0] / min(gate_t):.0f})")
    print(f"naive (nk.ecg_clean + nk.ecg_quality zhao2018 per lead, {len(naive_t)} records): median "
          f"{1000 * statistics.median(naive_t):.1f} ms/record = {naive_rate:.1f} ECG/s")
    print(f"ratio gate / naive: {gate_rate / naive_rate:.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
