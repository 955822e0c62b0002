"""`ecgscreen web` in a real headless Chromium (Debian's), driven by Playwright, against a real Redis.

The queue is filled by the worker's Redis user with alerts whose waveform is a real PTB-XL record
(a simulated one without ../shared/data); the app connects as the reviewer user.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the web extra is not installed (pip install -e '.[web]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) is not installed")

from ops.web.cmd import build_app, serving  # noqa: E402
from ops.web.shots import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.triage_factory import new_prefix  # noqa: E402
from tests.web_support import SITE, USER_HEADER, fill, store_as, web_settings  # noqa: E402
from workers.triage import TriageItem  # noqa: E402
from workers.triage_audit import AuditEntry  # noqa: E402

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium` (ops/run.sh test does it as root)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def site(redis_url: str) -> Iterator[dict[str, Any]]:
    prefix = new_prefix()
    names, origin = fill(redis_url, prefix)
    with serving(build_app(web_settings(redis_url, prefix, names))) as base, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1120, "height": 900},
                                      extra_http_headers={USER_HEADER: "dr.lee"})
        try:
            yield {"base": base, "page": context.new_page(), "browser": browser, "prefix": prefix, "names": names,
                   "origin": origin, "url": redis_url}
        finally:
            browser.close()


def _off_loop(coro: Any) -> Any:
    """Playwright's sync API keeps an event loop running in this thread: run store calls in another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _read(site: dict[str, Any], alert_id: str) -> tuple[TriageItem, list[AuditEntry]]:
    async def go() -> tuple[TriageItem, list[AuditEntry]]:
        s = store_as(site["url"], site["prefix"], site["names"])
        try:
            return await s.get(alert_id), await s.audit(SITE)
        finally:
            await s.close()

    return _off_loop(go())


def _queue_order(site: dict[str, Any]) -> list[str]:
    async def go() -> list[str]:
        s = store_as(site["url"], site["prefix"], site["names"])
        try:
            return [i.alert.alert_id for i in await s.items(SITE, "worklist")]
        finally:
            await s.close()

    return _off_loop(go())


def test_worklist_shows_the_alerts_in_queue_order(site: dict[str, Any]) -> None:
    page = site["page"]
    page.goto(f"{site['base']}/worklist?site={SITE}")
    rows = page.locator("#queue-worklist tr.alert-row")
    ids = [rows.nth(i).get_attribute("data-alert-id") for i in range(rows.count())]
    assert ids == _queue_order(site) == ["al_0001", "al_0002", "al_0003", "al_0004"]  # urgent, high, routine...
    assert page.locator("#counts .count-open b").inner_text() == "4"
    page.select_option("select[name=group]", "echo")  # the script submits the filter on change
    page.wait_for_url("**group=echo**")
    assert page.locator("#queue-worklist tr.alert-row").count() == 1
    assert page.locator("#queue-worklist tr.alert-row").get_attribute("data-alert-id") == "al_0002"


def test_ecg_page_renders_as_a_printout(site: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    page = site["page"]
    page.goto(f"{site['base']}/alerts/al_0002")
    ecg = page.locator("svg.ecg")
    labels = [page.locator(f'svg.ecg text.lead-label[data-lead="{lead}"]').first for lead in LEADS]
    assert all(label.is_visible() for label in labels)
    assert page.locator('svg.ecg text[data-lead="aVL"]').first.text_content() == "aVL masked"
    assert page.locator("svg.ecg rect.attribution").count() >= 1
    shot = tmp_path / "alert-ecg.png"
    ecg.screenshot(path=str(shot))
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    box = ecg.bounding_box()
    assert box is not None
    px_per_mm = box["width"] / 265.0
    # Pink paper: thick grid lines (#e07a7a) every 5 mm, seen as columns of that colour.
    major = (abs(img[..., 0] - 0xE0) < 24) & (abs(img[..., 1] - 0x7A) < 40) & (abs(img[..., 2] - 0x7A) < 40)
    cols = np.flatnonzero(major.mean(axis=0) > 0.35)
    starts = cols[np.insert(np.diff(cols) > 1, 0, True)]
    spacing = np.median(np.diff(starts))
    assert len(starts) >= 25 and abs(spacing - 5 * px_per_mm) < 1.0, (len(starts), spacing, px_per_mm)
    pink = ((img[..., 0] > 200) & (img[..., 1] < 215) & (img[..., 2] < 215)).mean()
    dark = (img.sum(axis=2) < 150).mean()  # the traces, labels and calibration pulses
    assert pink > 0.05 and dark > 0.005


def test_claim_and_resolve_change_state_and_audit(site: dict[str, Any]) -> None:
    page = site["page"]
    page.goto(f"{site['base']}/alerts/al_0001")
    page.click("#claim")
    page.wait_for_url("**m=claimed")
    assert "claimed by you" in page.locator("#state").inner_text()
    item, audit = _read(site, "al_0001")
    assert item.status.value == "claimed" and item.actor == "dr.lee"
    assert [(e.action, e.actor) for e in audit if e.alert_id == "al_0001"][-1] == ("claimed", "dr.lee")
    page.select_option("#outcome-select", "confirmed")
    page.fill("#note", "AF on the strip; cardiology informed")
    page.click("#resolve")
    page.wait_for_url("**m=resolved")
    assert page.locator("#outcome").inner_text() == "confirmed"
    item, audit = _read(site, "al_0001")
    assert item.status.value == "resolved" and item.resolved_by == "dr.lee" and item.note.startswith("AF on")
    last = [e for e in audit if e.alert_id == "al_0001"][-1]
    assert (last.action, last.actor) == ("resolved", "dr.lee") and '"outcome":"confirmed"' in last.detail


def test_post_without_csrf_and_request_without_header_are_refused(site: dict[str, Any]) -> None:
    page = site["page"]
    r = page.request.post(f"{site['base']}/alerts/al_0003/claim", form={"note": "x"})
    assert r.status == 403
    assert _read(site, "al_0003")[0].status.value == "open"
    bare = site["browser"].new_context()  # no proxy in front: no trusted header
    try:
        response = bare.new_page().goto(f"{site['base']}/worklist")
        assert response is not None and response.status == 401
    finally:
        bare.close()
