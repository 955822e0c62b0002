"""The Redis-backed triage queue, its audit trail and the worker's outcome ledger.

Data model (``P`` is the key prefix, ``ecg`` by default; ``S`` a site):

===========================  ========  ====================================================  ========
key                          type      what                                                  written by
===========================  ========  ====================================================  ========
``P:alert:{id}``             hash      the alert: ``json`` (the highest-scoring event's       worker
                                       alert), site, task, priority, band, rank, created_at,
                                       created_ms, anchor_ms, score, admission, updates, ...
``P:state:{id}``             hash      review state: status, actor, lease_until, claimed_ms,  reviewer
                                       resolved_ms, outcome, note, snooze_until
``P:idem:{candidate id}``    string    idempotency key: ``{admission}|{target alert id}``     worker
``P:open:{episode}``         zset      a (site, patient, task) episode's alerts by anchor     worker
                                       (dedup time); the name hashes the patient ref
``P:worklist:S``             zset      open alerts; score = band x 10^13 + created ms         both
``P:held:S``                 zset      alerts held by the site's rate limit (same score)      both
``P:backfill:S``             zset      backfilled alerts (``ecgscreen replay backfill``), its  both
                                       own review queue outside the rate limit (same score)
``P:claimed:S``              zset      claimed alerts; score = lease expiry (server ms)       reviewer
``P:snoozed:S``              zset      snoozed alerts; score = wake time (server ms)          reviewer
``P:rate:S``                 zset      alerts let through in the last hour (rate limit)       both
``P:alerts:S``               zset      every alert raised at S, by created ms (stats index)   worker
``P:audit:S``                stream    append-only, hash-chained log of every action          both
``P:audithead:S``            string    the chain's last hash                                  both
``P:sites``                  set       sites with alerts                                      worker
``P:outcome:{event key}``    string    ``{digest}|{kind}``: the event's outcome is durable    worker
``P:wave:{event id}``        string    an alerting event's signal as received                 worker
                                       (:mod:`schemas.waveform`), the alert's retention
``P:stats``                  hash      counters (duplicates skipped, policy_added, ...)       worker
===========================  ========  ====================================================  ========

Every write that must be atomic is one Lua script (:mod:`workers.triage_lua`).
Worker and reviewers write disjoint keys where it matters: only reviewers write
``state`` and ``claimed``, so an ACL can stop a worker from resolving
(:mod:`workers.triage_acl`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoPermissionError, ResponseError

from schemas.codec import decode_alert, encode_alert
from schemas.errors import ECGScreenError
from schemas.messages import Alert, Priority
from workers import triage_lua as lua
from workers import triage_wave
from workers.policy import PRIORITY_BAND, Admission, AlertFlag, PolicyConfig, dedup_time_ms, episode_key
from workers.settings import RedisSettings
from workers.triage_audit import AuditEntry, ChainCheck, entry_from_fields, verify_chain
from workers.triage_stats import AlertRow, Resolution, Status

_BAND_WIDTH = 10**13  # > any epoch-milliseconds value for the next few centuries
_ACTOR = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_QUEUES = ("worklist", "held", "claimed", "snoozed", "backfill")


class TriageError(ECGScreenError):
    """A triage action that cannot be done as asked; ``detail`` says what to do instead."""


class AlertNotFound(TriageError):
    def __init__(self, alert_id: str) -> None:
        super().__init__("alert_not_found", f"no alert {alert_id}; `ecgscreen triage list` shows the open ones")


class WorklistEmpty(TriageError):
    def __init__(self, site: str) -> None:
        super().__init__("worklist_empty", f"nothing open at {site}")


class AlreadyResolved(TriageError):
    def __init__(self, alert_id: str) -> None:
        super().__init__("already_resolved", f"{alert_id} is resolved; see `ecgscreen triage show {alert_id}`")


class ClaimConflict(TriageError):
    def __init__(self, holder: str) -> None:
        super().__init__("claimed_by_other", f"claimed by {holder}; ask them, or reassign it to yourself")


class TriagePermissionError(TriageError):
    def __init__(self, what: str, user: str) -> None:
        super().__init__("redis_acl_denied", f"Redis user {user!r} may not {what}; "
                         "use the credentials of a role that may (ECGSCREEN_REDIS_USERNAME/PASSWORD)")


class InvalidActor(TriageError):
    def __init__(self, actor: str) -> None:
        super().__init__("invalid_actor", f"actor {actor!r} must be 1-64 of [A-Za-z0-9._@-]")


_ERRORS: dict[str, Callable[[str], TriageError]] = {"alert_not_found": AlertNotFound, "worklist_empty": WorklistEmpty,
                                         "already_resolved": AlreadyResolved, "claimed_by_other": ClaimConflict}


@dataclass(frozen=True, slots=True)
class RecordedOutcome:
    digest: str
    kind: str


@dataclass(frozen=True, slots=True)
class Admitted:
    """What became of one candidate alert; ``alert`` is the target's current view, to publish."""

    candidate_id: str
    admission: Admission
    target: str
    alert: Alert
    replay: bool = False

    @property
    def publish(self) -> bool:
        # A suppressed duplicate changes nothing a subscriber would act on.
        return self.admission is not Admission.SUPPRESSED


@dataclass(frozen=True, slots=True)
class TriageItem:
    """An alert with its review state."""

    alert: Alert
    status: Status
    admission: Admission
    updates: int = 0
    first_event_id: str | None = None
    actor: str | None = None
    lease_until_ms: int | None = None
    snooze_until_ms: int | None = None
    claimed_ms: int | None = None
    resolved_ms: int | None = None
    outcome: Resolution | None = None
    note: str | None = None
    resolved_by: str | None = None


class TriageStore:
    """Async access to the triage keys; one instance per process (worker, CLI, test)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "ecg", actor: str = "worker",
                 policy: PolicyConfig | None = None, idem_ttl_s: int = 30 * 24 * 3600, user: str = "default") -> None:
        self._r = client
        self._p = prefix
        self._actor = _check_actor(actor)
        self._policy = policy or PolicyConfig()
        self._idem_ttl_s = idem_ttl_s
        self._user = user
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(src) for name, src in (
                ("add", lua.ADD_ALERT), ("claim", lua.CLAIM), ("resolve", lua.RESOLVE),
                ("reassign", lua.REASSIGN), ("snooze", lua.SNOOZE), ("reap", lua.REAP), ("sha256", lua.SHA256),
                ("wave", triage_wave.STORE_WAVEFORM))}

    @classmethod
    def from_url(cls, url: str, prefix: str = "ecg", actor: str = "worker", policy: PolicyConfig | None = None,
                 idem_ttl_s: int = 30 * 24 * 3600, **client_kwargs: Any) -> TriageStore:
        user = str(client_kwargs.get("username") or "default")
        return cls(aioredis.Redis.from_url(url, **client_kwargs), prefix, actor, policy, idem_ttl_s, user=user)

    @classmethod
    def from_settings(cls, redis: RedisSettings, policy: PolicyConfig | None = None,
                      actor: str = "worker") -> TriageStore:
        """The store as configured: ACL user, TLS and the idempotency horizon from settings."""
        kwargs = redis.client_kwargs()
        return cls(aioredis.Redis.from_url(redis.url, **kwargs), redis.key_prefix, actor, policy,
                   idem_ttl_s=redis.outcome_ttl_s, user=redis.username or "default")

    async def close(self) -> None:
        await self._r.aclose()

    def _k(self, *parts: str) -> str:
        return ":".join((self._p, *parts))

    # --- the worker: add alerts, record outcomes -------------------------------------------

    async def add_alerts(self, alerts: Sequence[Alert], waveforms: Mapping[str, bytes] | None = None,
                         ) -> list[Admitted]:
        """Admit each alert atomically (dedup, rate limit, idempotency); replays change nothing.

        ``waveforms`` maps event ids to their :func:`schemas.waveform.pack_waveform` blob; each is
        stored in the same pipeline, after its event's alerts, with their retention.

        A new alert flagged ``backfill`` goes to the site's backfill review queue, outside the
        rate limit, so a backfill never buries (or holds back) the live worklist; dedup against
        the site's open alerts, idempotency and the audit trail are the same as for the worklist.
        """
        if not alerts:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            for alert in alerts:
                await self._scripts["add"](keys=[], args=self._add_args(alert), client=pipe)
            for event_id, blob in (waveforms or {}).items():
                ids = [a.alert_id for a in alerts if a.event_id == event_id]
                if ids:
                    await self._scripts["wave"](keys=[], args=[self._p, event_id, blob, *ids], client=pipe)
            results = await self._guard("add alerts", pipe.execute())
        added = results[:len(alerts)]
        return [_admitted(a.alert_id, [_text(x) for x in r]) for a, r in zip(alerts, added, strict=True)]

    def _add_args(self, alert: Alert) -> list[Any]:
        band = PRIORITY_BAND[alert.priority]
        created_ms = int(alert.created_at.timestamp() * 1000)
        limit = self._policy.rate_limit(alert.site)
        detail = orjson.dumps({"event_id": alert.event_id, "score": round(alert.score, 6)}).decode()
        return [self._p, alert.site, alert.alert_id, encode_alert(alert),
                episode_key(alert.site, alert.patient_ref, alert.task.id), alert.priority.value, band,
                alert.created_at.isoformat(), created_ms, dedup_time_ms(alert), repr(float(alert.score)),
                self._policy.window_ms(alert.site), -1 if limit is None else limit, self._actor,
                self._idem_ttl_s, alert.task.id, alert.event_id,
                "" if alert.expected_ppv is None else repr(alert.expected_ppv), detail,
                "backfill" if AlertFlag.BACKFILL.value in alert.flags else "worklist"]

    async def recorded_outcomes(self, event_keys: Sequence[str]) -> list[RecordedOutcome | None]:
        if not event_keys:
            return []
        raw = await self._r.mget([self._k("outcome", k) for k in event_keys])
        return [None if v is None else RecordedOutcome(*_text(v).split("|", 1)) for v in raw]

    async def record_outcomes(self, outcomes: Sequence[tuple[str, RecordedOutcome]], ttl_s: int,
                              counts: Mapping[str, int] | None = None) -> None:
        """Mark events done (NX: the first recorded outcome of an event id stands) and add ``counts``
        to the stats, all in one round trip."""
        counts = {k: n for k, n in (counts or {}).items() if n}
        if not outcomes and not counts:
            return
        async with self._r.pipeline(transaction=False) as pipe:
            for key, out in outcomes:
                pipe.set(self._k("outcome", key), f"{out.digest}|{out.kind}", ex=ttl_s, nx=True)
            for field, n in counts.items():
                pipe.hincrby(self._k("stats"), field, n)
            await pipe.execute()

    async def count(self, field: str, n: int = 1) -> None:
        if n:
            await self._r.hincrby(self._k("stats"), field, n)

    async def stats(self) -> dict[str, int]:
        raw = await self._r.hgetall(self._k("stats"))
        return {_text(k): int(v) for k, v in raw.items()}

    # --- reviewers: claim, resolve, reassign, snooze ------------------------------------------

    async def claim(self, actor: str, alert_id: str | None = None, site: str | None = None,
                    lease_s: float = 900.0) -> tuple[str, int]:
        """Claim an alert (or the top of ``site``'s worklist); returns (alert id, lease expiry ms)."""
        if alert_id is not None:
            site = await self._site_of(alert_id)
        limit = self._policy.rate_limit(site or "")
        out = await self._call("claim", "claim alerts", [self._p, site or "", alert_id or "", _check_actor(actor),
                                                         int(lease_s * 1000), -1 if limit is None else limit])
        return out[1], int(out[2])

    async def resolve(self, alert_id: str, actor: str, outcome: Resolution, note: str = "") -> None:
        detail = orjson.dumps({"outcome": outcome.value, "note": note}).decode()
        await self._call("resolve", "resolve alerts",
                         [self._p, alert_id, _check_actor(actor), outcome.value, note, detail])

    async def reassign(self, alert_id: str, actor: str, to: str, lease_s: float = 900.0) -> int:
        detail = orjson.dumps({"to": _check_actor(to)}).decode()
        out = await self._call("reassign", "reassign alerts",
                               [self._p, alert_id, _check_actor(actor), to, int(lease_s * 1000), detail])
        return int(out[2])

    async def snooze(self, alert_id: str, actor: str, seconds: float) -> int:
        detail = orjson.dumps({"seconds": seconds}).decode()
        out = await self._call("snooze", "snooze alerts", [self._p, alert_id, _check_actor(actor), seconds, detail])
        return int(out[2])

    async def reap(self, site: str) -> int:
        """Return expired leases and ended snoozes to the worklist, release held alerts; how many moved."""
        limit = self._policy.rate_limit(site)
        out = await self._call("reap", "reap leases", [self._p, site, -1 if limit is None else limit])
        return int(out[1])

    async def _site_of(self, alert_id: str) -> str:
        site = await self._r.hget(self._k("alert", alert_id), "site")
        if site is None:
            raise AlertNotFound(alert_id)
        return _text(site)

    async def _call(self, name: str, what: str, args: list[Any]) -> list[str]:
        raw = await self._guard(what, self._scripts[name](keys=[], args=args))
        out = [_text(x) for x in raw]
        if out[0] == "err":
            raise _ERRORS[out[1]](out[2])
        return out

    async def _guard(self, what: str, pending: Any) -> Any:
        try:
            return await pending
        except (NoPermissionError, ResponseError) as exc:
            if _is_acl_error(exc):
                raise TriagePermissionError(what, self._user) from None
            raise

    # --- reads ---------------------------------------------------------------------------

    async def sites(self) -> list[str]:
        return sorted(_text(s) for s in await self._r.smembers(self._k("sites")))

    async def worklist(self, site: str, limit: int = 10) -> list[Alert]:
        """Open alerts of a site, top of the queue first."""
        return [item.alert for item in await self.items(site, "worklist", limit)]

    async def worklist_size(self, site: str) -> int:
        return int(await self._r.zcard(self._k("worklist", site)))

    async def items(self, site: str, queue: str = "worklist", limit: int = 50) -> list[TriageItem]:
        """Alerts in one of a site's queues (worklist, held, claimed, snoozed), in queue order."""
        if queue not in _QUEUES:
            raise TriageError("unknown_queue", f"queue must be one of {_QUEUES}")
        ids = [_text(i) for i in await self._r.zrange(self._k(queue, site), 0, limit - 1)]
        return [i for i in await self._load(ids) if i is not None]

    async def get(self, alert_id: str) -> TriageItem:
        """One alert; a candidate id that was merged into another alert resolves to that alert."""
        (item,) = await self._load([alert_id])
        if item is None:
            idem = await self._r.get(self._k("idem", alert_id))
            target = _text(idem).split("|", 1)[1] if idem is not None else None
            (item,) = await self._load([target]) if target and target != alert_id else (None,)
        if item is None:
            raise AlertNotFound(alert_id)
        return item

    async def _load(self, ids: Sequence[str]) -> list[TriageItem | None]:
        if not ids:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            for alert_id in ids:
                pipe.hgetall(self._k("alert", alert_id))
                pipe.hgetall(self._k("state", alert_id))
            raw = await pipe.execute()
        return [_item(alert_id, _texts(raw[2 * n]), _texts(raw[2 * n + 1])) for n, alert_id in enumerate(ids)]

    async def waveform(self, event_id: str) -> bytes | None:
        """The stored signal of an alerting event (``schemas.waveform``), or None."""
        raw = await self._r.get(self._k("wave", event_id))
        return raw if raw is None or isinstance(raw, bytes) else raw.encode()

    async def stats_rows(self, site: str | None = None) -> list[AlertRow]:
        """Every alert raised (at ``site``, or everywhere), as stats rows."""
        rows: list[AlertRow] = []
        for s in [site] if site else await self.sites():
            ids = [_text(i) for i in await self._r.zrange(self._k("alerts", s), 0, -1)]
            rows += [_row(item) for item in await self._load(ids) if item is not None]
        return rows

    # --- audit ---------------------------------------------------------------------------

    async def audit(self, site: str, limit: int | None = None) -> list[AuditEntry]:
        """A site's audit entries, oldest first (the last ``limit`` when given)."""
        key = self._k("audit", site)
        if limit is not None:
            return _entries(site, list(reversed(await self._r.xrevrange(key, count=limit) or [])))
        out: list[AuditEntry] = []
        start = "-"
        while True:
            chunk = _entries(site, await self._r.xrange(key, min=start, count=1000) or [])
            out += chunk
            if len(chunk) < 1000:
                return out
            start = "(" + chunk[-1].stream_id

    async def verify(self, site: str) -> ChainCheck:
        entries = await self.audit(site)
        head = await self._r.get(self._k("audithead", site))
        return verify_chain(site, entries, None if head is None else _text(head))

    async def audit_length(self, site: str | None = None) -> int:
        sites = [site] if site else await self.sites()
        return sum([int(await self._r.xlen(self._k("audit", s))) for s in sites])

    async def lua_sha256(self, message: str) -> str:
        """The audit chain's in-Redis SHA-256 (tests compare it with hashlib)."""
        return _text(await self._scripts["sha256"](keys=[], args=[message]))


def _admitted(candidate_id: str, out: list[str]) -> Admitted:
    action, target, blob, created_at, prio = out
    replay = action.startswith("replay:")
    view = _view(target, blob, created_at, prio)
    return Admitted(candidate_id, Admission(action.removeprefix("replay:")), target, view, replay)


def _view(alert_id: str, blob: str, created_at: str, prio: str) -> Alert:
    """The stored JSON is the highest-scoring event's alert; identity and priority come from the record."""
    alert = decode_alert(blob.encode())
    return replace(alert, alert_id=alert_id, created_at=datetime.fromisoformat(created_at), priority=Priority(prio))


def _item(alert_id: str, a: dict[str, str], s: dict[str, str]) -> TriageItem | None:
    if "json" not in a:
        return None
    admission = Admission(a.get("admission", "added"))
    # A held alert made urgent by an update was released by the worker (which writes no review state).
    held = admission is Admission.HELD and "released_ms" not in a
    default = Status.HELD if held else Status.OPEN
    return TriageItem(
        alert=_view(alert_id, a["json"], a["created_at"], a["priority"]),
        status=Status(s.get("status", default.value)), admission=admission, updates=int(a.get("updates", 0)),
        first_event_id=a.get("first_event_id"), actor=s.get("actor"),
        lease_until_ms=_opt_int(s.get("lease_until")), snooze_until_ms=_opt_int(s.get("snooze_until")),
        claimed_ms=_opt_int(s.get("claimed_ms")), resolved_ms=_opt_int(s.get("resolved_ms")),
        outcome=Resolution(s["outcome"]) if s.get("outcome") else None, note=s.get("note"),
        resolved_by=s.get("resolved_by"))


def _row(item: TriageItem) -> AlertRow:
    a = item.alert
    return AlertRow(site=a.site, task=a.task.id, created_ms=int(a.created_at.timestamp() * 1000),
                    status=item.status, claimed_ms=item.claimed_ms, resolved_ms=item.resolved_ms,
                    outcome=item.outcome, expected_ppv=a.expected_ppv)


def _entries(site: str, raw: Sequence[Any]) -> list[AuditEntry]:
    return [entry_from_fields(site, _text(i), _texts(f or {})) for i, f in raw]


def _check_actor(actor: str) -> str:
    if not _ACTOR.match(actor):
        raise InvalidActor(actor)
    return actor


def _is_acl_error(exc: Exception) -> bool:
    text = str(exc)
    return isinstance(exc, NoPermissionError) or "NOPERM" in text or "ACL failure" in text


def _opt_int(value: str | None) -> int | None:
    return int(value) if value else None


def _texts(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: object) -> str:
    """redis-py returns bytes (decode_responses off: alert JSON stays bytes end to end)."""
    return value.decode() if isinstance(value, bytes) else str(value)
