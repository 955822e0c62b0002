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
    out = np.zeros(x.shape[:-1], dtype=np.float32)
    if n <= steps:
        return out
    # Fast path: a run of >= run_len samples covers >= 4 successive points of the grid
    # 0, h, 2h, ... (h = run_len // 4), all equal; only leads showing that need the exact
    # count (a real ECG rarely repeats one value 4 times at 50 ms spacing).
    candidates = np.flatnonzero(_grid_repeats(x, max(run_len // 4, 1)))
    if candidates.size == 0:
        return out
    flat = x.reshape(-1, n)[candidates]
    out.reshape(-1)[candidates] = _exact_run_fraction(flat, steps)
    return out


def _grid_repeats(x: F32, step: int) -> NDArray[np.bool_]:
    grid = x[..., ::step]
    same = grid[..., 1:] == grid[..., :-1]
    return (same[..., 2:] & same[..., 1:-1] & same[..., :-2]).any(axis=-1)


def _exact_run_fraction(x: F32, steps: int) -> F32:
    """Per row of (R, N): fraction of samples starting ``steps`` equal successive samples."""
    n = x.shape[-1]
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
    out = np.zeros(x.shape[:-1], dtype=np.float32)
    for extreme in (x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)):
        at = x == extreme
        # Fewer samples at the extreme than visits required: no plateau, skip the run count.
        rows = np.flatnonzero(at.sum(axis=-1) >= min_visits)
        if rows.size:
            sub = at.reshape(-1, x.shape[-1])[rows]
            out.reshape(-1)[rows] = np.maximum(out.reshape(-1)[rows], _side_plateau(sub, min_visits))
    return out


def rail_fraction(x: F32, rails_mv: F32, tolerance_fraction: float) -> F32:
    """Fraction of samples within ``tolerance_fraction`` of the ADC span of either rail.

    ``rails_mv`` is (B, L, 2) low/high; non-finite rails compare False and count nothing.
    """
    low = rails_mv[..., 0:1]
    high = rails_mv[..., 1:2]
    tol = np.abs(high - low) * np.float32(tolerance_fraction)
    near = (x <= low + tol) | (x >= high - tol)
    return near.mean(axis=-1, dtype=np.float32) if x.shape[-1] else np.zeros(x.shape[:-1], np.float32)
