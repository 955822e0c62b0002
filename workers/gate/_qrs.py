"""Vectorised QRS detectability: Pan-Tompkins-style envelope and peak picking on (..., N).

Per lead, the envelope (moving mean of |5-15 Hz band-pass|) is searched for local maxima
above a fraction of its robust peak level, at least one refractory period apart. Across
leads, the peak-normalised envelopes of the usable leads are averaged: true QRS complexes
coincide in every lead and survive the average, independent noise averages towards its mean
level. The record-level "is there a QRS train" decision and the heart rate come from that
consensus envelope; the per-lead result only marks leads as soft ``no_qrs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import maximum_filter1d, uniform_filter1d

from ._config import GateConfig

F32 = NDArray[np.float32]
_TINY = np.float32(1e-6)  # mV; keeps ratios of an all-zero envelope at 0


@dataclass(frozen=True)
class QrsStats:
    """Beat statistics, each shaped like the input without its last axis."""

    beats: NDArray[np.int64]  # detected beats
    hr_bpm: F32  # from the mean RR interval; 0 when < 2 beats
    snr: F32  # mean envelope at beats / inter-beat envelope level
    level: F32  # mean envelope at beats (mV per lead; relative for the consensus)
    span_ok: NDArray[np.bool_]  # enough beats, rate within the plausible range


def envelope(bp: F32, fs: float, cfg: GateConfig) -> F32:
    """Moving-window mean of |band-passed signal| (~QRS width), zeroed at the edges."""
    win = max(1, round(cfg.qrs_window_s * fs))
    env = uniform_filter1d(np.abs(bp), size=win, axis=-1, mode="nearest")
    edge = min(round(cfg.qrs_edge_s * fs), env.shape[-1] // 2)
    if edge > 0:
        env[..., :edge] = 0.0
        env[..., env.shape[-1] - edge :] = 0.0
    return env


def _quantiles(env: F32, qs: tuple[float, float]) -> tuple[F32, F32]:
    """Two order statistics with one partition (cheaper than np.quantile twice)."""
    n = env.shape[-1]
    ks = [int(q * (n - 1)) for q in qs]
    part = np.partition(env, sorted(set(ks)), axis=-1)
    return part[..., ks[0]], part[..., ks[1]]


def _peaks(env: F32, thr: F32, fs: float, cfg: GateConfig) -> NDArray[np.bool_]:
    """Local maxima over ± refractory period above the threshold (strict rise on the left)."""
    size = 2 * max(1, round(cfg.qrs_refractory_s * fs)) + 1
    is_max = env == maximum_filter1d(env, size=size, axis=-1, mode="constant", cval=0.0)
    rising = np.zeros(env.shape, dtype=bool)
    rising[..., 1:] = env[..., 1:] > env[..., :-1]
    return is_max & rising & (env > thr[..., None])


def _heart_rate(peaks: NDArray[np.bool_], beats: NDArray[np.int64], fs: float) -> F32:
    """60 / mean RR from first and last beat; 0 below two beats."""
    n = peaks.shape[-1]
    first = np.argmax(peaks, axis=-1)
    last = n - 1 - np.argmax(peaks[..., ::-1], axis=-1)
    span_s = np.maximum(last - first, 1) / fs
    hr = 60.0 * np.maximum(beats - 1, 0) / span_s
    return np.where(beats >= 2, hr, 0.0).astype(np.float32)


def _levels(env: F32, cfg: GateConfig) -> tuple[F32, F32]:
    """Inter-beat (floor) and robust R-peak (top) envelope levels."""
    return _quantiles(env, (cfg.qrs_floor_quantile, cfg.qrs_peak_quantile))


def _train(env: F32, levels: tuple[F32, F32], fs: float, duration_s: float, cfg: GateConfig) -> QrsStats:
    floor, top = levels
    peaks = _peaks(env, cfg.qrs_threshold_fraction * top, fs, cfg)
    beats = peaks.sum(axis=-1)
    level = (np.where(peaks, env, 0.0).sum(axis=-1) / np.maximum(beats, 1)).astype(np.float32)
    hr = _heart_rate(peaks, beats, fs)
    # At the slowest plausible rate a record of this length still shows this many beats.
    min_beats = max(2, int(cfg.hr_min_bpm * duration_s / 60.0))
    span_ok = (beats >= min_beats) & (hr >= cfg.hr_min_bpm) & (hr <= cfg.hr_max_bpm)
    snr = (level / (floor + _TINY)).astype(np.float32)
    return QrsStats(beats=beats, hr_bpm=hr, snr=snr, level=level, span_ok=span_ok)


def per_lead(bp: F32, fs: float, duration_s: float, cfg: GateConfig) -> tuple[QrsStats, F32]:
    """Per-lead beat statistics and the peak-normalised envelopes (B, L, N) for the consensus."""
    env = envelope(bp, fs, cfg)
    levels = _levels(env, cfg)
    return _train(env, levels, fs, duration_s, cfg), env / (levels[1][..., None] + _TINY)


def lead_plausible(stats: QrsStats, cfg: GateConfig) -> NDArray[np.bool_]:
    return stats.span_ok & (stats.snr >= cfg.qrs_min_snr) & (stats.level >= cfg.qrs_min_level_mv)


def _mean_envelope(norm_env: F32, usable: NDArray[np.bool_]) -> tuple[F32, F32]:
    """Mean normalised envelope over the usable leads (B, N) and their count (B,)."""
    weight = usable.astype(np.float32)
    count = weight.sum(axis=-1)
    mean_env = (np.einsum("bln,bl->bn", norm_env, weight) / np.maximum(count, 1.0)[:, None]).astype(np.float32)
    return mean_env, count


def consensus_peaks(norm_env: F32, usable: NDArray[np.bool_], fs: float, cfg: GateConfig) -> NDArray[np.bool_]:
    """(B, N) beats of the mean envelope over ``usable`` leads (all leads where none is)."""
    usable = np.where(usable.any(axis=-1, keepdims=True), usable, True)
    mean_env, _ = _mean_envelope(norm_env, usable)
    _, top = _levels(mean_env, cfg)
    return _peaks(mean_env, cfg.qrs_threshold_fraction * top, fs, cfg)


def consensus(
    norm_env: F32, usable: NDArray[np.bool_], fs: float, duration_s: float, cfg: GateConfig
) -> tuple[QrsStats, NDArray[np.bool_]]:
    """Beat train of the mean normalised envelope over usable leads, and its plausibility (B,)."""
    mean_env, count = _mean_envelope(norm_env, usable)
    stats = _train(mean_env, _levels(mean_env, cfg), fs, duration_s, cfg)
    # Averaging n leads of independent noise shrinks its peak/floor excess like 1/sqrt(n).
    min_snr = 1.0 + cfg.qrs_consensus_excess / np.sqrt(np.maximum(count, 1.0))
    return stats, stats.span_ok & (stats.snr >= min_snr) & (count > 0)
