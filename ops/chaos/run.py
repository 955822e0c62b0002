"""Running one scenario: its rig, its time bound, its JSON result, and cleanup on every exit path."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import signal
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ops.chaos.harness import Rig

RESULT_SCHEMA = "ecgscreen.chaos/v1"


@dataclass(frozen=True)
class ChaosConfig:
    long: bool = False
    work_dir: Path = Path(".ecgscreen/chaos")
    results_dir: Path = Path("docs/chaos")
    seed: int = 11
    bundle: Path | None = None  # default: a small untrained R18 made under work_dir
    soak_s: float | None = None  # soak duration override (the long soak is 30 min)

    @property
    def mode(self) -> str:
        return "long" if self.long else "fast"


@dataclass
class Result:
    """One scenario run: the row of the reliability table and the evidence behind it."""

    scenario: str
    title: str
    done: str = ""
    times: int = 0
    events_sent: int = 0
    lost: int = 0
    duplicated: int = 0
    deadlettered: dict[str, int] = field(default_factory=dict)
    recovery_s: float | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    mode: str = "fast"
    command: str = ""
    machine: str = ""
    started_at: str = ""
    duration_s: float = 0.0
    error: str | None = None
    schema: str = RESULT_SCHEMA

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.checks) and all(self.checks.values())

    def check(self, name: str, ok: bool) -> bool:
        self.checks[name] = bool(ok)
        return bool(ok)

    def to_json(self) -> bytes:
        return orjson.dumps({**asdict(self), "passed": self.passed}, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


@dataclass
class Ctx:
    """What a scenario gets: its config, its result to fill in, and (for most) a rig."""

    cfg: ChaosConfig
    result: Result
    root: Path
    bundle: Path
    rig: Rig | None = None

    def need_rig(self) -> Rig:
        if self.rig is None:
            raise RuntimeError("this scenario runs without a rig")
        return self.rig

    def size(self, fast: int, long: int) -> int:
        return long if self.cfg.long else fast


ScenarioFn = Callable[[Ctx], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    fn: ScenarioFn
    budget_s: tuple[float, float]  # (fast, long): the hard bound on the whole scenario
    partitions: int = 3  # 0: no broker or Redis (pure in-process)
    worker_env: dict[str, str] = field(default_factory=dict)


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()}, no GPU; shared with other jobs (load {os.getloadavg()[0]:.1f})"


def default_bundle(work_dir: Path) -> Path:
    """A small untrained R18 (base width 16): the faults are in the plumbing, and a light model
    lets the suite push thousands of events through two cores."""
    path = work_dir / "bundles" / "untrained-r18-w16"
    if not (path / "bundle.json").exists():
        from models.bundle import init_untrained_bundle

        init_untrained_bundle(path, base_width=16, seed=0, overwrite=True)
    return path


def run_scenario(sc: Scenario, cfg: ChaosConfig, command: str) -> Result:
    """Run ``sc`` within its time bound, write its JSON, stop everything it started."""
    result = Result(sc.name, sc.title, mode=cfg.mode, command=command, machine=machine(),
                    started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    root = cfg.work_dir / "runs" / sc.name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    bundle = cfg.bundle or default_bundle(cfg.work_dir)
    rig = Rig(root, bundle, sc.partitions, sc.worker_env) if sc.partitions else None
    ctx = Ctx(cfg, result, root, bundle, rig)
    t0 = time.monotonic()
    try:
        asyncio.run(_bounded(sc, ctx, sc.budget_s[1] if cfg.long else sc.budget_s[0]))
    except KeyboardInterrupt:
        result.error = "interrupted"
        raise
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        (root / "traceback.txt").write_text("".join(traceback.format_exception(exc)))
    finally:
        if rig is not None:
            rig.close()
        result.done = result.done or (sc.fn.__doc__ or "").strip().splitlines()[0]
        result.duration_s = round(time.monotonic() - t0, 1)
        _write(result, cfg.results_dir)
    return result


async def _bounded(sc: Scenario, ctx: Ctx, budget_s: float) -> None:
    """The scenario as a task: SIGTERM cancels it like Ctrl-C; past its budget it is cancelled too."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(_body(sc, ctx))
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await asyncio.wait_for(task, budget_s)
    except TimeoutError:
        raise TimeoutError(f"scenario exceeded its {budget_s:.0f} s bound") from None
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _body(sc: Scenario, ctx: Ctx) -> None:
    if ctx.rig is not None:
        await asyncio.to_thread(ctx.rig.open)
    await sc.fn(ctx)


def _write(result: Result, results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{result.scenario}.{result.mode}.json"
    path.write_bytes(result.to_json() + b"\n")
    return path


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(results_dir.glob("*.json")):
        doc = orjson.loads(path.read_bytes())
        if doc.get("schema") == RESULT_SCHEMA:
            out.append(doc)
    return out
