"""What clinicians' resolutions say about the alerts: pure functions over alert rows.

Observed PPV (per task and site) = positives / adjudicated, where positives are
resolutions ``confirmed`` or ``already_known`` (the finding is real) and
adjudicated adds ``false_positive``. ``echo_ordered`` (confirmation pending) and
``not_actionable`` (not judged) are left out of both. The 95% interval is
Wilson's score interval, which stays inside [0, 1] and behaves at small n. The
expected PPV is the one the alerts carried: Bayes from the bundle's validation
sensitivity/specificity at the site's configured prevalence.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class Resolution(StrEnum):
    """How a clinician closed an alert."""

    CONFIRMED = "confirmed"  # the finding is real and new
    ALREADY_KNOWN = "already_known"  # real, but the team knew
    FALSE_POSITIVE = "false_positive"  # not there
    ECHO_ORDERED = "echo_ordered"  # a confirmatory test was ordered; truth pending
    NOT_ACTIONABLE = "not_actionable"  # not judged (e.g. palliative care, patient left)


POSITIVE = frozenset({Resolution.CONFIRMED, Resolution.ALREADY_KNOWN})
ADJUDICATED = POSITIVE | {Resolution.FALSE_POSITIVE}


class Status(StrEnum):
    OPEN = "open"
    HELD = "held"
    CLAIMED = "claimed"
    SNOOZED = "snoozed"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One alert as stats see it (times in ms)."""

    site: str
    task: str
    created_ms: int
    status: Status
    claimed_ms: int | None = None
    resolved_ms: int | None = None
    outcome: Resolution | None = None
    expected_ppv: float | None = None


@dataclass(frozen=True, slots=True)
class TaskSiteStats:
    site: str
    task: str
    raised: int
    open: int
    held: int
    resolved: dict[str, int] = field(default_factory=dict)
    median_time_to_claim_s: float | None = None
    median_time_to_resolve_s: float | None = None
    adjudicated: int = 0
    observed_ppv: float | None = None
    observed_ppv_ci95: tuple[float, float] | None = None
    expected_ppv: float | None = None


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """Wilson score interval for k successes in n trials; None when n is 0."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def triage_stats(rows: Iterable[AlertRow]) -> list[TaskSiteStats]:
    """One line per (site, task), sorted."""
    groups: dict[tuple[str, str], list[AlertRow]] = defaultdict(list)
    for row in rows:
        groups[(row.site, row.task)].append(row)
    return [_group_stats(site, task, groups[(site, task)]) for site, task in sorted(groups)]


def _group_stats(site: str, task: str, rows: Sequence[AlertRow]) -> TaskSiteStats:
    outcomes = Counter(r.outcome for r in rows if r.status is Status.RESOLVED and r.outcome is not None)
    positives = sum(outcomes[o] for o in POSITIVE)
    adjudicated = sum(outcomes[o] for o in ADJUDICATED)
    return TaskSiteStats(
        site=site, task=task, raised=len(rows),
        open=sum(r.status is not Status.RESOLVED for r in rows),
        held=sum(r.status is Status.HELD for r in rows),
        resolved={o.value: n for o, n in sorted(outcomes.items())},
        median_time_to_claim_s=_median_s(r.claimed_ms - r.created_ms for r in rows if r.claimed_ms is not None),
        median_time_to_resolve_s=_median_s(r.resolved_ms - r.created_ms for r in rows if r.resolved_ms is not None),
        adjudicated=adjudicated,
        observed_ppv=positives / adjudicated if adjudicated else None,
        observed_ppv_ci95=wilson_interval(positives, adjudicated),
        expected_ppv=_median([r.expected_ppv for r in rows if r.expected_ppv is not None]),
    )


def _median_s(ms: Iterable[int]) -> float | None:
    m = _median([float(x) for x in ms])
    return None if m is None else round(m / 1000.0, 3)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None
