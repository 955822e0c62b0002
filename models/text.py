"""ECGCLIP text tower: a pluggable report encoder (protocol) and the built-in small transformer.

Anything satisfying :class:`TextEncoder` can stand in for the built-in encoder, e.g. an
adapter around a bigger pretrained clinical language model: ECGCLIP only needs texts in,
``(B, output_dim)`` features out. Only the built-in one is serialised into bundles (its
config and tokenizer are self-describing); with another encoder a bundle ships the
precomputed zero-shot prompt embeddings only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from models.config import TextEncoderConfig
from models.tokenizer import PAD, BPETokenizer, TokenizerError


@runtime_checkable
class TextEncoder(Protocol):
    """Report texts -> (B, output_dim) features on the encoder's device (trainable: an nn.Module)."""

    output_dim: int

    def __call__(self, texts: Sequence[str]) -> torch.Tensor: ...


class TransformerTextEncoder(nn.Module):
    """BPE tokens -> learned position embeddings -> pre-norm transformer -> masked mean pool.

    Bidirectional attention with a mean over real tokens, rather than CLIP's causal mask and
    end-token readout: reports are short, unordered lists of findings, and a mean is the more
    stable summary when training data are few.
    """

    def __init__(self, cfg: TextEncoderConfig, tokenizer: BPETokenizer) -> None:
        super().__init__()
        if tokenizer.vocab_size != cfg.vocab_size:
            raise TokenizerError(f"tokenizer has {tokenizer.vocab_size} ids, text config says {cfg.vocab_size}")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.output_dim = cfg.width
        self.token = nn.Embedding(cfg.vocab_size, cfg.width, padding_idx=PAD)
        self.position = nn.Parameter(torch.zeros(cfg.max_tokens, cfg.width))
        layer = nn.TransformerEncoderLayer(
            cfg.width, cfg.heads, cfg.mlp_ratio * cfg.width, cfg.dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        # Nested tensors are a fast path for post-norm layers only; off, so no warning and one code path.
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position, std=0.01)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) token ids padded with ``<pad>``, and the (B, T) mask of real tokens."""
        rows = [self.tokenizer.encode(t, self.cfg.max_tokens) for t in texts]
        width = max((len(r) for r in rows), default=1)
        ids = torch.full((len(rows), width), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        device = self.position.device
        return ids.to(device), (ids != PAD).to(device)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.tokenize(texts)
        h = self.token(ids) + self.position[: ids.shape[1]]
        h = self.norm(self.blocks(h, src_key_padding_mask=~mask))
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class TextTower(nn.Module):
    """A text encoder plus CLIP's bias-free projection into the shared embedding space."""

    def __init__(self, encoder: TextEncoder, embed_dim: int) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError("a trainable text encoder must be an nn.Module")
        self.encoder = encoder
        self.proj = nn.Linear(encoder.output_dim, embed_dim, bias=False)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return self.proj(self.encoder(texts))
