"""The precordial-order model: fitting, scoring, its JSON, and the shipped copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_gate import LEADS, clean
from workers.gate import GateInputError, _precordial, beat_templates

W = 76  # template samples at 100 Hz, as the gate cuts them (-0.30 .. +0.45 s)


def dipole_population(n: int, seed: int) -> np.ndarray:
    """(n, 8, W) templates I, II, V1..V6 of a rotating heart dipole seen from jittered angles.

    P, QRS and T are Gaussian bumps of the dipole, each along its own random direction; the
    chest leads look along angles from anterior-right (V1) to lateral (V6), each record
    with its own jitter, as electrode placement and anatomy vary between people.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(W) / 100.0 - 0.30
    out = np.empty((n, 8, W), dtype=np.float32)
    for r in range(n):
        waves = [(-0.16, 0.025, 0.15), (0.0, 0.018, 1.2), (0.28, 0.05, 0.35)]  # centre, width, amplitude
        d = np.zeros((3, W))
        for centre, width, amp in waves:
            direction = rng.normal([0.7, 0.5, -0.4], 0.35)
            d += np.outer(direction, amp * np.exp(-0.5 * ((t - centre) / width) ** 2))
        angles = np.deg2rad(np.linspace(-110.0, 5.0, 6) + rng.normal(0.0, 6.0, 6))
        lead_vectors = np.vstack([[1.0, 0.0, 0.0], [0.5, 0.87, 0.0],
                                  np.c_[np.cos(angles), np.full(6, 0.2), -np.sin(angles)]])
        out[r] = lead_vectors @ d + rng.normal(0.0, 0.01, (8, W))
    return out


def swapped(t8: np.ndarray, pair: int) -> np.ndarray:
    return t8[:, _precordial.ORDERS[1 + pair]]


def test_fit_learns_to_tell_swaps_from_the_recorded_order() -> None:
    model = _precordial.fit(dipole_population(240, seed=0), 100.0)
    assert (model.weights < 0).all()  # a worse fit or a rougher path never raises the score
    held_out = dipole_population(80, seed=1)
    gain, _ = _precordial.swap_gain(held_out, model)
    assert (gain < 0).mean() >= 0.95
    hits = []
    for pair, (a, b) in enumerate(_precordial.PAIRS):
        g, best = _precordial.swap_gain(swapped(held_out, pair), model)
        hits.append(((g > 0) & (best == pair)).mean())
        if b - a >= 2:
            assert hits[-1] >= 0.9, (a, b, hits[-1])
    assert np.mean(hits) >= 0.9


def test_fit_is_deterministic() -> None:
    t8 = dipole_population(60, seed=2)
    a, b = _precordial.fit(t8, 100.0), _precordial.fit(t8, 100.0)
    assert a.to_json() == b.to_json()


def test_scores_follow_the_leads_not_their_positions() -> None:
    """Exchanging two chest leads and then scoring the transposition that undoes it = recorded."""
    model = _precordial.shipped_model()
    t8 = dipole_population(4, seed=3)
    s = _precordial.scores(t8, model)
    s_swapped = _precordial.scores(swapped(t8, 7), model)
    np.testing.assert_allclose(s_swapped[:, 1 + 7], s[:, 0], rtol=1e-4, atol=1e-4)


def test_residuals_of_a_transposition_match_refiltering_the_permuted_leads() -> None:
    model = _precordial.shipped_model()
    lagged = _precordial._lagged(_precordial._normalise(dipole_population(3, seed=5)), model.lags)
    fast = _precordial._residuals(lagged, model.coef)
    slow = np.einsum("kjl,bpjlw->bpkw", model.coef, lagged[:, _precordial.ORDERS])
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-4)


def test_json_round_trip_and_strictness() -> None:
    model = _precordial.fit(dipole_population(30, seed=4), 100.0, provenance={"data": "synthetic"})
    doc = json.loads(json.dumps(model.to_json()))
    back = _precordial.PrecordialModel.from_json(doc)
    np.testing.assert_allclose(back.coef, model.coef, atol=1e-6)
    assert back.lags == model.lags and back.provenance == {"data": "synthetic"}
    for key, value in [("format", "other/v1"), ("features", ["x"]), ("coef", [[1.0]]), ("lags", None),
                       ("weights", [float("nan")] * len(_precordial.FEATURES))]:
        with pytest.raises(GateInputError):
            _precordial.PrecordialModel.from_json({**doc, key: value})


def test_shipped_model_says_where_it_came_from() -> None:
    model = _precordial.shipped_model()
    assert model.template_fs == 100.0 and model.template_samples == W
    assert model.provenance["records"] == len(model.provenance["ecg_ids"]) == 944
    assert "fit-precordial" in model.provenance["command"]


def test_model_needs_templates_at_its_rate() -> None:
    tm = beat_templates(clean(500)[None], 500.0, LEADS)
    assert tm.fs == 100.0 and tm.template.shape == (1, 12, W)
    t8 = _precordial.model_leads(tm.template, LEADS)
    assert t8 is not None and t8.shape == (1, 8, W)
    assert _precordial.model_leads(tm.template[:, :11], LEADS[:11]) is None


@pytest.mark.data
def test_fit_precordial_reproduces_the_shipped_model(shared_data: Path, tmp_path: Path) -> None:
    from ops.gate_fit import default_output, fit_precordial, write_model

    model, _ = fit_precordial(shared_data)
    write_model(model, tmp_path / "model.json")
    fresh = json.loads((tmp_path / "model.json").read_text())
    shipped = json.loads(default_output().read_text())
    assert fresh["provenance"]["ecg_ids"] == shipped["provenance"]["ecg_ids"]
    # Same data and code; only the last float bits may differ between CPUs / BLAS builds.
    np.testing.assert_allclose(fresh["coef"], shipped["coef"], atol=1e-5)
    np.testing.assert_allclose(fresh["weights"], shipped["weights"], atol=1e-4)
