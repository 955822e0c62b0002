"""Access rules of `ecgscreen web` against a real Redis: trusted header, CSRF, CSP, no patient data in URLs or logs."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the web extra is not installed (pip install -e '.[web]')")
pytest.importorskip("httpx2", reason="starlette's TestClient needs httpx2 (dev extra)")

from starlette.testclient import TestClient

from ops.web.cmd import build_app
from ops.web.security import csrf_ok, csrf_token
from schemas.errors import ConfigError
from tests.triage_factory import new_prefix
from tests.web_support import SITE, USER_HEADER, fill, store_as, web_settings
from workers.triage_acl import Role
from workers.triage_stats import Status

AS_LEE = {USER_HEADER: "dr.lee"}


@pytest.fixture(scope="module")
def served(redis_url: str) -> Iterator[tuple[TestClient, str, Any]]:
    prefix = new_prefix()
    names, _ = fill(redis_url, prefix)
    with TestClient(build_app(web_settings(redis_url, prefix, names)), base_url="http://ecg.test") as client:
        yield client, prefix, names


def _state(redis_url: str, prefix: str, names: Any, alert_id: str) -> Status:
    async def go() -> Status:
        s = store_as(redis_url, prefix, names)
        try:
            return (await s.get(alert_id)).status
        finally:
            await s.close()

    return asyncio.run(go())


def test_without_the_trusted_header_every_page_is_refused(served: tuple[TestClient, str, Any]) -> None:
    client, _, _ = served
    for path in ("/worklist", "/alerts/al_0001", "/stats", "/static/app.js"):
        assert client.get(path).status_code == 401, path
    assert client.get("/worklist", headers={USER_HEADER: "bad user!"}).status_code == 401
    assert client.get("/healthz").status_code == 200
    assert client.get("/worklist", headers=AS_LEE).status_code == 200


def test_strict_headers_and_no_inline_script(served: tuple[TestClient, str, Any]) -> None:
    client, _, _ = served
    r = client.get("/alerts/al_0001", headers=AS_LEE)
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
    assert r.headers["cache-control"] == "no-store" and r.headers["x-frame-options"] == "DENY"
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", r.text, re.S)
    assert scripts and all('src="/static/' in attrs and not body.strip() for attrs, body in scripts)
    assert " style=" not in r.text and "<style" not in r.text  # style-src 'self' would block them
    assert "http://" not in r.text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing from elsewhere


def test_post_without_a_valid_csrf_token_is_refused(redis_url: str, served: tuple[TestClient, str, Any]) -> None:
    client, prefix, names = served
    url = "/alerts/al_0004/claim"
    assert client.post(url, headers=AS_LEE, data={}).status_code == 403
    other = csrf_token(b"another key", "dr.lee")
    assert client.post(url, headers=AS_LEE, data={"csrf": other}).status_code == 403
    page = client.get("/alerts/al_0004", headers=AS_LEE).text
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    as_kim = {USER_HEADER: "nurse.kim"}
    assert client.post(url, headers=as_kim, data={"csrf": token}).status_code == 403  # bound to its user
    evil = {**AS_LEE, "origin": "https://evil.example"}
    assert client.post(url, headers=evil, data={"csrf": token}).status_code == 403
    assert _state(redis_url, prefix, names, "al_0004") is Status.OPEN
    ok = client.post(url, headers=AS_LEE, data={"csrf": token}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/alerts/al_0004?m=claimed"
    assert _state(redis_url, prefix, names, "al_0004") is Status.CLAIMED


def test_no_patient_reference_in_urls_or_logs(served: tuple[TestClient, str, Any],
                                              caplog: pytest.LogCaptureFixture) -> None:
    client, _, _ = served
    with caplog.at_level(logging.INFO, logger="ecgscreen.web"):
        pages = [client.get(p, headers=AS_LEE).text for p in
                 (f"/worklist?site={SITE}", "/alerts/al_0001", "/alerts/al_0002", "/stats")]
    assert "pat-ALPHA-1" in pages[0] and "pat-ALPHA-1" in pages[1]  # shown on the page...
    urls = [u for page in pages for u in re.findall(r'(?:href|action|src)="([^"]*)"', page)]
    assert urls and not [u for u in urls if "pat-" in u]  # ...never in a URL
    lines = [r.getMessage() + " " + str(getattr(r, "what", "")) for r in caplog.records]
    assert any("GET /alerts/{alert_id} 200" in line for line in lines)
    assert not [line for line in lines if "pat-" in line or "site=" in line or "al_0001" in line]


def test_csrf_tokens_expire() -> None:
    token = csrf_token(b"k", "dr.lee", now=1_000_000)
    assert csrf_ok(b"k", "dr.lee", token, now=1_000_100)
    assert not csrf_ok(b"k", "dr.lee", token, now=1_000_000 + 13 * 3600)
    assert not csrf_ok(b"k", "dr.lee", token[:-1] + "0", now=1_000_100) or token.endswith("0")


def test_refuses_to_start_without_header_or_reviewer_credentials(redis_url: str) -> None:
    names = {r: r.value for r in Role}
    settings = web_settings(redis_url, "x", names, ECGSCREEN_WEB_USER_HEADER="")
    with pytest.raises(ConfigError, match="USER_HEADER"):
        build_app(settings)
    with pytest.raises(ConfigError, match="reviewer"):
        build_app(web_settings(redis_url, "x", names, ECGSCREEN_WEB_REDIS_PASSWORD=""))
    # A local trial: user 'dev' without the header, Redis as ECGSCREEN_REDIS_* say.
    app = build_app(web_settings(redis_url, "x", names, ECGSCREEN_WEB_USER_HEADER="", ECGSCREEN_WEB_REDIS_PASSWORD=""),
                    insecure_dev=True)
    with TestClient(app) as client:
        assert client.get("/worklist").status_code == 200


def _token(client: TestClient, alert_id: str, headers: dict[str, str]) -> str:
    page = client.get(f"/alerts/{alert_id}", headers=headers).text
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def test_reassign_snooze_and_a_lost_lease(redis_url: str, served: tuple[TestClient, str, Any]) -> None:
    client, prefix, names = served
    as_kim = {USER_HEADER: "nurse.kim"}
    token = _token(client, "al_0003", as_kim)

    async def short_claim() -> None:
        s = store_as(redis_url, prefix, names, Role.REVIEWER)
        try:
            await s.claim("nurse.kim", "al_0003", lease_s=0.2)
        finally:
            await s.close()

    asyncio.run(short_claim())
    time.sleep(0.4)
    page = client.get("/alerts/al_0003", headers=as_kim).text  # the view reaps the expired lease first
    assert "lease lost" in page
    r = client.post("/alerts/al_0003/reassign", headers=as_kim, data={"csrf": token, "to": "dr.lee"},
                    follow_redirects=False)
    assert r.headers["location"] == "/alerts/al_0003?m=reassigned"
    assert "claimed by you" in client.get("/alerts/al_0003", headers=AS_LEE).text
    # nurse.kim no longer holds it: her snooze is refused and the page says why.
    r = client.post("/alerts/al_0003/snooze", headers=as_kim, data={"csrf": token, "minutes": "30"})
    assert "Your lease was lost" in r.text
    r = client.post("/alerts/al_0003/snooze", headers=AS_LEE, data={"csrf": _token(client, "al_0003", AS_LEE),
                                                                    "minutes": "30"})
    assert "Snoozed." in r.text and _state(redis_url, prefix, names, "al_0003") is Status.SNOOZED

    async def trail() -> list[tuple[str, str]]:
        s = store_as(redis_url, prefix, names)
        try:
            return [(e.action, e.actor) for e in await s.audit(SITE) if e.alert_id == "al_0003"]
        finally:
            await s.close()

    assert asyncio.run(trail())[-4:] == [("claimed", "nurse.kim"), ("lease_expired", "system"),
                                          ("reassigned", "nurse.kim"), ("snoozed", "dr.lee")]


def test_stats_page_shows_observed_against_expected(served: tuple[TestClient, str, Any]) -> None:
    client, _, _ = served
    token = _token(client, "al_0002", AS_LEE)
    client.post("/alerts/al_0002/claim", headers=AS_LEE, data={"csrf": token})
    client.post("/alerts/al_0002/resolve", headers=AS_LEE, data={"csrf": token, "outcome": "false_positive"})
    page = client.get("/stats", headers=AS_LEE).text
    row = re.search(r"<tr><td>site-web</td><td>echo.lvef_lt_40</td>.*?</tr>", page, re.S)
    assert row and "0.00 [0.00, 0.79]" in row.group(0) and "0.31" in row.group(0)  # Wilson for 0 of 1
    assert 'class="ppv-chart"' in page and 'class="observed"' in page and 'class="expected"' in page


def test_backfilled_alerts_have_their_own_section(redis_url: str) -> None:
    """A backfill's alerts are shown under their own queue, not counted as open on today's worklist."""
    from dataclasses import replace

    from schemas.messages import Priority
    from tests.triage_factory import make_alert
    from tests.web_support import PASSWORD

    prefix = new_prefix()
    names, _ = fill(redis_url, prefix)
    old = replace(make_alert(9, Priority.ROUTINE, SITE, patient="pat-CHARLIE-3"), flags=("backfill",))

    async def add() -> None:
        from workers.triage import TriageStore

        worker = TriageStore.from_url(redis_url, prefix, username=names[Role.WORKER], password=PASSWORD)
        await worker.add_alerts([old])
        await worker.close()

    def open_count(page: str) -> str:
        found = re.search(r'class="count-open"><b>(\d+)</b>', page)
        assert found is not None
        return found.group(1)

    with TestClient(build_app(web_settings(redis_url, prefix, names)), base_url="http://ecg.test") as client:
        before = client.get("/worklist", headers=AS_LEE).text
        asyncio.run(add())
        page = client.get("/worklist", headers=AS_LEE).text
        only = client.get("/worklist?status=backfill", headers=AS_LEE).text
    backfill = page.split('id="queue-backfill"', 1)[1]
    assert "al_0009" in backfill and "al_0009" not in page.split('id="queue-backfill"', 1)[0]
    assert re.search(r'class="count-backfill"><b>1</b>', page)
    assert open_count(page) == open_count(before)  # today's worklist is not buried
    assert 'id="queue-worklist"' not in only and "al_0009" in only
