"""Entry points: validate, clean, measure, decide, and package results per record."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from schemas.messages import QualityStatus

from . import _metrics
from ._config import DEFAULT_CONFIG, GateConfig, GateInputError, QualityReason, RecordQuality
from ._rules import REASONS, Decision, decide

F32 = NDArray[np.float32]

# Finite samples are clipped to this before any arithmetic so float32 squares and FFT sums
# cannot overflow; it is 1000x the implausible-amplitude threshold, so no decision changes.
_SAMPLE_LIMIT_MV = 1.0e4
_STATUS = (QualityStatus.PASS, QualityStatus.DEGRADED, QualityStatus.REJECT)
_BIT_WEIGHTS = np.left_shift(np.int64(1), np.arange(len(REASONS), dtype=np.int64))
_HR_LEADS = 3  # heart rate = median over the 3 leads with the clearest QRS


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
    clipped = np.clip(x, -_SAMPLE_LIMIT_MV, _SAMPLE_LIMIT_MV)
    cleaned = np.where(finite, clipped, 0).astype(np.float32)
    if cleaned.shape[-1] == 0:  # nothing to measure: one zero sample keeps every pass well defined
        cleaned = np.zeros((*cleaned.shape[:-1], 1), dtype=np.float32)
    return cleaned, ~finite.all(axis=-1)


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


def _heart_rate(m: _metrics.LeadMetrics, good: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Median HR over the (up to) three good leads with the highest QRS SNR; -1 when none."""
    k = min(_HR_LEADS, good.shape[-1])
    if k == 0:
        return np.full(good.shape[0], -1.0)
    order = np.argsort(-np.where(good, m.qrs.snr, -np.inf), axis=-1, kind="stable")[:, :k]
    ok = np.take_along_axis(good, order, axis=-1)
    hr = np.sort(np.where(ok, np.take_along_axis(m.qrs.hr_bpm, order, axis=-1), np.inf), axis=-1)
    count = ok.sum(axis=-1)
    median = [hr[:, 0], (hr[:, 0] + hr[:, min(1, k - 1)]) / 2.0, hr[:, min(1, k - 1)]]
    return np.select([count == 1, count == 2, count >= 3], median, -1.0).astype(np.float64)


def _worst(values: NDArray[np.float32], reduce: str = "max") -> NDArray[np.float64]:
    """Per-record worst value over leads; NOT_AVAILABLE leads are ignored (-1 if all are)."""
    v = values.astype(np.float64)
    if v.shape[-1] == 0:
        return np.full(v.shape[0], -1.0)
    if reduce == "min":
        return v.min(axis=-1)
    return v.max(axis=-1)


def _indices(m: _metrics.LeadMetrics, d: Decision) -> dict[str, NDArray[np.float64]]:
    """Numeric indices behind the decision, one value per record."""
    cols = {
        "duration_s": np.full(m.rms_mv.shape[0], m.duration_s),
        "heart_rate_bpm": _heart_rate(m, d.qrs_good),
        "qrs_leads": d.qrs_good.sum(axis=-1).astype(np.float64),
        "bad_lead_count": d.hard.sum(axis=-1).astype(np.float64),
        "best_qrs_snr": _worst(m.qrs.snr),
        "min_rms_mv": _worst(m.rms_mv, "min"),
        "max_abs_mv": _worst(m.max_abs_mv),
        "max_flat_fraction": _worst(m.flat_fraction),
        "max_clip_fraction": _worst(m.clip_fraction),
        "max_rail_fraction": _worst(m.rail_fraction),
        "max_wander_ratio": _worst(m.wander_ratio),
        "max_hf_ratio": _worst(m.hf_ratio),
        "max_powerline_ratio": _worst(m.line_ratio),
        "max_limb_residual": _worst(m.limb_residual),
    }
    # JSON-safe: no NaN/Inf ever leaves the gate.
    return {k: np.where(np.isfinite(v), v, -1.0) for k, v in cols.items()}


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
