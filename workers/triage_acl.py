"""Redis ACL users for the triage queue: who may write which keys.

- worker: adds alerts (and its outcome, idempotency, dedup and rate keys, and the
  waveform of each alerting event); reads
  review state only to see whether an episode's alert was resolved. It cannot
  write ``state`` or ``claimed`` keys and may ZREM from the held queue only (an
  update that makes a held alert urgent moves it to the worklist), so it can
  neither resolve, claim nor drop an alert from the worklist. It may ZADD XX a
  snoozed alert's wake time to now when an update makes it urgent.
- reviewer: claims, resolves, reassigns, snoozes (``state``, the site queues and
  the audit chain); reads alerts and their waveforms but cannot write them.
- auditor: reads everything, runs no scripts, writes nothing.

Scripts run with the caller's permissions, so these rules bind inside Lua too.
A user that may XADD to an audit stream could append a forged entry; the hash
chain makes that visible (``ecgscreen triage audit --verify``), not impossible.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import redis.asyncio as aioredis


class Role(StrEnum):
    WORKER = "worker"
    REVIEWER = "reviewer"
    AUDITOR = "auditor"


# What every client needs to connect (redis-py sends HELLO / CLIENT SETINFO / SELECT).
_CONNECT = ("+ping", "+hello", "+client|setinfo", "+client|setname", "+select")
_SCRIPTS = ("+eval", "+evalsha", "+script|load", "+script|exists", "+time")
_WORKER_WRITES = ("+hset", "+hincrby", "+zadd", "+zremrangebyscore", "+sadd", "+xadd", "+set")
_REVIEWER_WRITES = ("+hset", "+hsetnx", "+hdel", "+zadd", "+zrem", "+zremrangebyscore", "+xadd", "+set")
_WORKER_KEYS = ("alert:*", "idem:*", "open:*", "worklist:*", "held:*", "backfill:*", "snoozed:*", "rate:*", "alerts:*",
                "audit:*", "audithead:*", "sites", "outcome:*", "stats", "wave:*")
_REVIEWER_KEYS = ("state:*", "worklist:*", "held:*", "backfill:*", "claimed:*", "snoozed:*", "rate:*", "audit:*",
                  "audithead:*")
_REVIEWER_READS = ("alert:*", "idem:*", "alerts:*", "sites", "stats", "open:*", "wave:*")


def acl_rules(role: Role, prefix: str) -> list[str]:
    """The ACL SETUSER rules (after ``reset on >password``) for a role."""
    p = f"{prefix}:"
    if role is Role.WORKER:
        return ["-@all", "+@read", *_CONNECT, *_SCRIPTS, *_WORKER_WRITES,
                *(f"~{p}{k}" for k in _WORKER_KEYS), f"%R~{p}state:*", f"(~{p}held:* +zrem)"]
    if role is Role.REVIEWER:
        return ["-@all", "+@read", *_CONNECT, *_SCRIPTS, *_REVIEWER_WRITES,
                *(f"~{p}{k}" for k in _REVIEWER_KEYS), *(f"%R~{p}{k}" for k in _REVIEWER_READS)]
    return ["-@all", "+@read", *_CONNECT, f"%R~{p}*"]


async def apply_acl(admin: aioredis.Redis, prefix: str, passwords: Mapping[Role, str],
                    names: Mapping[Role, str] | None = None) -> dict[Role, str]:
    """Create (or reset) one user per role; returns the user names. Needs an admin connection."""
    created = {}
    for role, password in passwords.items():
        name = (names or {}).get(role, f"ecgscreen-{role.value}")
        await admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", *acl_rules(role, prefix))
        created[role] = name
    return created
