"""`ecgscreen triage ...` against a real Redis, as a reviewer and a script would use it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from ops.cli import main
from schemas.messages import Priority
from tests.triage_factory import make_alert, new_prefix, store


@pytest.fixture
def cli(redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    prefix = new_prefix()
    monkeypatch.setenv("ECGSCREEN_REDIS_URL", redis_url)
    monkeypatch.setenv("ECGSCREEN_REDIS_PREFIX", prefix)
    monkeypatch.setenv("ECGSCREEN_ACTOR", "dr-a")

    async def seed() -> None:
        s = store(redis_url, prefix)
        await s.add_alerts([make_alert(1), make_alert(2, Priority.URGENT), make_alert(3, site="site-b")])
        await s.close()

    asyncio.run(seed())

    def run(*args: str) -> tuple[int, Any]:
        code = main(["triage", *args])
        out = capsys.readouterr().out
        return code, orjson.loads(out) if "--json" in args else out

    return run


def test_review_session(cli: Any) -> None:
    code, listed = cli("list", "--site", "site-a", "--json")
    assert code == 0 and [i["alert"]["alert_id"] for i in listed] == ["al_0002", "al_0001"]
    code, claimed = cli("claim", "--site", "site-a", "--json")
    assert code == 0 and claimed["alert_id"] == "al_0002" and claimed["claimed_by"] == "dr-a"
    assert cli("resolve", "al_0002", "--outcome", "confirmed", "--note", "new AF", "--json")[0] == 0
    assert cli("snooze", "al_0001", "--minutes", "30", "--json")[0] == 0
    assert cli("reassign", "al_0001", "--to", "dr-b", "--json")[1]["claimed_by"] == "dr-b"
    code, shown = cli("show", "al_0002", "--json")
    assert shown["status"] == "resolved" and shown["outcome"] == "confirmed" and shown["note"] == "new AF"
    code, audit = cli("audit", "--site", "site-a", "--json")
    assert [e["action"] for e in audit] == ["created", "created", "claimed", "resolved", "snoozed", "reassigned"]
    code, checks = cli("audit", "--verify", "--json")
    assert code == 0 and all(c["ok"] for c in checks) and {c["site"] for c in checks} == {"site-a", "site-b"}
    code, stats = cli("stats", "--json")
    by_site = {s["site"]: s for s in stats}
    assert by_site["site-a"]["raised"] == 2 and by_site["site-a"]["resolved"] == {"confirmed": 1}
    assert by_site["site-a"]["observed_ppv"] == 1.0 and by_site["site-b"]["open"] == 1
    code, text = cli("stats")
    assert "observed PPV" in text and "site-b" in text


def test_errors_are_actionable(cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("claim", "al_0001", "--actor", "dr-x")[0] == 0
    assert main(["triage", "resolve", "al_0001", "--outcome", "false_positive", "--actor", "dr-y"]) == 1
    assert "claimed_by_other: claimed by dr-x" in capsys.readouterr().err
    assert main(["triage", "show", "al_9999"]) == 1
    assert "alert_not_found" in capsys.readouterr().err
