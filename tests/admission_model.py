"""A reference model of the triage queue's admission, for tests only (not a test module).

Production has one copy of the rules: the add-alert Lua script (workers/triage_lua.py). This
model states them again in plain Python so that tables (tests/test_policy.py) and random
sequences (tests/test_admission_property.py) can be checked against the script on a real Redis:

- dedup: the episode's unresolved alert whose anchor is nearest the event within the window
  (late events too; ties to the earlier anchor, then the smaller id) absorbs the candidate:
  updated when the score is higher, else suppressed;
- rate limit: beyond ``limit`` entries in the hour a new non-urgent alert is held; urgent
  alerts are never held, and an update that makes a held alert urgent releases it (it then
  takes a place in the hour);
- a candidate id seen before replays its first decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from schemas.messages import Priority
from workers.policy import PRIORITY_BAND, Admission


@dataclass(frozen=True, slots=True)
class OpenAlert:
    alert_id: str
    anchor_ms: int  # dedup time of the event that raised it
    score: float  # highest score so far
    resolved: bool = False


@dataclass(frozen=True, slots=True)
class Candidate:
    alert_id: str
    episode: str
    event_ms: int
    score: float
    priority: Priority = Priority.ROUTINE


@dataclass(frozen=True, slots=True)
class Decision:
    admission: Admission
    target: str  # the alert the candidate became or was merged into
    replay: bool = False


def nearest_open(event_ms: int, alerts: Sequence[OpenAlert], window_ms: int) -> OpenAlert | None:
    best: OpenAlert | None = None
    for a in sorted(alerts, key=lambda x: (x.anchor_ms, x.alert_id)):
        gap = abs(event_ms - a.anchor_ms)
        if not a.resolved and gap < window_ms and (best is None or gap < abs(event_ms - best.anchor_ms)):
            best = a
    return best


def admit(score: float, prio: Priority, match: OpenAlert | None, used_last_hour: int,
          limit: int | None) -> Admission:
    if match is not None:
        return Admission.UPDATED if score > match.score else Admission.SUPPRESSED
    if limit is not None and prio is not Priority.URGENT and used_last_hour >= limit:
        return Admission.HELD
    return Admission.ADDED


@dataclass
class _Stored:
    anchor_ms: int
    score: float
    band: int
    held: bool


@dataclass
class Queue:
    """The admission state of one site within one hour."""

    window_ms: int
    limit: int | None = None
    resolved: frozenset[str] = frozenset()
    episodes: dict[str, dict[str, _Stored]] = field(default_factory=dict)
    seen: dict[str, Decision] = field(default_factory=dict)
    used: int = 0

    def add(self, c: Candidate) -> Decision:
        if c.alert_id in self.seen:
            first = self.seen[c.alert_id]
            return Decision(first.admission, first.target, replay=True)
        alerts = self.episodes.setdefault(c.episode, {})
        opens = [OpenAlert(i, a.anchor_ms, a.score, i in self.resolved) for i, a in alerts.items()]
        match = nearest_open(c.event_ms, opens, self.window_ms)
        action = admit(c.score, c.priority, match, self.used, self.limit)
        band = PRIORITY_BAND[c.priority]
        if match is None:
            alerts[c.alert_id] = _Stored(c.event_ms, c.score, band, action is Admission.HELD)
            self.used += action is Admission.ADDED
        elif action is Admission.UPDATED:
            self._update(alerts[match.alert_id], c.score, band)
        decision = Decision(action, c.alert_id if match is None else match.alert_id)
        self.seen[c.alert_id] = decision
        return decision

    def _update(self, a: _Stored, score: float, band: int) -> None:
        became_urgent = band == 0 and a.band > 0
        a.score, a.band = score, min(a.band, band)
        if became_urgent and a.held:
            a.held = False
            self.used += self.limit is not None


    def held(self) -> set[str]:
        """Alerts waiting in the held queue (none is released by time within the hour)."""
        return {i for alerts in self.episodes.values() for i, a in alerts.items() if a.held}


def simulate(candidates: Sequence[Candidate], window_ms: int, limit: int | None = None,
             resolved: frozenset[str] = frozenset()) -> list[Decision]:
    """The decisions for a sequence of candidates, all within one hour."""
    queue = Queue(window_ms, limit, resolved)
    return [queue.add(c) for c in candidates]
