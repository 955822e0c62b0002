"""Shards streamed by DataLoader workers; DDP on two CPU processes (gloo) = one process; resume = uninterrupted."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from models.config import EncoderConfig, InputSpec
from models.train.echo.ddp import FitConfig, fit
from models.train.echo.link import LinkedEcg, split_of
from models.train.echo.shard import ShardDataset, read_index, write_shards
from schemas.codec import encode_event
from schemas.messages import Source

ROOT = Path(__file__).resolve().parents[1]
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
SPEC = InputSpec(sampling_rate_hz=100.0, n_samples=250, bandpass_hz=None, normalisation="none")
TINY = EncoderConfig(base_width=4, embed_dim=8)
TASKS = ("echo.lvef_le_45", "echo.lvh_wall_ge_13mm")


def write_test_shards(root: Path, n: int = 72, split: Callable[[int, str], str] | None = None) -> dict[str, Any]:
    """``n`` records whose amplitude plants one label; the other label is unknown for a third of them.
    Events in ``root/ev.jsonl``, shards in ``root/shards``; ``split(i, patient)`` (default: train below 64)."""
    rng = np.random.default_rng(0)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    split = split or (lambda i, patient: "train" if i < 64 else split_of(patient))
    rows = []
    with open(root / "ev.jsonl", "wb") as f:
        for i in range(n):
            amp = float(rng.uniform(0.5, 2.5))
            sig = (rng.normal(0, 0.05, (12, 250)) + amp * np.sin(np.linspace(0, 20, 250))).astype(np.float32)
            patient = f"p{i // 2}"
            f.write(encode_event(f"e{i}", patient, t0 + timedelta(days=i), Source("s"), 100.0, LEADS, sig) + b"\n")
            rows.append(LinkedEcg(f"e{i}", patient, None, None, None, split(i, patient),
                                  {TASKS[0]: float(amp > 1.5), TASKS[1]: math.nan if i % 3 == 0 else float(i % 2)}))
    return write_shards([root / "ev.jsonl"], rows, TASKS, SPEC, root / "shards", shard_size=20)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    meta = write_test_shards(root)
    assert meta["shards"] == [20, 20, 20, 12] and meta["records"] == 72
    return root / "shards"


def test_shards_stream_through_dataloader_workers(shards: Path) -> None:
    ds = ShardDataset(shards)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2)
    xs = torch.cat([x for x, _ in loader])
    assert xs.shape == (72, 12, 250)
    np.testing.assert_array_equal(xs[25].numpy(), np.load(shards / "x-00001.npy")[5])
    index = read_index(shards)
    assert index.ecg_id[25] == "e25" and math.isnan(float(ds[0][1][1])) and float(ds[1][1][1]) == 1.0


CFG = FitConfig(steps=6, global_batch=8, lr=3e-3, warmup_steps=2, seed=1, encoder=TINY, tasks=TASKS)


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(shards: Path, tmp_path: Path) -> None:
    whole = fit(shards, tmp_path / "a", CFG)
    part = fit(shards, tmp_path / "b", CFG, stop_at=3)
    assert part.step == 3 and len(part.losses) == 3
    resumed = fit(shards, tmp_path / "b", CFG, resume=True)
    assert resumed.step == 6 and resumed.steps_run == 3
    assert resumed.losses == whole.losses
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def _fit_cli(shards: Path, out: Path, procs: int, accumulate: int) -> dict[str, object]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] \
        if procs > 1 else [sys.executable]
    cmd = [*launch, "-m", "ops.cli", "train", "fit", str(shards), "--out", str(out), "--base-width", "4",
           "--embed-dim", "8", "--tasks", *TASKS, "--steps", "6", "--global-batch", "8", "--lr", "3e-3",
           "--warmup-steps", "2", "--seed", "1", "--accumulate", str(accumulate), "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return dict(orjson.loads((out / "fit.json").read_bytes()))


def test_ddp_on_two_cpu_processes_gives_the_one_process_loss_curve(shards: Path, tmp_path: Path) -> None:
    # one process, the same two micro-batches per step in turn (in this process: no second start-up)
    with torch.random.fork_rng(devices=[]):
        one = fit(shards, tmp_path / "one", replace(CFG, accumulate=2, workers=1)).losses
    two = _fit_cli(shards, tmp_path / "two", procs=2, accumulate=1)  # torchrun: one micro-batch per process, gloo
    assert two["world_size"] == 2
    np.testing.assert_allclose(two["losses"], one, rtol=1e-5, atol=1e-6)
    assert len(one) == 6 and one[-1] < one[0]
