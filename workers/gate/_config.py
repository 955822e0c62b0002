"""Vocabulary and settings of the signal-quality gate.

Reason codes
------------

=========================  ==========  ================================================================
code                       lead level  meaning (threshold field in :class:`GateConfig`)
=========================  ==========  ================================================================
``non_finite``             bad         NaN/Inf samples; the record is always rejected
``lead_off``               bad         0.5-40 Hz RMS below ``flat_rms_mv`` or more than
                                       ``flat_run_fraction`` of the lead in constant runs
                                       >= ``flat_run_s`` (disconnected electrode, dropout)
``saturation``             bad         >= ``rail_min_fraction`` of samples at the ADC rail (``rails_mv``)
                                       or >= ``clip_min_fraction`` pinned at the lead's own max/min
``amplitude_implausible``  bad         > 0.5 Hz content reaches ``max_amplitude_mv`` (not physiological)
``baseline_wander``        soft / bad  power below ``wander_cutoff_hz`` over QRS-band power above
                                       ``wander_ratio_soft`` / ``wander_ratio_bad``
``high_freq_noise``        soft / bad  mean spectral density in ``hf_band_hz`` (capped below Nyquist,
                                       mains bands excluded) over that of the QRS band above
                                       ``hf_ratio_soft`` / ``hf_ratio_bad``; skipped when fewer than
                                       ``hf_min_width_hz`` of the band lie below Nyquist
``powerline``              soft / bad  a narrow 50/60 Hz peak (prominence >= ``line_min_prominence``)
                                       whose power over QRS-band power exceeds ``line_ratio_soft`` /
                                       ``line_ratio_bad``; only when fs > 2 * (line + ``line_margin_hz``)
``no_qrs``                 soft        this lead shows no plausible QRS train; record-level (reject)
                                       when fewer than ``min_qrs_leads`` usable leads show one
``limb_lead_inconsistent`` soft        a derived limb lead (III, aVR, aVL, aVF) departs from its
                                       Einthoven/Goldberger value computed from I and II by more
                                       than ``limb_max_residual`` (relative RMS)
``too_short``              record      fewer than ``min_duration_s`` seconds of signal
``missing_limb_leads``     record      a lead in ``required_leads`` is absent
=========================  ==========  ================================================================

"bad" leads have lead status ``reject``, are listed in ``bad_leads`` and are meant to be
masked by the model; "soft" leads have lead status ``degraded`` and are kept.

Record rule: ``reject`` on any non-finite sample, ``too_short``, ``missing_limb_leads``,
a bad required lead, more than ``max_bad_leads`` bad leads, or fewer than
``min_qrs_leads`` good leads with a plausible QRS train (``no_qrs``); otherwise
``degraded`` when any lead is bad or soft; otherwise ``pass``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from schemas.errors import ECGScreenError
from schemas.messages import QualityStatus


class QualityReason(StrEnum):
    """Why a lead or record is not clean. Stable: consumers switch on these (see module table)."""

    LEAD_OFF = "lead_off"
    SATURATION = "saturation"
    AMPLITUDE_IMPLAUSIBLE = "amplitude_implausible"
    BASELINE_WANDER = "baseline_wander"
    HIGH_FREQ_NOISE = "high_freq_noise"
    POWERLINE = "powerline"
    NO_QRS = "no_qrs"
    NON_FINITE = "non_finite"
    TOO_SHORT = "too_short"
    MISSING_LIMB_LEADS = "missing_limb_leads"
    LIMB_LEAD_INCONSISTENT = "limb_lead_inconsistent"


class GateInputError(ECGScreenError):
    """The arguments themselves are malformed (wrong rank, lead count or sampling rate)."""

    def __init__(self, detail: str) -> None:
        super().__init__("gate_input_invalid", detail)


@dataclass(frozen=True)
class GateConfig:
    """Every threshold of the gate. Values were checked on PTB-XL folds 1-8 (see ``workers/gate``)."""

    # --- record rule -------------------------------------------------------------------------
    # ECGCLIP needs I and II (the other limb leads are linear combinations of them).
    required_leads: tuple[str, ...] = ("I", "II")
    # With > 3 of 12 leads masked the model loses a whole territory (e.g. all of V1-V3).
    max_bad_leads: int = 3
    # Two independent leads must agree that there is a QRS train; one lead alone is too easily
    # fooled by a rhythmic artefact. Capped at the number of leads present.
    min_qrs_leads: int = 2
    # The model reads 10 s windows; below 5 s rate and rhythm features are unreliable.
    min_duration_s: float = 5.0

    # --- lead off ----------------------------------------------------------------------------
    # Clean PTB-XL leads have >= ~0.02 mV RMS in 0.5-40 Hz (lowest: small aVL/III); a floating
    # or shorted input is at quantisation level (~1-5 uV).
    flat_rms_mv: float = 0.005
    # A real ECG never holds the exact same sample value for 0.2 s; dropouts (sample-and-hold
    # or zero fill) do.
    flat_run_s: float = 0.2
    # Lead off when more than a fifth of the record sits in such runs.
    flat_run_fraction: float = 0.2

    # --- saturation --------------------------------------------------------------------------
    # "At the rail" = within 0.2 % of the ADC span of either rail (a few LSB of a 16-bit ADC).
    rail_tolerance_fraction: float = 0.002
    # 0.2 % of samples (20 ms per 10 s, i.e. more than a single spike) at the rail.
    rail_min_fraction: float = 0.002
    # Without rails: >= 1 % of samples exactly at the lead's max or min means flat-topped
    # (clipped) peaks; a clean lead reaches its extreme in 1-3 samples.
    clip_min_fraction: float = 0.01
    # ... reached in at least 3 separate runs (clipped beats); a single held stretch at the end
    # of the record (seen in PTB-XL) is not clipping.
    clip_min_visits: int = 3

    # --- amplitude ---------------------------------------------------------------------------
    # Largest physiological QRS is ~5-7 mV (LVH, precordial); > 10 mV above 0.5 Hz is artefact
    # or a unit error (uV sent as mV).
    max_amplitude_mv: float = 10.0

    # --- spectral bands ----------------------------------------------------------------------
    diag_band_hz: tuple[float, float] = (0.5, 40.0)  # diagnostic band for the lead-off RMS
    qrs_band_hz: tuple[float, float] = (5.0, 15.0)  # where QRS energy peaks (Pan-Tompkins)
    wander_cutoff_hz: float = 0.5  # below the slowest heart rate harmonic that matters (~0.67 Hz)
    hf_band_hz: tuple[float, float] = (40.0, 150.0)  # EMG lives 20-500 Hz; ECG power above 40 Hz is tiny
    hf_min_width_hz: float = 5.0  # below this much usable band the density estimate is too noisy
    line_freqs_hz: tuple[float, ...] = (50.0, 60.0)  # mains in Europe/Asia and the Americas
    line_half_width_hz: float = 1.0  # mains drifts ±0.2 Hz; ±1 Hz keeps leakage of a 2 s record
    line_margin_hz: float = 5.0  # need the peak and its side bands strictly below Nyquist

    # --- noise thresholds (soft = degraded lead, bad = masked lead) ----------------------------
    wander_ratio_soft: float = 10.0
    wander_ratio_bad: float = 100.0
    hf_ratio_soft: float = 0.1
    hf_ratio_bad: float = 0.5
    line_ratio_soft: float = 0.1
    line_ratio_bad: float = 1.0
    line_min_prominence: float = 10.0  # a mains peak is narrow: its density >> its side bands

    # --- QRS detection -----------------------------------------------------------------------
    qrs_window_s: float = 0.1  # moving-window integration ~ QRS width
    qrs_refractory_s: float = 0.2  # no two beats closer than 200 ms (300 bpm)
    qrs_edge_s: float = 0.05  # ignore FFT-filter wrap-around at both ends
    qrs_peak_quantile: float = 0.98  # robust "R-peak level": ignores a single spike < 2 % long
    qrs_threshold_fraction: float = 0.3  # detect beats at 30 % of the R-peak level
    qrs_floor_quantile: float = 0.2  # inter-beat level; still between beats at 250 bpm
    qrs_min_snr: float = 3.0  # beat level / inter-beat level; Gaussian noise gives ~1.5-2
    qrs_min_level_mv: float = 0.005  # envelope level of a tiny but real QRS
    hr_min_bpm: float = 25.0
    hr_max_bpm: float = 250.0

    # --- limb-lead consistency ---------------------------------------------------------------
    limb_max_residual: float = 0.3  # relative RMS; computed derived leads give ~0, noise ~0.1

    # Derived limb leads checked against I/II: (name, coefficient of I, coefficient of II).
    limb_formulas: tuple[tuple[str, float, float], ...] = (
        ("III", -1.0, 1.0),
        ("AVR", -0.5, -0.5),
        ("AVL", 1.0, -0.5),
        ("AVF", -0.5, 1.0),
    )

DEFAULT_CONFIG = GateConfig()


@dataclass(frozen=True, slots=True)
class RecordQuality:
    """The gate's verdict on one record (see module docstring for the rule)."""

    status: QualityStatus
    reasons: tuple[QualityReason, ...]
    bad_leads: tuple[str, ...]
    lead_status: tuple[QualityStatus, ...]
    lead_reasons: tuple[tuple[QualityReason, ...], ...]
    indices: dict[str, float]
