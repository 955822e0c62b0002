"""`ecgscreen web`: the triage worklist in a browser, through the same TriageStore calls as the CLI.

Server-rendered pages (Jinja2), one small script and one stylesheet served from
the package, no build step, nothing fetched from elsewhere. URLs carry alert ids,
sites and filters only, never a patient reference; the request log names the
route, not the URL.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ops.web import views
from ops.web.ecg_svg import render_ecg
from ops.web.security import AccessConfig, AccessMiddleware, csrf_ok, csrf_token, same_origin
from schemas.messages import Priority, TaskGroup
from schemas.waveform import WaveformError, unpack_waveform
from workers.triage import TriageError, TriageItem, TriagePermissionError, TriageStore
from workers.triage_stats import Resolution, Status, triage_stats

HERE = Path(__file__).parent
log = logging.getLogger("ecgscreen.web")
AUDIT_SCAN = 2000  # recent audit entries searched for one alert's history


@dataclass(frozen=True)
class WebConfig:
    access: AccessConfig
    lease_s: float = 900.0
    max_items: int = 500  # per queue on the worklist page


def create_web_app(config: WebConfig, open_store: Callable[[], TriageStore]) -> Starlette:
    """The app; ``open_store`` makes the reviewer's TriageStore when the server starts."""
    templates = Jinja2Templates(env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined))
    templates.env.globals.update(fmt_time=views.fmt_time, priorities=[p.value for p in Priority],
                                 groups=[g.value for g in TaskGroup], outcomes=[o.value for o in Resolution])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.store = open_store()
        try:
            yield
        finally:
            await app.state.store.close()

    pages = _Pages(config, templates)
    routes = [
        Route("/", lambda r: RedirectResponse("/worklist", 303)),
        Route("/healthz", lambda r: PlainTextResponse("ok")),
        Route("/worklist", pages.worklist),
        Route("/alerts/{alert_id}", pages.alert),
        Route("/alerts/{alert_id}/{action}", pages.act, methods=["POST"]),
        Route("/stats", pages.stats),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=[
        Middleware(_RequestLog), Middleware(AccessMiddleware, config=config.access)])


class _RequestLog:
    """One line per request: method, route template, status and time; never the URL or a query."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        started, status = time.perf_counter(), [0]

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, receive, capture)
        if scope["type"] == "http":
            route = scope.get("route")
            path = getattr(route, "path", "(unmatched)")
            log.info("request", extra={"what": f"{scope['method']} {path} {status[0]}",
                                       "elapsed_ms": round((time.perf_counter() - started) * 1000, 1)})


class _Pages:
    def __init__(self, config: WebConfig, templates: Jinja2Templates) -> None:
        self.config = config
        self.templates = templates

    def _render(self, request: Request, name: str, status: int = 200, **ctx: Any) -> Response:
        user = request.state.user
        ctx.update(user=user, csrf=csrf_token(self.config.access.secret, user),
                   message=views.MESSAGES.get(request.query_params.get("m", "")),
                   error=request.query_params.get("m", "") in _ERROR_CODES)
        return self.templates.TemplateResponse(request, name, ctx, status_code=status)

    async def worklist(self, request: Request) -> Response:
        store: TriageStore = request.app.state.store
        sites = await store.sites()
        site = request.query_params.get("site") or (sites[0] if sites else "")
        filters = views.Filters.of(dict(request.query_params))
        sections: list[tuple[str, str, list[TriageItem]]] = []
        everything: list[tuple[str, TriageItem]] = []
        if site in sites:
            await _reap(store, site)
            for queue, title in views.QUEUES:
                items = await store.items(site, queue, self.config.max_items)
                everything += [(queue, i) for i in items]
                if (queue, title) in filters.queues():
                    sections.append((queue, title, [i for i in items if filters.keep(i)]))
        now = datetime.now(UTC)
        return self._render(request, "worklist.html", sites=sites, site=site, filters=filters, sections=sections,
                            counts=views.counts(everything), now=now, age=views.fmt_age)

    async def alert(self, request: Request) -> Response:
        store: TriageStore = request.app.state.store
        alert_id = request.path_params["alert_id"]
        try:
            item = await store.get(alert_id)
        except TriageError:
            return self._render(request, "error.html", 404, text="No such alert.")
        await _reap(store, item.alert.site)
        item = await store.get(alert_id)
        history = views.alert_history(await store.audit(item.alert.site, AUDIT_SCAN), item.alert.alert_id)
        now_ms = int(time.time() * 1000)
        ecg, wave = await _ecg(store, item)
        return self._render(request, "alert.html", item=item, a=item.alert, ecg=ecg, wave=wave, history=history,
                            lease=views.lease_view(item, request.state.user, history, now_ms),
                            can_act=item.status is not Status.RESOLVED)

    async def act(self, request: Request) -> Response:
        store: TriageStore = request.app.state.store
        alert_id, action = request.path_params["alert_id"], request.path_params["action"]
        form = await request.form()
        token = str(form.get("csrf", ""))
        if not csrf_ok(self.config.access.secret, request.state.user, token) or not same_origin(
                request.headers.get("origin"), request.headers.get("host")):
            return PlainTextResponse("CSRF check failed: reload the page and try again", 403)
        do = _ACTIONS.get(action)
        if do is None:
            return PlainTextResponse("unknown action", 404)
        try:
            await do(store, alert_id, request.state.user, {k: str(v) for k, v in form.items()}, self.config)
            code = _DONE[action]
        except TriageError as err:
            code = err.reason
        except (KeyError, ValueError):
            code = "bad_form"
        return RedirectResponse(f"/alerts/{alert_id}?m={code}", 303)

    async def stats(self, request: Request) -> Response:
        store: TriageStore = request.app.state.store
        sites = await store.sites()
        site = request.query_params.get("site") or None
        stats = triage_stats(await store.stats_rows(site if site in sites else None))
        return self._render(request, "stats.html", sites=sites, site=site or "", stats=stats,
                            chart=views.ppv_chart(stats))


_ERROR_CODES = frozenset({"claimed_by_other", "already_resolved", "alert_not_found", "worklist_empty",
                          "invalid_actor", "redis_acl_denied", "bad_form"})
Action = Callable[[TriageStore, str, str, dict[str, str], WebConfig], Awaitable[object]]


async def _claim(s: TriageStore, alert_id: str, user: str, f: dict[str, str], c: WebConfig) -> object:
    return await s.claim(user, alert_id, lease_s=c.lease_s)


async def _resolve(s: TriageStore, alert_id: str, user: str, f: dict[str, str], c: WebConfig) -> object:
    await s.resolve(alert_id, user, Resolution(f["outcome"]), f.get("note", "")[:2000])
    return None


async def _reassign(s: TriageStore, alert_id: str, user: str, f: dict[str, str], c: WebConfig) -> object:
    return await s.reassign(alert_id, user, f["to"].strip(), c.lease_s)


async def _snooze(s: TriageStore, alert_id: str, user: str, f: dict[str, str], c: WebConfig) -> object:
    minutes = float(f["minutes"])
    if not 1 <= minutes <= 7 * 24 * 60:
        raise ValueError("snooze between 1 minute and 7 days")
    return await s.snooze(alert_id, user, minutes * 60)


_ACTIONS: dict[str, Action] = {"claim": _claim, "resolve": _resolve, "reassign": _reassign, "snooze": _snooze}
_DONE = {"claim": "claimed", "resolve": "resolved", "reassign": "reassigned", "snooze": "snoozed"}


async def _reap(store: TriageStore, site: str) -> None:
    # As `triage list` does: expired leases go back first, so the page shows what a claim would see.
    with contextlib.suppress(TriagePermissionError):
        await store.reap(site)


async def _ecg(store: TriageStore, item: TriageItem) -> tuple[str | None, dict[str, Any]]:
    """The drawn ECG of the alert's event and what its waveform says of the patient and recording."""
    a = item.alert
    blob = await store.waveform(a.event_id)
    try:
        wave = None if blob is None else unpack_waveform(blob)
    except WaveformError:
        wave = None
    if wave is None:
        return None, {}
    masked = a.quality.bad_leads if a.quality.status.value == "degraded" else ()
    windows = a.explanation.windows if a.explanation else ()
    svg = render_ecg(wave.signal_mv, wave.sampling_rate_hz, wave.leads, masked=masked, windows=windows,
                     caption=f"event {a.event_id}")
    meta = {"age": wave.age_years, "sex": None if wave.sex is None else wave.sex.value,
            "pacemaker": wave.pacemaker, "fs": wave.sampling_rate_hz, "leads": ", ".join(wave.leads),
            "seconds": wave.samples.shape[1] / wave.sampling_rate_hz, "encoding": wave.encoding.value}
    return svg, meta


def new_secret(configured: str | None) -> bytes:
    return configured.encode() if configured else secrets.token_bytes(32)
