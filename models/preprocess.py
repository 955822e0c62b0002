"""Raw ECG (any rate, any lead subset, mV) -> the model-ready array an InputSpec describes. Pure numpy/scipy.

Order of operations, and why it differs slightly from the textbook list:

1. select leads by name (case-insensitive) in spec order; derive missing limb leads from I and II;
2. resample to the spec rate (``resample_poly``, rational approximation of the rate ratio);
3. band-pass the WHOLE resampled record (zero-phase ``sosfiltfilt``), before cropping, so the
   filter's edge transients fall in the part that is cropped away and never ring on a zero pad;
4. center-crop to ``n_samples``;
5. clip to +-``clip_mv`` (after the high-pass, so baseline wander cannot push real signal into the clip);
6. per-lead z-score over the real samples only (std floored at 1 uV so a flat lead stays ~0
   instead of amplifying quantisation noise), then zero-pad short records at the END
   (padding before the z-score would shrink the std and shift the mean);
7. zero-fill spec leads that were missing or masked, and report their names.

Derived limb leads (Einthoven III = II - I; Goldberger aVR = -(I + II)/2, aVL = I - II/2,
aVF = II - I/2) are NOT reported as missing: these are exact identities of the limb electrodes,
not estimates, so the model sees the same signal a 12-lead recorder would have stored.
A masked lead is never used, neither directly nor as the source of a derivation.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from fractions import Fraction

import numpy as np
import numpy.typing as npt
from scipy.signal import butter, resample_poly, sosfiltfilt

from models.config import InputSpec
from schemas.errors import ECGScreenError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
RawRecord = tuple[np.ndarray, float, Sequence[str], Collection[str]]  # (signal_mv (L,N), fs, leads, masked)

# Lead = a * I + b * II for the four limb leads a 12-lead recorder does not store independently.
LIMB_FROM_I_II: dict[str, tuple[float, float]] = {
    "iii": (-1.0, 1.0),
    "avr": (-0.5, -0.5),
    "avl": (1.0, -0.5),
    "avf": (-0.5, 1.0),
}

ZSCORE_EPS_MV = 1e-3  # 1 uV: below any ECG ADC's resolution, so only truly flat leads hit it
MAX_RATIO_DENOMINATOR = 1000  # rational rate approximation: error < 1e-6 relative for ECG rates
BUTTER_ORDER = 2  # filtfilt doubles it: 4th-order magnitude response, zero phase
MIN_FILTER_SAMPLES = 16  # below this there is nothing meaningful to filter


class PreprocessError(ECGScreenError):
    """The raw record cannot be turned into model input (reason ``invalid_signal``)."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_signal", detail)


def _validated(signal_mv: np.ndarray, fs: float, leads: Sequence[str]) -> F64:
    x = np.asarray(signal_mv, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(leads) or x.shape[1] < 1:
        raise PreprocessError(f"signal shape {x.shape} does not match {len(leads)} leads x >=1 samples")
    if not (np.isfinite(fs) and fs > 0):
        raise PreprocessError(f"sampling rate must be a positive finite number, got {fs!r}")
    if len({lead.lower() for lead in leads}) != len(leads):
        raise PreprocessError(f"duplicate lead names in {tuple(leads)}")
    if not np.isfinite(x).all():
        raise PreprocessError("signal contains NaN or infinity")
    return x


def select_leads(
    x: F64, leads: Sequence[str], spec_leads: Sequence[str], masked: Collection[str] = ()
) -> tuple[F64, tuple[str, ...]]:
    """Rows in ``spec_leads`` order (derived limb leads where possible); zero rows + names for the rest."""
    masked_keys = {m.lower() for m in masked}
    pairs = zip((name.lower() for name in leads), x, strict=True)
    available = {key: row for key, row in pairs if key not in masked_keys}
    out = np.zeros((len(spec_leads), x.shape[1]), dtype=np.float64)
    absent: list[str] = []
    for i, name in enumerate(spec_leads):
        row = None if name.lower() in masked_keys else _lead_row(name.lower(), available)
        if row is None:
            absent.append(name)
        else:
            out[i] = row
    return out, tuple(absent)


def _lead_row(key: str, available: dict[str, F64]) -> F64 | None:
    if key in available:
        return available[key]
    coef = LIMB_FROM_I_II.get(key)
    if coef is None or "i" not in available or "ii" not in available:
        return None
    return coef[0] * available["i"] + coef[1] * available["ii"]


def resample(x: F64, fs_in: float, fs_out: float) -> F64:
    """Polyphase resampling along the last axis by a rational approximation of ``fs_out / fs_in``."""
    ratio = Fraction(fs_out / fs_in).limit_denominator(MAX_RATIO_DENOMINATOR)
    if ratio == 1:
        return x
    if ratio == 0:
        raise PreprocessError(f"cannot resample {fs_in} Hz to {fs_out} Hz")
    # padtype="line": extend the record along its trend, not with zeros, so the DC offset of an
    # unfiltered lead does not turn into a step (and a ringing edge) at both ends.
    y = resample_poly(x, ratio.numerator, ratio.denominator, axis=-1, padtype="line")
    return np.asarray(y, dtype=np.float64)


def bandpass(x: F64, spec: InputSpec) -> F64:
    """Zero-phase Butterworth band-pass at the spec rate (high edge already clipped below Nyquist)."""
    band = spec.effective_bandpass_hz
    n = x.shape[-1]
    if band is None or n < MIN_FILTER_SAMPLES:
        return x
    fs = spec.sampling_rate_hz
    sos = butter(BUTTER_ORDER, band, btype="bandpass", fs=fs, output="sos")
    # One period of the lowest pass frequency of odd extension: settles the high-pass at the edges.
    padlen = min(n - 1, round(fs / band[0]))
    return np.asarray(sosfiltfilt(sos, x, axis=-1, padlen=padlen), dtype=np.float64)


def center_crop(x: F64, n: int) -> F64:
    extra = x.shape[-1] - n
    if extra <= 0:
        return x
    start = extra // 2
    return x[..., start : start + n]


def zscore(x: F64) -> F64:
    mean = x.mean(axis=-1, keepdims=True)
    std = np.maximum(x.std(axis=-1, keepdims=True), ZSCORE_EPS_MV)
    return (x - mean) / std


def pad_end(x: F64, n: int) -> F64:
    if x.shape[-1] >= n:
        return x
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


def transform(x: F64, fs: float, spec: InputSpec) -> F64:
    """Steps 2-6 on lead-selected records (..., L, N) sharing ``fs`` and N: every call is vectorised
    along the leading axes, so one call serves a whole group of a batch."""
    x = resample(x, fs, spec.sampling_rate_hz)
    x = center_crop(bandpass(x, spec), spec.n_samples)
    x = np.clip(x, -spec.clip_mv, spec.clip_mv)
    if spec.normalisation == "per_lead_zscore":
        x = zscore(x)
    return pad_end(x, spec.n_samples)


def prepare_record(
    signal_mv: np.ndarray,
    fs: float,
    leads: Sequence[str],
    spec: InputSpec,
    masked_leads: Collection[str] = (),
) -> tuple[F32, tuple[str, ...]]:
    """(L, N) mV at ``fs`` -> ((len(spec.leads), spec.n_samples) float32, spec leads missing or masked)."""
    out, results = prepare_many([(signal_mv, fs, leads, masked_leads)], spec)
    if isinstance(results[0], PreprocessError):
        raise results[0]
    return out[0], results[0]


def prepare_many(records: Sequence[RawRecord], spec: InputSpec, out: F32 | None = None,
                 ) -> tuple[F32, list[tuple[str, ...] | PreprocessError]]:
    """Many records at once: lead selection per record (cheap indexing), then ``transform`` once per
    group of equal rate and length. Writes ((B, L, N) float32) into ``out`` when given (e.g. shared
    memory); per record, the spec leads missing or masked, or the PreprocessError that refused it
    (its row stays zero). One bad record never costs the others."""
    n_leads = len(spec.leads)
    if out is None:
        out = np.zeros((len(records), n_leads, spec.n_samples), dtype=np.float32)
    results: list[tuple[str, ...] | PreprocessError] = []
    selected: dict[int, F64] = {}
    absent_of: dict[int, tuple[str, ...]] = {}
    groups: dict[tuple[float, int], list[int]] = {}
    for i, (signal_mv, fs, leads, masked) in enumerate(records):
        try:
            x, absent = select_leads(_validated(signal_mv, fs, leads), leads, spec.leads, masked)
        except PreprocessError as err:
            out[i] = 0.0
            results.append(err)
            continue
        selected[i], absent_of[i] = x, absent
        results.append(absent)
        groups.setdefault((float(fs), x.shape[1]), []).append(i)
    for (fs, _), idx in groups.items():
        out[idx] = transform(np.stack([selected[i] for i in idx]), fs, spec)
        for i in idx:
            out[i, [spec.leads.index(name) for name in absent_of[i]]] = 0.0
    return out, results


def prepare_batch(records: Sequence[RawRecord], spec: InputSpec) -> tuple[F32, list[tuple[str, ...]]]:
    """``prepare_many`` that refuses the whole batch on the first bad record."""
    x, results = prepare_many(records, spec)
    for r in results:
        if isinstance(r, PreprocessError):
            raise r
    return x, [r for r in results if not isinstance(r, PreprocessError)]
