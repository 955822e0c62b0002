"""`ecgscreen triage ...`: the worklist as reviewers and auditors use it.

Every command takes ``--json`` for scripts. Reviewer commands act as ``--actor``
(default ``ECGSCREEN_ACTOR``) and connect as ``ECGSCREEN_REDIS_USERNAME``; the
Redis ACL decides what that user may do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ops.cli import print_json
from schemas.codec import encode_alert
from workers.settings import Settings
from workers.triage import TriageItem, TriagePermissionError, TriageStore
from workers.triage_acl import Role, acl_rules
from workers.triage_audit import AuditEntry
from workers.triage_stats import Resolution, TaskSiteStats, triage_stats

EXIT_TAMPERED = 4
Command = Callable[[TriageStore, argparse.Namespace, Settings], Awaitable[int]]


def register(sub: Any) -> None:
    p = sub.add_parser("triage", help="the Redis triage worklist: list, claim, resolve, audit, stats")
    actions = p.add_subparsers(metavar="ACTION")
    _add(actions, "list", "open alerts, top of each site's queue first", _list, site=True)
    actions.choices["list"].add_argument("--queue", choices=("worklist", "held", "claimed", "snoozed", "backfill"),
                                         default="worklist")
    actions.choices["list"].add_argument("--limit", type=int, default=20)
    _add(actions, "show", "one alert with its review state", _show, alert=True)
    _add(actions, "claim", "claim an alert (or the top of --site's worklist) with a lease", _claim,
         site=True, actor=True, lease=True)
    actions.choices["claim"].add_argument("alert_id", nargs="?")
    r = _add(actions, "resolve", "close an alert with an outcome", _resolve, alert=True, actor=True)
    r.add_argument("--outcome", required=True, choices=[o.value for o in Resolution])
    r.add_argument("--note", default="")
    a = _add(actions, "reassign", "hand an alert to someone else", _reassign, alert=True, actor=True, lease=True)
    a.add_argument("--to", required=True)
    s = _add(actions, "snooze", "take an alert off the worklist for a while", _snooze, alert=True, actor=True)
    s.add_argument("--minutes", type=float, required=True)
    u = _add(actions, "audit", "a site's audit trail; --verify checks its hash chain", _audit, site=True)
    u.add_argument("--verify", action="store_true")
    u.add_argument("--limit", type=int, default=50)
    _add(actions, "stats", "per task and site: raised, open, outcomes, times, observed vs expected PPV", _stats,
         site=True)
    acl = actions.add_parser("acl", help="the ACL SETUSER rules for the worker, reviewer and auditor users")
    acl.add_argument("--json", action="store_true")
    acl.add_argument("--write-aclfile", type=Path, default=None, metavar="OUT",
                     help="write a Redis aclfile (hashed passwords) from --secrets-dir instead of printing")
    acl.add_argument("--secrets-dir", type=Path, default=Path("/run/secrets"),
                     help="holds redis_{admin,worker,reviewer,auditor[,metrics]}_password (default /run/secrets)")
    acl.set_defaults(func=cmd_acl)


def _add(actions: Any, name: str, help_: str, fn: Command, *, site: bool = False, alert: bool = False,
         actor: bool = False, lease: bool = False) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = actions.add_parser(name, help=help_)
    if alert:
        p.add_argument("alert_id")
    if site:
        p.add_argument("--site", default=None)
    if actor:
        p.add_argument("--actor", default=None, help="who acts (default: ECGSCREEN_ACTOR)")
    if lease:
        p.add_argument("--lease-s", type=float, default=None, help="lease length (default: ECGSCREEN_LEASE_S)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda args, settings: asyncio.run(_with_store(fn, args, settings)))
    return p


async def _with_store(fn: Command, args: argparse.Namespace, settings: Settings) -> int:
    store = TriageStore.from_settings(settings.redis, settings.policy, actor="cli")
    try:
        return await fn(store, args, settings)
    finally:
        await store.close()


def _actor(args: argparse.Namespace, settings: Settings) -> str:
    return str(args.actor or settings.triage.actor)


def _lease(args: argparse.Namespace, settings: Settings) -> float:
    return float(args.lease_s or settings.triage.lease_s)


async def _sites(store: TriageStore, site: str | None) -> list[str]:
    return [site] if site else await store.sites()


async def _list(store: TriageStore, args: argparse.Namespace, settings: Settings) -> int:
    items: list[TriageItem] = []
    for site in await _sites(store, args.site):
        # Expired leases go back first, so the list is what a claim would see; an auditor moves nothing.
        with contextlib.suppress(TriagePermissionError):
            await store.reap(site)
        items += await store.items(site, args.queue, args.limit)
    _emit(args, [item_dict(i) for i in items], [item_line(i) for i in items] or ["(nothing)"])
    return 0


async def _show(store: TriageStore, args: argparse.Namespace, settings: Settings) -> int:
    item = await store.get(args.alert_id)
    d = item_dict(item)
    _emit(args, d, [f"{k:<16} {v}" for k, v in d.items() if k != "alert"] + [f"{'alert':<16} {d['alert']}"])
    return 0


async def _claim(store: TriageStore, args: argparse.Namespace, settings: Settings) -> int:
    alert_id, until = await store.claim(_actor(args, settings), args.alert_id, args.site, _lease(args, settings))
    out = {"alert_id": alert_id, "claimed_by": _actor(args, settings), "lease_until": _iso(until)}
    _emit(args, out, [f"claimed {alert_id} until {out['lease_until']}"])
    return 0


async def _resolve(store: TriageStore, args: argparse.Namespace, settings: Settings) -> int:
    await store.resolve(args.alert_id, _actor(args, settings), Resolution(args.outcome), args.note)
    _emit(args, {"alert_id": args.alert_id, "outcome": args.outcome}, [f"resolved {args.alert_id}: {args.outcome}"])
    return 0


async def _reassign(store: TriageStore, args: argparse.Namespace, settings: Settings) -> int:
    until = await store.reassign(args.alert_id, _actor(args, settings), args.to, _lease(args, settings))
    out = {"alert_id": args.alert_id, "claimed_by": args.to, "lease_until": _iso(until)}
    _emit(args, out, [f"reassigned {args.alert_id} to {args.to} until {out['lease_until']}"])
    return 0


async def _snooze(store: TriageStore, args: argparse.Namespace, settings: Settings) -> int:
    until = await store.snooze(args.alert_id, _actor(args, settings), args.minutes * 60)
    _emit(args, {"alert_id": args.alert_id, "until": _iso(until)}, [f"snoozed {args.alert_id} until {_iso(until)}"])
    return 0


async def _audit(store: TriageStore, args: argparse.Namespace, settings: Settings) -> int:
    sites = await _sites(store, args.site)
    if args.verify:
        checks = [await store.verify(s) for s in sites]
        _emit(args, [dataclasses.asdict(c) for c in checks], [_check_line(c.site, c.ok, c.entries, c.broken_at,
                                                                          c.reason) for c in checks])
        return 0 if all(c.ok for c in checks) else EXIT_TAMPERED
    entries = [e for s in sites for e in await store.audit(s, args.limit)]
    _emit(args, [dataclasses.asdict(e) for e in entries], [audit_line(e) for e in entries] or ["(no entries)"])
    return 0


async def _stats(store: TriageStore, args: argparse.Namespace, settings: Settings) -> int:
    stats = triage_stats(await store.stats_rows(args.site))
    _emit(args, [dataclasses.asdict(s) for s in stats], stats_lines(stats))
    return 0


def cmd_acl(args: argparse.Namespace, settings: Settings) -> int:
    prefix = settings.redis.key_prefix
    if args.write_aclfile is not None:
        from ops.acl_file import write_acl_file

        users = write_acl_file(args.write_aclfile, prefix, args.secrets_dir)
        print(f"wrote {args.write_aclfile}: users {', '.join(users)}")
        return 0
    rules = {role.value: acl_rules(role, prefix) for role in Role}
    lines = [f"ACL SETUSER ecgscreen-{r} reset on >CHANGE-ME {' '.join(rs)}" for r, rs in rules.items()]
    _emit(args, rules, lines)
    return 0


# --- rendering -------------------------------------------------------------------------------


def item_dict(item: TriageItem) -> dict[str, Any]:
    d = {k: v for k, v in dataclasses.asdict(item).items() if k != "alert" and v is not None}
    for key in ("lease_until_ms", "snooze_until_ms", "claimed_ms", "resolved_ms"):
        if key in d:
            d[key.removesuffix("_ms")] = _iso(d.pop(key))
    d["alert"] = orjson.loads(encode_alert(item.alert))
    return d


def item_line(item: TriageItem) -> str:
    a = item.alert
    who = f" by {item.actor}" if item.actor else ""
    ppv = "" if a.expected_ppv is None else f" ppv {a.expected_ppv:.0%}"
    more = f" (+{item.updates} later ECG)" if item.updates else ""
    more += "  [SYNTHETIC LABELS]" if "synthetic_labels" in a.flags else ""
    return (f"{a.alert_id}  {a.priority.value:<7} {a.site:<14} {a.task.id:<20} score {a.score:.3f}{ppv}  "
            f"{item.status.value}{who}{more}  {a.created_at:%Y-%m-%d %H:%M}")


def audit_line(e: AuditEntry) -> str:
    return f"{e.stream_id:<16} {_iso(e.at_ms)} {e.site:<14} {e.action:<13} {e.alert_id} {e.actor:<14} {e.detail}"


def stats_lines(stats: Sequence[TaskSiteStats]) -> list[str]:
    if not stats:
        return ["(no alerts)"]
    head = (f"{'site':<14} {'task':<20} {'raised':>6} {'open':>5} {'held':>5} {'claim_s':>8} {'resolve_s':>9}  "
            f"{'observed PPV [95% Wilson] (n)':<32} {'expected':>8}  resolved")
    return [head] + [_stats_line(s) for s in stats]


def _stats_line(s: TaskSiteStats) -> str:
    if s.observed_ppv is None or s.observed_ppv_ci95 is None:
        obs = "n/a (no adjudicated resolutions)"
    else:
        lo, hi = s.observed_ppv_ci95
        obs = f"{s.observed_ppv:.2f} [{lo:.2f}, {hi:.2f}] (n={s.adjudicated})"
    exp = "n/a" if s.expected_ppv is None else f"{s.expected_ppv:.2f}"
    resolved = ", ".join(f"{k} {v}" for k, v in s.resolved.items()) or "-"
    return (f"{s.site:<14} {s.task:<20} {s.raised:>6} {s.open:>5} {s.held:>5} {_num(s.median_time_to_claim_s):>8} "
            f"{_num(s.median_time_to_resolve_s):>9}  {obs:<32} {exp:>8}  {resolved}")


def _check_line(site: str, ok: bool, n: int, at: str | None, reason: object) -> str:
    return f"{site}: {n} entries, chain intact" if ok else f"{site}: {n} entries, BROKEN at {at}: {reason}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _emit(args: argparse.Namespace, data: object, lines: Sequence[str]) -> None:
    if args.json:
        print_json(data)
    else:
        print("\n".join(lines))
