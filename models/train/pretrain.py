"""Contrastive (CLIP) pre-training of the signal and text towers on (ECG, report) pairs.

Text of a pair: the record's free-text report, or (with probability ``scp_text_prob``) its SCP
statement descriptions joined in report order ("normal ECG. sinus rhythm."). The second gives the
tower a canonical English phrasing of what the mixed-language reports say; both exist for every
training record. Pairs with the same normalised text share the InfoNCE target (issue #4's
multi-positive ``clip_loss``): hundreds of records say "sinusrhythmus normales ekg".

Only the training folds are used; validation records are looked at only to log a validation
contrastive loss and a zero-shot AUROC every ``eval_every`` epochs (monitoring, never selection:
the last epoch is the result). The checkpoint is safetensors + JSON, never a pickle.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from models.catalog import PROMPTS
from models.config import ClipConfig, EncoderConfig, TextEncoderConfig
from models.ecgclip import ECGCLIP, clip_loss
from models.text import TransformerTextEncoder
from models.tokenizer import BPETokenizer, normalize_report, train_bpe
from models.train.augment import augment
from models.train.config import TrainConfig
from models.train.data import DataError, PTBXLSet, Split, Statement
from models.train.loop import JsonlLog, Progress, adamw, deterministic, epoch_batches, lr_at, set_lr, steps_per_epoch
from models.train.metrics import auroc
from models.train.tasks import SUPERCLASS_TASKS, SUPERCLASSES, labels_of

CHECKPOINT_WEIGHTS = "clip.safetensors"
CHECKPOINT_META = "checkpoint.json"
CHECKPOINT_TOKENIZER = "tokenizer.json"


@dataclass(frozen=True)
class PretrainResult:
    clip: ECGCLIP
    tokenizer: BPETokenizer
    history: list[dict[str, Any]]
    seconds: float


# --- texts ---------------------------------------------------------------------------------------


def scp_text(codes: Sequence[str], statements: Mapping[str, Statement]) -> str:
    """The record's SCP statements as a report-style sentence list (unknown codes spelt as codes)."""
    parts = [statements[c].description if c in statements else c for c in codes]
    return ". ".join(p.lower() for p in parts) + "." if parts else ""


def pair_texts(ds: PTBXLSet, statements: Mapping[str, Statement]) -> tuple[list[str], list[str]]:
    """(reports, SCP texts) per record; an empty report falls back to the SCP text."""
    scps = [scp_text(c, statements) for c in ds.codes]
    reports = [r if r.strip() else s for r, s in zip(ds.reports, scps, strict=True)]
    return reports, scps


def pick_texts(reports: Sequence[str], scps: Sequence[str], idx: np.ndarray, prob: float,
               gen: torch.Generator) -> list[str]:
    use_scp = torch.rand(len(idx), generator=gen) < prob
    return [scps[i] if u and scps[i] else reports[i] for i, u in zip(idx, use_scp.tolist(), strict=True)]


def group_ids(texts: Sequence[str]) -> torch.Tensor:
    """Same normalised text -> same group id (positives of each other in the multi-positive loss)."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(normalize_report(t), len(ids)) for t in texts], dtype=torch.long)


# --- model -----------------------------------------------------------------------------------------


def build_tokenizer(texts: Sequence[str], cfg: TrainConfig) -> BPETokenizer:
    return train_bpe(texts, cfg.pretrain.text.vocab_size, cfg.pretrain.bpe_min_frequency)


def build_clip(encoder: EncoderConfig, text: TextEncoderConfig, clip: ClipConfig, tokenizer: BPETokenizer) -> ECGCLIP:
    """ECGCLIP whose text config's vocabulary is the trained tokenizer's actual size."""
    text = dataclasses.replace(text, vocab_size=tokenizer.vocab_size)
    return ECGCLIP(encoder, TransformerTextEncoder(text, tokenizer), clip)


# --- training ----------------------------------------------------------------------------------------


def pretrain(cfg: TrainConfig, ds: PTBXLSet, split: Split, statements: Mapping[str, Statement],
             out_dir: Path | None = None, quiet: bool = False) -> PretrainResult:
    """Train ECGCLIP on the training split; write checkpoint + ``pretrain.jsonl`` to ``out_dir``."""
    train, val = ds.subset(split.train), ds.subset(split.val)
    reports, scps = pair_texts(train, statements)
    log = JsonlLog(out_dir / "pretrain.jsonl" if out_dir else None)
    started = time.perf_counter()
    with deterministic(cfg.seed, cfg.threads) as gen:
        tokenizer = build_tokenizer([*reports, *scps], cfg)
        clip = build_clip(cfg.encoder, cfg.pretrain.text, cfg.pretrain.clip, tokenizer)
        history = _fit(clip, cfg, train, (val, pair_texts(val, statements)[0]), (reports, scps), gen, log, quiet)
    result = PretrainResult(clip.eval(), tokenizer, history, time.perf_counter() - started)
    log.write(event="done", seconds=round(result.seconds, 1))
    if out_dir is not None:
        save_checkpoint(out_dir, result.clip, cfg)
    return result


def _fit(clip: ECGCLIP, cfg: TrainConfig, train: PTBXLSet, val: tuple[PTBXLSet, list[str]],
         texts: tuple[list[str], list[str]], gen: torch.Generator, log: JsonlLog, quiet: bool) -> list[dict[str, Any]]:
    """The epoch loop; ``val`` = (validation records, their reports), used for monitoring only."""
    o = cfg.pretrain.optim
    per_epoch = steps_per_epoch(len(train), o.batch_size)
    total, warmup = o.epochs * per_epoch, round(o.warmup_epochs * per_epoch)
    opt = adamw(clip, o.lr, o.weight_decay)
    progress = Progress("pretrain", o.epochs, quiet=quiet)
    history: list[dict[str, Any]] = []
    log.write(event="start", n_train=len(train), n_val=len(val[0]), steps=total, config=cfg.to_dict())
    for epoch in range(1, o.epochs + 1):
        clip.train()
        losses = []
        for k, idx in enumerate(epoch_batches(len(train), o.batch_size, gen)):
            step = (epoch - 1) * per_epoch + k
            set_lr(opt, lr_at(step, total, warmup, o.lr))
            losses.append(_step(clip, opt, train, texts, idx, cfg, gen))
            progress.step(epoch - 1, f"loss {np.mean(losses):.3f}")
        row = {"event": "epoch", "epoch": epoch, "step": epoch * per_epoch, "loss": float(np.mean(losses)),
               "lr": opt.param_groups[0]["lr"], "scale": float(clip.scale().detach()),
               "seconds": round(progress.elapsed, 1)}
        if epoch % cfg.pretrain.eval_every == 0 or epoch == o.epochs:
            row.update(validate(clip, *val))
        log.write(**row)
        history.append(row)
        progress.epoch(epoch, _note(row))
    return history


def batch_loss(clip: ECGCLIP, x: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
    """``clip.loss`` with each distinct (normalised) text encoded once: a batch repeats a few stock
    reports many times, and the text tower is half the cost of a step. Exact when text dropout is 0."""
    groups = group_ids(texts)
    first: dict[int, str] = {}
    for g, t in zip(groups.tolist(), texts, strict=True):
        first.setdefault(g, t)
    text_emb = clip.encode_text([first[g] for g in range(len(first))])[groups]
    return clip_loss(clip.encode_signal(x), text_emb, clip.scale(), groups)


def _step(clip: ECGCLIP, opt: torch.optim.Optimizer, train: PTBXLSet, texts: tuple[list[str], list[str]],
          idx: np.ndarray, cfg: TrainConfig, gen: torch.Generator) -> float:
    batch_texts = pick_texts(*texts, idx, cfg.pretrain.scp_text_prob, gen)
    x = augment(torch.from_numpy(train.x[idx]), cfg.augment, cfg.data.sampling_rate_hz, gen)
    loss = batch_loss(clip, x, batch_texts)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _note(row: dict[str, Any]) -> str:
    note = f"loss {row['loss']:.3f} scale {row['scale']:.1f}"
    if "val_loss" in row:
        note += f" | val loss {row['val_loss']:.3f} zero-shot macro AUROC {row['zero_shot_macro_auroc']:.3f}"
    return note


@torch.no_grad()
def validate(clip: ECGCLIP, val: PTBXLSet, texts: list[str]) -> dict[str, Any]:
    """Validation contrastive loss and zero-shot superclass AUROC (cos to prompt minus cos to its foil)."""
    was = clip.training
    clip.eval()
    z = torch.cat([clip.encode_signal(torch.from_numpy(val.x[i : i + 128])) for i in range(0, len(val), 128)])
    t = clip.encode_text(texts)
    logits = clip.scale() * z @ t.t()
    same = (group_ids(texts)[:, None] == group_ids(texts)[None, :]).double()
    soft = same / same.sum(1, keepdim=True)
    loss = float(-(soft * F.log_softmax(logits.double(), dim=1)).sum(1).mean())
    zs = {task: _zero_shot(clip, z, val, task, code) for task, code in zip(SUPERCLASS_TASKS, SUPERCLASSES,
                                                                           strict=True)}
    clip.train(was)
    return {"val_loss": loss, "zero_shot_auroc": zs, "zero_shot_macro_auroc": float(np.nanmean(list(zs.values())))}


def _zero_shot(clip: ECGCLIP, z: torch.Tensor, val: PTBXLSet, task: str, code: str) -> float:
    pos, neg = PROMPTS[task]
    prompts = clip.encode_text([pos, neg])
    score = (z @ (prompts[0] - prompts[1])).numpy()
    return auroc(score, labels_of(val, code, "superclass"))


# --- checkpoint ------------------------------------------------------------------------------------


def save_checkpoint(out_dir: Path, clip: ECGCLIP, cfg: TrainConfig) -> None:
    encoder = clip.text.encoder
    assert isinstance(encoder, TransformerTextEncoder)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(out_dir / CHECKPOINT_WEIGHTS))
    (out_dir / CHECKPOINT_TOKENIZER).write_bytes(encoder.tokenizer.to_json())
    meta = {"encoder": clip.signal.cfg.to_dict(), "text": encoder.cfg.to_dict(),
            "clip": dataclasses.asdict(clip.clip_cfg), "config": cfg.to_dict()}
    (out_dir / CHECKPOINT_META).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))


def load_checkpoint(out_dir: Path) -> tuple[ECGCLIP, dict[str, Any]]:
    """The pre-trained ECGCLIP (strict load: every tensor must fit) and the config it was trained with."""
    for name in (CHECKPOINT_WEIGHTS, CHECKPOINT_META, CHECKPOINT_TOKENIZER):
        if not (out_dir / name).is_file():
            raise DataError(f"no pre-training checkpoint at {out_dir} ({name} missing): run `ecgscreen train pretrain`")
    meta = orjson.loads((out_dir / CHECKPOINT_META).read_bytes())
    tokenizer = BPETokenizer.from_json((out_dir / CHECKPOINT_TOKENIZER).read_bytes())
    clip = build_clip(EncoderConfig.from_dict(meta["encoder"]), TextEncoderConfig.from_dict(meta["text"]),
                      ClipConfig(**meta["clip"]), tokenizer)
    clip.load_state_dict(load_file(str(out_dir / CHECKPOINT_WEIGHTS)), strict=True)
    return clip.eval(), meta
