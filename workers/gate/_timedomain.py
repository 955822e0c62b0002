"""Sample-level checks on the raw (cleaned) batch: constant runs, clipped plateaus, ADC rails."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]


def constant_run_fraction(x: F32, run_len: int) -> F32:
    """Fraction of samples that start a run of >= ``run_len`` identical values, per lead.

    A sliding count of "equal to the previous sample" over ``run_len - 1`` steps; cumsum makes
    it O(N) for all leads at once.
    """
    n = x.shape[-1]
    steps = max(run_len - 1, 1)
    if n <= steps:
        return np.zeros(x.shape[:-1], dtype=np.float32)
    same = x[..., 1:] == x[..., :-1]
    counts = np.concatenate(
        [np.zeros((*x.shape[:-1], 1), dtype=np.int32), np.cumsum(same, axis=-1, dtype=np.int32)], axis=-1
    )
    full = (counts[..., steps:] - counts[..., :-steps]) == steps
    return (full.sum(axis=-1) / n).astype(np.float32)


def _side_plateau(at: NDArray[np.bool_], min_visits: int) -> F32:
    """Fraction of samples in ``at`` per lead, or 0 when it is reached in < ``min_visits`` runs."""
    visits = at[..., 0].astype(np.int64) + (at[..., 1:] & ~at[..., :-1]).sum(axis=-1)
    frac = at.mean(axis=-1, dtype=np.float32)
    return np.where(visits >= min_visits, frac, np.float32(0.0)).astype(np.float32)


def extreme_plateau_fraction(x: F32, min_visits: int) -> F32:
    """Fraction of samples sitting exactly at the lead's own maximum (or minimum), per lead.

    A clean lead reaches its extreme in a handful of samples; clipping pins many separate
    excursions (beats) to the same value. Counting only extremes visited in >= ``min_visits``
    separate runs ignores one held stretch (e.g. a recorder holding the last value at the end).
    """
    at_max = x == x.max(axis=-1, keepdims=True)
    at_min = x == x.min(axis=-1, keepdims=True)
    return np.maximum(_side_plateau(at_max, min_visits), _side_plateau(at_min, min_visits))


def rail_fraction(x: F32, rails_mv: F32, tolerance_fraction: float) -> F32:
    """Fraction of samples within ``tolerance_fraction`` of the ADC span of either rail.

    ``rails_mv`` is (B, L, 2) low/high; non-finite rails compare False and count nothing.
    """
    low = rails_mv[..., 0:1]
    high = rails_mv[..., 1:2]
    tol = np.abs(high - low) * np.float32(tolerance_fraction)
    near = (x <= low + tol) | (x >= high - tol)
    return near.mean(axis=-1, dtype=np.float32) if x.shape[-1] else np.zeros(x.shape[:-1], np.float32)
