"""Burst noise: short stretches where one lead jumps away from what it and the others show.

Two views. (1) Windows: the lead is cut into segments

(0.5 s); a window is a few adjacent segments (1.5 s, so that every window holds at least
one QRS down to 40 bpm and windows stay comparable). For each window: the peak-to-peak
range of the 0.5-35 Hz copy (pops, steps) and the mean |second difference| at the full
rate (HF activity: a QRS at 500 Hz hardly shows there, an EMG/motion burst does). The
largest window over the median window: stationary noise (static, EMG all along) keeps the
ratio near 1, a jump far beyond anything else in the lead does not.
(2) Beats: a relative ratio cannot see a 2 mV pop on a lead whose QRS is 2 mV itself. So a
beat is also a burst in a lead when its (detrended) residual against the lead's template is
larger than the template itself (the beat is swamped), far above the lead's other beats
(not static noise), and only a few measured leads change at that beat (an ectopic beat
changes nearly every lead at once).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

F32 = NDArray[np.float32]
_TINY = np.float32(1e-4)  # mV (or mV/sample): keeps ratios over a flat lead at ~0, not 0/0
NOT_AVAILABLE = -1.0


def _segments(x: F32, fs: float, segment_s: float, edge_s: float) -> F32 | None:
    """(..., S, M) view of the record without its edges, or None when too short for 3 segments."""
    seg = max(2, round(segment_s * fs))
    edge = round(edge_s * fs)
    body = x[..., edge : x.shape[-1] - edge] if edge > 0 else x
    count = body.shape[-1] // seg
    if count < 3:
        return None
    return body[..., : count * seg].reshape(*body.shape[:-1], count, seg)


def _window_ratio(per_segment: F32, width: int, combine: str) -> F32:
    """Largest window over the median window; a window joins ``width`` adjacent segments."""
    width = min(width, per_segment.shape[-1])
    windows = sliding_window_view(per_segment, width, axis=-1)
    value = windows.max(axis=-1) if combine == "max" else windows.mean(axis=-1)
    median = np.median(value, axis=-1)
    return (value.max(axis=-1) / (median + _TINY)).astype(np.float32)


def window_ratio(x: F32, fs: float, segment_s: float, width: int, edge_s: float, mode: str) -> F32:
    """Largest over median 1.5 s window per lead: ``mode`` "range" (peak-to-peak) or "mean".

    -1 (not available) when the record holds fewer than 3 segments.
    """
    segs = _segments(x, fs, segment_s, edge_s)
    if segs is None:
        return np.full(x.shape[:-1], NOT_AVAILABLE, dtype=np.float32)
    if mode == "range":
        return _window_ratio(segs.max(axis=-1) - segs.min(axis=-1), width, "max")
    return _window_ratio(segs.mean(axis=-1, dtype=np.float32), width, "mean")


def masked_median(values: F32, valid: NDArray[np.bool_], axis: int) -> F32:
    """Lower median of the valid entries along ``axis``; +inf where none is valid (no warnings)."""
    filled = np.where(valid, values, np.float32(np.inf))
    ordered = np.sort(filled, axis=axis)
    count = valid.sum(axis=axis, keepdims=True)
    mid = np.maximum(count - 1, 0) // 2
    return np.take_along_axis(ordered, mid, axis=axis).squeeze(axis)


def beat_bursts(
    residual: tuple[F32, F32], valid: NDArray[np.bool_], measured: list[int], swamped: float, over_time: float,
    changed: tuple[float, float], max_leads: int,
) -> F32:
    """(B, L) beats that are bursts in the lead: swamped, local in time, and in few leads.

    ``residual``: per-beat residual power relative to the template and in mV^2 (B, L, K).
    A measured lead counts as changed at a beat when its residual exceeds ``changed[0]``
    (relative) or ``changed[1]`` (mV RMS); more than ``max_leads`` changed leads make the
    beat a global event (ectopic beat, a step in every lead), not a local artefact.
    """
    rel, abs_ms = residual
    ok = np.broadcast_to(valid[:, None, :], rel.shape)
    typical_beat = masked_median(rel, ok, axis=-1)[..., None]  # (B, L, 1)
    moved = (rel[:, measured] >= changed[0]) | (abs_ms[:, measured] >= np.float32(changed[1] ** 2))
    spread = moved.sum(axis=1)  # (B, K)
    burst = ok & (rel >= swamped) & (rel >= over_time * typical_beat)
    return (burst & (spread <= max_leads)[:, None, :]).sum(axis=-1).astype(np.float32)
