"""Cross-lead consistency from beat templates: limb-electrode reversal and precordial order.

Limb (LA/RA) reversal. Recorders derive III, aVR, aVL, aVF from the measured I and II, so a
swapped electrode keeps every Einthoven/Goldberger identity; it shows in morphology instead:
lead I is inverted. Lead I normally shares the leftward axis of V5/V6 (its beat template
correlates positively with theirs) and has an upright P wave and a net positive QRS. A
reversal makes lead I anti-correlated with V5/V6 *and* turns its P wave or QRS negative. Left
anterior fascicular block, lateral infarction or a paced rhythm can also make lead I differ
from V5/V6, but keep its upright P (sinus) and dominant R: the second cue separates them.

Limb (RA/LL) reversal inverts lead II instead (and swaps aVR with aVF): the same cues on II.
They are weaker (inferior infarction and low atrial rhythms give a negative P or QRS in II,
and II correlates less with V5/V6 than I does), so this cue only degrades. LA/LL reversal
exchanges I and II and inverts III; both stay upright, so morphology alone rarely shows it.

Precordial order: see :mod:`._precordial` (a population model scores the recorded order of
V1..V6 against each single transposition).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from . import _precordial
from ._beats import Templates, _zscore

F32 = NDArray[np.float32]
NOT_AVAILABLE = -1.0
PRECORDIAL = ("V1", "V2", "V3", "V4", "V5", "V6")
_CUE_LEADS = ("I", "II")  # LimbMorphology's second axis
_TINY = np.float32(1e-6)


@dataclass(frozen=True)
class LimbMorphology:
    """Reversal cues of leads I and II, each (B, 2); NOT_AVAILABLE where a lead or the beats are missing."""

    lateral_corr: F32  # mean correlation of the lead's template with V5 and V6
    p_wave_mv: F32  # the lead's P-wave amplitude against the PR/TP baseline
    qrs_polarity: F32  # the lead's net QRS area / absolute area, in [-1, 1]
    available: NDArray[np.bool_]  # (B, 2) leads present and beats found (-1 is a valid correlation)


@dataclass(frozen=True)
class PrecordialOrder:
    gain: F32  # (B,) score margin of the best single transposition over the recorded order; 0 when n/a
    pair: NDArray[np.int64]  # (B, 2) lead positions (in ``leads``) of the best swap; -1 when none
    available: NDArray[np.bool_]  # (B,) I, II, V1-V6 present, beats found, templates at the model's rate


def _window_mean(t: F32, offsets_s: NDArray[np.float64], lo: float, hi: float) -> F32:
    sel = (offsets_s >= lo - 1e-9) & (offsets_s <= hi + 1e-9)
    return t[..., sel].mean(axis=-1) if sel.any() else np.zeros(t.shape[:-1], np.float32)


def _baseline(t: F32, offsets_s: NDArray[np.float64]) -> F32:
    """Isoelectric level: mean of the TP end (-300..-260 ms) and the PR segment (-70..-50 ms)."""
    return 0.5 * (_window_mean(t, offsets_s, -0.30, -0.26) + _window_mean(t, offsets_s, -0.07, -0.05))


def _qrs_polarity(t: F32, offsets_s: NDArray[np.float64], base: F32) -> F32:
    sel = (offsets_s >= -0.06 - 1e-9) & (offsets_s <= 0.06 + 1e-9)
    q = t[..., sel] - base[..., None]
    return (q.sum(axis=-1) / (np.abs(q).sum(axis=-1) + _TINY)).astype(np.float32)


def limb_morphology(tm: Templates, leads: Sequence[str]) -> LimbMorphology:
    """Cues of lead I (LA/RA reversal inverts it) and lead II (RA/LL reversal inverts it)."""
    names = [n.upper() for n in leads]
    batch = tm.template.shape[0]
    na = np.full((batch, len(_CUE_LEADS)), NOT_AVAILABLE, dtype=np.float32)
    lateral = [names.index(v) for v in ("V5", "V6") if v in names]
    present = [lead in names for lead in _CUE_LEADS]
    if not lateral or not any(present):
        return LimbMorphology(na, na.copy(), na.copy(), np.zeros((batch, len(_CUE_LEADS)), dtype=bool))
    rows = [names.index(lead) if ok else 0 for lead, ok in zip(_CUE_LEADS, present, strict=True)]
    cue = tm.template[:, rows]  # (B, 2, W)
    z = _zscore(tm.template)
    corr = np.einsum("bkw,blw->bkl", z[:, rows], z[:, lateral]).mean(axis=-1)
    base = _baseline(cue, tm.offsets_s)
    p_wave = _window_mean(cue, tm.offsets_s, -0.22, -0.10) - base
    polarity = _qrs_polarity(cue, tm.offsets_s, base)
    ok = (tm.beats > 0)[:, None] & np.array(present)[None, :]
    return LimbMorphology(_where(ok, corr), _where(ok, p_wave), _where(ok, polarity), ok)


def _where(ok: NDArray[np.bool_], values: F32) -> F32:
    return np.where(ok, values, np.float32(NOT_AVAILABLE)).astype(np.float32)


def precordial_order(tm: Templates, leads: Sequence[str], model: _precordial.PrecordialModel) -> PrecordialOrder:
    batch = tm.template.shape[0]
    t8 = _precordial.model_leads(tm.template, leads)
    fits = tm.fs == model.template_fs and tm.template.shape[-1] == model.template_samples
    if t8 is None or not fits:
        return PrecordialOrder(np.zeros(batch, np.float32), np.full((batch, 2), -1, np.int64), np.zeros(batch, bool))
    gain, best = _precordial.swap_gain(t8, model)
    names = [n.upper() for n in leads]
    chest = np.array([names.index(v) for v in PRECORDIAL])
    pair = chest[np.array(_precordial.PAIRS)[best]]
    ok = tm.beats > 0
    return PrecordialOrder(
        np.where(ok, gain, 0.0).astype(np.float32), np.where(ok[:, None], pair, -1).astype(np.int64), ok
    )
