"""The fault suite's fast versions: every scenario of `ecgscreen chaos run` on a real broker and Redis.

Each runs as the command does (its own broker, Redis and worker processes, stopped after)
with the small sizes of the default mode, and must pass every one of its checks. The full
sizes run with `ecgscreen chaos run --long`; their results make docs/reliability.md.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ops.chaos.report import write_report
from ops.chaos.run import ChaosConfig, Result, run_scenario
from ops.chaos.scenarios import SCENARIOS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> ChaosConfig:
    root = tmp_path_factory.mktemp("chaos")
    return ChaosConfig(work_dir=root / "work", results_dir=root / "results")


def _explain(res: Result) -> str:
    failed = [name for name, ok in res.checks.items() if not ok]
    return f"{res.scenario}: error={res.error} failed={failed} figures={orjson.dumps(res.figures).decode()[:3000]}"


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_passes(name: str, cfg: ChaosConfig) -> None:
    res = run_scenario(SCENARIOS[name], cfg, f"ecgscreen chaos run {name}")
    assert res.checks, "a scenario without checks proves nothing"
    assert res.passed, _explain(res)
    assert (cfg.results_dir / f"{name}.fast.json").exists()


def test_report_shows_each_result_and_prefers_the_long_run(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    fast = Result("kill9", "kill -9", done="d", times=3, events_sent=240, deadlettered={"invalid_json": 2},
                  recovery_s=12.34, checks={"0 lost": True}, command="ecgscreen chaos run kill9", mode="fast",
                  started_at="2026-11-29T10:00:00+00:00", machine="m")
    long = Result("kill9", "kill -9", done="d", times=20, events_sent=2000, recovery_s=15.0,
                  checks={"0 lost": True}, command="ecgscreen chaos run kill9 --long", mode="long",
                  started_at="2026-11-29T11:00:00+00:00", machine="m")
    broken = Result("replay", "replay", checks={"0 new triage entries": False}, command="ecgscreen chaos run replay",
                    started_at="2026-11-29T10:00:00+00:00", machine="m")
    for r in (fast, long, broken):
        (results / f"{r.scenario}.{r.mode}.json").write_bytes(r.to_json())
    out = tmp_path / "reliability.md"
    assert write_report(results, out) == 2
    rows = [line for line in out.read_text().splitlines() if line.startswith(("| kill -9", "| replay"))]
    assert len(rows) == 2
    assert "`ecgscreen chaos run kill9 --long`" in rows[0] and "2,000" in rows[0] and "**pass**" in rows[0]
    assert "**FAIL**" in rows[1]
