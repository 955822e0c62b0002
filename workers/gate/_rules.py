"""From per-lead indices to reason flags, lead status and record status, all vectorised."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ._config import GateConfig, QualityReason
from ._metrics import LeadMetrics

B1 = NDArray[np.bool_]

# Column order of the flag array; sorted by code so that picked reasons come out sorted.
REASONS: tuple[QualityReason, ...] = tuple(sorted(QualityReason, key=lambda r: r.value))
COLUMN = {reason: k for k, reason in enumerate(REASONS)}
RECORD_ONLY = (QualityReason.TOO_SHORT, QualityReason.MISSING_LIMB_LEADS)


@dataclass(frozen=True)
class Decision:
    """Vectorised outcome: flags (B, L, R), hard (B, L), status codes 0 pass / 1 degraded / 2 reject."""

    flags: B1
    hard: B1
    lead_code: NDArray[np.int8]
    record_code: NDArray[np.int8]
    record_flags: B1  # (B, R)
    qrs_good: B1  # (B, L) plausible QRS on a lead that is not bad


def _noise(value: NDArray[np.float32], soft: float, bad: float) -> tuple[B1, B1]:
    return value >= soft, value >= bad


def _hard_flags(m: LeadMetrics, cfg: GateConfig) -> dict[QualityReason, B1]:
    """Reasons that make a lead unusable on their own."""
    plateau = (m.clip_fraction >= cfg.clip_min_fraction) & (m.rms_mv >= cfg.flat_rms_mv)
    # Constant runs at the lead's own extreme are clipping, not a disconnected electrode.
    lead_off = (m.rms_mv < cfg.flat_rms_mv) | ((m.flat_fraction > cfg.flat_run_fraction) & ~plateau)
    return {
        QualityReason.NON_FINITE: m.non_finite,
        QualityReason.LEAD_OFF: lead_off,
        QualityReason.SATURATION: plateau | (m.rail_fraction >= cfg.rail_min_fraction),
        QualityReason.AMPLITUDE_IMPLAUSIBLE: m.max_abs_mv >= cfg.max_amplitude_mv,
    }


def _noise_flags(m: LeadMetrics, cfg: GateConfig) -> dict[QualityReason, tuple[B1, B1]]:
    return {
        QualityReason.BASELINE_WANDER: _noise(m.wander_ratio, cfg.wander_ratio_soft, cfg.wander_ratio_bad),
        QualityReason.HIGH_FREQ_NOISE: _noise(m.hf_ratio, cfg.hf_ratio_soft, cfg.hf_ratio_bad),
        QualityReason.POWERLINE: _noise(m.line_ratio, cfg.line_ratio_soft, cfg.line_ratio_bad),
    }


def lead_flags(m: LeadMetrics, cfg: GateConfig, limb_base: Sequence[int]) -> tuple[B1, B1]:
    """(B, L, R) reason flags and (B, L) "bad lead" mask; ``limb_base`` = positions of I and II."""
    shape = m.rms_mv.shape
    flags = np.zeros((*shape, len(REASONS)), dtype=bool)
    hard = np.zeros(shape, dtype=bool)
    for reason, flag in _hard_flags(m, cfg).items():
        flags[..., COLUMN[reason]] = flag
        hard |= flag
    for reason, (soft, bad) in _noise_flags(m, cfg).items():
        flags[..., COLUMN[reason]] = soft
        hard |= bad
    # Soft-only reasons are reported on leads that are not already unusable.
    flags[..., COLUMN[QualityReason.NO_QRS]] = ~m.qrs.plausible & ~hard
    # Only blame a derived lead when I and II themselves are usable.
    base_ok = ~hard[:, list(limb_base)].any(axis=-1, keepdims=True)
    inconsistent = (m.limb_residual > cfg.limb_max_residual) & ~hard & base_ok
    flags[..., COLUMN[QualityReason.LIMB_LEAD_INCONSISTENT]] = inconsistent
    return flags, hard


def decide(m: LeadMetrics, leads: Sequence[str], cfg: GateConfig) -> Decision:
    names = [name.upper() for name in leads]
    flags, hard = lead_flags(m, cfg, [names.index(b) for b in ("I", "II") if b in names])
    required = [names.index(r.upper()) for r in cfg.required_leads if r.upper() in names]
    missing = len(required) < len(cfg.required_leads)
    qrs_good = m.qrs.plausible & ~hard
    n_leads = len(names)
    no_qrs = qrs_good.sum(axis=-1) < min(cfg.min_qrs_leads, n_leads)
    record_flags: B1 = np.logical_or.reduce(flags, axis=1)
    record_flags[:, COLUMN[QualityReason.NO_QRS]] |= no_qrs
    record_flags[:, COLUMN[QualityReason.TOO_SHORT]] = m.duration_s < cfg.min_duration_s
    record_flags[:, COLUMN[QualityReason.MISSING_LIMB_LEADS]] = missing
    reject = (
        record_flags[:, COLUMN[QualityReason.NON_FINITE]]
        | record_flags[:, COLUMN[QualityReason.TOO_SHORT]]
        | missing
        | no_qrs
        | hard[:, required].any(axis=-1)
        | (hard.sum(axis=-1) > cfg.max_bad_leads)
    )
    lead_code = np.where(hard, 2, np.where(flags.any(axis=-1), 1, 0)).astype(np.int8)
    record_code = np.where(reject, 2, np.where(record_flags.any(axis=-1), 1, 0)).astype(np.int8)
    return Decision(flags, hard, lead_code, record_code, record_flags, qrs_good)
