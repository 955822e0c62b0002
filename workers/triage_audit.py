"""The triage audit trail: one Redis stream per site, hash-chained.

Each entry carries ``prev`` (the hash of the entry before it, 64 zeros for the
first) and ``hash = sha256(prev + canonical entry)``, where the canonical entry
is ``v1``, site, action, alert id, actor, time (ms) and detail joined by the
unit separator (0x1f). The Lua scripts write the chain; :func:`verify_chain`
recomputes it here, so an edited, inserted or deleted entry breaks it, and the
head key (the last hash) catches a truncated tail. What it cannot catch alone is
a rewrite of the whole chain by someone with write access: anchor the head
elsewhere (see README) for that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

GENESIS = "0" * 64
_SEP = "\x1f"


class AuditAction(StrEnum):
    CREATED = "created"
    HELD = "held"
    UPDATED = "updated"
    SUPPRESSED = "suppressed"
    RELEASED = "released"
    CLAIMED = "claimed"
    LEASE_EXPIRED = "lease_expired"
    RESOLVED = "resolved"
    REASSIGNED = "reassigned"
    SNOOZED = "snoozed"
    SNOOZE_ENDED = "snooze_ended"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    stream_id: str
    site: str
    action: str
    alert_id: str
    actor: str
    at_ms: int
    detail: str
    prev: str
    hash: str


class ChainBreak(StrEnum):
    HASH_MISMATCH = "hash_mismatch"  # an entry's content does not give its hash: edited
    PREV_MISMATCH = "prev_mismatch"  # an entry does not follow the one before: inserted or deleted
    HEAD_MISMATCH = "head_mismatch"  # the last entry is not the recorded head: truncated


@dataclass(frozen=True, slots=True)
class ChainCheck:
    site: str
    entries: int
    ok: bool
    broken_at: str | None = None  # stream id of the first bad entry
    reason: ChainBreak | None = None


def canonical(site: str, action: str, alert_id: str, actor: str, at_ms: int, detail: str) -> str:
    return _SEP.join(("v1", site, action, alert_id, actor, str(at_ms), detail))


def entry_hash(prev: str, canon: str) -> str:
    return hashlib.sha256((prev + canon).encode()).hexdigest()


def verify_chain(site: str, entries: Sequence[AuditEntry], head: str | None) -> ChainCheck:
    """Recompute the chain in stream order; the first broken link and why."""
    prev = GENESIS
    for e in entries:
        if e.prev != prev:
            return ChainCheck(site, len(entries), False, e.stream_id, ChainBreak.PREV_MISMATCH)
        if entry_hash(e.prev, canonical(site, e.action, e.alert_id, e.actor, e.at_ms, e.detail)) != e.hash:
            return ChainCheck(site, len(entries), False, e.stream_id, ChainBreak.HASH_MISMATCH)
        prev = e.hash
    if (head or GENESIS) != prev:
        return ChainCheck(site, len(entries), False, None, ChainBreak.HEAD_MISMATCH)
    return ChainCheck(site, len(entries), True)


def entry_from_fields(site: str, stream_id: str, fields: dict[str, str]) -> AuditEntry:
    return AuditEntry(stream_id=stream_id, site=site, action=fields.get("action", ""),
                      alert_id=fields.get("alert_id", ""), actor=fields.get("actor", ""),
                      at_ms=_int(fields.get("at", "")), detail=fields.get("detail", ""),
                      prev=fields.get("prev", ""), hash=fields.get("hash", ""))


def _int(raw: str) -> int:
    # An edited, non-numeric time must fail the hash check, not crash the verifier.
    return int(raw) if raw.isdigit() else -1
