"""One rfft per batch: band powers for every spectral check and zero-phase FFT-domain filters."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft
from numpy.typing import NDArray

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

# Endpoint windows for detrending: long enough to average out one sample of noise,
# short enough to stay within the isoelectric stretch of a beat.
_ENDPOINT_S = 0.02


def detrend_endpoints(x: F32, fs: float) -> F32:
    """Subtract the line joining the mean of the first and last 20 ms.

    Why: the rfft treats the record as periodic; a step at the wrap-around leaks a 1/f
    spectrum into every band and makes FFT-domain filters ring at both ends. (The mean left
    over only sits in the DC bin, which no band or filter here uses.)
    """
    n = x.shape[-1]
    w = int(min(max(1, round(_ENDPOINT_S * fs)), n))
    start = x[..., :w].mean(axis=-1, keepdims=True)
    end = x[..., n - w :].mean(axis=-1, keepdims=True)
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    y = x - start
    y -= (end - start) * ramp
    return y.astype(np.float32, copy=False)


def abs_second_difference(x: F32) -> F32:
    """|x[n] - (x[n-1] + x[n+1]) / 2|, zero at both ends, built in place (no big temporaries).

    A high-pass whose gain 1 - cos(2 pi f / fs) keeps a 1-2 sample spike whole and leaves a
    QRS sampled at 500 Hz with a few percent: spikes and HF bursts stand out in it.
    """
    out = np.zeros_like(x)
    if x.shape[-1] > 2:
        mid = out[..., 1:-1]
        np.add(x[..., :-2], x[..., 2:], out=mid)
        mid *= np.float32(-0.5)
        mid += x[..., 1:-1]
        np.abs(mid, out=mid)
    return out


def second_difference_gain(freqs: F64, fs: float) -> F32:
    """|response|^2 of the second difference per rfft bin (for its RMS via Parseval)."""
    return ((1.0 - np.cos(2.0 * np.pi * freqs / fs)) ** 2).astype(np.float32)


@dataclass(frozen=True)
class Spectrum:
    """rfft of a detrended (B, L, N) batch along the last axis."""

    coeffs: NDArray[np.complex64]  # (B, L, F)
    power: F32  # |coeffs|**2, (B, L, F)
    freqs: F64  # (F,) in Hz
    n: int  # samples per lead


def spectrum(xd: F32, fs: float) -> Spectrum:
    coeffs = scipy.fft.rfft(xd, axis=-1)
    power = (coeffs.real**2 + coeffs.imag**2).astype(np.float32, copy=False)
    freqs = scipy.fft.rfftfreq(xd.shape[-1], d=1.0 / fs)
    return Spectrum(coeffs=coeffs, power=power, freqs=freqs, n=xd.shape[-1])


def band_mask(freqs: F64, lo: float, hi: float) -> NDArray[np.bool_]:
    """Bins with lo <= f <= hi, never the DC bin (the mean carries no ECG information)."""
    return (freqs >= lo) & (freqs <= hi) & (freqs > 0)


def line_mask(freqs: F64, lines: Sequence[float], half_width: float) -> NDArray[np.bool_]:
    """Bins within ``half_width`` of any mains frequency or harmonic."""
    out = np.zeros(freqs.shape, dtype=bool)
    for line in lines:
        harmonic = np.round(freqs / line)
        out |= (harmonic >= 1) & (np.abs(freqs - harmonic * line) <= half_width)
    return out


def band_powers(power: F32, masks: Sequence[NDArray[np.bool_] | F32]) -> F32:
    """Sum of power over each mask (or per-bin weight): (B, L, F) @ (F, K) -> (B, L, K), one matmul."""
    weights = np.stack([m.astype(np.float32) for m in masks], axis=-1)
    return np.matmul(power, weights)


def mean_square(band_power: F32, n: int) -> F32:
    """Parseval: time-domain mean square of a band from its one-sided rfft power."""
    return (2.0 * band_power / float(max(n, 1)) ** 2).astype(np.float32, copy=False)


def raised_cosine_band(freqs: F64, lo: float, hi: float, width: float) -> F32:
    """Zero-phase band-pass response: 1 inside [lo, hi], cosine roll-off of ``width`` Hz outside.

    Why smooth edges: a brick-wall FFT filter rings (Gibbs) for the whole record; a few-Hz
    roll-off keeps the impulse response a few hundred ms long.
    """
    below = np.clip((freqs - (lo - width)) / width, 0.0, 1.0)
    above = np.clip(((hi + width) - freqs) / width, 0.0, 1.0)
    gain = np.minimum(0.5 - 0.5 * np.cos(np.pi * below), 0.5 - 0.5 * np.cos(np.pi * above))
    gain[freqs <= 0] = 0.0
    return gain.astype(np.float32)


def fft_filter(spec: Spectrum, response: F32) -> F32:
    """Apply a real, zero-phase frequency response (F,) to every lead: one irfft."""
    y = scipy.fft.irfft(spec.coeffs * response, n=spec.n, axis=-1)
    return y.astype(np.float32, copy=False)


def fft_filter_resampled(spec: Spectrum, response: F32, fs: float, max_rate: float) -> tuple[F32, float]:
    """Apply ``response`` and return the result at <= ``max_rate`` Hz, plus that rate.

    Why: the QRS envelope only needs ~10 ms resolution; an irfft of the lowest bins onto
    fewer samples filters and decimates in one step and makes every later pass cheaper.
    ``response`` must be ~0 above ``max_rate / 2``.
    """
    n_out = spec.n if fs <= max_rate else max(1, math.ceil(spec.n * max_rate / fs))
    bins = n_out // 2 + 1
    y = scipy.fft.irfft(spec.coeffs[..., :bins] * response[:bins], n=n_out, axis=-1)
    return (y * np.float32(n_out / spec.n)).astype(np.float32, copy=False), fs * n_out / spec.n
