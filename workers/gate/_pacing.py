"""Pacemaker spikes: narrow, steep pulses, seen at once in several leads, each leading a beat.

A pacing pulse lasts 0.1-2 ms; a 500 Hz recorder keeps it as a 1-3 sample spike of up to a
few mV, whose energy sits far above the QRS band. So: high-pass the leads above ~80 Hz
(where a QRS leaves microvolts), call a sample a spike in a lead when it stands out both
absolutely and against that lead's own high-band RMS (EMG stays within ~5 RMS), require it
in several leads at the same time (a pacing pulse reaches every lead; a twitch under one
electrode does not), and count spike events that precede a detected beat by at most the
longest AV delay. Below ``pacing_min_fs_hz`` the recorder's anti-aliasing filter has
already smeared the pulse into the QRS, so nothing is claimed (indices -1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import maximum_filter1d

F32 = NDArray[np.float32]
B1 = NDArray[np.bool_]
NOT_AVAILABLE = -1.0


@dataclass(frozen=True)
class PacingStats:
    """Per record (B,): spike events, and those followed by a beat; -1 when not measurable."""

    spikes: F32
    coupled: F32


def spike_samples(hf_abs: F32, hf_rms: F32, min_mv: float, rms_factor: float) -> B1:
    """(B, L, N) samples standing out of the high band (|values| given), one sample of jitter allowed."""
    thr = np.maximum(np.float32(min_mv), np.float32(rms_factor) * hf_rms)[..., None]
    hit = hf_abs >= thr
    hit[..., 1:] |= hit[..., :-1].copy()  # the pulse may peak one sample apart across leads
    return hit


def spike_events(hit: B1, min_leads: int, merge: int) -> B1:
    """(B, N) onsets of spike events: enough leads at once, merged over ``merge`` samples."""
    together = hit.sum(axis=1) >= min_leads
    if merge > 1:  # ringing and the jitter above make one pulse a few samples long
        together = maximum_filter1d(together, size=merge, axis=-1)
    onsets = together.copy()
    onsets[:, 1:] &= ~together[:, :-1]
    return onsets


def beat_ahead(beats: B1, window: int) -> B1:
    """(B, M) True where a beat lies within the next ``window`` samples (inclusive)."""
    counts = np.concatenate([np.zeros((beats.shape[0], 1), np.int32), np.cumsum(beats, axis=-1, dtype=np.int32)], -1)
    m = beats.shape[-1]
    end = np.minimum(np.arange(m) + window + 1, m)
    return (counts[:, end] - counts[:, :m]) > 0


def couple(onsets: B1, beats: B1, env_fs: float, fs: float, window_s: float) -> F32:
    """Number of spike onsets followed by a beat (beat train at ``env_fs``) within ``window_s``."""
    m = beats.shape[-1]
    to_env = np.minimum((np.arange(onsets.shape[-1]) * (env_fs / fs)).astype(np.int64), max(m - 1, 0))
    ahead = beat_ahead(beats, max(1, round(window_s * env_fs)))[:, to_env] if m else np.zeros_like(onsets)
    return (onsets & ahead).sum(axis=-1).astype(np.float32)


def not_measured(batch: int) -> PacingStats:
    na = np.full(batch, NOT_AVAILABLE, dtype=np.float32)
    return PacingStats(spikes=na, coupled=na.copy())
