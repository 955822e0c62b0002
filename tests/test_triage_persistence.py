"""A Redis crash and restart with AOF loses no acknowledged alert.

The server runs with ``appendfsync always`` (fsync before each reply), so an
alert is on disk once ``add_alerts`` returns; it is then killed with SIGKILL (no
shutdown save) and restarted on the same directory. The stack's default,
``everysec``, survives a process crash the same way (the OS holds the page cache)
and can lose up to the last second only on a power cut.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from ops.stack import _terminate, free_port, start_redis
from tests.triage_factory import make_alert, store
from workers.triage_stats import Resolution


def test_restart_with_aof_loses_no_acknowledged_alert(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = start_redis(port, tmp_path, appendfsync="always")

    async def write() -> None:
        s = store(url, "p")
        try:
            await s.add_alerts([make_alert(n) for n in range(1, 51)])
            await s.resolve("al_0001", "dr-a", Resolution.CONFIRMED)
        finally:
            await s.close()

    async def read() -> tuple[int, int, bool, str]:
        s = store(url, "p")
        try:
            item = await s.get("al_0001")
            return (await s.worklist_size("site-a"), len(await s.stats_rows()), (await s.verify("site-a")).ok,
                    item.status.value)
        finally:
            await s.close()

    try:
        asyncio.run(write())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc = start_redis(port, tmp_path, appendfsync="always")
        assert asyncio.run(read()) == (49, 50, True, "resolved")
    finally:
        _terminate(proc.pid)
        proc.wait(timeout=10)
