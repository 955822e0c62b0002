"""ECG augmentations that keep the diagnosis, on model-ready (B, leads, samples) tensors.

Each one mimics a nuisance of real acquisition, not a change in physiology:

* amplitude scaling (per record, log-uniform in a narrow range): gain and electrode-contact
  variation; kept narrow (default 0.8-1.25) because voltage criteria (LVH) live in amplitude;
* time shift (up to ``max_shift_s``, zero-filled, not circular: wrapping would splice the record's
  end to its start and fake an arrhythmia);
* Gaussian noise scaled to each lead's own standard deviation, so it means the same in mV or z-scores;
* lead dropout: a lead zeroed, exactly what the worker's preprocessing does to a missing lead.

All randomness comes from the caller's ``torch.Generator``: a seed fixes every draw.
"""

from __future__ import annotations

import math

import torch

from models.train.config import AugmentConfig


def scale_amplitude(x: torch.Tensor, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand((x.shape[0], 1, 1), generator=gen, dtype=x.dtype)
    return x * torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def time_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each record by an integer in [-max_shift, max_shift]; vacated samples become 0."""
    if max_shift <= 0:
        return x
    b, leads, n = x.shape
    shift = torch.randint(-max_shift, max_shift + 1, (b, 1), generator=gen)
    src = torch.arange(n).unsqueeze(0) - shift  # output sample t reads input sample t - shift
    valid = ((src >= 0) & (src < n)).to(x.dtype).unsqueeze(1)
    idx = src.clamp(0, n - 1).unsqueeze(1).expand(b, leads, n)
    return x.gather(2, idx) * valid


def add_noise(x: torch.Tensor, rel_std: float, gen: torch.Generator) -> torch.Tensor:
    if rel_std <= 0:
        return x
    scale = x.std(dim=2, keepdim=True) * rel_std
    return x + torch.randn(x.shape, generator=gen, dtype=x.dtype) * scale


def drop_leads(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    if p <= 0:
        return x
    keep = (torch.rand((x.shape[0], x.shape[1], 1), generator=gen) >= p).to(x.dtype)
    return x * keep


def augment(x: torch.Tensor, cfg: AugmentConfig, fs: float, gen: torch.Generator) -> torch.Tensor:
    """All augmentations in a fixed order (noise before dropout: a dropped lead stays exactly zero)."""
    if not cfg.enabled:
        return x
    x = scale_amplitude(x, *cfg.amplitude_scale, gen)
    x = time_shift(x, round(cfg.max_shift_s * fs), gen)
    x = add_noise(x, cfg.noise_std, gen)
    return drop_leads(x, cfg.lead_dropout, gen)
