"""What the pages show, as pure functions over triage items and audit entries (no I/O here)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.sax.saxutils import escape

import orjson

from schemas.messages import Priority, TaskGroup
from workers.triage import TriageItem
from workers.triage_audit import AuditEntry
from workers.triage_stats import Status, TaskSiteStats

# Sections of the worklist page, in the order a reviewer works them.
QUEUES: tuple[tuple[str, str], ...] = (("worklist", "Open"), ("claimed", "Claimed"), ("snoozed", "Snoozed"),
                                       ("held", "Held by the rate limit"),
                                       ("backfill", "Backfill: historical ECGs (ecgscreen replay backfill)"))
STATUS_TO_QUEUE = {"open": "worklist", "claimed": "claimed", "snoozed": "snoozed", "held": "held",
                   "backfill": "backfill"}
MESSAGES = {
    "claimed": "Claimed: the alert is yours for the lease shown.",
    "resolved": "Resolved.",
    "reassigned": "Reassigned.",
    "snoozed": "Snoozed.",
    "claimed_by_other": "Your lease was lost: someone else holds this alert now.",
    "already_resolved": "This alert is already resolved.",
    "alert_not_found": "No such alert.",
    "worklist_empty": "Nothing open at this site.",
    "invalid_actor": "That user name is not valid (1-64 of A-Z a-z 0-9 . _ @ -).",
    "redis_acl_denied": "The app's Redis user may not do that.",
    "bad_form": "The form was incomplete.",
}


@dataclass(frozen=True, slots=True)
class Filters:
    status: str = "all"  # all | open | claimed | snoozed | held | backfill
    group: str = "all"  # all | a TaskGroup value
    priority: str = "all"  # all | a Priority value

    @classmethod
    def of(cls, query: dict[str, str]) -> Filters:
        status, group, prio = query.get("status", "all"), query.get("group", "all"), query.get("priority", "all")
        return cls(status if status in STATUS_TO_QUEUE else "all",
                   group if group in {g.value for g in TaskGroup} else "all",
                   prio if prio in {p.value for p in Priority} else "all")

    def queues(self) -> list[tuple[str, str]]:
        wanted = STATUS_TO_QUEUE.get(self.status)
        return [q for q in QUEUES if wanted is None or q[0] == wanted]

    def keep(self, item: TriageItem) -> bool:
        a = item.alert
        return ((self.group == "all" or a.task.group.value == self.group)
                and (self.priority == "all" or a.priority.value == self.priority))


@dataclass(frozen=True, slots=True)
class LeaseView:
    """How the review state reads to this user."""

    text: str
    mine: bool = False
    until_ms: int | None = None
    lost_at_ms: int | None = None


def counts(items: Iterable[tuple[str, TriageItem]]) -> dict[str, int]:
    """Counts for the header: per status (a backfilled alert counts as backfill), per priority and per task group."""
    out: dict[str, int] = {}
    for queue, item in items:
        status = "backfill" if queue == "backfill" else item.status.value
        for key in (status, item.alert.priority.value, item.alert.task.group.value):
            out[key] = out.get(key, 0) + 1
    return out


def lease_view(item: TriageItem, user: str, history: Sequence[AuditEntry], now_ms: int) -> LeaseView:
    lost = lost_lease_ms(history, user)
    if item.status is Status.CLAIMED and item.actor == user:
        expired = item.lease_until_ms is not None and item.lease_until_ms <= now_ms
        return LeaseView("your lease has expired" if expired else "claimed by you", True, item.lease_until_ms)
    if lost is not None:
        return LeaseView("lease lost: you held this alert, and your lease has ended", lost_at_ms=lost)
    if item.status is Status.CLAIMED:
        return LeaseView(f"claimed by {item.actor}", until_ms=item.lease_until_ms)
    if item.status is Status.RESOLVED:
        return LeaseView(f"resolved by {item.resolved_by or '?'}")
    return LeaseView(item.status.value)


def lost_lease_ms(history: Sequence[AuditEntry], user: str) -> int | None:
    """When ``user`` last lost a lease on this alert (expired, or taken over), unless they hold it again."""
    holder, lost = None, None
    for e in history:
        if e.action == "claimed":
            if holder == user and e.actor != user:
                lost = e.at_ms
            holder = e.actor
        elif e.action == "reassigned":
            to = _detail_to(e.detail)
            if holder == user and to != user:
                lost = e.at_ms
            holder = to
        elif e.action in ("lease_expired", "snoozed", "resolved"):
            if holder == user and e.action == "lease_expired":
                lost = e.at_ms
            holder = None
        if holder == user:
            lost = None
    return lost


def _detail_to(detail: str) -> str | None:
    try:
        to = orjson.loads(detail).get("to")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return str(to) if to else None


def alert_history(entries: Iterable[AuditEntry], alert_id: str) -> list[AuditEntry]:
    return [e for e in entries if e.alert_id == alert_id]


def fmt_time(ms: int | float | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def fmt_age(created: datetime, now: datetime) -> str:
    s = max(0, int((now - created).total_seconds()))
    if s < 3600:
        return f"{s // 60} min"
    if s < 48 * 3600:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


def ppv_chart(stats: Sequence[TaskSiteStats]) -> str:
    """Observed PPV with its 95% Wilson interval (bar) against the expected PPV (diamond), one row per task."""
    rows = [s for s in stats if s.observed_ppv is not None or s.expected_ppv is not None]
    left, width, row_h = 170, 300, 22
    height = 30 + row_h * max(1, len(rows))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="ppv-chart" width="{left + width + 20}" '
             f'height="{height}" viewBox="0 0 {left + width + 20} {height}" font-family="Helvetica, Arial, '
             f'sans-serif" font-size="11" role="img" aria-label="observed against expected PPV">']
    for tick in range(0, 11, 2):
        x = left + width * tick / 10
        parts.append(f'<line x1="{x}" y1="14" x2="{x}" y2="{height - 4}" stroke="#ddd"/>'
                     f'<text x="{x}" y="10" text-anchor="middle" fill="#555">{tick / 10:.1f}</text>')
    for i, s in enumerate(rows):
        y = 26 + row_h * i
        label = escape(f"{s.site} {s.task}")
        parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{label}</text>')
        if s.observed_ppv is not None and s.observed_ppv_ci95 is not None:
            lo, hi = s.observed_ppv_ci95
            parts.append(f'<line class="ci" x1="{left + width * lo:.1f}" y1="{y}" x2="{left + width * hi:.1f}" '
                         f'y2="{y}" stroke="#2f6fde" stroke-width="3"/>'
                         f'<circle class="observed" cx="{left + width * s.observed_ppv:.1f}" cy="{y}" r="4" '
                         f'fill="#2f6fde"/>')
        if s.expected_ppv is not None:
            x = left + width * s.expected_ppv
            parts.append(f'<path class="expected" d="M{x:.1f} {y - 6}l5 6l-5 6l-5 -6z" fill="#d9480f"/>')
    return "".join(parts) + "</svg>"
