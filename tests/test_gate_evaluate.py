"""Evaluation helpers of the gate (annotations, corruptions, agreement) and the check report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ops import gate_check
from tests.test_gate import LEADS, SIM_FS, clean, idx
from workers.gate import QualityReason, gate_batch
from workers.gate import evaluate as ev

R = QualityReason


# --- annotations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "present", "leads"),
    [
        (", I-AVR,", True, {"I", "II", "III", "aVR"}),
        (" , I-AVF,V6,  ", True, {"I", "II", "III", "aVR", "aVL", "aVF", "V6"}),
        ("v5-6", True, {"V5", "V6"}),
        ("V2,3", True, {"V2", "V3"}),
        (" , V1,3,5", True, {"V1", "V3", "V5"}),
        (" , V1V6", True, {"V1", "V6"}),
        ("II, III, avf", True, {"II", "III", "aVF"}),
        (" , I,II,AVR,AVL.AVF,V1,  ", True, {"I", "II", "aVR", "aVL", "aVF", "V1"}),
        ("Kontaktprobleme aVL ???", True, {"aVL"}),
        ("alles", True, set(LEADS)),
        (" , mittel,  ", True, None),
        (" , noisy recording,", True, None),
        (" ", False, None),
        ("", False, None),
        (None, False, None),
        (float("nan"), False, None),
    ],
)
def test_parse_annotation(text: object, present: bool, leads: set[str] | None) -> None:
    a = ev.parse_annotation(text)
    assert a.present is present
    assert (None if a.leads is None else set(a.leads)) == leads


def test_annotation_lead_mask() -> None:
    anns = [ev.parse_annotation("V1,V3"), ev.parse_annotation("mittel"), ev.parse_annotation("")]
    mask = ev.annotation_lead_mask(anns, LEADS)
    assert mask.shape == (3, 12)
    assert mask[0].tolist() == [name in ("V1", "V3") for name in LEADS]
    assert not mask[1:].any()


def test_every_annotation_column_maps_to_reasons() -> None:
    assert set(ev.ANNOTATION_REASONS) == set(ev.ANNOTATION_COLUMNS)
    assert all(ev.ANNOTATION_REASONS[c] for c in ev.ANNOTATION_COLUMNS)


# --- agreement --------------------------------------------------------------------------------------


def test_agreement_counts_and_rates() -> None:
    truth = np.array([True, True, False, False, False])
    flagged = np.array([True, False, True, False, False])
    a = ev.agreement(truth, flagged)
    assert (a.tp, a.fn, a.fp, a.tn) == (1, 1, 1, 2)
    assert a.sensitivity == 0.5 and a.specificity == pytest.approx(2 / 3)
    assert a.precision == 0.5 and a.balanced_accuracy == pytest.approx((0.5 + 2 / 3) / 2)


def test_agreement_without_positives_is_nan_not_an_error() -> None:
    a = ev.agreement(np.zeros(3, bool), np.ones(3, bool))
    assert math.isnan(a.sensitivity) and a.specificity == 0.0 and math.isnan(a.balanced_accuracy)
    assert a.as_dict()["fp"] == 3


def test_reason_flags() -> None:
    lead_reasons = [[(R.BURST_NOISE,), (), (R.POWERLINE, R.HIGH_FREQ_NOISE)]]
    flags = ev.reason_flags(lead_reasons, (R.HIGH_FREQ_NOISE, R.BURST_NOISE))
    assert flags.tolist() == [[True, False, True]]


# --- corruptions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ev.Corruption))
def test_inject_changes_only_what_it_says(kind: ev.Corruption) -> None:
    x = clean()
    out = ev.inject(x, SIM_FS, list(LEADS), kind, np.random.default_rng(1))
    assert out.signal.shape == x.shape and out.signal.dtype == np.float32
    assert out.reason is ev.EXPECTED[kind]
    changed = np.flatnonzero(np.any(out.signal != x, axis=-1))
    assert changed.size > 0
    if out.leads is not None and kind is not ev.Corruption.FLAT_LEAD:
        assert set(changed) == set(out.leads)
    np.testing.assert_array_equal(x, clean())  # the input is not modified


@pytest.mark.parametrize(
    "kind", [ev.Corruption.LIMB_REVERSAL_LA_RA, ev.Corruption.PRECORDIAL_SWAP_DISTANT, ev.Corruption.FLAT_LEAD]
)
def test_injected_faults_are_detected_with_their_reason(kind: ev.Corruption) -> None:
    out = ev.inject(clean(), SIM_FS, list(LEADS), kind, np.random.default_rng(2))
    q = gate_batch(out.signal[None], SIM_FS, LEADS)[0]
    assert ev.detected(out, q.reasons, q.lead_reasons)
    clean_q = gate_batch(clean()[None], SIM_FS, LEADS)[0]
    assert not ev.detected(out, clean_q.reasons, clean_q.lead_reasons)


def test_la_ra_reversal_relabels_the_limb_leads() -> None:
    x = clean()
    y = ev.inject(x, SIM_FS, list(LEADS), ev.Corruption.LIMB_REVERSAL_LA_RA, np.random.default_rng(0)).signal
    np.testing.assert_allclose(y[idx("I")], -x[idx("I")])
    np.testing.assert_array_equal(y[idx("II")], x[idx("III")])
    np.testing.assert_array_equal(y[idx("aVR")], x[idx("aVL")])
    np.testing.assert_array_equal(y[idx("aVF")], x[idx("aVF")])


def test_ra_ll_and_la_ll_reversals_follow_the_electrodes() -> None:
    """Rebuild the leads from electrode potentials (RA = 0, LA = I, LL = II) with two cables swapped."""
    x = clean().astype(np.float64)
    ra, la, ll = np.zeros_like(x[0]), x[idx("I")], x[idx("II")]

    def leads(ra: np.ndarray, la: np.ndarray, ll: np.ndarray) -> dict[str, np.ndarray]:
        return {"I": la - ra, "II": ll - ra, "III": ll - la, "aVR": ra - (la + ll) / 2,
                "aVL": la - (ra + ll) / 2, "aVF": ll - (ra + la) / 2}

    for name, exact in leads(ra, la, ll).items():  # derived leads exactly as a recorder computes them
        x[idx(name)] = exact
    for kind, swapped in [(ev.Corruption.LIMB_REVERSAL_RA_LL, leads(ll, la, ra)),
                          (ev.Corruption.LIMB_REVERSAL_LA_LL, leads(ra, ll, la))]:
        y = ev.inject(x.astype(np.float32), SIM_FS, list(LEADS), kind, np.random.default_rng(0)).signal
        for name, expected in swapped.items():
            np.testing.assert_allclose(y[idx(name)], expected, atol=1e-5, err_msg=f"{kind} {name}")
        np.testing.assert_array_equal(y[idx("V3")], x[idx("V3")].astype(np.float32))


def test_adjacent_and_distant_precordial_pairs() -> None:
    rng = np.random.default_rng(0)
    kinds = ((ev.Corruption.PRECORDIAL_SWAP_ADJACENT, True), (ev.Corruption.PRECORDIAL_SWAP_DISTANT, False))
    for kind, adjacent in kinds:
        for _ in range(10):
            a, b = ev.inject(clean(), SIM_FS, list(LEADS), kind, rng).leads or (0, 0)
            assert (b - a == 1) is adjacent and LEADS[a].startswith("V") and LEADS[b].startswith("V")


def test_r_peaks_finds_the_beats() -> None:
    peaks = ev.r_peaks(clean(), SIM_FS)
    assert 10 <= len(peaks) <= 13  # 70 bpm over 10 s


# --- report ---------------------------------------------------------------------------------------------


def test_baseline_subset_keeps_rare_columns() -> None:
    columns = np.zeros((100, 2), dtype=bool)
    columns[:40, 0] = True  # common
    columns[95:, 1] = True  # rare: 5 records
    rows = gate_check.baseline_subset(columns, 20, seed=0)
    assert len(rows) == 20 and list(rows) == sorted(set(rows.tolist()))
    assert set(range(95, 100)) <= set(rows.tolist())
    assert columns[rows].any(axis=-1).sum() == 10


def test_verdicts_and_report_text() -> None:
    fig = {"record": ev.agreement(np.array([True, False]), np.array([True, False])).as_dict(),
           "lead": ev.agreement(np.array([True]), np.array([True])).as_dict()}
    nk = {"record": ev.agreement(np.array([True, False]), np.array([True, True])).as_dict(), "lead": fig["lead"]}
    figures = {"burst_noise": {"reasons": ["burst_noise"], "gate": fig, "neurokit2": nk}}
    assert gate_check.verdicts(figures) == {"burst_noise": True}
    report = {
        "rate_hz": 500.0, "records": 2, "annotated": 1, "clean": 1, "baseline_records": 2, "baseline_annotated": 1,
        "neurokit2_failures": 0, "seed": 0, "same_records": figures,
        "all_records": {"burst_noise": {"reasons": ["burst_noise"], "gate": fig}},
        "clean_gate": {"n": 1, "rejected": 0.0, "degraded": 0.0},
        "clean_neurokit2": {"n": 1, "any_lead_unacceptable": 1.0, "any_lead_flagged": 1.0},
        "synthetic": {"pacing": {"n": 0, "detected": None, "note": "not measurable at 100 Hz"},
                      "burst": {"n": 1, "detected": 1.0, "expected": "burst_noise", "rejected": 0.0, "level": "x"}},
    }
    text = gate_check.format_report(report)
    assert "burst_noise yes" in text and "neurokit2" in text and "not measurable" in text


@pytest.mark.data
def test_check_runs_on_shared_data(shared_data: Path) -> None:
    report = gate_check.run_check(shared_data, 100, limit=4, records=40)
    assert report["records"] == 40 and report["baseline_records"] == 4
    assert set(report["same_records"]) == set(ev.ANNOTATION_COLUMNS)
    assert report["synthetic"]["flat_lead"]["detected"] == 1.0
    assert report["synthetic"]["pacing"]["detected"] is None  # 100 Hz
    gate_check.format_report(report)
