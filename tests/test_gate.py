"""Signal-quality gate: one test per reason code, clean records, vectorisation, robustness."""

from __future__ import annotations

import json
import math
import warnings
from functools import cache

import neurokit2 as nk
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.signal import butter, sosfiltfilt

import workers.gate._config as gate_config
from schemas.messages import QualityStatus
from workers.gate import GateConfig, GateInputError, QualityReason, RecordQuality, gate_batch, gate_record

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
SIM_FS = 500
HEART_RATE = 70
PASS, DEGRADED, REJECT = QualityStatus.PASS, QualityStatus.DEGRADED, QualityStatus.REJECT
# Precordial leads as (a, b) in a * s + b * ds: different amplitude and QRS shape per lead.
_PRECORDIAL = ((-0.5, 0.5), (-0.3, 0.8), (0.4, 0.9), (1.2, 0.2), (1.3, -0.2), (0.9, -0.3))


@cache
def _clean_500(seed: int = 3) -> np.ndarray:
    """12-lead-like (12, 5000) mV record: one ECGSYN beat train, Einthoven-consistent limb leads."""
    s = nk.ecg_simulate(duration=10, sampling_rate=SIM_FS, heart_rate=HEART_RATE, noise=0, random_state=seed)
    s = sosfiltfilt(butter(2, 0.5, "high", fs=SIM_FS, output="sos"), s)  # ECGSYN adds breathing drift
    ds = np.gradient(s) * SIM_FS / 40.0
    lead_i, lead_ii = 0.6 * s + 0.3 * ds, 1.0 * s - 0.2 * ds
    limb = [lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2, lead_ii - lead_i / 2]
    x = np.stack([*limb, *[a * s + b * ds for a, b in _PRECORDIAL]])
    x += np.random.default_rng(seed).normal(0.0, 0.005, x.shape)  # amplifier noise floor
    x.setflags(write=False)
    return x.astype(np.float32)


def clean(fs: int = SIM_FS) -> np.ndarray:
    """A writable clean record at 500 Hz or (by decimation) 100 Hz."""
    return _clean_500()[:, :: SIM_FS // fs].copy()


def t_axis(fs: int, n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) / fs


def band_noise(n: int, fs: int, lo: float, hi: float, sigma: float, seed: int = 0) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal(n)
    y = sosfiltfilt(butter(4, [lo, min(hi, 0.45 * fs)], btype="band", fs=fs, output="sos"), w)
    return (y / y.std() * sigma).astype(np.float32)


def idx(name: str) -> int:
    return LEADS.index(name)


def assert_bad_lead(q: RecordQuality, lead: str, reason: QualityReason, status: QualityStatus) -> None:
    assert q.status is status, q
    assert reason in q.reasons
    assert reason in q.lead_reasons[idx(lead)]
    assert lead in q.bad_leads
    assert q.lead_status[idx(lead)] is REJECT


# --- clean records -------------------------------------------------------------------------------


@pytest.mark.parametrize("fs", [500, 100])
def test_clean_record_passes(fs: int) -> None:
    q = gate_record(clean(fs), fs, LEADS)
    assert q.status is PASS, q
    assert q.reasons == () and q.bad_leads == ()
    assert q.lead_status == (PASS,) * 12
    assert abs(q.indices["heart_rate_bpm"] - HEART_RATE) < 3


def test_powerline_not_measurable_at_100_hz() -> None:
    x = clean(100)
    x[idx("V6")] += 0.5 * np.sin(2 * np.pi * 50 * t_axis(100, x.shape[1])).astype(np.float32)
    q = gate_record(x, 100, LEADS)
    assert QualityReason.POWERLINE not in q.reasons
    assert q.indices["max_powerline_ratio"] == -1.0  # 50 Hz is Nyquist at 100 Hz: not checked


# --- one test per reason ---------------------------------------------------------------------------


@pytest.mark.parametrize("fs", [500, 100])
def test_flat_lead_is_lead_off(fs: int) -> None:
    x = clean(fs)
    x[idx("V3")] = 0.0
    assert_bad_lead(gate_record(x, fs, LEADS), "V3", QualityReason.LEAD_OFF, DEGRADED)


def test_dropout_runs_are_lead_off() -> None:
    x = clean()
    x[idx("V4"), 1000:4000] = x[idx("V4"), 1000]  # 6 s of sample-and-hold
    assert_bad_lead(gate_record(x, SIM_FS, LEADS), "V4", QualityReason.LEAD_OFF, DEGRADED)


def test_clipping_at_rail_is_saturation() -> None:
    x = clean()
    rails = np.tile(np.array([-32.767, 32.767], dtype=np.float32), (12, 1))
    rails[idx("V2")] = (-0.4, 0.4)
    x[idx("V2")] = np.clip(x[idx("V2")], -0.4, 0.4)
    assert_bad_lead(gate_record(x, SIM_FS, LEADS, rails_mv=rails), "V2", QualityReason.SATURATION, DEGRADED)


@pytest.mark.parametrize("fs", [500, 100])
def test_clipped_plateaus_without_rails_are_saturation(fs: int) -> None:
    x = clean(fs)
    v5 = x[idx("V5")]
    x[idx("V5")] = np.clip(v5, v5.min() * 0.6, v5.max() * 0.6)
    assert_bad_lead(gate_record(x, fs, LEADS), "V5", QualityReason.SATURATION, DEGRADED)


def test_huge_amplitude_is_implausible() -> None:
    x = clean()
    x[idx("V4")] *= 20.0  # uV-vs-mV style unit error
    assert_bad_lead(gate_record(x, SIM_FS, LEADS), "V4", QualityReason.AMPLITUDE_IMPLAUSIBLE, DEGRADED)


@pytest.mark.parametrize("fs", [500, 100])
def test_large_baseline_wander(fs: int) -> None:
    x = clean(fs)
    x[idx("V5")] += (6.0 * np.sin(2 * np.pi * 0.2 * t_axis(fs, x.shape[1]))).astype(np.float32)
    assert_bad_lead(gate_record(x, fs, LEADS), "V5", QualityReason.BASELINE_WANDER, DEGRADED)


def test_mild_baseline_wander_is_soft() -> None:
    x = clean()
    x[idx("V5")] += (2.5 * np.sin(2 * np.pi * 0.25 * t_axis(SIM_FS, x.shape[1]))).astype(np.float32)
    q = gate_record(x, SIM_FS, LEADS)
    assert q.status is DEGRADED
    assert q.lead_reasons[idx("V5")] == (QualityReason.BASELINE_WANDER,)
    assert q.lead_status[idx("V5")] is DEGRADED and q.bad_leads == ()


@pytest.mark.parametrize("fs", [500, 100])
def test_emg_noise_is_high_freq_noise(fs: int) -> None:
    x = clean(fs)
    x[idx("V1")] += band_noise(x.shape[1], fs, 20.0, 150.0, 0.5)
    assert_bad_lead(gate_record(x, fs, LEADS), "V1", QualityReason.HIGH_FREQ_NOISE, DEGRADED)


def test_moderate_emg_at_100_hz_is_seen_between_beats() -> None:
    """0.1 mV RMS: below the truncated-band ratio, above the between-beats floor."""
    x = clean(100)
    x[idx("V3")] += band_noise(x.shape[1], 100, 20.0, 45.0, 0.1, seed=3)
    q = gate_record(x, 100, LEADS)
    assert [LEADS[k] for k, r in enumerate(q.lead_reasons) if QualityReason.HIGH_FREQ_NOISE in r] == ["V3"]
    assert q.indices["max_hf_between_beats_mv"] >= GateConfig().hf_between_soft_mv
    assert gate_record(clean(100), 100, LEADS).indices["max_hf_between_beats_mv"] < GateConfig().hf_between_soft_mv
    assert gate_record(clean(500), 500, LEADS).indices["max_hf_between_beats_mv"] == -1.0  # full band used


@pytest.mark.parametrize("line_hz", [50.0, 60.0])
def test_mains_hum_is_powerline(line_hz: float) -> None:
    x = clean()
    x[idx("V6")] += (0.5 * np.sin(2 * np.pi * line_hz * t_axis(SIM_FS, x.shape[1]))).astype(np.float32)
    assert_bad_lead(gate_record(x, SIM_FS, LEADS), "V6", QualityReason.POWERLINE, DEGRADED)


@pytest.mark.parametrize(("fs", "lo", "hi"), [(500, 0.5, 150.0), (100, 0.5, 45.0), (500, 1.0, 15.0)])
def test_all_leads_noise_is_no_qrs(fs: int, lo: float, hi: float) -> None:
    n = 10 * fs
    x = np.stack([band_noise(n, fs, lo, hi, 0.3, seed=k) for k in range(12)])
    q = gate_record(x, fs, LEADS)
    assert q.status is REJECT
    assert QualityReason.NO_QRS in q.reasons
    assert q.indices["heart_rate_bpm"] == -1.0


def test_nan_is_non_finite_and_rejects() -> None:
    x = clean()
    x[idx("V2"), 100:110] = np.nan
    x[idx("V3"), 7] = np.inf
    q = gate_record(x, SIM_FS, LEADS)
    assert_bad_lead(q, "V2", QualityReason.NON_FINITE, REJECT)
    assert_bad_lead(q, "V3", QualityReason.NON_FINITE, REJECT)
    assert q.lead_reasons[idx("V1")] == ()  # the rest is still measured, on a cleaned copy


def test_short_record_is_too_short() -> None:
    q = gate_record(clean()[:, : 3 * SIM_FS], SIM_FS, LEADS)
    assert q.status is REJECT
    assert QualityReason.TOO_SHORT in q.reasons


def test_missing_lead_ii_is_missing_limb_leads() -> None:
    keep = [k for k, name in enumerate(LEADS) if name != "II"]
    q = gate_record(clean()[keep], SIM_FS, [LEADS[k] for k in keep])
    assert q.status is REJECT
    assert QualityReason.MISSING_LIMB_LEADS in q.reasons


def test_mislabelled_limb_lead_is_inconsistent() -> None:
    x = clean()
    x[idx("aVL")] = x[idx("V3")]
    q = gate_record(x, SIM_FS, LEADS)
    assert q.status is DEGRADED
    assert q.lead_reasons[idx("aVL")] == (QualityReason.LIMB_LEAD_INCONSISTENT,)
    assert q.lead_status[idx("aVL")] is DEGRADED and q.bad_leads == ()


# --- record rule -----------------------------------------------------------------------------------


def test_bad_required_lead_rejects() -> None:
    x = clean()
    x[idx("II")] = 0.0
    assert_bad_lead(gate_record(x, SIM_FS, LEADS), "II", QualityReason.LEAD_OFF, REJECT)


def test_too_many_bad_leads_rejects() -> None:
    x = clean()
    for name in ("V1", "V2", "V3", "V4"):
        x[idx(name)] = 0.0
    q = gate_record(x, SIM_FS, LEADS)
    assert q.status is REJECT and q.bad_leads == ("V1", "V2", "V3", "V4")
    relaxed = gate_record(x, SIM_FS, LEADS, GateConfig(max_bad_leads=4))
    assert relaxed.status is DEGRADED


def test_reasons_sorted_unique_and_lead_aligned() -> None:
    x = clean()
    x[idx("V1")] = 0.0
    x[idx("V6")] += (0.5 * np.sin(2 * np.pi * 50 * t_axis(SIM_FS, x.shape[1]))).astype(np.float32)
    q = gate_record(x, SIM_FS, LEADS)
    assert list(q.reasons) == sorted(set(q.reasons))
    assert len(q.lead_status) == len(q.lead_reasons) == 12
    assert set(q.reasons) == {r for lead in q.lead_reasons for r in lead}


# --- vectorisation ---------------------------------------------------------------------------------


def _variants() -> np.ndarray:
    flat, noisy, hum = clean(), clean(), clean()
    flat[idx("V3")] = 0.0
    noisy[idx("I")] += band_noise(noisy.shape[1], SIM_FS, 20.0, 150.0, 0.5)
    hum[:, :] += (0.3 * np.sin(2 * np.pi * 60 * t_axis(SIM_FS, hum.shape[1]))).astype(np.float32)
    return np.stack([clean(), flat, noisy, hum, np.zeros_like(flat)])


def test_batch_equals_per_record() -> None:
    batch = _variants()
    together = gate_batch(batch, SIM_FS, LEADS)
    alone = [gate_record(rec, SIM_FS, LEADS) for rec in batch]
    assert [q.status for q in together] == [PASS, DEGRADED, REJECT, REJECT, REJECT]
    for a, b in zip(together, alone, strict=True):
        assert (a.status, a.reasons, a.bad_leads) == (b.status, b.reasons, b.bad_leads)
        assert (a.lead_status, a.lead_reasons) == (b.lead_status, b.lead_reasons)
        assert a.indices == pytest.approx(b.indices, rel=1e-4, abs=1e-6)


def test_input_is_not_modified_and_no_warnings_leak() -> None:
    x = _variants()
    x[0, 0, :5] = np.nan
    before = x.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gate_batch(x, SIM_FS, LEADS)
    np.testing.assert_array_equal(x, before)


# --- malformed calls ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "leads", "fs"),
    [((12, 100), LEADS, 500.0), ((1, 12, 100), LEADS[:11], 500.0), ((1, 12, 100), LEADS, 0.0)],
)
def test_malformed_calls_raise_gate_input_error(shape: tuple[int, ...], leads: tuple[str, ...], fs: float) -> None:
    with pytest.raises(GateInputError):
        gate_batch(np.zeros(shape, np.float32), fs, leads)


def test_empty_batch() -> None:
    assert gate_batch(np.zeros((0, 12, 5000), np.float32), 500, LEADS) == []


def test_every_reason_is_documented() -> None:
    doc = gate_config.__doc__ or ""
    assert all(f"``{r.value}``" in doc for r in QualityReason)


# --- never raises ---------------------------------------------------------------------------------

FS_VALUES = st.sampled_from([50.0, 100.0, 250.0, 500.0, 1000.0])
ANY_FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
SHAPES = st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 3000))


def _check(results: list[RecordQuality], x: np.ndarray) -> None:
    assert len(results) == x.shape[0]
    for q, rec in zip(results, x, strict=True):
        assert len(q.lead_status) == len(q.lead_reasons) == x.shape[1]
        assert all(math.isfinite(v) for v in q.indices.values())
        json.dumps(q.indices, allow_nan=False)
        if not np.isfinite(rec).all():
            assert q.status is REJECT and QualityReason.NON_FINITE in q.reasons


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), shape=SHAPES, fs=FS_VALUES)
def test_never_raises_on_arbitrary_values(data: st.DataObject, shape: tuple[int, int, int], fs: float) -> None:
    x = data.draw(arrays(np.float32, shape, elements=ANY_FLOAT32, fill=ANY_FLOAT32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check(gate_batch(x, fs, LEADS[: shape[1]]), x)


@settings(max_examples=40, deadline=None)
@given(
    shape=SHAPES,
    fs=FS_VALUES,
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([0.0, 1e-30, 1e-3, 1.0, 1e3, 1e30, 3e38]),
    nan_rate=st.sampled_from([0.0, 0.001, 1.0]),
)
def test_never_raises_on_random_signals(
    shape: tuple[int, int, int], fs: float, seed: int, scale: float, nan_rate: float
) -> None:
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):  # 3e38 * N(0, 1) overflows float32 to inf on purpose
        x = (rng.standard_normal(shape) * scale).astype(np.float32)
    x[rng.random(shape) < nan_rate] = np.nan
    rails = np.tile(np.array([-1.0, 1.0], np.float32), (*shape[:2], 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check(gate_batch(x, fs, [f"L{k}" for k in range(shape[1])], rails_mv=rails), x)
