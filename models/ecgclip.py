"""ECGCLIP: signal tower, text tower, shared embedding space, symmetric InfoNCE; and the task scorer.

Two modules, because training and screening need different things:

* :class:`ECGCLIP` is the pre-training model: ResNet1d + projection for signals, a pluggable
  text encoder + projection for reports, and CLIP's learnable temperature. Public entry points:
  ``encode_signal(x, normalize=...)`` and ``encode_text(texts, normalize=...)``.
* :class:`ECGCLIPSignalModel` is what a bundle carries and engines run: the signal tower plus
  task heads. A task is scored by a linear head on the UNNORMALISED embedding (the
  linear-probe setting: the embedding's norm stays usable information), or zero-shot as
  ``scale * (cos(z, prompt) - cos(z, negative prompt))`` from prompt embeddings precomputed
  into the bundle, so the worker never runs the text tower. Both give logits; the bundle's
  per-task calibration turns them into probabilities outside the network.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.config import BundleConfig, ClipConfig, EncoderConfig, TaskSpec
from models.resnet import ResNet1d
from models.text import TextEncoder, TextTower


def _linear(d_in: int, d_out: int) -> nn.Linear:
    with warnings.catch_warnings():  # an all-zero-shot bundle has zero linear heads: a valid empty layer
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(d_in, d_out)


class ECGCLIPSignalModel(nn.Module):
    """(B, L, N) model-ready signal -> (B, n_tasks) logits in task order.

    ``linear`` and ``zero_shot`` are the task indices each kind of head scores; by default
    all ``n_tasks`` are linear (the v1 bundle layout, whose weight names are kept).
    """

    # Buffers (registered in __init__; the zero-shot ones only when there are zero-shot tasks).
    prompts_pos: torch.Tensor
    prompts_neg: torch.Tensor
    logit_scale: torch.Tensor
    task_order: torch.Tensor

    def __init__(self, encoder: EncoderConfig, n_tasks: int = 0, *, linear: Sequence[int] | None = None,
                 zero_shot: Sequence[int] = ()) -> None:
        super().__init__()
        linear = tuple(range(n_tasks)) if linear is None else tuple(linear)
        order = (*linear, *zero_shot)
        if sorted(order) != list(range(len(order))):
            raise ValueError(f"linear {linear} and zero_shot {tuple(zero_shot)} must partition the task indices")
        self.cfg = encoder
        self.encoder = ResNet1d(encoder)
        # No bias, as in CLIP: the projection maps into a space compared by angle only.
        self.proj = nn.Linear(encoder.feature_dim, encoder.embed_dim, bias=False)
        self.heads = _linear(encoder.embed_dim, len(linear))
        self.n_zero_shot = len(zero_shot)
        if zero_shot:
            d = encoder.embed_dim
            self.register_buffer("prompts_pos", torch.zeros(len(zero_shot), d))
            self.register_buffer("prompts_neg", torch.zeros(len(zero_shot), d))
            self.register_buffer("logit_scale", torch.zeros(()))  # log of CLIP's scale, as trained
        # Position of each task's logit in [linear..., zero-shot...]; derived, so not saved.
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
        self.register_buffer("task_order", inverse, persistent=False)
        self.identity_order = order == tuple(range(len(order)))

    @classmethod
    def from_config(cls, config: BundleConfig) -> ECGCLIPSignalModel:
        return cls(config.encoder, linear=config.linear_tasks, zero_shot=config.zero_shot_tasks)

    @property
    def n_tasks(self) -> int:
        return self.heads.out_features + self.n_zero_shot

    def encode_signal(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.proj(self.encoder(x))
        return F.normalize(z, dim=-1) if normalize else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encode_signal(x, normalize=False)
        logits = self.heads(z)
        if self.n_zero_shot:
            direction = self.prompts_pos - self.prompts_neg
            zs = F.normalize(z, dim=-1) @ direction.t() * self.logit_scale.exp()
            logits = torch.cat([logits, zs], dim=1)
        return logits if self.identity_order else logits[:, self.task_order]


def clip_loss(signal_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor,
              groups: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of L2-normalised (signal, text) pairs.

    ``groups`` (B,) marks pairs with the same report: PTB-XL repeats "sinus rhythm. normal
    ecg." hundreds of times, and treating identical reports as negatives of each other would
    teach the model to separate ECGs the text cannot tell apart. Same-group pairs share the
    target mass instead (multi-positive InfoNCE); without ``groups`` this is CLIP's loss.
    """
    logits = scale * signal_emb @ text_emb.t()
    if groups is None:
        target = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    same = (groups[:, None] == groups[None, :]).to(logits.dtype)
    soft = same / same.sum(1, keepdim=True)
    s2t = -(soft * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2s = -(soft * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return (s2t + t2s) / 2


class ECGCLIP(nn.Module):
    """Contrastive ECG-report model: ``loss(x, texts)`` to train, ``scorer(tasks)`` to deploy."""

    def __init__(self, encoder: EncoderConfig, text_encoder: TextEncoder, clip: ClipConfig | None = None) -> None:
        super().__init__()
        self.clip_cfg = clip or ClipConfig()
        self.signal = ECGCLIPSignalModel(encoder, n_tasks=0)  # encoder + projection; heads come later
        self.text = TextTower(text_encoder, encoder.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(self.clip_cfg.logit_scale_init))

    def encode_signal(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.signal.encode_signal(x, normalize=normalize)

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        t = self.text(texts)
        return F.normalize(t, dim=-1) if normalize else t

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped as CLIP does so the logits cannot run away."""
        return self.logit_scale.clamp(0.0, self.clip_cfg.logit_scale_max).exp()

    def forward(self, x: torch.Tensor, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_signal(x), self.encode_text(texts)

    def loss(self, x: torch.Tensor, texts: Sequence[str], groups: torch.Tensor | None = None) -> torch.Tensor:
        s, t = self(x, texts)
        return clip_loss(s, t, self.scale(), groups)

    @torch.no_grad()
    def scorer(self, tasks: Sequence[TaskSpec], linear_heads: nn.Linear | None = None) -> ECGCLIPSignalModel:
        """The deployable signal model: this signal tower, ``linear_heads`` (one row per linear task,
        in task order; zero-initialised if None) and the zero-shot prompts embedded now."""
        lin = [i for i, t in enumerate(tasks) if t.head == "linear"]
        zs = [i for i, t in enumerate(tasks) if t.head == "zero_shot"]
        out = ECGCLIPSignalModel(self.signal.cfg, linear=lin, zero_shot=zs)
        out.encoder.load_state_dict(self.signal.encoder.state_dict())
        out.proj.load_state_dict(self.signal.proj.state_dict())
        if linear_heads is not None:
            out.heads.load_state_dict(linear_heads.state_dict())
        else:
            nn.init.zeros_(out.heads.weight)
            nn.init.zeros_(out.heads.bias)
        if zs:
            was_training = self.training
            self.eval()
            out.prompts_pos.copy_(self.encode_text([str(tasks[i].prompt) for i in zs]))
            out.prompts_neg.copy_(self.encode_text([str(tasks[i].negative_prompt) for i in zs]))
            out.logit_scale.copy_(self.logit_scale.clamp(0.0, self.clip_cfg.logit_scale_max))
            self.train(was_training)
        return out.eval()
