"""Screenshots of the triage pages for README: `python -m ops.web.shots [--data-dir ../shared/data] [--out docs]`.

Real PTB-XL records (500 Hz) go through the worker's own path minus Kafka: the
screener with the committed bundle (decode, gate, model, policy, explanation),
then ``TriageStore.add_alerts`` with ``alert_waveforms``, as the worker user of a
fresh Redis with the ACL users. A reviewer then works a few alerts so the stats
page has outcomes, and headless Chromium photographs the pages served by
``ecgscreen web`` connected as the reviewer user.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aioredis

from ops.feed import ptbxl_records
from ops.stack import _terminate, free_port, start_redis
from ops.web.cmd import build_app, serving
from schemas.messages import Alert
from workers.app import alert_waveforms
from workers.pipeline import Outcome, RawMessage
from workers.settings import load_settings
from workers.triage import TriageStore
from workers.triage_acl import Role, apply_acl
from workers.triage_stats import Resolution

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
USER_HEADER = "X-Remote-User"
PASSWORD = "shots-only"


def screen_records(data_dir: Path, n: int) -> list[Outcome]:
    from workers.main import build_screener

    settings = load_settings({"ECGSCREEN_TORCH_THREADS": "1"})
    screener = build_screener(settings)
    recs = ptbxl_records(data_dir / "ptbxl_folds1-8_500hz.npz", data_dir / "ptbxl_folds1-8_metadata.csv", n)
    msgs = [RawMessage.of(r.encode(), "ecg.events", 0, i) for i, r in enumerate(recs)]
    return [o for k in range(0, len(msgs), 32) for o in screener.screen(msgs[k:k + 32])]


async def fill(url: str, outcomes: Sequence[Outcome]) -> tuple[dict[Role, str], Alert]:
    """Admit the alerts as the worker; as reviewers, resolve some (for the stats) and claim the one shown."""
    admin = aioredis.Redis.from_url(url)
    names = await apply_acl(admin, "ecg", dict.fromkeys(Role, PASSWORD))
    await admin.aclose()
    worker = TriageStore.from_url(url, username=names[Role.WORKER], password=PASSWORD)
    admitted = await worker.add_alerts([a for o in outcomes for a in o.alerts], alert_waveforms(outcomes))
    await worker.close()
    shown = max((a.alert for a in admitted if a.alert.explanation), key=lambda a: a.score).alert_id
    reviewer = TriageStore.from_url(url, username=names[Role.REVIEWER], password=PASSWORD)
    outcomes_cycle = (Resolution.CONFIRMED, Resolution.FALSE_POSITIVE, Resolution.ALREADY_KNOWN,
                      Resolution.FALSE_POSITIVE, Resolution.ECHO_ORDERED)
    try:
        for site in await reviewer.sites():
            items = [i for i in await reviewer.items(site, "worklist", 100) if i.alert.alert_id != shown]
            for n, item in enumerate(items[len(items) // 2:]):
                await reviewer.claim("dr.lee", item.alert.alert_id)
                await reviewer.resolve(item.alert.alert_id, "dr.lee", outcomes_cycle[n % len(outcomes_cycle)])
            if len(items) > 3:
                await reviewer.claim("nurse.kim", items[1].alert.alert_id)
        await reviewer.claim("dr.lee", shown)
        return names, (await reviewer.get(shown)).alert
    finally:
        await reviewer.close()


def shoot(base: str, out: Path, alert_id: str, site: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    paths = [out / "web-worklist.png", out / "web-alert.png", out / "web-stats.png"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1120, "height": 900},
                                   extra_http_headers={USER_HEADER: "dr.lee"}).new_page()
        page.goto(f"{base}/worklist?site={site}")
        page.screenshot(path=str(paths[0]), full_page=True)
        page.goto(f"{base}/alerts/{alert_id}")
        page.screenshot(path=str(paths[1]), full_page=True)
        page.goto(f"{base}/stats")
        page.screenshot(path=str(paths[2]), full_page=True)
        browser.close()
    for path in paths:
        shrink(path)
    return paths


def shrink(path: Path, colours: int = 96) -> None:
    """A palette PNG: pages are a few flat colours, so the README's images stay small."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ops.web.shots", description=__doc__)
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--records", type=int, default=365)
    ap.add_argument("--serve", type=int, metavar="PORT", default=0,
                    help="then serve the pages on 127.0.0.1:PORT for a person to browse, until Ctrl-C (user 'dev')")
    args = ap.parse_args(argv)
    outcomes = screen_records(args.data_dir, args.records)
    alerting = [o for o in outcomes if o.alerts]
    print(f"{len(outcomes)} records screened, {len(alerting)} alerting")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_redis(port, Path(tmp))
        try:
            url = f"redis://127.0.0.1:{port}/0"
            names, best = asyncio.run(fill(url, outcomes))
            env = {"ECGSCREEN_REDIS_URL": url, "ECGSCREEN_WEB_USER_HEADER": USER_HEADER,
                   "ECGSCREEN_WEB_REDIS_USERNAME": names[Role.REVIEWER], "ECGSCREEN_WEB_REDIS_PASSWORD": PASSWORD}
            args.out.mkdir(parents=True, exist_ok=True)
            with serving(build_app(load_settings(env))) as base:
                for path in shoot(base, args.out, best.alert_id, best.site):
                    print(path)
            if args.serve:
                import uvicorn

                print(f"browse http://127.0.0.1:{args.serve}/worklist (Ctrl-C stops)")
                uvicorn.run(build_app(load_settings(env), insecure_dev=True), host="127.0.0.1", port=args.serve,
                            access_log=False, log_level="warning")
        finally:
            _terminate(proc.pid)
            proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
