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
from typing import Any, TypeVar

import orjson

from schemas.errors import ConfigError
from workers.policy import PolicyConfig, SitePolicy

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
    # How long an event's recorded outcome (and an alert's idempotency key) guards against duplicates.
    outcome_ttl_s: int = 30 * 24 * 3600
    # ACL user of this process: the worker runs as a worker user, `triage` commands as a reviewer.
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # TLS (needs a rediss:// url); passed through to redis-py.
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: str = "required"
    ssl_check_hostname: bool = True

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.asyncio.Redis.from_url``."""
        kw: dict[str, Any] = {}
        if self.username:
            kw["username"] = self.username
        if self.password:
            kw["password"] = self.password
        tls = {"ssl_ca_certs": self.ssl_ca_certs, "ssl_certfile": self.ssl_certfile,
               "ssl_keyfile": self.ssl_keyfile}
        if self.url.startswith("rediss://"):
            kw.update({k: v for k, v in tls.items() if v}, ssl_cert_reqs=self.ssl_cert_reqs,
                      ssl_check_hostname=self.ssl_check_hostname)
        elif any(tls.values()):
            raise ConfigError("TLS files are set but ECGSCREEN_REDIS_URL is not rediss://; use rediss://")
        return kw


@dataclass(frozen=True, slots=True)
class TriageSettings:
    # Who the `triage` commands act as (recorded in the audit trail); --actor overrides.
    actor: str = "unknown"
    lease_s: float = 15 * 60.0


@dataclass(frozen=True, slots=True)
class ExportSettings:
    """The FHIR export subscriber: files in ``fhir_dir`` or POSTs to ``fhir_endpoint``."""

    fhir_dir: Path | None = None
    fhir_endpoint: str | None = None
    max_attempts: int = 6
    backoff_s: float = 0.5
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class IntakeSettings:
    """Vendor-file intake: HMAC keys of patient_ref per site, the zone of offset-less vendor times,
    and whether ingested files move to done/ or are deleted."""

    secrets: dict[str, bytes] = field(default_factory=dict, repr=False)
    timezone: str = "UTC"
    done: str = "move"


# The committed trained demo bundle (PTB-XL, issue #5; see its MODEL_CARD.md). Relative to the
# working directory (the repository root, or /app in the image), as the previous default was.
DEFAULT_BUNDLE = Path("models/bundles/ecgclip-r18-ptbxl-100hz")


@dataclass(frozen=True, slots=True)
class BatchSettings:
    max_batch: int = 32
    max_wait_s: float = 0.2


@dataclass(frozen=True, slots=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    triage: TriageSettings = field(default_factory=TriageSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    intake: IntakeSettings = field(default_factory=IntakeSettings)
    bundle_path: Path = DEFAULT_BUNDLE
    engine: str = "auto"
    # Intra-op threads of the model. One core stays free for the event loop, the Kafka
    # client and the gate: oversubscribed cores made R18 calls 25x slower here.
    torch_threads: int = 1
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
        username=get.text("REDIS_USERNAME", "") or None,
        password=get.text("REDIS_PASSWORD", "") or None,
        ssl_ca_certs=get.text("REDIS_SSL_CA_CERTS", "") or None,
        ssl_certfile=get.text("REDIS_SSL_CERTFILE", "") or None,
        ssl_keyfile=get.text("REDIS_SSL_KEYFILE", "") or None,
        ssl_cert_reqs=get.choice("REDIS_SSL_CERT_REQS", dr.ssl_cert_reqs, ("required", "optional", "none")),
        ssl_check_hostname=get.flag("REDIS_SSL_CHECK_HOSTNAME", dr.ssl_check_hostname),
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
        policy=_policy(get),
        triage=TriageSettings(actor=get.text("ACTOR", TriageSettings().actor),
                              lease_s=get.number("LEASE_S", TriageSettings().lease_s, lo=1, hi=7 * 86400)),
        export=_export(get),
        intake=IntakeSettings(_secrets(get.text("INTAKE_SECRETS", "{}")), get.text("INTAKE_TZ", "UTC"),
                              get.choice("INTAKE_DONE", "move", ("move", "delete"))),
        bundle_path=Path(get.text("BUNDLE", str(DEFAULT_BUNDLE))),
        engine=get.text("ENGINE", ds.engine),
        torch_threads=get.integer("TORCH_THREADS", max(1, (os.cpu_count() or 2) - 1), lo=1, hi=256),
        state_dir=state_dir,
        durable_write_timeout_s=get.number("DURABLE_WRITE_TIMEOUT_S", 120.0, lo=1, hi=86400),
        log_level=get.text("LOG_LEVEL", ds.log_level).upper(),
    )


def _policy(get: _Reader) -> PolicyConfig:
    d = PolicyConfig()
    limit = get.integer("ALERTS_PER_HOUR", -1, lo=-1, hi=10**6)
    return PolicyConfig(
        dedup_window_s=get.number("DEDUP_WINDOW_S", d.dedup_window_s, lo=0, hi=365 * 86400),
        max_future_s=get.number("MAX_FUTURE_S", d.max_future_s, lo=0, hi=365 * 86400),
        max_past_s=get.number("MAX_PAST_S", d.max_past_s, lo=0, hi=100 * 365 * 86400),
        max_alerts_per_hour=None if limit < 0 else limit,
        sites=site_policies(get.text("SITE_POLICY", "{}")),
    )


def _export(get: _Reader) -> ExportSettings:
    d = ExportSettings()
    fhir_dir = get.text("FHIR_DIR", "")
    return ExportSettings(
        fhir_dir=Path(fhir_dir) if fhir_dir else None,
        fhir_endpoint=get.text("FHIR_ENDPOINT", "") or None,
        max_attempts=get.integer("FHIR_MAX_ATTEMPTS", d.max_attempts, lo=1, hi=100),
        backoff_s=get.number("FHIR_BACKOFF_S", d.backoff_s, lo=0, hi=60),
        timeout_s=get.number("FHIR_TIMEOUT_S", d.timeout_s, lo=0.1, hi=300),
    )


def _secrets(raw: str) -> dict[str, bytes]:
    """``ECGSCREEN_INTAKE_SECRETS``: a JSON object of site -> secret (at least 16 characters)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not all(isinstance(v, str) and len(v) >= 16 for v in data.values()):
        raise ConfigError(f"{ENV_PREFIX}INTAKE_SECRETS must be a JSON object of site -> secret of 16+ characters")
    return {site: secret.encode() for site, secret in data.items()}


_SITE_KEYS = frozenset({"prevalence", "thresholds", "disabled_tasks", "max_alerts_per_hour", "dedup_window_s",
                        "min_age_years"})


def site_policies(raw: str) -> dict[str, SitePolicy]:
    """``ECGSCREEN_SITE_POLICY``: a JSON object of site -> overrides; strict, since a typo must not pass."""
    name = f"{ENV_PREFIX}SITE_POLICY"
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ConfigError(f"{name} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must be a JSON object of site -> overrides")
    return {site: _site_policy(f"{name}[{site!r}]", spec) for site, spec in data.items()}


def _site_policy(name: str, spec: object) -> SitePolicy:
    if not isinstance(spec, dict) or not set(spec) <= _SITE_KEYS:
        raise ConfigError(f"{name} must be an object with keys from {sorted(_SITE_KEYS)}")
    limit, window, min_age = spec.get("max_alerts_per_hour"), spec.get("dedup_window_s"), spec.get("min_age_years")
    return SitePolicy(
        prevalence=_probabilities(f"{name}.prevalence", spec.get("prevalence", {})),
        thresholds=_probabilities(f"{name}.thresholds", spec.get("thresholds", {})),
        disabled_tasks=frozenset(_strings(f"{name}.disabled_tasks", spec.get("disabled_tasks", []))),
        max_alerts_per_hour=None if limit is None else int(_number(f"{name}.max_alerts_per_hour", limit, 0, 10**6)),
        dedup_window_s=None if window is None else _number(f"{name}.dedup_window_s", window, 0, 365 * 86400),
        min_age_years=None if min_age is None else _number(f"{name}.min_age_years", min_age, 0, 150),
    )


def _probabilities(name: str, value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be an object of task id -> probability")
    out = {str(k): _number(f"{name}[{k!r}]", v, 0, 1) for k, v in value.items()}
    if any(v in (0.0, 1.0) for v in out.values()):
        raise ConfigError(f"{name}: probabilities must lie strictly between 0 and 1")
    return out


def _strings(name: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name} must be a list of task ids")
    return value


def _number(name: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ConfigError(f"{name}={value!r} must be a number in [{lo}, {hi}]")
    return float(value)


class _Reader:
    """Typed access to prefixed variables with errors that name the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str) -> str:
        value = self._env.get(ENV_PREFIX + name, "").strip()
        return value or default

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in allowed:
            raise ConfigError(f"{ENV_PREFIX}{name}={value!r} is not one of {allowed}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.text(name, "true" if default else "false").lower()
        if value not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"{ENV_PREFIX}{name}={value!r} is not a boolean (true/false)")
        return value in ("true", "1", "yes")

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
