"""Data-parallel training of the signal encoder + echo heads from shards: torchrun / PyTorch DDP, checkpoints, resume.

One step = one GLOBAL batch, cut into ``world_size * accumulate`` equal micro-batches; micro-batch
``k`` goes to rank ``k // accumulate``. Each micro-batch's loss is the masked mean BCE over its own
known labels (unknown labels, NaN, are left out), gradients are averaged over all micro-batches
(DDP all-reduce across ranks, accumulation within one). BatchNorm normalises each micro-batch, as
it would on each GPU. Hence one process with ``accumulate=N`` computes the very steps N processes
do, which is what the equivalence test checks (loss curves equal to float tolerance).

The global batch order depends only on (seed, epoch), so a run resumed from a checkpoint (model,
AdamW state, step, loss history; safetensors + JSON, no pickle) takes the same steps as an
uninterrupted one. No augmentation here: every random draw would have to be keyed by step and
micro-batch to survive a resume, and frozen-encoder probes (``echo-probe``) are the default path.
On CUDA the forward runs under bf16 autocast (``amp``); on CPU in float32.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from models.config import EncoderConfig
from models.ecgclip import ECGCLIPSignalModel
from models.train.echo.shard import ShardDataset
from models.train.loop import adamw, lr_at, set_lr

CKPT_MODEL, CKPT_OPTIM, CKPT_STATE = "model.safetensors", "optim.safetensors", "state.json"


@dataclass(frozen=True)
class FitConfig:
    steps: int = 100
    global_batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 10
    seed: int = 0
    accumulate: int = 1
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end)
    workers: int = 0  # DataLoader worker processes per rank
    amp: bool = True  # bf16 autocast on CUDA
    split: str = "train"
    tasks: tuple[str, ...] = ()  # default: every task of the shards
    encoder: EncoderConfig = field(default_factory=EncoderConfig)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Under torchrun, join its process group (torch reads RANK/WORLD_SIZE/MASTER_* itself): NCCL on CUDA,
    gloo on CPU; a single process otherwise."""
    if not dist.is_torchelastic_launched():
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


class MicroBatches(Sampler[list[int]]):
    """This rank's micro-batches (dataset rows), step by step from ``start``: a function of (seed, epoch) only."""

    def __init__(self, rows: npt.NDArray[np.int64], cfg: FitConfig, d: Dist, start: int) -> None:
        self.rows, self.cfg, self.d, self.start = rows, cfg, d, start
        parts = d.world * cfg.accumulate
        if cfg.global_batch % parts or cfg.global_batch // parts < 2:
            raise ValueError(f"global_batch {cfg.global_batch} must split into {parts} micro-batches of >= 2")
        self.micro = cfg.global_batch // parts
        self.per_epoch = rows.size // cfg.global_batch
        if self.per_epoch < 1:
            raise ValueError(f"{rows.size} records cannot fill one global batch of {cfg.global_batch}")

    def __len__(self) -> int:
        return (self.cfg.steps - self.start) * self.cfg.accumulate

    def __iter__(self) -> Iterator[list[int]]:
        order: npt.NDArray[np.int64] | None = None
        for step in range(self.start, self.cfg.steps):
            epoch, pos = divmod(step, self.per_epoch)
            if pos == 0 or order is None:
                gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
                order = self.rows[torch.randperm(self.rows.size, generator=gen).numpy()]
            batch = order[pos * self.cfg.global_batch:(pos + 1) * self.cfg.global_batch]
            for a in range(self.cfg.accumulate):
                k = self.d.rank * self.cfg.accumulate + a
                yield batch[k * self.micro:(k + 1) * self.micro].tolist()


def masked_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    known = ~torch.isnan(y)
    if not known.any():
        return logits.sum() * 0.0  # keeps the graph (and DDP's all-reduce) alive
    return F.binary_cross_entropy_with_logits(logits[known], y[known])


def _autocast(cfg: FitConfig, device: torch.device) -> Any:
    if cfg.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# --- checkpoints -----------------------------------------------------------------------------------


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Atomically (temp dir + rename): a crash mid-write leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / CKPT_MODEL))
    osd = opt.state_dict()
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, s in osd["state"].items() for k, v in s.items()}
    save_file(tensors, str(tmp / CKPT_OPTIM))
    (tmp / CKPT_STATE).write_text(json.dumps({**state, "param_groups": osd["param_groups"]}, indent=1))
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    model.load_state_dict(load_file(str(path / CKPT_MODEL)), strict=True)
    state = json.loads((path / CKPT_STATE).read_text())
    flat = load_file(str(path / CKPT_OPTIM))
    per: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in flat.items():
        i, name = key.split(".", 1)
        per.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": per, "param_groups": state.pop("param_groups")})
    return dict(state)


# --- the loop --------------------------------------------------------------------------------------


@dataclass
class FitResult:
    losses: list[float]
    seconds: float
    step: int
    steps_run: int
    model: ECGCLIPSignalModel


def fit(shards: Path, out: Path, cfg: FitConfig, init: dict[str, torch.Tensor] | None = None,
        resume: bool = False, d: Dist | None = None, stop_at: int | None = None) -> FitResult:
    """Train for ``cfg.steps`` global steps (continuing from ``out/checkpoint`` when ``resume``).

    ``stop_at``: leave after that step with a checkpoint, as a preempted job would (the schedule
    still runs to ``cfg.steps``, so a resumed run continues exactly where this one stopped).
    """
    d = d or init_distributed()
    # One GPU per process, ranks filling each node's GPUs in order (torchrun's layout).
    device = torch.device("cuda", d.rank % torch.cuda.device_count()) if torch.cuda.is_available() \
        else torch.device("cpu")
    ds = ShardDataset(shards, cfg.tasks or None)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = ECGCLIPSignalModel(cfg.encoder, n_tasks=ds.labels.shape[1])
    if init is not None:
        model.load_state_dict(init, strict=False)
    model.to(device).train()
    opt = adamw(model, cfg.lr, cfg.weight_decay)
    state: dict[str, Any] = {"step": 0, "losses": []}
    if resume and (out / "checkpoint").exists():
        state = load_checkpoint(out / "checkpoint", model, opt)
    net: torch.nn.Module = DistributedDataParallel(model) if d.world > 1 else model
    sampler = MicroBatches(ds.index.rows(cfg.split), cfg, d, int(state["step"]))
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=cfg.workers, persistent_workers=False)
    started = time.perf_counter()
    losses: list[float] = list(state["losses"])
    step, micro, acc = int(state["step"]), 0, 0.0
    first = step
    for x, y in loader:
        set_lr(opt, lr_at(step, cfg.steps, cfg.warmup_steps, cfg.lr))
        last = micro == cfg.accumulate - 1
        # Gradients are all-reduced on the last micro-batch of the step only (DDP's no_sync before it).
        with net.no_sync() if isinstance(net, DistributedDataParallel) and not last else _null():
            with _autocast(cfg, device):
                loss = masked_bce(net(x.to(device)).float(), y.to(device))
            (loss / cfg.accumulate).backward()
        acc += float(loss.detach()) / cfg.accumulate
        micro += 1
        if not last:
            continue
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(_mean_over_ranks(acc, d))
        step, micro, acc = step + 1, 0, 0.0
        if stop_at is not None and step >= stop_at:
            break
        if d.main and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save_checkpoint(out / "checkpoint", model, opt, {"step": step, "losses": losses, "config": _cfg(cfg)})
    if d.main:
        save_checkpoint(out / "checkpoint", model, opt, {"step": step, "losses": losses, "config": _cfg(cfg)})
    return FitResult(losses, time.perf_counter() - started, step, step - first, model)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _mean_over_ranks(value: float, d: Dist) -> float:
    if d.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / d.world


def _cfg(cfg: FitConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg)))


def encoder_init(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder and projection of a bundle's model state (heads are new)."""
    return {k: v for k, v in state.items() if k.startswith(("encoder.", "proj."))}


def tasks_of(shards: Path, wanted: Sequence[str]) -> tuple[str, ...]:
    all_tasks = ShardDataset(shards).index.tasks
    missing = [t for t in wanted if t not in all_tasks]
    if missing:
        raise ValueError(f"tasks {missing} are not in the shards ({list(all_tasks)})")
    return tuple(wanted) or all_tasks
