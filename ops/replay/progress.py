"""Progress of a replay: a tqdm bar (rate, ETA) on a terminal, a log line every ``every_s`` otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("ecgscreen.replay")


class Progress:
    def __init__(self, total: int | None, done: int = 0, every_s: float = 10.0, tty: bool | None = None) -> None:
        self._tty = sys.stderr.isatty() if tty is None else tty
        self._done, self._total, self._every = done, total, every_s
        self._t0 = self._last = time.monotonic()
        self._start = done
        self._bar: Any = None
        if self._tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, unit="ECG", dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int, counts: Mapping[str, int]) -> None:
        self._done += n
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix(alerts=counts.get("alerts", 0), dead=counts.get("deadletters", 0),
                                  dup=counts.get("duplicates", 0), refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            log.info("replay progress", extra=self.line(now))

    def line(self, now: float) -> dict[str, Any]:
        rate = (self._done - self._start) / max(now - self._t0, 1e-9)
        left = None if self._total is None or rate <= 0 else round((self._total - self._done) / rate, 1)
        return {"done": self._done, "total": self._total, "rate_per_s": round(rate, 1), "eta_s": left}

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
