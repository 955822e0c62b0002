"""Entry points: validate, clean, measure, decide, and package results per record."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from schemas.messages import QualityStatus

from . import _crosslead, _metrics
from ._beats import Templates
from ._config import DEFAULT_CONFIG, GateConfig, GateInputError, QualityReason, RecordQuality
from ._rules import REASONS, Decision, decide

F32 = NDArray[np.float32]

# Finite samples are clipped to this before any arithmetic so float32 squares and FFT sums
# cannot overflow; it is 1000x the implausible-amplitude threshold, so no decision changes.
_SAMPLE_LIMIT_MV = 1.0e4
_STATUS = (QualityStatus.PASS, QualityStatus.DEGRADED, QualityStatus.REJECT)
_BIT_WEIGHTS = np.left_shift(np.int64(1), np.arange(len(REASONS), dtype=np.int64))


def _validate(x_mv: np.ndarray, fs: float, leads: Sequence[str]) -> np.ndarray:
    x = np.asarray(x_mv)
    if x.ndim != 3:
        raise GateInputError(f"x_mv must be (records, leads, samples), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise GateInputError(f"x_mv must be a real numeric array, got dtype {x.dtype}")
    if len(leads) != x.shape[1]:
        raise GateInputError(f"{len(leads)} lead names for {x.shape[1]} leads")
    if not (isinstance(fs, int | float | np.number) and math.isfinite(float(fs)) and float(fs) > 0):
        raise GateInputError(f"sampling rate must be a positive finite number, got {fs!r}")
    return x


def _clean(x: np.ndarray) -> tuple[F32, NDArray[np.bool_]]:
    """Finite, bounded float32 copy (non-finite -> 0) and the per-lead non-finite mask."""
    finite = np.isfinite(x)
    lead_finite = finite.all(axis=-1)
    cleaned = x.astype(np.float32)  # a copy: the caller's array is never modified
    if not lead_finite.all():
        cleaned[~finite] = 0.0
    np.clip(cleaned, -_SAMPLE_LIMIT_MV, _SAMPLE_LIMIT_MV, out=cleaned)
    if cleaned.shape[-1] == 0:  # nothing to measure: one zero sample keeps every pass well defined
        cleaned = np.zeros((*cleaned.shape[:-1], 1), dtype=np.float32)
    return cleaned, ~lead_finite


def _rails(rails_mv: np.ndarray | None, shape: tuple[int, ...]) -> F32 | None:
    """(B, L, 2) rails; a lead whose rails are non-finite or not ordered gets NaN (never matches)."""
    if rails_mv is None:
        return None
    try:
        rails = np.broadcast_to(np.asarray(rails_mv, dtype=np.float64), (*shape[:2], 2))
    except (ValueError, TypeError) as exc:
        raise GateInputError(f"rails_mv must broadcast to {(*shape[:2], 2)}") from exc
    usable = np.isfinite(rails).all(axis=-1) & (rails[..., 1] > rails[..., 0])
    bounded = np.clip(rails, -_SAMPLE_LIMIT_MV, _SAMPLE_LIMIT_MV)
    return np.where(usable[..., None], bounded, np.nan).astype(np.float32)


@lru_cache(maxsize=4096)
def _decode(bits: int) -> tuple[QualityReason, ...]:
    return tuple(reason for k, reason in enumerate(REASONS) if bits >> k & 1)


def _lead_max(values: NDArray[np.float32]) -> NDArray[np.float64]:
    """Worst (largest) value over leads; -1 (NOT_AVAILABLE) when no lead has one."""
    v = values.astype(np.float64)
    return v.max(axis=-1) if v.shape[-1] else np.full(v.shape[0], _metrics.NOT_AVAILABLE)


def _lead_min(values: NDArray[np.float32]) -> NDArray[np.float64]:
    v = values.astype(np.float64)
    return v.min(axis=-1) if v.shape[-1] else np.full(v.shape[0], _metrics.NOT_AVAILABLE)


def _min_available(values: NDArray[np.float32]) -> NDArray[np.float64]:
    """Lowest value over leads that have one (-1 = none has): correlations can be negative."""
    v = values.astype(np.float64)
    has = v >= -1.0
    low = np.where(has, v, np.inf).min(axis=-1, initial=np.inf)
    return np.where(has.any(axis=-1), low, _metrics.NOT_AVAILABLE)


def _available(values: NDArray[np.float32], ok: NDArray[np.bool_]) -> NDArray[np.float64]:
    return np.where(ok, values.astype(np.float64), _metrics.NOT_AVAILABLE)


def _limb_cues(limb: _crosslead.LimbMorphology) -> dict[str, NDArray[np.float64]]:
    cues = {"lateral_corr": limb.lateral_corr, "p_wave_mv": limb.p_wave_mv, "qrs_polarity": limb.qrs_polarity}
    return {f"lead_{lead}_{name}": _available(v[:, k], limb.available[:, k])
            for k, lead in enumerate(("i", "ii")) for name, v in cues.items()}


def _indices(m: _metrics.LeadMetrics, d: Decision) -> dict[str, NDArray[np.float64]]:
    """Numeric indices behind the decision, one value per record."""
    cols = {
        "duration_s": np.full(m.rms_mv.shape[0], m.duration_s),
        # Consensus beat train over the usable leads (T waves and lead-specific noise average out).
        "heart_rate_bpm": np.where(d.qrs_ok, d.qrs.hr_bpm, _metrics.NOT_AVAILABLE),
        "qrs_consensus_snr": d.qrs.snr.astype(np.float64),
        "qrs_leads": (m.qrs_ok & ~d.hard).sum(axis=-1).astype(np.float64),
        "bad_lead_count": d.hard.sum(axis=-1).astype(np.float64),
        "best_lead_qrs_snr": _lead_max(m.qrs.snr),
        "min_rms_mv": _lead_min(m.rms_mv),
        "max_abs_mv": _lead_max(m.max_abs_mv),
        "max_flat_fraction": _lead_max(m.flat_fraction),
        "max_clip_fraction": _lead_max(m.clip_fraction),
        "max_rail_fraction": _lead_max(m.rail_fraction),
        "max_wander_ratio": _lead_max(m.wander_ratio),
        "max_hf_ratio": _lead_max(m.hf_ratio),
        "max_hf_between_beats_mv": _lead_max(m.hf_between_mv),
        "max_powerline_ratio": _lead_max(m.line_ratio),
        "max_limb_residual": _lead_max(m.limb_residual),
        "max_burst_range_ratio": _lead_max(m.burst_range),
        "max_burst_hf_ratio": _lead_max(m.burst_hf),
        "min_template_corr": _min_available(m.template_corr),
        "template_beats": m.cross.templates.beats.astype(np.float64),
        "pacing_spikes": m.cross.pacing.spikes.astype(np.float64),
        "pacing_spikes_before_beats": m.cross.pacing.coupled.astype(np.float64),
        **_limb_cues(m.cross.limb),
        "precordial_swap_gain": _available(m.cross.precordial.gain, m.cross.precordial.available),
    }
    # JSON-safe: no NaN/Inf ever leaves the gate.
    return {k: np.where(np.isfinite(v), v, _metrics.NOT_AVAILABLE) for k, v in cols.items()}


def _package(d: Decision, m: _metrics.LeadMetrics, leads: Sequence[str]) -> list[RecordQuality]:
    """Turn the vectorised decision into one frozen result per record (no numerics here)."""
    lead_bits = (d.flags.astype(np.int64) * _BIT_WEIGHTS).sum(axis=-1).tolist()
    record_bits = (d.record_flags.astype(np.int64) * _BIT_WEIGHTS).sum(axis=-1).tolist()
    indices = {k: v.tolist() for k, v in _indices(m, d).items()}
    out = []
    for b, (bits_row, code_row, hard_row) in enumerate(
        zip(lead_bits, d.lead_code.tolist(), d.hard.tolist(), strict=True)
    ):
        out.append(
            RecordQuality(
                status=_STATUS[int(d.record_code[b])],
                reasons=_decode(record_bits[b]),
                bad_leads=tuple(name for name, bad in zip(leads, hard_row, strict=True) if bad),
                lead_status=tuple(_STATUS[c] for c in code_row),
                lead_reasons=tuple(_decode(bits) for bits in bits_row),
                indices={k: float(v[b]) for k, v in indices.items()},
            )
        )
    return out


def gate_batch(
    x_mv: np.ndarray,
    fs: float,
    leads: Sequence[str],
    config: GateConfig = DEFAULT_CONFIG,
    rails_mv: np.ndarray | None = None,
) -> list[RecordQuality]:
    """Quality of each record of ``x_mv`` (B, L, N) in mV sampled at ``fs`` Hz.

    The same ``fs``, ``leads`` and N apply to the whole batch; ``rails_mv`` (B, L, 2) gives
    each lead's low/high ADC rail in mV when known. Never raises for a well-formed call,
    whatever the sample values; raises :class:`GateInputError` for a wrong rank, lead count,
    rails shape or sampling rate.
    """
    x = _validate(x_mv, fs, leads)
    fs = float(fs)
    if x.shape[0] == 0:
        return []
    with np.errstate(all="ignore"):
        rails = _rails(rails_mv, x.shape)
        cleaned, non_finite = _clean(x)
        metrics = _metrics.compute(cleaned, non_finite, fs, leads, rails, config, x.shape[-1])
        decision = decide(metrics, leads, config)
        return _package(decision, metrics, list(leads))


def beat_templates(x_mv: np.ndarray, fs: float, leads: Sequence[str], config: GateConfig = DEFAULT_CONFIG) -> Templates:
    """The (B, L, W) beat templates the gate's morphology checks read (at <= 100 Hz)."""
    x = _validate(x_mv, fs, leads)
    with np.errstate(all="ignore"):
        cleaned, non_finite = _clean(x)
        return _metrics.compute(cleaned, non_finite, float(fs), leads, None, config, x.shape[-1]).cross.templates


def gate_record(
    x_mv: np.ndarray,
    fs: float,
    leads: Sequence[str],
    config: GateConfig = DEFAULT_CONFIG,
    rails_mv: np.ndarray | None = None,
) -> RecordQuality:
    """:func:`gate_batch` for one (L, N) record; ``rails_mv`` is (L, 2)."""
    x = np.asarray(x_mv)
    if x.ndim != 2:
        raise GateInputError(f"x_mv must be (leads, samples), got shape {x.shape}")
    rails = None if rails_mv is None else np.asarray(rails_mv)[None]
    return gate_batch(x[None], fs, leads, config, rails)[0]
