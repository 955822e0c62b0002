"""From per-lead indices to reason flags, lead status and record status, all vectorised."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ._config import GateConfig, QualityReason
from ._crosslead import PRECORDIAL
from ._metrics import LeadMetrics
from ._qrs import QrsStats, consensus

B1 = NDArray[np.bool_]

# Column order of the flag array; sorted by code so that picked reasons come out sorted.
REASONS: tuple[QualityReason, ...] = tuple(sorted(QualityReason, key=lambda r: r.value))
COLUMN = {reason: k for k, reason in enumerate(REASONS)}
_LIMB_BASE = ("I", "II")  # leads the derived limb leads are computed from
# Leads an LA/RA reversal relabels (aVF, from LL against the mean of LA and RA, is unchanged).
_REVERSED = ("I", "II", "III", "AVR", "AVL")
_REVERSED_RA_LL = ("I", "II", "III", "AVR", "AVF")  # aVL, from LA against the mean of RA and LL, stays
# Reasons that never make the record degraded by themselves (when so configured).
_RECORD_ONLY_INFO = (QualityReason.PACING_SPIKES,)


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
    out = {r: ((v >= soft) & live, (v >= bad) & live) for r, (v, soft, bad) in pairs.items()}
    between = m.hf_between_mv
    hf_soft, hf_bad = out[QualityReason.HIGH_FREQ_NOISE]
    out[QualityReason.HIGH_FREQ_NOISE] = (
        hf_soft | ((between >= cfg.hf_between_soft_mv) & live), hf_bad | ((between >= cfg.hf_between_bad_mv) & live)
    )
    # Absolute floors: noise visible on paper at standard gain, however large the QRS.
    floors = {
        QualityReason.BASELINE_WANDER: m.wander_rms_mv >= cfg.wander_rms_soft_mv,
        QualityReason.HIGH_FREQ_NOISE: m.hf_rms_mv >= cfg.hf_rms_soft_mv,
        QualityReason.POWERLINE: m.line_rms_mv >= cfg.line_rms_soft_mv,
    }
    for reason, floor in floors.items():
        out[reason] = (out[reason][0] | (floor & live), out[reason][1])
    # A burst is a jump in amplitude (pop, step), in slope (EMG/motion burst) or a swamped beat.
    jump = (m.burst_range >= cfg.burst_range_soft) | (m.burst_hf >= cfg.burst_hf_soft) | (m.burst_beats >= 1)
    # Masked only when the jump dwarfs every beat (it would dominate the model's input scaling).
    out[QualityReason.BURST_NOISE] = (jump & live, (m.burst_range >= cfg.burst_range_bad) & live)
    return out


def _positions(names: Sequence[str], wanted: Sequence[str]) -> list[int]:
    return [names.index(w) for w in wanted if w in names]


def _reversal(m: LeadMetrics, names: Sequence[str], hard: B1, cfg: GateConfig) -> NDArray[np.bool_]:
    """(B, 2) reversal cues in lead I (LA/RA) and lead II (RA/LL): discordant with V5/V6 and
    the lead's P wave or QRS negative."""
    limb = m.cross.limb
    inverted = (limb.p_wave_mv < cfg.reversal_p_wave_mv) | (limb.qrs_polarity < cfg.reversal_qrs_polarity_max)
    cues_ok = np.stack([~hard[:, _positions(names, (lead, "V5", "V6"))].any(axis=-1) for lead in ("I", "II")], -1)
    return limb.available & cues_ok & (limb.lateral_corr < cfg.reversal_lateral_corr_max) & inverted


def _precordial_swap(m: LeadMetrics, names: Sequence[str], hard: B1, cfg: GateConfig) -> tuple[B1, B1]:
    """(B, L) soft and bad flags on the two leads of a likely precordial swap."""
    order = m.cross.precordial
    usable = order.available & ~hard[:, _positions(names, PRECORDIAL)].any(axis=-1)
    rows = np.arange(hard.shape[0])[:, None]

    def on_pair(swapped: B1) -> B1:
        out = np.zeros(hard.shape, dtype=bool)
        out[rows, order.pair.clip(0)] = swapped[:, None]
        return out

    soft = usable & (order.gain > cfg.precordial_swap_soft)
    return on_pair(soft), on_pair(soft & (order.gain > cfg.precordial_swap_bad))


def _cross_lead_flags(m: LeadMetrics, names: Sequence[str], flags: B1, hard: B1, cfg: GateConfig) -> None:
    """Add (in place) morphology reasons, which need the other leads' verdicts first."""
    cues = _reversal(m, names, hard, cfg)
    la_ra, ra_ll = cues[:, 0], cues[:, 1] & ~cues[:, 0]
    relabelled = np.zeros(hard.shape, dtype=bool)
    relabelled[:, _positions(names, _REVERSED)] = la_ra[:, None]
    suspect = np.zeros(hard.shape, dtype=bool)  # RA/LL: a weaker cue, so degraded, not masked
    suspect[:, _positions(names, _REVERSED_RA_LL)] = ra_ll[:, None]
    swapped, swapped_bad = _precordial_swap(m, names, hard, cfg)
    flags[..., COLUMN[QualityReason.LIMB_LEAD_REVERSAL]] = relabelled | suspect
    flags[..., COLUMN[QualityReason.PRECORDIAL_LEAD_SWAP]] = swapped
    hard |= swapped_bad
    if cfg.reversal_masks_leads:
        hard |= relabelled


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
    # Beats that do not repeat: only meaningful where a beat train was found on the lead.
    unstable = (m.template_corr >= -1.0) & (m.template_corr < cfg.template_corr_soft) & m.qrs_ok & ~hard
    flags[..., COLUMN[QualityReason.BEAT_INCONSISTENT]] = unstable & (m.cross.templates.beats >= 3)[:, None]
    return flags, hard


def paced(m: LeadMetrics, cfg: GateConfig) -> B1:
    """(B,) enough spikes, each leading a beat, for a paced rhythm (never below the rate floor)."""
    needed = max(2.0, cfg.pacing_min_per_10s * m.duration_s / 10.0)
    return m.cross.pacing.coupled >= needed


def _record_flags(flags: B1, m: LeadMetrics, no_qrs: B1, missing: bool, cfg: GateConfig) -> B1:
    """Union of lead reasons plus the record-only ones."""
    record: B1 = np.logical_or.reduce(flags, axis=1)
    record[:, COLUMN[QualityReason.NO_QRS]] |= no_qrs
    record[:, COLUMN[QualityReason.TOO_SHORT]] = m.duration_s < cfg.min_duration_s
    record[:, COLUMN[QualityReason.MISSING_LIMB_LEADS]] = missing
    record[:, COLUMN[QualityReason.PACING_SPIKES]] = paced(m, cfg)
    return record


def _degrading(record_flags: B1, cfg: GateConfig) -> B1:
    """(B,) any reason that degrades the record (pacing only when configured so)."""
    counted = np.ones(record_flags.shape[-1], dtype=bool)
    if not cfg.pacing_degrades:
        counted[[COLUMN[r] for r in _RECORD_ONLY_INFO]] = False
    return np.asarray(record_flags[:, counted].any(axis=-1), dtype=bool)


def decide(m: LeadMetrics, leads: Sequence[str], cfg: GateConfig) -> Decision:
    names = [name.upper() for name in leads]
    flags, hard = lead_flags(m, cfg, [names.index(b) for b in _LIMB_BASE if b in names])
    _cross_lead_flags(m, names, flags, hard, cfg)
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
    record_code = np.where(reject, 2, np.where(_degrading(record_flags, cfg), 1, 0)).astype(np.int8)
    return Decision(flags, hard, lead_code, record_code, record_flags, qrs, qrs_ok)
