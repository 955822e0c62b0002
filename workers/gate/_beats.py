"""Beat templates: every lead cut around the cross-lead beat train, batch-wise.

The idea of Zhao 2018's template checks (and Orphanidou's average-correlation SQI, as in
neurokit2's ``ecg_quality``) without a loop: gather a (B, L, K, W) array of beat windows
with one fancy index, average the valid beats into a template per lead, drop beats that
do not resemble it (ectopics, artefacts) and average again. The mean correlation of the
beats with that template says how repeatable the lead is; the templates themselves feed
the cross-lead morphology checks (lead reversal, precordial order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
B1 = NDArray[np.bool_]
I64 = NDArray[np.int64]
_TINY = np.float32(1e-6)
NO_BEATS = -2.0  # template_corr without beats: below any correlation


@dataclass(frozen=True)
class Templates:
    """Median-like beat per lead and how well the beats match it."""

    template: F32  # (B, L, W) at ``fs``; zeros where a record has no valid beat
    corr: F32  # (B, L) mean correlation of valid beats with the template; NO_BEATS without
    beats: NDArray[np.int64]  # (B,) valid beats used
    residual: F32  # (B, L, K) per-beat residual power / template power (both detrended)
    residual_ms: F32  # (B, L, K) the same residual power in mV^2
    valid: B1  # (B, K) beats whose whole window lies inside the record
    positions: I64  # (B, K) sample of each beat at ``fs``, -1 padded
    offsets_s: NDArray[np.float64]  # (W,) time of each template sample relative to the beat
    fs: float


def beat_positions(peaks: B1, max_beats: int) -> I64:
    """(B, K) sample index of the first ``max_beats`` beats per record, -1 padded."""
    b_idx, n_idx = np.nonzero(peaks)
    rank = (np.cumsum(peaks, axis=-1) - 1)[b_idx, n_idx]
    keep = rank < max_beats
    width = int(min(max_beats, rank.max() + 1)) if rank.size else 0
    pos = np.full((peaks.shape[0], max(width, 1)), -1, dtype=np.int64)
    pos[b_idx[keep], rank[keep]] = n_idx[keep]
    return pos


def _windows(x: F32, pos: I64, offsets: I64) -> tuple[F32, B1]:
    """(B, L, K, W) beat windows and (B, K) validity (whole window inside the record).

    Gathered as rows of the (B, N, L) transpose: the index array is (B, K, W), not (B, L, K, W).
    """
    n = x.shape[-1]
    idx = pos[:, :, None] + offsets[None, None, :]
    valid = (pos >= 0) & (idx[..., 0] >= 0) & (idx[..., -1] < n)
    rows = np.clip(idx, 0, max(n - 1, 0))
    by_time = np.ascontiguousarray(x.transpose(0, 2, 1))  # (B, N, L)
    seg = by_time[np.arange(x.shape[0])[:, None, None], rows]  # (B, K, W, L)
    return np.ascontiguousarray(seg.transpose(0, 3, 1, 2)), valid


def _zscore(a: F32) -> F32:
    """Zero-mean, unit-norm along the last axis (all-zero rows stay zero)."""
    c = a - a.mean(axis=-1, keepdims=True)
    return (c / (np.sqrt((c * c).sum(axis=-1, keepdims=True)) + _TINY)).astype(np.float32)


def _weighted_mean(seg: F32, weight: F32) -> F32:
    """(B, L, W) mean of the beats over K with (B, L, K) weights."""
    total = weight.sum(axis=-1)
    return (np.matmul(weight[..., None, :], seg)[..., 0, :] / np.maximum(total, 1.0)[..., None]).astype(np.float32)


def _beat_corr(seg_z: F32, template: F32) -> F32:
    """(B, L, K) Pearson correlation of each (z-scored) beat with the lead's template."""
    return np.matmul(seg_z, _zscore(template)[..., None])[..., 0]


def _detrend(a: F32) -> F32:
    """Remove the least-squares line along the last axis (offset and slope of slow wander)."""
    w = a.shape[-1]
    ramp = np.linspace(-1.0, 1.0, w, dtype=np.float32)
    c = a - a.mean(axis=-1, keepdims=True)
    slope = (c @ ramp) / max(float(ramp @ ramp), 1e-12)
    return (c - slope[..., None] * ramp).astype(np.float32)


def _residual(seg: F32, template: F32, floor_ms: float) -> tuple[F32, F32]:
    """(B, L, K) mean-square of beat minus template: over the template's (floored) mean-square,
    and in mV^2. Both are detrended first: a beat riding on slow wander is not a burst."""
    s = _detrend(seg)
    t = _detrend(template)
    res = ((s - t[:, :, None, :]) ** 2).mean(axis=-1)
    ref = np.maximum((t * t).mean(axis=-1), np.float32(floor_ms))
    return (res / ref[..., None]).astype(np.float32), res.astype(np.float32)


def templates(
    x: F32,
    peaks: B1,
    fs: float,
    window_s: tuple[float, float],
    keep_corr: float,
    max_beats: int,
    floor_ms: float = 1e-4,
) -> Templates:
    """Templates of (B, L, N) ``x`` at the beats ``peaks`` (B, N), both sampled at ``fs``."""
    pre, post = round(window_s[0] * fs), round(window_s[1] * fs)
    offsets = np.arange(-pre, post + 1, dtype=np.int64)
    pos = beat_positions(peaks, max_beats)
    seg, valid = _windows(x, pos, offsets)
    weight = np.broadcast_to(valid[:, None, :], seg.shape[:3]).astype(np.float32)
    first = _weighted_mean(seg, weight)
    seg_z = _zscore(seg)
    # Second pass without beats unlike the first template: one PVC must not shape the template.
    keep = weight * (_beat_corr(seg_z, first) >= keep_corr)
    template = np.where(keep.sum(axis=-1, keepdims=True) > 0, _weighted_mean(seg, keep), first)
    corr = (_beat_corr(seg_z, template) * weight).sum(axis=-1) / np.maximum(weight.sum(axis=-1), 1.0)
    count = valid.sum(axis=-1)
    corr = np.where(count[:, None] > 0, corr, np.float32(NO_BEATS)).astype(np.float32)
    residual, residual_ms = _residual(seg, template, floor_ms)
    return Templates(
        template=template.astype(np.float32), corr=corr, beats=count, residual=residual,
        residual_ms=residual_ms, valid=valid,
        positions=pos, offsets_s=offsets / fs, fs=fs,
    )
