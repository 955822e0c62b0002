"""Vocabulary and settings of the signal-quality gate.

Reason codes
------------

==========================  ==========  ===============================================================
code                        lead level  meaning (threshold field in :class:`GateConfig`)
==========================  ==========  ===============================================================
``non_finite``              bad         NaN/Inf samples; the record is always rejected
``lead_off``                bad         0.5-40 Hz RMS below ``flat_rms_mv`` or more than
                                        ``flat_run_fraction`` of the lead in constant runs
                                        >= ``flat_run_s`` (disconnected electrode, dropout)
``saturation``              bad         >= ``rail_min_fraction`` of samples at the ADC rail (``rails_mv``)
                                        or >= ``clip_min_fraction`` pinned at the lead's own max/min
``amplitude_implausible``   bad         0.5-35 Hz content reaches ``max_amplitude_mv`` (not physiological)
``baseline_wander``         soft / bad  power below ``wander_cutoff_hz`` over QRS-band power above
                                        ``wander_ratio_soft`` / ``wander_ratio_bad``, or (soft) its RMS
                                        above ``wander_rms_soft_mv``
``high_freq_noise``         soft / bad  where ``hf_band_hz`` fits below Nyquist: its mean spectral density
                                        (mains bands excluded) over that of the QRS band above
                                        ``hf_ratio_soft`` / ``hf_ratio_bad``, or (soft) its RMS above
                                        ``hf_rms_soft_mv``; at lower rates: the typical RMS above 15 Hz
                                        between beats above ``hf_between_soft_mv`` / ``hf_between_bad_mv``
``powerline``               soft / bad  a narrow 50/60 Hz peak (prominence >= ``line_min_prominence``)
                                        whose power over QRS-band power exceeds ``line_ratio_soft`` /
                                        ``line_ratio_bad``, or (soft) whose RMS exceeds
                                        ``line_rms_soft_mv``; only when fs > 2 * (line + ``line_margin_hz``)
``burst_noise``             soft / bad  a short stretch jumps away from the rest of the lead: the largest
                                        1.5 s window over the median window of the 0.5-35 Hz range >=
                                        ``burst_range_soft`` (bad: ``burst_range_bad``), of the HF
                                        activity (mean abs. 2nd difference) >= ``burst_hf_soft``, or a
                                        beat swamped in this lead only (``burst_beat_*``)
``beat_inconsistent``       soft        the lead's beats do not repeat: mean correlation of its beats
                                        with its own template below ``template_corr_soft`` (the idea of
                                        Zhao 2018's template SQIs / Orphanidou's average correlation)
``no_qrs``                  soft        this lead shows no plausible QRS train (``qrs_min_snr``); record
                                        level (reject) when the mean normalised envelope of the usable
                                        leads shows none (``qrs_consensus_excess``, 25-250 bpm)
``limb_lead_inconsistent``  soft        a derived limb lead (III, aVR, aVL, aVF) departs from its
                                        Einthoven/Goldberger value computed from I and II by more
                                        than ``limb_max_residual`` (relative RMS): a mislabelled or
                                        swapped channel
``limb_lead_reversal``      bad / soft  limb electrodes reversed (identities still hold). LA/RA: lead I
                                        anti-correlated with V5/V6 (``reversal_lateral_corr_max``) and
                                        its P wave (``reversal_p_wave_mv``) or net QRS
                                        (``reversal_qrs_polarity_max``) negative; set on I, II, III,
                                        aVR, aVL, masked when ``reversal_masks_leads`` (so rejected).
                                        RA/LL: the same cues in lead II; set on I, II, III, aVR, aVF,
                                        soft (weaker cue). LA/LL is not detected
``precordial_lead_swap``    soft / bad  two chest leads out of order: a population model of V1..V6
                                        (:mod:`._precordial`) scores a single transposition above the
                                        recorded order by ``precordial_swap_soft`` (the two leads are
                                        degraded: "check the chest electrodes") or by
                                        ``precordial_swap_bad`` (they are masked)
``pacing_spikes``           record      >= ``pacing_min_per_10s`` narrow spikes (``pacing_spike_mv``,
                                        ``pacing_rms_factor``) in >= ``pacing_min_leads`` measured leads
                                        at once, each followed by a beat within ``pacing_beat_window_s``;
                                        only at fs >= ``pacing_min_fs_hz`` (400 Hz)
``too_short``               record      fewer than ``min_duration_s`` seconds of signal
``missing_limb_leads``      record      a lead in ``required_leads`` is absent
==========================  ==========  ===============================================================

"bad" leads have lead status ``reject``, are listed in ``bad_leads`` and are meant to be
masked by the model; "soft" leads have lead status ``degraded`` and are kept.

Record rule: ``reject`` on any non-finite sample, ``too_short``, ``missing_limb_leads``,
a bad required lead (so a limb-electrode reversal rejects), more than ``max_bad_leads``
bad leads, or no plausible QRS train in the cross-lead consensus of the usable leads
(``no_qrs``); otherwise ``degraded`` when any lead is bad or soft, or on ``pacing_spikes``
(unless ``pacing_degrades`` is False: then it is reported and the status is left alone);
otherwise ``pass``.

Sampling rate: every check takes ``fs`` explicitly. The 40-150 Hz band needs fs >= ~316 Hz
(95 % of Nyquist); below, what is left of it also holds the QRS's own tail (at 100 Hz,
40-47.5 Hz), so HF noise is measured between beats instead (15 Hz up). Mains is checked
only when fs > 2 * (line + margin), i.e. not at all at 100 Hz, where 50 Hz sits at Nyquist
and 60 Hz aliases to 40 Hz. Pacing spikes need >= 400 Hz: at 100-250 Hz the recorder's
anti-aliasing filter has merged a 0.1-2 ms pulse into the QRS, so nothing is claimed
(indices -1). Templates and the morphology checks run on a 0.5-35 Hz copy at <= 100 Hz and
work at every rate, except the precordial-order model, which needs its templates at 100 Hz
(input rates >= 100 Hz; below, n/a).

Validation (``ecgscreen gate check``, PTB-XL folds 1-8): new thresholds were set on the
944 records without annotation that exist only at 100 Hz (disjoint from the 500 Hz file)
unless stated otherwise (the absolute HF/mains floors and the pacing spike height were set
from physics and checked against the 500 Hz records without annotation, the only 500 Hz
data; the precordial-order model was fitted on the same 944). At 500 Hz: 0 % of the 263
records without annotation rejected (12.9 % degraded); every synthetic fault of
``workers.gate.evaluate`` found in >= 95 % of injections except swaps of neighbouring
precordial leads (~90 %), RA/LL reversal (~94 %) and LA/LL reversal (~1 %: it keeps I and
II upright); balanced accuracy against the annotations at least neurokit2's for
baseline_drift, static_noise and burst_noise (electrodes_problems has a single 500 Hz
record, whose noisy V1 the gate misses). At 100 Hz: 0.4 % rejected, the same faults found
(EMG between beats), agreement at least neurokit2's on all four columns (static_noise: both
at chance, the annotation is not visible at 100 Hz).
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
    BURST_NOISE = "burst_noise"
    PACING_SPIKES = "pacing_spikes"
    LIMB_LEAD_REVERSAL = "limb_lead_reversal"
    PRECORDIAL_LEAD_SWAP = "precordial_lead_swap"
    BEAT_INCONSISTENT = "beat_inconsistent"


class GateInputError(ECGScreenError):
    """The arguments themselves are malformed (wrong rank, lead count or sampling rate)."""

    def __init__(self, detail: str) -> None:
        super().__init__("gate_input_invalid", detail)


@dataclass(frozen=True)
class GateConfig:
    """Every threshold of the gate (see the module docstring for how they were checked)."""

    # --- record rule -------------------------------------------------------------------------
    # ECGCLIP needs I and II (the other limb leads are linear combinations of them).
    required_leads: tuple[str, ...] = ("I", "II")
    # With > 3 of 12 leads masked the model loses a whole territory (e.g. all of V1-V4); up to
    # 3 it still sees every territory through a neighbouring lead.
    max_bad_leads: int = 3
    # The model reads 10 s windows; below 5 s rate and rhythm features are unreliable.
    min_duration_s: float = 5.0

    # --- lead off ----------------------------------------------------------------------------
    # Clean PTB-XL leads have >= 0.016 mV RMS in 0.5-40 Hz (lowest: small aVL/III); a floating
    # or shorted input sits at quantisation/amplifier-noise level (~1-5 uV).
    flat_rms_mv: float = 0.005
    # A real ECG never holds the exact same sample value for 0.2 s; dropouts (sample-and-hold
    # or zero fill) do.
    flat_run_s: float = 0.2
    # Lead off when > 10 % of the record (1 s in 10) sits in such runs; clean PTB-XL max ~1.7 %
    # (a few records hold the last value for ~0.1 s at the end).
    flat_run_fraction: float = 0.1

    # --- saturation --------------------------------------------------------------------------
    # "At the rail" = within 0.1 % of the ADC span of either rail: 65 LSB of a 16-bit ADC
    # (0.07 mV at PTB-XL's ±32.8 mV), 4 LSB of a 12-bit one; closer than that is pinned.
    rail_tolerance_fraction: float = 0.001
    # 0.2 % of samples (20 ms per 10 s, i.e. more than a single spike) at the rail.
    rail_min_fraction: float = 0.002
    # Without rails: >= 1 % of samples exactly at the lead's max or min means flat-topped
    # (clipped) peaks; clean PTB-XL leads reach at most 0.4 %.
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
    line_freqs_hz: tuple[float, ...] = (50.0, 60.0)  # mains in Europe/Asia and the Americas
    line_half_width_hz: float = 1.0  # mains drifts ±0.2 Hz; ±1 Hz keeps leakage of a 2 s record
    line_margin_hz: float = 5.0  # need the peak and its side bands strictly below Nyquist

    # --- noise thresholds (soft = degraded lead, bad = masked lead) ----------------------------
    # Wander power (< 0.5 Hz) / QRS-band power. Clean PTB-XL leads: 99th pct 16-27, 99.9th
    # 56-126. Soft 30 ~ wander RMS 5.5x the QRS-band RMS (~1 mV swing on a typical lead);
    # bad 250 ~ 16x (several mV): beyond what a 0.5 Hz high-pass leaves without edge artefacts.
    wander_ratio_soft: float = 30.0
    wander_ratio_bad: float = 250.0
    # HF density / QRS-band density. Clean PTB-XL 500 Hz leads: 99.9th pct 0.074, max 0.12;
    # 0.2 mV RMS EMG on a typical lead gives ~0.1-0.5, 0.5 mV RMS > 0.5.
    hf_ratio_soft: float = 0.1
    hf_ratio_bad: float = 0.5
    # Mains power / QRS-band power. Clean PTB-XL: 0 on > 99.9 % of leads (no prominent peak);
    # 0.1 ~ 0.1 mV of hum on a typical lead (visible), 1.0 ~ hum as strong as the QRS band.
    line_ratio_soft: float = 0.1
    line_ratio_bad: float = 1.0
    line_min_prominence: float = 10.0  # a mains peak is narrow: its density >> its side bands
    # Absolute soft floors (noise visible at 10 mm/mV whatever the QRS size), each far above
    # the amplifier noise a diagnostic ECG allows (IEC 60601-2-25: <= 30 uV p-p, ~10 uV RMS):
    # wander RMS 0.75 mV = swings of ~ +-1 mV (10 mm), which shift the ST level of
    # neighbouring beats by far more than the 0.1 mV ST criteria (clean PTB-XL: 99.9th
    # percentile of leads ~0.95 mV, so ~1 % of clean records get a soft flag);
    wander_rms_soft_mv: float = 0.75
    # HF RMS 0.07 mV in 40-150 Hz (only where that whole band fits, fs >= ~316 Hz) = 0.4 mV
    # p-p fuzz (clean PTB-XL 500 Hz leads: max 0.066);
    hf_rms_soft_mv: float = 0.07
    # Where the 40-150 Hz band does not fit (fs < ~316 Hz), the absolute floor is measured
    # between beats instead: RMS above 15 Hz more than ``hf_between_guard_s`` from every QRS,
    # per ``hf_between_window_s`` window (>= ``hf_between_min_quiet`` of it between beats),
    # median over >= ``hf_between_min_windows`` windows (a burst moves only a few windows).
    hf_between_band_hz: tuple[float, float] = (15.0, 150.0)
    hf_between_guard_s: float = 0.08  # QRS onset/offset lie within ~60 ms of the R peak
    hf_between_window_s: float = 1.0
    hf_between_min_quiet: float = 0.25
    hf_between_min_windows: int = 3
    # 100 Hz-only records without annotation: 99th percentile of the worst lead 0.058 mV, 0.2 %
    # of records at 0.08; 0.1 mV RMS EMG on one lead: found in 100 % (gate check --rate 100).
    hf_between_soft_mv: float = 0.08
    hf_between_bad_mv: float = 0.3  # 3 mm of fuzz at 10 mm/mV: the lead's own beats drown
    # mains RMS 0.03 mV in a prominent peak = 0.085 mV p-p hum, about 1 mm on paper.
    line_rms_soft_mv: float = 0.03

    # --- QRS detection -----------------------------------------------------------------------
    # Detector band: 10-25 Hz keeps the steep QRS slopes and drops most T-wave energy (5-15 Hz
    # doubled the rate on ~5 % of PTB-XL records via T waves); it fits below Nyquist at 50 Hz.
    qrs_detect_band_hz: tuple[float, float] = (10.0, 25.0)
    qrs_window_s: float = 0.08  # moving-window integration ~ QRS width (longer merges fast beats)
    # No two beats closer than 200 ms (300 bpm): below 60 / hr_max_bpm so 250 bpm stays countable.
    qrs_refractory_s: float = 0.2
    qrs_edge_s: float = 0.05  # ignore FFT-filter wrap-around at both ends
    qrs_peak_quantile: float = 0.98  # robust "R-peak level": ignores a single spike < 2 % long
    # Beats at 40 % of the R-peak level: low enough for beats half the size of a PVC, high
    # enough to skip residual T waves.
    qrs_threshold_fraction: float = 0.4
    qrs_floor_quantile: float = 0.1  # inter-beat level; still between beats at 250 bpm
    # Per lead (soft no_qrs): beat level / floor. Clean PTB-XL leads: 0.1th pct ~4.8, 1st ~9;
    # white noise: 99th pct ~3.6.
    qrs_min_snr: float = 4.0
    qrs_min_level_mv: float = 0.005  # envelope level of a tiny but real QRS (clean min ~0.02)
    # Record (no_qrs -> reject): the mean normalised envelope of n usable leads needs
    # SNR >= 1 + excess / sqrt(n). 12 leads -> 1.87: independent noise reaches <= 1.6, clean
    # PTB-XL >= 6.8, simulated 200-240 bpm rhythms 2.5-2.8.
    qrs_consensus_excess: float = 3.0
    hr_min_bpm: float = 25.0  # below: asystole/extreme bradycardia or missed beats
    hr_max_bpm: float = 250.0  # above: flutter waves / noise counted as beats

    # --- limb-lead consistency ---------------------------------------------------------------
    limb_max_residual: float = 0.3  # relative RMS; computed derived leads give ~0, noise ~0.1

    # Derived limb leads checked against I/II: (name, coefficient of I, coefficient of II).
    limb_formulas: tuple[tuple[str, float, float], ...] = (
        ("III", -1.0, 1.0),
        ("AVR", -0.5, -0.5),
        ("AVL", 1.0, -0.5),
        ("AVF", -0.5, 1.0),
    )

    # --- burst noise -------------------------------------------------------------------------
    # 0.5 s segments, windows of 3 (1.5 s: every window holds a beat down to 40 bpm), the
    # first/last 0.25 s dropped (filter edges). Ratios are largest window / median window.
    burst_segment_s: float = 0.5
    burst_window_segments: int = 3
    burst_edge_s: float = 0.25
    # Peak-to-peak range (0.5-35 Hz copy): a PVC reaches ~2-3x the normal beat; soft 5 / bad
    # 10 means a jump well beyond any beat of the record (electrode pop, step, motion).
    # 100 Hz-only records without annotation: record max 99th percentile 4.7.
    burst_range_soft: float = 5.0
    burst_range_bad: float = 10.0  # the only "bad" burst: it would dominate the lead's scaling
    # Mean |second difference| (HF activity): noise floor in every window, an EMG/motion
    # burst multiplies it. Records of folds 1-8 held only at 100 Hz without annotation:
    # record max 99th percentile 2.1 (500 Hz clean: 2.9, a few real unannotated bursts).
    burst_hf_soft: float = 2.5
    # Beat view (detrended beat minus template, power over the template's power): >= 1.5
    # (the beat is swamped), >= 4x the lead's typical beat (not static noise), and at most 2
    # of the measured leads (I, II, V1-V6) changed at that beat, by >= 0.5 of their template
    # power or >= 0.1 mV RMS (1 mm: an ectopic beat or a step in every lead is global). One
    # such beat makes the lead soft. Beats within ``burst_edge_s`` of either end are not
    # judged (FFT filters wrap around there). Looking at the "clean" PTB-XL records (no
    # annotation) this flags, most show real unannotated steps or pops.
    burst_beat_swamped: float = 1.5
    burst_beat_over_time: float = 4.0
    burst_beat_changed: float = 0.5
    burst_beat_changed_mv: float = 0.1
    burst_beat_max_leads: int = 2

    # --- pacing spikes -----------------------------------------------------------------------
    # A 0.1-2 ms pulse survives only at >= 400 Hz (at 100-250 Hz the anti-aliasing filter has
    # merged it into the QRS): below this rate the check is skipped (indices -1).
    pacing_min_fs_hz: float = 400.0
    # Spikes are read in the second difference x[n] - (x[n-1] + x[n+1]) / 2 (gain rising as
    # f^2): a 1-2 sample pulse keeps most of its height there, a QRS at 500 Hz leaves < 0.3 mV.
    pacing_spike_mv: float = 0.3  # PTB-XL's paced record: 0.5-2 mV; clean leads stay below
    pacing_rms_factor: float = 8.0  # Gaussian EMG peaks stay within ~5 RMS of its own 2nd difference
    pacing_min_leads: int = 3  # a pulse reaches every lead; one electrode's twitch does not
    pacing_merge_s: float = 0.01  # pulse + ringing = one event
    pacing_beat_window_s: float = 0.35  # spike to QRS peak: AV delay (<= 300 ms) + ~50 ms
    # >= 4 spikes, each leading a beat, in 10 s (>= 24/min; scaled with the record length).
    pacing_min_per_10s: float = 4.0
    # Paced QRS/ST morphology is not what the model learnt: degrade (alert policy decides).
    pacing_degrades: bool = True

    # --- beat templates ----------------------------------------------------------------------
    # Templates are cut from a 0.5-35 Hz copy at the QRS envelope rate (<= 100 Hz): morphology
    # needs no more, and the beat positions live there.
    template_window_s: tuple[float, float] = (0.30, 0.45)  # P wave to end of T around the beat
    template_keep_corr: float = 0.5  # beats less similar than this do not shape the template
    template_max_beats: int = 64  # 250 bpm for ~15 s
    template_floor_mv: float = 0.02  # RMS floor of a template: a near-flat lead's noise is not "swamping"
    # Mean correlation of the beats with their template (soft "beat_inconsistent"): a lead
    # whose beats do not repeat is noise-dominated. 100 Hz-only records without annotation:
    # 1st percentile of leads 0.61, ~2 % of records have a lead below 0.5.
    template_corr_soft: float = 0.5

    # --- limb-electrode reversal (LA/RA; RA/LL soft) ----------------------------------------------------
    # Lead I anti-correlated with V5/V6 AND (P in I below -0.01 mV OR net QRS in I negative).
    # Correlation alone flags ~1.6 % of 100 Hz-only records without annotation (LAFB,
    # lateral MI, paced); the P/QRS cue brings that to ~0.5 % (e.g. AFib with negative QRS
    # in I), while a simulated reversal of the same records is still caught in ~97 %.
    # P at -0.01 mV: ten 1 uV steps below the baseline, beyond template noise.
    # The same thresholds on lead II (RA/LL) flag ~1.3 % of those records (inferior infarcts,
    # low atrial rhythms), hence soft there; with the lead-I cue they catch ~94 % of RA/LL.
    reversal_lateral_corr_max: float = 0.0
    reversal_p_wave_mv: float = -0.01
    reversal_qrs_polarity_max: float = 0.0
    # The limb leads of a reversed record are mislabelled: mask them (I, II needed -> reject).
    reversal_masks_leads: bool = True

    # --- precordial order ----------------------------------------------------------------------
    # Score margin of the best transposition over the recorded order (see _precordial). Set on
    # the 944 clean 100 Hz-only records the model was fitted on (``ecgscreen gate
    # fit-precordial`` prints the quantiles): soft at their 98th percentile (3.48), bad at the
    # 99.5th (6.90). Some of those top 2 % look truly swapped (ecg_id 497: R 0.81 mV in V2,
    # 0.22 mV in V3), as 0.4-4 % of clinical ECGs are; the rest are infarcts and conduction
    # defects with a broken R-wave progression, hence a soft flag before masking.
    precordial_swap_soft: float = 3.5
    precordial_swap_bad: float = 6.9


DEFAULT_CONFIG = GateConfig()


@dataclass(frozen=True, slots=True)
class RecordQuality:
    """The gate's verdict on one record (see module docstring for the rule).

    ``indices`` (floats, never NaN; -1 = not available): duration_s, heart_rate_bpm (from the
    cross-lead consensus beat train), qrs_consensus_snr, qrs_leads, bad_lead_count,
    best_lead_qrs_snr, min_rms_mv, and the worst lead's max_abs_mv, max_flat_fraction,
    max_clip_fraction, max_rail_fraction, max_wander_ratio, max_hf_ratio, max_hf_between_beats_mv,
    max_powerline_ratio, max_limb_residual, max_burst_range_ratio, max_burst_hf_ratio;
    min_template_corr (lowest lead), template_beats; pacing_spikes (spike events) and
    pacing_spikes_before_beats (those leading a beat; -1 below 400 Hz); lead_i_lateral_corr,
    lead_i_p_wave_mv, lead_i_qrs_polarity and the same three for lead II (lead_ii_*: reversal
    cues; -1 also when not available) and
    precordial_swap_gain.
    """

    status: QualityStatus
    reasons: tuple[QualityReason, ...]
    bad_leads: tuple[str, ...]
    lead_status: tuple[QualityStatus, ...]
    lead_reasons: tuple[tuple[QualityReason, ...], ...]
    indices: dict[str, float]
