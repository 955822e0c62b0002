"""Precordial electrode order: a population model of the chest leads, scored per ordering.

Why a model: a single record cannot say which order of its chest leads is right (any order
of six curves is self-consistent), but the population can. Across people, each chest
lead is close to a fixed linear blend of its neighbours and the limb leads (the heart
is near a dipole seen from six neighbouring angles), and along V1..V6 each beat
template resembles the next one. A swapped pair breaks both regularities.

For the recorded order and each of the 15 single transpositions of V1..V6 the score is

    s(order) = w . [log r_1 .. log r_6, log c_1 .. log c_5]

r_k: how badly the lead at chest position k is predicted from the seven other
independent leads (I, II, the other chest leads), each at lags of -20..+20 ms (a short
FIR filter, ridge-fitted on clean PTB-XL beat templates), over that lead's energy.
c_k: 1 - correlation of the templates at positions k and k+1 (the smoothness cue).
The weights w (all negative: a bad fit lowers the score) are a conditional logit fitted to
pick the true order among the 16 candidates, with swaps injected into clean records.
The index is the margin ``gain = max over swaps of s - s(recorded)``: large when a
transposition explains the record much better than the order it came in.

Everything runs on beat templates at 100 Hz (:mod:`._beats`), whatever the input rate.
:func:`fit` makes a model from templates (``ecgscreen gate fit-precordial`` runs it on
PTB-XL); the shipped one lies in ``precordial_model.json`` with its provenance.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._beats import _zscore
from ._config import GateInputError

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
FORMAT = "ecgscreen.gate.precordial-model/v1"
MODEL_FILE = "precordial_model.json"
# Leads the model reads, in this order: the independent ones (III, aVR, aVL, aVF repeat I and II).
MODEL_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
_CHEST = tuple(range(2, 8))  # positions of V1..V6 in MODEL_LEADS
PAIRS = tuple(itertools.combinations(range(6), 2))  # chest positions of the 15 transpositions
FEATURES = tuple(f"log_residual_V{k + 1}" for k in range(6)) + tuple(
    f"log_path_V{k + 1}V{k + 2}" for k in range(5)
)
_EPS_RESIDUAL = 1e-3  # floors a near-perfect fit, so one tiny residual cannot dominate the log
_EPS_PATH = 1e-2
_EPS_ENERGY = 1e-3


def _orders() -> NDArray[np.int64]:
    """(16, 8) lead order of the recorded record, then of each chest transposition."""
    rows = [list(range(len(MODEL_LEADS)))]
    for a, b in PAIRS:
        row = list(range(len(MODEL_LEADS)))
        row[_CHEST[a]], row[_CHEST[b]] = row[_CHEST[b]], row[_CHEST[a]]
        rows.append(row)
    return np.array(rows, dtype=np.int64)


ORDERS = _orders()


@dataclass(frozen=True)
class PrecordialModel:
    """Reconstruction filters, ordering weights and where they came from."""

    coef: F32  # (6, 8, n_lags): residual of chest lead k = sum_j,l coef[k, j, l] * lead j at lag l
    lags: tuple[int, ...]  # in template samples at ``template_fs``
    weights: F32  # (11,) over FEATURES
    template_fs: float
    template_samples: int  # W of the templates the model was fitted on (the window is fixed)
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = len(self.lags)
        if self.coef.shape != (6, len(MODEL_LEADS), n) or self.weights.shape != (len(FEATURES),):
            raise GateInputError(f"precordial model: coef {self.coef.shape}, weights {self.weights.shape}")
        if not (np.isfinite(self.coef).all() and np.isfinite(self.weights).all()):
            raise GateInputError("precordial model: non-finite coefficients")
        if self.template_samples <= 2 * max(abs(v) for v in self.lags):
            raise GateInputError("precordial model: templates shorter than the lag span")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "leads": list(MODEL_LEADS), "features": list(FEATURES),
            "template_fs": self.template_fs, "template_samples": self.template_samples,
            "lags": list(self.lags), "coef": np.round(self.coef.astype(np.float64), 7).tolist(),
            "weights": np.round(self.weights.astype(np.float64), 7).tolist(), "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PrecordialModel:
        """Strict: the format, leads and feature names must be exactly this module's."""
        if doc.get("format") != FORMAT or tuple(doc.get("leads", ())) != MODEL_LEADS:
            raise GateInputError(f"not a {FORMAT} document for leads {MODEL_LEADS}")
        if tuple(doc.get("features", ())) != FEATURES:
            raise GateInputError("precordial model: feature names differ from this version's")
        try:
            return cls(
                coef=np.asarray(doc["coef"], dtype=np.float32), lags=tuple(int(v) for v in doc["lags"]),
                weights=np.asarray(doc["weights"], dtype=np.float32), template_fs=float(doc["template_fs"]),
                template_samples=int(doc["template_samples"]), provenance=dict(doc.get("provenance", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GateInputError(f"precordial model: malformed document ({exc})") from exc


@cache
def shipped_model() -> PrecordialModel:
    """The committed model (read once, on first use: nothing is read at import time)."""
    text = resources.files(__package__).joinpath(MODEL_FILE).read_text(encoding="utf-8")
    return PrecordialModel.from_json(json.loads(text))


def model_leads(templates: F32, leads: Sequence[str]) -> F32 | None:
    """(B, 8, W) templates in MODEL_LEADS order, or None when one of them is absent."""
    names = [n.upper() for n in leads]
    if not all(m in names for m in MODEL_LEADS):
        return None
    return templates[:, [names.index(m) for m in MODEL_LEADS]]


def _normalise(t: F32) -> F32:
    """Median-centred per lead, one scale per record: keeps the leads' relative amplitudes."""
    c = t - np.median(t, axis=-1, keepdims=True)
    scale = np.sqrt((c * c).mean(axis=(1, 2), keepdims=True))
    return (c / (scale + np.float32(1e-6))).astype(np.float32)


def _lagged(t: F32, lags: Sequence[int]) -> F32:
    """(B, 8, n_lags, W - 2 * max|lag|): every lead shifted by every lag, edges trimmed."""
    m, w = max(abs(v) for v in lags), t.shape[-1]
    return np.stack([t[..., m + lag : w - m + lag] for lag in lags], axis=2)


def _residuals(lagged: F32, coef: F32) -> F32:
    """(B, 16, 6, W') residual of each chest position under each candidate order.

    A transposition of leads a and b changes only their two columns of the sum, so each is
    the recorded order's residual plus (coef[:, a] - coef[:, b]) . (lead b - lead a): about
    a sixth of the work of re-running the filters on 16 permuted copies.
    """
    base = np.einsum("kjl,bjlw->bkw", coef, lagged)
    a, b = np.array(_CHEST)[np.array(PAIRS)].T
    delta = np.einsum("kpl,bplw->bpkw", coef[:, a] - coef[:, b], lagged[:, b] - lagged[:, a])
    return np.concatenate([base[:, None], base[:, None] + delta], axis=1)


def _features(t8: F32, model: PrecordialModel) -> F32:
    """(B, 16, 11) features of each candidate order of (B, 8, W) templates."""
    lagged = _lagged(_normalise(t8), model.lags)  # (B, 8, n_lags, W')
    residual = _residuals(lagged, model.coef)
    target = lagged[:, :, len(model.lags) // 2][:, ORDERS[:, list(_CHEST)]]  # (B, P, 6, W'), zero lag
    r = (residual * residual).sum(axis=-1) / ((target * target).sum(axis=-1) + _EPS_ENERGY)
    z = _zscore(t8[:, list(_CHEST)])
    corr = np.einsum("bkw,bjw->bkj", z, z)
    chest = ORDERS[:, list(_CHEST)] - _CHEST[0]  # (P, 6) which recorded chest lead sits where
    steps = 1.0 - corr[:, chest[:, :-1], chest[:, 1:]]  # (B, P, 5)
    return np.concatenate([np.log(r + _EPS_RESIDUAL), np.log(np.maximum(steps, 0.0) + _EPS_PATH)], axis=-1)


def scores(t8: F32, model: PrecordialModel) -> F32:
    """(B, 16) score of the recorded order (column 0) and of each transposition."""
    return (_features(t8, model) @ model.weights).astype(np.float32)


def swap_gain(t8: F32, model: PrecordialModel) -> tuple[F32, NDArray[np.int64]]:
    """(B,) margin of the best transposition over the recorded order and (B,) its index in PAIRS."""
    s = scores(t8, model)
    best = s[:, 1:].argmax(axis=-1)
    return (s[:, 1:].max(axis=-1) - s[:, 0]).astype(np.float32), best.astype(np.int64)


# --- fitting ------------------------------------------------------------------------------------


def _fit_reconstruction(t: F32, lags: Sequence[int], ridge: float) -> F32:
    """Ridge FIR filters: each chest lead from the other seven leads at every lag."""
    lagged = _lagged(t, lags).astype(np.float64)
    n_lags, centre = len(lags), len(lags) // 2
    x = lagged.transpose(0, 3, 1, 2).reshape(-1, len(MODEL_LEADS) * n_lags)
    gram = x.T @ x / len(x)
    coef = np.zeros((6, len(MODEL_LEADS), n_lags))
    for k, lead in enumerate(_CHEST):
        cols = [j * n_lags + lag for j in range(len(MODEL_LEADS)) if j != lead for lag in range(n_lags)]
        w = np.linalg.solve(gram[np.ix_(cols, cols)] + ridge * np.eye(len(cols)), gram[cols, lead * n_lags + centre])
        coef[k].reshape(-1)[cols] = w
        coef[k, lead, centre] = -1.0  # so that sum(coef * leads) is the residual
    return coef.astype(np.float32)


def _swapped_versions(t8: F32) -> tuple[F32, NDArray[np.int64]]:
    """Each record as recorded (label 0) and with each chest pair exchanged (label 1 + pair)."""
    versions = [t8[:, order] for order in ORDERS]
    labels = [np.full(len(t8), p, dtype=np.int64) for p in range(len(ORDERS))]
    return np.concatenate(versions), np.concatenate(labels)


def _conditional_logit(feats: F64, labels: NDArray[np.int64], l2: float, iters: int = 50) -> F64:
    """Weights maximising the log-likelihood of the true candidate (Newton; convex, L2-damped)."""
    n, _, d = feats.shape
    w = np.zeros(d)
    onehot = np.eye(feats.shape[1])[labels]
    for _ in range(iters):
        s = feats @ w
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        grad = np.einsum("npd,np->d", feats, onehot - p) - 2 * l2 * n * w
        mean = np.einsum("npd,np->nd", feats, p)
        hess = np.einsum("npd,npe,np->de", feats, feats, p) - mean.T @ mean + 2 * l2 * n * np.eye(d)
        step = np.linalg.solve(hess, grad)
        w += step
        if float(np.abs(step).max()) < 1e-8:
            break
    return w


def fit(
    t8: F32, template_fs: float, lags: Sequence[int] = (-2, -1, 0, 1, 2), ridge: float = 1e-2,
    l2: float = 1e-4, provenance: dict[str, Any] | None = None,
) -> PrecordialModel:
    """A model from (B, 8, W) clean templates in MODEL_LEADS order (recorded order = truth)."""
    t8 = np.asarray(t8, dtype=np.float32)
    coef = _fit_reconstruction(_normalise(t8), lags, ridge)
    draft = PrecordialModel(coef, tuple(lags), np.zeros(len(FEATURES), np.float32), template_fs, t8.shape[-1])
    versions, labels = _swapped_versions(t8)
    chunk = max(1, 2**22 // (len(ORDERS) * math.prod(t8.shape[1:]) * len(lags)))
    feats = np.concatenate([_features(versions[i : i + chunk], draft) for i in range(0, len(versions), chunk)])
    weights = _conditional_logit(feats.astype(np.float64), labels, l2)
    return PrecordialModel(
        coef, tuple(lags), weights.astype(np.float32), template_fs, t8.shape[-1], dict(provenance or {})
    )
