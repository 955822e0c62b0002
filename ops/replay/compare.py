"""Pairs of decisions for the same event: A (baseline: recorded verdicts or the live bundle) and B.

Pure functions on small rows; :mod:`ops.replay.report` renders what they find. Two verdicts
*agree* when quality (status, reasons, bad leads), masked leads, the model and the alerting tasks
are identical and every common task's score is within ``SCORE_TOL``: the CPU conv kernels round
differently per batch size (a few 1e-7, see tests/test_pipelined_parity.py), so scores of the same
bundle on the same event are equal to that tolerance, not bit for bit, when batches are cut
differently; every decision is compared exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from schemas.messages import Verdict
from workers.pipeline import Outcome
from workers.policy import alert_id

SCORE_TOL = 1e-5


@dataclass(frozen=True, slots=True)
class Row:
    """What one scoring decided for one event."""

    event_id: str
    model: str  # name@version#sha[:12]
    status: str
    reasons: tuple[str, ...]
    bad_leads: tuple[str, ...]
    masked: tuple[str, ...]
    scores: Mapping[str, float]
    alerts: frozenset[str]  # task ids that alerted


def model_label(name: str, version: str, sha256: str) -> str:
    return f"{name}@{version}#{sha256[:12]}"


def row_of_verdict(v: Verdict, task_ids: Iterable[str]) -> Row:
    """A recorded verdict as a row; its alerting tasks are found from its alert ids (a hash of
    event id, task and model version: workers.policy.alert_id)."""
    ids = set(v.alert_ids)
    tasks = set(task_ids) | set(v.scores)
    alerted = frozenset(t for t in tasks if alert_id(v.event_id, t, v.model.version) in ids)
    q = v.quality
    return Row(v.event_id, model_label(v.model.name, v.model.version, v.model.sha256), q.status.value,
               tuple(q.reasons), tuple(q.bad_leads), tuple(v.masked_leads), dict(v.scores), alerted)


def rows_of(outcomes: Sequence[Outcome]) -> list[Row]:
    out = []
    for o in outcomes:
        if o.verdict is None:
            continue
        row = row_of_verdict(o.verdict, o.verdict.scores)
        out.append(Row(row.event_id, row.model, row.status, row.reasons, row.bad_leads, row.masked, row.scores,
                       frozenset(a.task.id for a in o.alerts)))
    return out


def differences(a: Row, b: Row, same_model: bool = True) -> list[str]:
    """What differs between two rows of one event (empty: they agree)."""
    out = []
    if same_model and a.model != b.model:
        out.append("model")
    if (a.status, a.reasons, a.bad_leads) != (b.status, b.reasons, b.bad_leads):
        out.append("quality")
    if a.masked != b.masked:
        out.append("masked_leads")
    if a.alerts != b.alerts:
        out.append("alerts")
    if set(a.scores) != set(b.scores):
        out.append("tasks")
    if any(abs(a.scores[t] - b.scores[t]) > SCORE_TOL for t in set(a.scores) & set(b.scores)):
        out.append("scores")
    return out


@dataclass
class Pairs:
    """Rows of A and B by event id, filled as a replay goes; the report reads them at the end."""

    a_name: str
    b_name: str
    a: dict[str, Row] = field(default_factory=dict)
    b: dict[str, Row] = field(default_factory=dict)
    deadletters: int = 0

    def add_outcomes(self, outcomes: Sequence[Outcome], baseline: Sequence[Outcome] | None) -> None:
        self.deadletters += sum(o.kind == "deadletter" for o in outcomes)
        for r in rows_of(outcomes):
            self.b[r.event_id] = r
        for r in rows_of(baseline or []):
            self.a[r.event_id] = r

    def matched(self) -> list[tuple[Row, Row]]:
        return [(self.a[k], self.b[k]) for k in sorted(self.b) if k in self.a]

    def audit(self, same_model: bool = True) -> dict[str, object]:
        """Counts of agreement (for ``replay audit``), with example event ids per kind of difference."""
        kinds: dict[str, list[str]] = {}
        for a, b in self.matched():
            for kind in differences(a, b, same_model):
                kinds.setdefault(kind, []).append(a.event_id)
        differing = {e for ids in kinds.values() for e in ids}
        return {"compared": len(self.matched()), "differing_events": len(differing),
                "unmatched_recomputed": len(set(self.b) - set(self.a)),
                "differences": {k: {"events": len(v), "examples": v[:5]} for k, v in sorted(kinds.items())}}
