"""Per-lead numeric indices for a whole batch: one rfft, two irffts, a few O(N) passes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from . import _bursts, _crosslead, _pacing, _precordial
from . import _spectral as sp
from . import _timedomain as td
from ._beats import Templates, templates
from ._config import GateConfig
from ._qrs import QrsStats, consensus_peaks, lead_plausible, per_lead

F32 = NDArray[np.float32]
B1 = NDArray[np.bool_]

# Mean-square floor (mV^2) so that ratios of two empty bands are 0, not 0/0.
_EPS_MS = np.float32(1e-12)
# Stay inside the anti-aliasing roll-off of the recorder: use at most 95 % of Nyquist.
_NYQUIST_USE = 0.95
# High-pass corner roll-off (Hz) for the amplitude / limb-consistency signal.
_HP_ROLLOFF_HZ = 0.3
# QRS detector band-pass roll-off (Hz) on each side: short impulse response, little ringing.
_QRS_ROLLOFF_HZ = 5.0
# The QRS envelope is computed at <= 100 Hz (10 ms steps are plenty for beat timing); must stay
# above 2 x (detector band top + roll-off) = 60 Hz.
_ENVELOPE_RATE_HZ = 100.0
# Side bands for mains prominence: from 2x to 5x the half width away from the line.
_SIDE_INNER, _SIDE_OUTER = 2.0, 5.0
# Template band: P, QRS and T below 40 Hz; the top must stay under the envelope rate's Nyquist.
_TEMPLATE_BAND_HZ = (0.5, 35.0)
NOT_AVAILABLE = -1.0


@dataclass(frozen=True)
class CrossLead:
    """Record-level indices from several leads at once."""

    pacing: _pacing.PacingStats
    limb: _crosslead.LimbMorphology
    precordial: _crosslead.PrecordialOrder
    templates: Templates  # the beat templates the morphology cues come from


@dataclass(frozen=True)
class LeadMetrics:
    """Every index the rule looks at, each (B, L) unless noted."""

    non_finite: B1
    rms_mv: F32  # RMS in the diagnostic band
    flat_fraction: F32
    clip_fraction: F32
    rail_fraction: F32  # 0 without rails
    max_abs_mv: F32  # largest |x| of the 0.5-35 Hz copy
    wander_ratio: F32
    wander_rms_mv: F32  # RMS below the wander cut-off
    hf_ratio: F32  # NOT_AVAILABLE unless the whole HF band fits below Nyquist
    hf_rms_mv: F32  # as hf_ratio
    hf_between_mv: F32  # typical HF RMS between beats; only where hf_ratio is not (NOT_AVAILABLE elsewhere)
    line_ratio: F32  # NOT_AVAILABLE when no mains frequency fits
    line_rms_mv: F32  # RMS of a prominent mains peak (0 without one; NOT_AVAILABLE as above)
    qrs: QrsStats
    qrs_ok: B1  # plausible QRS train on this lead alone
    qrs_env: F32  # (B, L, N) peak-normalised QRS envelopes, input to the cross-lead consensus
    limb_residual: F32  # NOT_AVAILABLE for leads without a formula
    burst_range: F32  # largest / median 1.5 s window peak-to-peak (0.5-35 Hz); -1 when too short
    burst_hf: F32  # same for the mean |second difference| (HF activity: EMG/motion bursts)
    burst_beats: F32  # beats swamped in this lead only (see _bursts); 0 without beats
    template_corr: F32  # mean correlation of the beats with the lead's template; -1 without beats
    cross: CrossLead
    duration_s: float
    qrs_duration_s: float  # duration searched for beats (edges excluded)
    env_fs: float  # sampling rate of qrs_env


def _ratio(num: F32, den: F32) -> F32:
    return (num / (den + _EPS_MS)).astype(np.float32, copy=False)


def _masked_density(power: F32, mask: NDArray[np.bool_], n: int) -> tuple[F32, int]:
    """Mean-square per bin of a band and its bin count (density ratios ignore band widths)."""
    bins = int(mask.sum())
    total = sp.mean_square(sp.band_powers(power, [mask])[..., 0], n)
    return (total / max(bins, 1)).astype(np.float32), bins


def _hf_ratio(spec: sp.Spectrum, fs: float, qrs_density: F32, cfg: GateConfig) -> tuple[F32, F32]:
    """(HF density / QRS density, HF RMS in mV); NOT_AVAILABLE unless the whole band fits."""
    lo, hi = cfg.hf_band_hz
    na = np.full(qrs_density.shape, NOT_AVAILABLE, dtype=np.float32)
    if hi > _NYQUIST_USE * fs / 2.0:
        return na, na  # measured between beats instead (_hf_between_beats)
    hf = sp.band_mask(spec.freqs, lo, hi) & ~sp.line_mask(spec.freqs, cfg.line_freqs_hz, 2.0 * cfg.line_half_width_hz)
    density, bins = _masked_density(spec.power, hf, spec.n)
    if bins == 0:
        return na, na
    return _ratio(density, qrs_density), np.sqrt(density * np.float32(bins)).astype(np.float32)


def _near_beats(tm: Templates, n_env: int, guard_s: float) -> B1:
    """(B, n_env) samples within ``guard_s`` of a template beat, at the template rate."""
    g = round(guard_s * tm.fs)
    idx = tm.positions[:, :, None] + np.arange(-g, g + 1)
    ok = (tm.positions >= 0)[:, :, None] & (idx >= 0) & (idx < n_env)
    near = np.zeros((tm.positions.shape[0], n_env), dtype=bool)
    rows = np.broadcast_to(np.arange(near.shape[0])[:, None, None], idx.shape)
    near[rows[ok], idx[ok]] = True
    return near


def _hf_between_beats(spec: sp.Spectrum, fs: float, tm: Templates, n_env: int, cfg: GateConfig) -> F32:
    """(B, L) typical RMS above ``hf_between_band_hz[0]`` away from every QRS, where the HF band is cut short.

    Why: below ~316 Hz the 40-150 Hz EMG band does not fit and, at 100 Hz, what is left of
    it (40-47.5 Hz) also holds the QRS's own tail. Between beats (P, ST, T, TP) the ECG has
    almost nothing above 15 Hz, so what is there is noise, at any rate. The median over
    1 s windows keeps this a measure of noise present all along: a burst is burst_noise.
    """
    na = np.full(spec.power.shape[:2], NOT_AVAILABLE, dtype=np.float32)
    n, win = spec.n, max(1, round(cfg.hf_between_window_s * fs))
    if cfg.hf_band_hz[1] <= _NYQUIST_USE * fs / 2.0 or n < win * max(cfg.hf_between_min_windows, 1):
        return na  # the full-band HF RMS applies instead, or the record is too short to judge
    top = min(cfg.hf_between_band_hz[1], _NYQUIST_USE * fs / 2.0)
    h = sp.fft_filter(spec, sp.raised_cosine_band(spec.freqs, cfg.hf_between_band_hz[0], top, _QRS_ROLLOFF_HZ))
    near = _near_beats(tm, n_env, cfg.hf_between_guard_s)[:, (np.arange(n) * tm.fs / fs).astype(np.int64)]
    edge = round(cfg.burst_edge_s * fs)  # FFT-domain filters wrap around at the ends
    near[:, :edge] = True
    near[:, max(n - edge, 0) :] = True
    used = (n // win) * win
    quiet = (~near[:, :used]).astype(np.float32).reshape(near.shape[0], 1, -1, win)
    energy = (h[..., :used] ** 2).reshape(*h.shape[:2], -1, win)
    count = quiet.sum(axis=-1)  # (B, 1, windows)
    window_ms = (energy * quiet).sum(axis=-1) / np.maximum(count, 1.0)
    valid = np.broadcast_to(count >= cfg.hf_between_min_quiet * win, window_ms.shape)
    typical = _bursts.masked_median(window_ms, valid, axis=-1)
    enough = (valid.sum(axis=-1) >= cfg.hf_between_min_windows) & (tm.beats > 0)[:, None]
    return np.where(enough, np.sqrt(typical), na).astype(np.float32)


def _line_ratio(spec: sp.Spectrum, fs: float, qrs_ms: F32, cfg: GateConfig) -> tuple[F32, F32]:
    """(mains power / QRS-band power, mains RMS in mV), largest over lines with a narrow peak."""
    ratio = np.full(qrs_ms.shape, NOT_AVAILABLE, dtype=np.float32)
    rms = ratio.copy()
    hw = cfg.line_half_width_hz
    for line in cfg.line_freqs_hz:
        if fs <= 2.0 * (line + cfg.line_margin_hz):
            continue  # the line (or its upper side band) aliases: nothing to measure
        dist = np.abs(spec.freqs - line)
        peak, peak_bins = _masked_density(spec.power, dist <= hw, spec.n)
        side, _ = _masked_density(spec.power, (dist > _SIDE_INNER * hw) & (dist <= _SIDE_OUTER * hw), spec.n)
        if peak_bins == 0:
            continue
        prominent = _ratio(peak, side) >= cfg.line_min_prominence
        ratio = np.maximum(ratio, np.where(prominent, _ratio(peak * peak_bins, qrs_ms), np.float32(0.0)))
        rms = np.maximum(rms, np.where(prominent, np.sqrt(peak * peak_bins), np.float32(0.0)))
    return ratio, rms


def _limb_residual(low: F32, leads: Sequence[str], cfg: GateConfig) -> F32:
    """Relative RMS of (derived lead - its Einthoven/Goldberger value from I and II)."""
    hp = low  # 0.5-35 Hz: wander and mains cancel in the identities anyway
    out = np.full(hp.shape[:-1], NOT_AVAILABLE, dtype=np.float32)
    names = [name.upper() for name in leads]
    if "I" not in names or "II" not in names:
        return out
    lead_i, lead_ii = hp[:, names.index("I")], hp[:, names.index("II")]
    for name, a, b in cfg.limb_formulas:
        if name.upper() not in names:
            continue
        k = names.index(name.upper())
        expected = np.float32(a) * lead_i + np.float32(b) * lead_ii
        rms_res = np.sqrt(np.mean((hp[:, k] - expected) ** 2, axis=-1))
        scale = np.maximum(np.sqrt(np.mean(hp[:, k] ** 2, axis=-1)), np.sqrt(np.mean(expected**2, axis=-1)))
        out[:, k] = rms_res / np.maximum(scale, np.float32(cfg.flat_rms_mv))
    return out


def _time_metrics(x: F32, fs: float, rails: F32 | None, cfg: GateConfig) -> tuple[F32, F32, F32]:
    run_len = max(2, round(cfg.flat_run_s * fs))
    flat = td.constant_run_fraction(x, run_len)
    clip = td.extreme_plateau_fraction(x, cfg.clip_min_visits)
    if rails is None:
        rail = np.zeros(x.shape[:-1], dtype=np.float32)
    else:
        rail = td.rail_fraction(x, rails, cfg.rail_tolerance_fraction)
    return flat, clip, rail


def _independent_leads(leads: Sequence[str]) -> list[int]:
    """Leads that are measured, not computed: III, aVR, aVL, aVF repeat I and II when both exist."""
    names = [n.upper() for n in leads]
    derived = {"III", "AVR", "AVL", "AVF"} if {"I", "II"} <= set(names) else set()
    return [k for k, n in enumerate(names) if n not in derived]


def _pacing_stats(
    d2_abs: F32, spec: sp.Spectrum, fs: float, leads: Sequence[str], beats: B1, env_fs: float, cfg: GateConfig
) -> _pacing.PacingStats:
    """Spikes in the second difference of the measured leads (RMS from the spectrum: no pass)."""
    batch = d2_abs.shape[0]
    if fs < cfg.pacing_min_fs_hz or d2_abs.shape[1] == 0:
        return _pacing.not_measured(batch)
    keep = _independent_leads(leads)
    gain = sp.second_difference_gain(spec.freqs, fs)
    rms = np.sqrt(sp.mean_square(sp.band_powers(spec.power[:, keep], [gain])[..., 0], spec.n))
    hit = _pacing.spike_samples(d2_abs[:, keep], rms, cfg.pacing_spike_mv, cfg.pacing_rms_factor)
    onsets = _pacing.spike_events(hit, min(cfg.pacing_min_leads, len(keep)), round(cfg.pacing_merge_s * fs))
    coupled = _pacing.couple(onsets, beats, env_fs, fs, cfg.pacing_beat_window_s)
    return _pacing.PacingStats(spikes=onsets.sum(axis=-1).astype(np.float32), coupled=coupled)


def _template_signal(spec: sp.Spectrum, fs: float) -> tuple[F32, float]:
    """0.5-35 Hz copy at the envelope rate: templates, amplitude, limb identities, steps."""
    f = spec.freqs
    band = sp.raised_cosine_band(f, _TEMPLATE_BAND_HZ[0], np.inf, _HP_ROLLOFF_HZ)
    band *= sp.raised_cosine_band(f, 0.0, _TEMPLATE_BAND_HZ[1], _QRS_ROLLOFF_HZ)
    return sp.fft_filter_resampled(spec, band, fs, _ENVELOPE_RATE_HZ)


def _cross_lead(
    low: F32, d2_abs: F32, spec: sp.Spectrum, fs: float, leads: Sequence[str], env: tuple[F32, B1, float],
    cfg: GateConfig,
) -> CrossLead:
    """Record-level cross-lead indices, with the beat templates they come from.

    ``env``: the peak-normalised QRS envelopes, the leads with a plausible QRS train, and
    the envelope rate (that of ``low`` too).
    """
    qrs_env, usable, env_fs = env
    beats = consensus_peaks(qrs_env, usable, env_fs, cfg)
    tm = templates(
        low, beats, env_fs, cfg.template_window_s, cfg.template_keep_corr, cfg.template_max_beats,
        cfg.template_floor_mv**2,
    )
    return CrossLead(
        pacing=_pacing_stats(d2_abs, spec, fs, leads, beats, env_fs, cfg),
        limb=_crosslead.limb_morphology(tm, leads),
        precordial=_crosslead.precordial_order(tm, leads, _precordial.shipped_model()),
        templates=tm,
    )


def _burst_indices(low: F32, low_fs: float, d2_abs: F32, fs: float, tm: Templates, leads: Sequence[str],
                   cfg: GateConfig) -> tuple[F32, F32, F32]:
    """(range ratio on the 0.5-35 Hz copy, HF-activity ratio on |2nd difference|, burst beats)."""
    seg = (cfg.burst_segment_s, cfg.burst_window_segments, cfg.burst_edge_s)
    ranges = _bursts.window_ratio(low, low_fs, *seg, "range")
    activity = _bursts.window_ratio(d2_abs, fs, *seg, "mean")
    # FFT-domain filters wrap around at the record ends: judge only beats clear of the edges.
    edge, n = round(cfg.burst_edge_s * low_fs), low.shape[-1]
    lo, hi = round(tm.offsets_s[0] * low_fs), round(tm.offsets_s[-1] * low_fs)
    inner = tm.valid & (tm.positions + lo >= edge) & (tm.positions + hi < n - edge)
    beats = _bursts.beat_bursts(
        (tm.residual, tm.residual_ms), inner, _independent_leads(leads), cfg.burst_beat_swamped,
        cfg.burst_beat_over_time, (cfg.burst_beat_changed, cfg.burst_beat_changed_mv), cfg.burst_beat_max_leads,
    )
    return ranges, activity, beats


def compute(
    x: F32, non_finite: B1, fs: float, leads: Sequence[str], rails: F32 | None, cfg: GateConfig, n_real: int
) -> LeadMetrics:
    """All indices for a cleaned (finite, bounded) batch ``x`` of shape (B, L, N), N >= 1."""
    spec = sp.spectrum(sp.detrend_endpoints(x, fs), fs)
    f = spec.freqs
    qrs_mask = sp.band_mask(f, *cfg.qrs_band_hz)
    masks = [sp.band_mask(f, *cfg.diag_band_hz), qrs_mask, sp.band_mask(f, 0.0, cfg.wander_cutoff_hz)]
    bands = sp.mean_square(sp.band_powers(spec.power, masks), spec.n)
    diag_ms, qrs_ms, wander_ms = bands[..., 0], bands[..., 1], bands[..., 2]
    qrs_density = (qrs_ms / max(int(qrs_mask.sum()), 1)).astype(np.float32)
    low, low_fs = _template_signal(spec, fs)
    detect_band = sp.raised_cosine_band(f, *cfg.qrs_detect_band_hz, _QRS_ROLLOFF_HZ)
    bp, env_fs = sp.fft_filter_resampled(spec, detect_band, fs, _ENVELOPE_RATE_HZ)
    d2_abs = sp.abs_second_difference(x)
    flat, clip, rail = _time_metrics(x, fs, rails, cfg)
    duration_s = n_real / fs
    qrs_duration_s = max(duration_s - 2 * cfg.qrs_edge_s, 0.0)
    qrs, qrs_env = per_lead(bp, env_fs, qrs_duration_s, cfg)
    qrs_ok = lead_plausible(qrs, cfg)
    cross = _cross_lead(low, d2_abs, spec, fs, leads, (qrs_env, qrs_ok, env_fs), cfg)
    tm = cross.templates
    burst_range, burst_hf, burst_beats = _burst_indices(low, low_fs, d2_abs, fs, tm, leads, cfg)
    hf_ratio, hf_rms = _hf_ratio(spec, fs, qrs_density, cfg)
    hf_between = _hf_between_beats(spec, fs, tm, low.shape[-1], cfg)
    line_ratio, line_rms = _line_ratio(spec, fs, qrs_ms, cfg)
    return LeadMetrics(
        non_finite=non_finite,
        rms_mv=np.sqrt(diag_ms),
        flat_fraction=flat,
        clip_fraction=clip,
        rail_fraction=rail,
        max_abs_mv=np.abs(low).max(axis=-1),
        wander_ratio=_ratio(wander_ms, qrs_ms),
        wander_rms_mv=np.sqrt(wander_ms),
        hf_ratio=hf_ratio,
        hf_rms_mv=hf_rms,
        hf_between_mv=hf_between,
        line_ratio=line_ratio,
        line_rms_mv=line_rms,
        qrs=qrs,
        qrs_ok=qrs_ok,
        qrs_env=qrs_env,
        limb_residual=_limb_residual(low, leads, cfg),
        burst_range=burst_range,
        burst_hf=burst_hf,
        burst_beats=burst_beats,
        template_corr=tm.corr,
        cross=cross,
        duration_s=duration_s,
        qrs_duration_s=qrs_duration_s,
        env_fs=env_fs,
    )
