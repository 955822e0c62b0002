"""ECGCLIP signal tower: ResNet1d encoder -> linear projection into the shared ECG-text space -> task heads.

The text tower and contrastive loss come in a later iteration; they will consume
``encode_signal`` (L2-normalised, as CLIP compares embeddings by cosine similarity).

Design choice: the task heads read the UNNORMALISED projection (``encode_signal(x, normalize=False)``).
That is the linear-probe setting of CLIP-style papers: the heads keep the embedding's norm as
information, and need no extra temperature hyper-parameter that a normalised input would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import BundleConfig, EncoderConfig
from models.resnet import ResNet1d


class ECGCLIPSignalModel(nn.Module):
    """(B, L, N) model-ready signal -> (B, n_tasks) logits; ``encode_signal`` -> (B, embed_dim)."""

    def __init__(self, encoder: EncoderConfig, n_tasks: int) -> None:
        super().__init__()
        self.cfg = encoder
        self.encoder = ResNet1d(encoder)
        # No bias, as in CLIP: the projection maps into a space compared by angle only.
        self.proj = nn.Linear(encoder.feature_dim, encoder.embed_dim, bias=False)
        self.heads = nn.Linear(encoder.embed_dim, n_tasks)

    @classmethod
    def from_config(cls, config: BundleConfig) -> ECGCLIPSignalModel:
        return cls(config.encoder, len(config.tasks))

    @property
    def n_tasks(self) -> int:
        return self.heads.out_features

    def encode_signal(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.proj(self.encoder(x))
        return F.normalize(z, dim=-1) if normalize else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.encode_signal(x, normalize=False))
