"""The worker's one settings object, read from the environment once at start-up.

Everything configurable lives here, frozen, and is passed down explicitly (as
quixstreams' ApplicationConfig or arq's RedisSettings are). Nothing else in the
code base reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from schemas.errors import ConfigError

ENV_PREFIX = "ECGSCREEN_"
_N = TypeVar("_N", int, float)


@dataclass(frozen=True, slots=True)
class Topics:
    events: str = "ecg.events"
    verdicts: str = "ecg.verdicts"
    alerts: str = "ecg.alerts"
    deadletter: str = "ecg.deadletter"

    def all(self) -> tuple[str, ...]:
        return (self.events, self.verdicts, self.alerts, self.deadletter)


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap: str = "127.0.0.1:9092"
    group_id: str = "ecgscreen-worker"
    topics: Topics = field(default_factory=Topics)
    partitions: int = 3
    # Auto commit cadence of faust; offsets of acked events only, so a shorter
    # interval only shrinks the redelivery window after a crash.
    commit_interval_s: float = 1.0
    # Group membership lapses after this without heartbeats. Tansu completes a
    # join after half of it, so a short timeout also makes start-up quick.
    session_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "ecg"
    # How long an event's recorded outcome guards against duplicate deliveries.
    outcome_ttl_s: int = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class BatchSettings:
    max_batch: int = 32
    max_wait_s: float = 0.2


@dataclass(frozen=True, slots=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    bundle_path: Path = Path(".ecgscreen/bundles/untrained-r18")
    engine: str = "auto"
    state_dir: Path = Path(".ecgscreen")
    # How long the worker retries a durable write (Redis, Kafka) before it stops
    # without acknowledging, so that the batch is redelivered instead of lost.
    durable_write_timeout_s: float = 120.0
    log_level: str = "INFO"

    def with_overrides(self, **kwargs: object) -> Settings:
        return replace(self, **kwargs)  # type: ignore[arg-type]


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``ECGSCREEN_*`` variables; unset ones keep defaults."""
    src = os.environ if env is None else env
    get = _Reader(src)
    dt, dk, dr, db, ds = Topics(), KafkaSettings(), RedisSettings(), BatchSettings(), Settings()
    topics = Topics(
        events=get.text("TOPIC_EVENTS", dt.events),
        verdicts=get.text("TOPIC_VERDICTS", dt.verdicts),
        alerts=get.text("TOPIC_ALERTS", dt.alerts),
        deadletter=get.text("TOPIC_DEADLETTER", dt.deadletter),
    )
    kafka = KafkaSettings(
        bootstrap=get.text("KAFKA_BOOTSTRAP", dk.bootstrap),
        group_id=get.text("GROUP_ID", dk.group_id),
        topics=topics,
        partitions=get.integer("PARTITIONS", dk.partitions, lo=1, hi=1024),
        commit_interval_s=get.number("COMMIT_INTERVAL_S", dk.commit_interval_s, lo=0.05, hi=60),
        session_timeout_s=get.number("SESSION_TIMEOUT_S", dk.session_timeout_s, lo=6, hi=300),
    )
    redis = RedisSettings(
        url=get.text("REDIS_URL", dr.url),
        key_prefix=get.text("REDIS_PREFIX", dr.key_prefix),
        outcome_ttl_s=get.integer("OUTCOME_TTL_S", dr.outcome_ttl_s, lo=60, hi=10**9),
    )
    batch = BatchSettings(
        max_batch=get.integer("MAX_BATCH", db.max_batch, lo=1, hi=4096),
        max_wait_s=get.number("MAX_WAIT_S", db.max_wait_s, lo=0.001, hi=60),
    )
    state_dir = Path(get.text("STATE_DIR", str(ds.state_dir)))
    return Settings(
        kafka=kafka,
        redis=redis,
        batch=batch,
        bundle_path=Path(get.text("BUNDLE", str(state_dir / "bundles" / "untrained-r18"))),
        engine=get.text("ENGINE", ds.engine),
        state_dir=state_dir,
        durable_write_timeout_s=get.number("DURABLE_WRITE_TIMEOUT_S", 120.0, lo=1, hi=86400),
        log_level=get.text("LOG_LEVEL", ds.log_level).upper(),
    )


class _Reader:
    """Typed access to prefixed variables with errors that name the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str) -> str:
        value = self._env.get(ENV_PREFIX + name, "").strip()
        return value or default

    def integer(self, name: str, default: int, *, lo: int, hi: int) -> int:
        raw = self._env.get(ENV_PREFIX + name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not an integer") from None
        return self._bounded(name, value, lo, hi)

    def number(self, name: str, default: float, *, lo: float, hi: float) -> float:
        raw = self._env.get(ENV_PREFIX + name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not a number") from None
        return self._bounded(name, value, lo, hi)

    @staticmethod
    def _bounded(name: str, value: _N, lo: _N, hi: _N) -> _N:
        if not lo <= value <= hi:
            raise ConfigError(f"{ENV_PREFIX}{name}={value} is outside [{lo}, {hi}]")
        return value
