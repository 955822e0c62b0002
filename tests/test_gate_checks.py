"""The gate's newer checks: bursts, beat templates, pacing spikes, lead reversal and swaps."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.messages import QualityStatus
from tests.test_gate import LEADS, SIM_FS, band_noise, clean, idx
from workers.gate import GateConfig, QualityReason, RecordQuality, _beats, _bursts, _pacing, gate_record
from workers.gate.evaluate import r_peaks

PASS, DEGRADED, REJECT = QualityStatus.PASS, QualityStatus.DEGRADED, QualityStatus.REJECT
R = QualityReason
LIMB = ("I", "II", "III", "aVR", "aVL")


def only_lead_with(q: RecordQuality, reason: QualityReason) -> list[str]:
    return [name for name, reasons in zip(LEADS, q.lead_reasons, strict=True) if reason in reasons]


def pop(x: np.ndarray, lead: str, mv: float, fs: int = SIM_FS, at_s: float = 4.1) -> None:
    """Electrode pop: a step of ``mv`` decaying with tau 0.2 s, for 0.5 s."""
    start, width = round(at_s * fs), round(0.5 * fs)
    x[idx(lead), start : start + width] += (mv * np.exp(-np.arange(width) / fs / 0.2)).astype(np.float32)


# --- burst noise ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fs", [500, 100])
def test_electrode_pop_is_soft_burst_noise(fs: int) -> None:
    x = clean(fs)
    pop(x, "V2", 2.0, fs)
    q = gate_record(x, fs, LEADS)
    assert q.status is DEGRADED, q
    assert only_lead_with(q, R.BURST_NOISE) == ["V2"]
    assert q.bad_leads == ()


def test_emg_burst_is_burst_noise() -> None:
    x = clean()
    start = round(6.2 * SIM_FS)
    x[idx("V5"), start : start + SIM_FS // 2] += band_noise(SIM_FS // 2, SIM_FS, 20.0, 150.0, 0.15, seed=4)
    q = gate_record(x, SIM_FS, LEADS)
    assert only_lead_with(q, R.BURST_NOISE) == ["V5"]
    assert q.indices["max_burst_hf_ratio"] >= GateConfig().burst_hf_soft


def test_jump_dwarfing_every_beat_masks_the_lead() -> None:
    x = clean()
    start, width = 3 * SIM_FS, round(0.4 * SIM_FS)
    # Motion artefact: a +-6.5 mV swing at 5 Hz, > 10x the range of aVL's own beats (~1.2 mV).
    x[idx("aVL"), start : start + width] += 6.5 * np.sin(2 * np.pi * 5 * np.arange(width) / SIM_FS)
    q = gate_record(x, SIM_FS, LEADS)
    assert q.status is DEGRADED
    assert q.bad_leads == ("aVL",)
    assert R.BURST_NOISE in q.lead_reasons[idx("aVL")]


def test_static_noise_is_not_a_burst() -> None:
    x = clean()
    x[idx("V1")] += band_noise(x.shape[1], SIM_FS, 20.0, 150.0, 0.2, seed=5)
    q = gate_record(x, SIM_FS, LEADS)
    assert R.HIGH_FREQ_NOISE in q.lead_reasons[idx("V1")]
    assert R.BURST_NOISE not in q.reasons


def test_ectopic_beat_in_every_lead_is_not_a_burst() -> None:
    x = clean()
    beat = r_peaks(x, SIM_FS)[5]
    width = round(0.12 * SIM_FS)
    # A wide, tall beat seen (with different size) in every lead: ectopic, not an artefact.
    shape = np.hanning(2 * width).astype(np.float32) * 1.5
    gains = np.linspace(-1.0, 1.2, 12, dtype=np.float32)
    x[:, beat - width : beat + width] += gains[:, None] * shape
    q = gate_record(x, SIM_FS, LEADS)
    assert R.BURST_NOISE not in q.reasons, q


# --- beat templates ---------------------------------------------------------------------------------


def test_beats_that_do_not_repeat_are_beat_inconsistent() -> None:
    x = clean()
    k = idx("V4")
    # QRS still found (keeps the lead's beat train) but every beat is distorted differently.
    x[k] = 0.6 * x[k] + band_noise(x.shape[1], SIM_FS, 1.0, 12.0, 0.45, seed=9)
    q = gate_record(x, SIM_FS, LEADS)
    assert R.BEAT_INCONSISTENT in q.lead_reasons[k], q
    assert q.lead_status[k] is DEGRADED
    assert q.indices["min_template_corr"] < GateConfig().template_corr_soft


def test_template_correlation_is_high_on_clean_leads() -> None:
    q = gate_record(clean(), SIM_FS, LEADS)
    assert q.indices["min_template_corr"] > 0.9
    assert q.indices["template_beats"] >= 8


# --- pacing ---------------------------------------------------------------------------------------------


def paced(fs: int = SIM_FS, every: int = 1) -> np.ndarray:
    """Clean record with a 2 ms pulse 60 ms before every ``every``-th beat, in every lead."""
    x = clean(fs)
    gains = np.linspace(-1.0, 1.0, 12, dtype=np.float32) + 0.05
    for peak in r_peaks(x, fs)[::every]:
        x[:, peak - round(0.06 * fs)] += 1.5 * gains
    return x


def test_pacing_spikes_are_reported_and_degrade() -> None:
    q = gate_record(paced(), SIM_FS, LEADS)
    assert R.PACING_SPIKES in q.reasons
    assert q.status is DEGRADED
    assert all(R.PACING_SPIKES not in lr for lr in q.lead_reasons)  # a record-level finding
    assert q.indices["pacing_spikes_before_beats"] >= 8


def test_pacing_can_be_report_only() -> None:
    q = gate_record(paced(), SIM_FS, LEADS, GateConfig(pacing_degrades=False))
    assert R.PACING_SPIKES in q.reasons
    assert q.status is PASS


def test_a_few_spikes_are_not_a_paced_rhythm() -> None:
    q = gate_record(paced(every=5), SIM_FS, LEADS)  # 2-3 pulses in 10 s
    assert R.PACING_SPIKES not in q.reasons
    assert q.indices["pacing_spikes"] >= 1


def test_pacing_is_not_claimed_at_100_hz() -> None:
    q = gate_record(paced(100), 100, LEADS)
    assert R.PACING_SPIKES not in q.reasons
    assert q.indices["pacing_spikes"] == -1.0


# --- cross-lead consistency -------------------------------------------------------------------------


def la_ra_reversed(fs: int) -> np.ndarray:
    x = clean(fs)
    x[idx("I")] *= -1.0
    x[[idx("II"), idx("III")]] = x[[idx("III"), idx("II")]]
    x[[idx("aVR"), idx("aVL")]] = x[[idx("aVL"), idx("aVR")]]
    return x


@pytest.mark.parametrize("fs", [500, 100])
def test_la_ra_reversal_is_flagged_and_rejected(fs: int) -> None:
    q = gate_record(la_ra_reversed(fs), fs, LEADS)
    assert q.status is REJECT
    assert R.LIMB_LEAD_REVERSAL in q.reasons
    assert only_lead_with(q, R.LIMB_LEAD_REVERSAL) == list(LIMB)
    assert set(q.bad_leads) == set(LIMB)
    assert R.LIMB_LEAD_INCONSISTENT not in q.reasons  # a reversal keeps Einthoven's identities
    assert q.indices["lead_i_lateral_corr"] < 0


@pytest.mark.parametrize("fs", [500, 100])
def test_ra_ll_reversal_is_flagged(fs: int) -> None:
    """RA/LL inverts lead II (and, here, lead I too: I -> -III, upright III in this record)."""
    x = clean(fs)
    i, ii, iii = x[idx("I")].copy(), x[idx("II")].copy(), x[idx("III")].copy()
    x[idx("I")], x[idx("II")], x[idx("III")] = -iii, -ii, -i
    x[[idx("aVR"), idx("aVF")]] = x[[idx("aVF"), idx("aVR")]]
    q = gate_record(x, fs, LEADS, GateConfig(reversal_masks_leads=False))
    assert q.status is DEGRADED, q
    assert {"I", "II", "III", "aVR"} <= set(only_lead_with(q, R.LIMB_LEAD_REVERSAL))
    assert q.bad_leads == ()
    assert q.indices["lead_ii_lateral_corr"] < 0 and q.indices["lead_ii_p_wave_mv"] < 0
    assert gate_record(clean(fs), fs, LEADS).indices["lead_ii_lateral_corr"] > 0


def test_reversal_without_masking_degrades() -> None:
    q = gate_record(la_ra_reversed(SIM_FS), SIM_FS, LEADS, GateConfig(reversal_masks_leads=False))
    assert q.status is DEGRADED
    assert q.bad_leads == ()
    assert q.lead_status[idx("I")] is DEGRADED


def test_swapped_limb_channels_break_einthoven() -> None:
    x = clean()
    x[[idx("II"), idx("III")]] = x[[idx("III"), idx("II")]]
    q = gate_record(x, SIM_FS, LEADS)
    assert R.LIMB_LEAD_INCONSISTENT in q.reasons
    assert R.LIMB_LEAD_REVERSAL not in q.reasons


@pytest.mark.parametrize(("a", "b"), [("V1", "V4"), ("V2", "V5"), ("V3", "V6"), ("V3", "V4")])
def test_precordial_swap_masks_the_two_leads(a: str, b: str) -> None:
    x = clean()
    x[[idx(a), idx(b)]] = x[[idx(b), idx(a)]]
    q = gate_record(x, SIM_FS, LEADS)
    assert q.status is DEGRADED, q
    assert only_lead_with(q, R.PRECORDIAL_LEAD_SWAP) == [a, b]
    assert q.bad_leads == (a, b)
    assert q.indices["precordial_swap_gain"] > GateConfig().precordial_swap_bad


@pytest.mark.parametrize("fs", [500, 100])
def test_subtle_precordial_swap_is_soft(fs: int) -> None:
    """V5/V6 look alike: a margin between the soft and bad thresholds flags, but keeps, the leads."""
    x = clean(fs)
    x[[idx("V5"), idx("V6")]] = x[[idx("V6"), idx("V5")]]
    q = gate_record(x, fs, LEADS)
    cfg = GateConfig()
    assert cfg.precordial_swap_soft < q.indices["precordial_swap_gain"] < cfg.precordial_swap_bad
    assert only_lead_with(q, R.PRECORDIAL_LEAD_SWAP) == ["V5", "V6"]
    assert q.bad_leads == () and q.status is DEGRADED


def test_recorded_precordial_order_scores_best_on_a_clean_record() -> None:
    assert gate_record(clean(), SIM_FS, LEADS).indices["precordial_swap_gain"] < 0.0


def test_morphology_checks_need_their_leads() -> None:
    keep = [k for k, name in enumerate(LEADS) if name not in ("V5", "V6", "V3")]
    q = gate_record(la_ra_reversed(SIM_FS)[keep], SIM_FS, [LEADS[k] for k in keep])
    assert R.LIMB_LEAD_REVERSAL not in q.reasons and R.PRECORDIAL_LEAD_SWAP not in q.reasons
    assert q.indices["lead_i_lateral_corr"] == -1.0 and q.indices["precordial_swap_gain"] == -1.0


# --- small pieces ---------------------------------------------------------------------------------------


def test_masked_median_ignores_invalid_entries() -> None:
    v = np.array([[5.0, 1.0, 9.0, 3.0], [2.0, 2.0, 2.0, 2.0]], dtype=np.float32)
    ok = np.array([[True, True, False, True], [False, False, False, False]])
    out = _bursts.masked_median(v, ok, axis=-1)
    assert out[0] == 3.0 and np.isinf(out[1])


def test_window_ratio_sees_one_loud_window() -> None:
    x = np.tile(np.sin(np.linspace(0, 40 * np.pi, 1000, dtype=np.float32)), (1, 1, 1))
    x[..., 500:540] *= 10.0
    ratio = _bursts.window_ratio(x, 100.0, 0.5, 3, 0.25, "range")
    assert ratio[0, 0] > 5.0
    assert _bursts.window_ratio(x[..., :100], 100.0, 0.5, 3, 0.25, "range")[0, 0] == -1.0


def test_beat_ahead_and_coupling() -> None:
    beats = np.zeros((1, 20), dtype=bool)
    beats[0, [5, 15]] = True
    ahead = _pacing.beat_ahead(beats, 3)
    assert ahead[0].tolist() == [i in (2, 3, 4, 5, 12, 13, 14, 15) for i in range(20)]
    onsets = np.zeros((1, 100), dtype=bool)
    onsets[0, [20, 60, 95]] = True  # at fs 100 vs env_fs 20: indices 4, 12, 19
    assert _pacing.couple(onsets, beats, 20.0, 100.0, 0.15)[0] == 2.0


def test_beat_positions_pads_and_caps() -> None:
    peaks = np.zeros((2, 10), dtype=bool)
    peaks[0, [1, 4, 8]] = True
    assert _beats.beat_positions(peaks, 2).tolist() == [[1, 4], [-1, -1]]


@pytest.mark.parametrize(
    ("reason", "noise"),
    [
        (R.POWERLINE, lambda t: 0.1 * np.sin(2 * np.pi * 50.0 * t)),
        (R.BASELINE_WANDER, lambda t: 1.5 * np.sin(2 * np.pi * 0.3 * t)),
        (R.HIGH_FREQ_NOISE, lambda t: band_noise(t.size, SIM_FS, 20.0, 150.0, 0.1, seed=3)),
    ],
)
def test_visible_noise_on_a_large_lead_is_soft(reason: QualityReason, noise: object) -> None:
    """Absolute floors: noise visible at 10 mm/mV is flagged even where the QRS dwarfs it."""
    x = clean()
    k = idx("V4")  # the largest lead of the simulated record
    x[k] += np.asarray(noise(np.arange(x.shape[1]) / SIM_FS), dtype=np.float32)  # type: ignore[operator]
    q = gate_record(x, SIM_FS, LEADS)
    assert reason in q.lead_reasons[k], q
    assert q.lead_status[k] is DEGRADED and q.bad_leads == ()
