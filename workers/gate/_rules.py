"""From per-lead indices to reason flags, lead status and record status, all vectorised."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ._config import GateConfig, QualityReason
from ._metrics import LeadMetrics
from ._qrs import QrsStats, consensus

B1 = NDArray[np.bool_]

# Column order of the flag array; sorted by code so that picked reasons come out sorted.
REASONS: tuple[QualityReason, ...] = tuple(sorted(QualityReason, key=lambda r: r.value))
COLUMN = {reason: k for k, reason in enumerate(REASONS)}
_LIMB_BASE = ("I", "II")  # leads the derived limb leads are computed from


@dataclass(frozen=True)
class Decision:
    """Vectorised outcome; status codes are 0 pass / 1 degraded / 2 reject."""

    flags: B1  # (B, L, R) lead reasons
    hard: B1  # (B, L) bad (masked) leads
    lead_code: NDArray[np.int8]  # (B, L)
    record_code: NDArray[np.int8]  # (B,)
    record_flags: B1  # (B, R)
    qrs: QrsStats  # (B,) consensus beat train over usable leads
    qrs_ok: B1  # (B,)


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
    """(soft, bad) per noise reason; meaningless on a lead with no signal, so not raised there."""
    live = m.rms_mv >= cfg.flat_rms_mv
    pairs = {
        QualityReason.BASELINE_WANDER: (m.wander_ratio, cfg.wander_ratio_soft, cfg.wander_ratio_bad),
        QualityReason.HIGH_FREQ_NOISE: (m.hf_ratio, cfg.hf_ratio_soft, cfg.hf_ratio_bad),
        QualityReason.POWERLINE: (m.line_ratio, cfg.line_ratio_soft, cfg.line_ratio_bad),
    }
    return {r: ((v >= soft) & live, (v >= bad) & live) for r, (v, soft, bad) in pairs.items()}


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
    flags[..., COLUMN[QualityReason.NO_QRS]] = ~m.qrs_ok & ~hard
    # Only blame a derived lead when I and II themselves are usable.
    base_ok = ~hard[:, list(limb_base)].any(axis=-1, keepdims=True)
    inconsistent = (m.limb_residual > cfg.limb_max_residual) & ~hard & base_ok
    flags[..., COLUMN[QualityReason.LIMB_LEAD_INCONSISTENT]] = inconsistent
    return flags, hard


def _record_flags(flags: B1, m: LeadMetrics, no_qrs: B1, missing: bool, cfg: GateConfig) -> B1:
    """Union of lead reasons plus the record-only ones."""
    record: B1 = np.logical_or.reduce(flags, axis=1)
    record[:, COLUMN[QualityReason.NO_QRS]] |= no_qrs
    record[:, COLUMN[QualityReason.TOO_SHORT]] = m.duration_s < cfg.min_duration_s
    record[:, COLUMN[QualityReason.MISSING_LIMB_LEADS]] = missing
    return record


def decide(m: LeadMetrics, leads: Sequence[str], cfg: GateConfig) -> Decision:
    names = [name.upper() for name in leads]
    flags, hard = lead_flags(m, cfg, [names.index(b) for b in _LIMB_BASE if b in names])
    required = [names.index(r.upper()) for r in cfg.required_leads if r.upper() in names]
    missing = len(required) < len(cfg.required_leads)
    qrs, qrs_ok = consensus(m.qrs_env, ~hard, m.env_fs, m.qrs_duration_s, cfg)
    record_flags = _record_flags(flags, m, ~qrs_ok, missing, cfg)
    reject = (
        record_flags[:, COLUMN[QualityReason.NON_FINITE]]
        | record_flags[:, COLUMN[QualityReason.TOO_SHORT]]
        | missing
        | ~qrs_ok
        | hard[:, required].any(axis=-1)
        | (hard.sum(axis=-1) > cfg.max_bad_leads)
    )
    lead_code = np.where(hard, 2, np.where(flags.any(axis=-1), 1, 0)).astype(np.int8)
    record_code = np.where(reject, 2, np.where(record_flags.any(axis=-1), 1, 0)).astype(np.int8)
    return Decision(flags, hard, lead_code, record_code, record_flags, qrs, qrs_ok)
