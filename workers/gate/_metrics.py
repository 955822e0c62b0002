"""Per-lead numeric indices for a whole batch: one rfft, two irffts, a few O(N) passes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from . import _spectral as sp
from . import _timedomain as td
from ._config import GateConfig
from ._qrs import QrsStats, lead_plausible, per_lead

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
NOT_AVAILABLE = -1.0


@dataclass(frozen=True)
class LeadMetrics:
    """Every index the rule looks at, each (B, L) unless noted."""

    non_finite: B1
    rms_mv: F32  # RMS in the diagnostic band
    flat_fraction: F32
    clip_fraction: F32
    rail_fraction: F32  # 0 without rails
    max_abs_mv: F32  # largest |x| above 0.5 Hz
    wander_ratio: F32
    hf_ratio: F32  # NOT_AVAILABLE when the band does not fit below Nyquist
    line_ratio: F32  # NOT_AVAILABLE when no mains frequency fits
    qrs: QrsStats
    qrs_ok: B1  # plausible QRS train on this lead alone
    qrs_env: F32  # (B, L, N) peak-normalised QRS envelopes, input to the cross-lead consensus
    limb_residual: F32  # NOT_AVAILABLE for leads without a formula
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


def _hf_ratio(spec: sp.Spectrum, fs: float, qrs_density: F32, cfg: GateConfig) -> F32:
    lo, hi = cfg.hf_band_hz[0], min(cfg.hf_band_hz[1], _NYQUIST_USE * fs / 2.0)
    hf = sp.band_mask(spec.freqs, lo, hi) & ~sp.line_mask(spec.freqs, cfg.line_freqs_hz, 2.0 * cfg.line_half_width_hz)
    density, bins = _masked_density(spec.power, hf, spec.n)
    if hi - lo < cfg.hf_min_width_hz or bins == 0:
        return np.full(qrs_density.shape, NOT_AVAILABLE, dtype=np.float32)
    # A band cut short by Nyquist holds only the ECG's own 40-50 Hz tail, whose density is
    # higher than the 40-150 Hz average: rescale so that one set of thresholds fits all rates.
    scale = 1.0 if hi >= cfg.hf_band_hz[1] else 1.0 / cfg.hf_truncated_scale
    return _ratio(density, qrs_density) * np.float32(scale)


def _line_ratio(spec: sp.Spectrum, fs: float, qrs_ms: F32, cfg: GateConfig) -> F32:
    """Largest mains power / QRS-band power over lines whose peak is narrow (prominent)."""
    out = np.full(qrs_ms.shape, NOT_AVAILABLE, dtype=np.float32)
    hw = cfg.line_half_width_hz
    for line in cfg.line_freqs_hz:
        if fs <= 2.0 * (line + cfg.line_margin_hz):
            continue  # the line (or its upper side band) aliases: nothing to measure
        dist = np.abs(spec.freqs - line)
        peak, peak_bins = _masked_density(spec.power, dist <= hw, spec.n)
        side, _ = _masked_density(spec.power, (dist > _SIDE_INNER * hw) & (dist <= _SIDE_OUTER * hw), spec.n)
        if peak_bins == 0:
            continue
        ratio = _ratio(peak * peak_bins, qrs_ms)
        prominent = _ratio(peak, side) >= cfg.line_min_prominence
        out = np.maximum(out, np.where(prominent, ratio, np.float32(0.0)))
    return out


def _limb_residual(hp: F32, leads: Sequence[str], cfg: GateConfig) -> F32:
    """Relative RMS of (derived lead - its Einthoven/Goldberger value from I and II)."""
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
    hp = sp.fft_filter(spec, sp.raised_cosine_band(f, cfg.wander_cutoff_hz, np.inf, _HP_ROLLOFF_HZ))
    detect_band = sp.raised_cosine_band(f, *cfg.qrs_detect_band_hz, _QRS_ROLLOFF_HZ)
    bp, env_fs = sp.fft_filter_resampled(spec, detect_band, fs, _ENVELOPE_RATE_HZ)
    flat, clip, rail = _time_metrics(x, fs, rails, cfg)
    duration_s = n_real / fs
    qrs_duration_s = max(duration_s - 2 * cfg.qrs_edge_s, 0.0)
    qrs, qrs_env = per_lead(bp, env_fs, qrs_duration_s, cfg)
    return LeadMetrics(
        non_finite=non_finite,
        rms_mv=np.sqrt(diag_ms),
        flat_fraction=flat,
        clip_fraction=clip,
        rail_fraction=rail,
        max_abs_mv=np.abs(hp).max(axis=-1),
        wander_ratio=_ratio(wander_ms, qrs_ms),
        hf_ratio=_hf_ratio(spec, fs, qrs_density, cfg),
        line_ratio=_line_ratio(spec, fs, qrs_ms, cfg),
        qrs=qrs,
        qrs_ok=lead_plausible(qrs, cfg),
        qrs_env=qrs_env,
        limb_residual=_limb_residual(hp, leads, cfg),
        duration_s=duration_s,
        qrs_duration_s=qrs_duration_s,
        env_fs=env_fs,
    )
