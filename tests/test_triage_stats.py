"""Observed PPV from resolutions, Wilson intervals and times, as tables."""

from __future__ import annotations

import pytest

from workers.triage_stats import AlertRow, Resolution, Status, triage_stats, wilson_interval


@pytest.mark.parametrize(("k", "n", "expected"), [
    (0, 0, None),
    (5, 10, (0.2366, 0.7634)),
    (0, 10, (0.0, 0.2775)),
    (10, 10, (0.7225, 1.0)),
    (81, 263, (0.2553, 0.3662)),  # a textbook example (Newcombe 1998)
])
def test_wilson_interval_table(k: int, n: int, expected: tuple[float, float] | None) -> None:
    got = wilson_interval(k, n)
    assert got == (None if expected is None else pytest.approx(expected, abs=1e-4))


def row(outcome: Resolution | None, site: str = "s1", task: str = "ecg.afib", created: int = 0,
        claimed: int | None = None, resolved: int | None = None, ppv: float | None = 0.3) -> AlertRow:
    status = Status.RESOLVED if outcome else Status.OPEN
    return AlertRow(site, task, created, status, claimed, resolved, outcome, ppv)


def test_observed_ppv_counts_only_adjudicated_resolutions() -> None:
    rows = [row(Resolution.CONFIRMED, claimed=60_000, resolved=600_000),
            row(Resolution.ALREADY_KNOWN, claimed=120_000, resolved=300_000),
            row(Resolution.FALSE_POSITIVE, claimed=180_000, resolved=200_000),
            row(Resolution.ECHO_ORDERED), row(Resolution.NOT_ACTIONABLE), row(None),
            row(Resolution.CONFIRMED, site="s2"), row(None, task="ecg.mi", ppv=None)]
    s1, s1_mi, s2 = triage_stats(rows)
    assert (s1.site, s1.task, s1.raised, s1.open, s1.adjudicated) == ("s1", "ecg.afib", 6, 1, 3)
    assert s1.observed_ppv == pytest.approx(2 / 3) and s1.expected_ppv == 0.3
    assert s1.observed_ppv_ci95 == pytest.approx(wilson_interval(2, 3))
    assert s1.resolved == {"already_known": 1, "confirmed": 1, "echo_ordered": 1, "false_positive": 1,
                           "not_actionable": 1}
    assert s1.median_time_to_claim_s == 120.0 and s1.median_time_to_resolve_s == 300.0
    assert (s1_mi.task, s1_mi.observed_ppv, s1_mi.expected_ppv) == ("ecg.mi", None, None)
    assert (s2.site, s2.observed_ppv, s2.adjudicated) == ("s2", 1.0, 1)
