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
class KafkaSecurity:
    """How clients authenticate to the brokers; PLAINTEXT for the embedded stack."""

    protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    sasl_mechanism: str = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap: str = "127.0.0.1:9092"
    group_id: str = "ecgscreen-worker"
    topics: Topics = field(default_factory=Topics)
    # Partitions bound the consumers of a group: 12 lets up to 12 worker processes share the feed.
    partitions: int = 12
    # Auto commit cadence of faust; offsets of acked events only, so a shorter
    # interval only shrinks the redelivery window after a crash.
    commit_interval_s: float = 1.0
    # Group membership lapses after this without heartbeats. Tansu completes a
    # join after half of it, so a short timeout also makes start-up quick.
    session_timeout_s: float = 10.0
    # The longest a fetch may wait for records: a broker that answers only when the wait ends
    # (Tansu) adds up to this to every event's latency; Apache Kafka answers as soon as a record
    # arrives, so there it only sets how often an idle consumer polls (workers.faust_transport).
    fetch_max_wait_s: float = 0.1
    security: KafkaSecurity = field(default_factory=KafkaSecurity)


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


@dataclass(frozen=True, slots=True)
class WebSettings:
    """`ecgscreen web`: behind an authenticating reverse proxy, as the Redis reviewer user."""

    # The header the proxy sets to the signed-in user (e.g. X-Remote-User); the proxy must strip
    # any copy a client sends. Unset: the app refuses to start unless --insecure-dev.
    user_header: str | None = None
    redis_username: str = "ecgscreen-reviewer"
    redis_password: str | None = field(default=None, repr=False)
    # Key of the CSRF tokens; set it when several instances serve one site (default: random per process).
    secret: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8080


# The committed trained demo bundle (PTB-XL, issue #5; see its MODEL_CARD.md). Relative to the
# working directory (the repository root, or /app in the image), as the previous default was.
DEFAULT_BUNDLE = Path("models/bundles/ecgclip-r18-ptbxl-100hz")


@dataclass(frozen=True, slots=True)
class EngineTuning:
    """Options of the compiled engines (``models.engine.EngineOptions``); None keeps the engine's default."""

    precision: str | None = None
    buckets: tuple[int, ...] | None = None
    opt_batch: int | None = None
    cuda_graphs: bool | None = None
    device: str | None = None
    trt_cache: Path | None = None

    def options(self) -> dict[str, object]:
        """Keyword arguments for ``EngineOptions`` (only what was set)."""
        given = {"precision": self.precision, "buckets": self.buckets, "opt_batch": self.opt_batch,
                 "cuda_graphs": self.cuda_graphs, "device": self.device, "cache_dir": self.trt_cache}
        return {k: v for k, v in given.items() if v is not None}


@dataclass(frozen=True, slots=True)
class OpsSettings:
    """The worker's small HTTP server: /metrics, /healthz, /readyz (port 0: none).

    Off unless a port is set: the images and docker-compose.yml set 9400; several workers
    on one host (or in a test run) would otherwise fight over one default port."""

    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # A liveness probe fails when the event loop has not ticked for this long (stuck or blocked).
    stall_after_s: float = 60.0


def default_torch_threads() -> int:
    # One core stays free for the event loop, the Kafka client and the gate: oversubscribed
    # cores made R18 calls 25x slower here.
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True, slots=True)
class BatchSettings:
    max_batch: int = 32
    max_wait_s: float = 0.2
    # Processes that decode, gate and preprocess the next batch while the model runs this one
    # (workers.pipelined); 0 runs the serial loop, everything in the worker process.
    prep_processes: int = 1
    # Alerts carry explanations while the worker is at most this far behind the feed (the oldest
    # event of a batch, from its broker timestamp); further behind, they go out without, so that a
    # backlog clears at the model's speed (workers.pipeline.Screener.explain_max_lag_s).
    explain_max_lag_s: float = 2.0


@dataclass(frozen=True, slots=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    triage: TriageSettings = field(default_factory=TriageSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    intake: IntakeSettings = field(default_factory=IntakeSettings)
    web: WebSettings = field(default_factory=WebSettings)
    bundle_path: Path = DEFAULT_BUNDLE
    engine: str = "auto"
    engine_tuning: EngineTuning = field(default_factory=EngineTuning)
    # Intra-op threads of the model (process-wide).
    torch_threads: int = field(default_factory=default_torch_threads)
    ops: OpsSettings = field(default_factory=OpsSettings)
    state_dir: Path = Path(".ecgscreen")
    # How long the worker retries a durable write (Redis, Kafka) before it stops
    # without acknowledging, so that the batch is redelivered instead of lost.
    durable_write_timeout_s: float = 120.0
    # How long the broker may be unreachable before the worker exits (69) for its supervisor
    # to restart it, instead of retrying for ever; 0: never.
    broker_lost_exit_s: float = 60.0
    log_level: str = "INFO"

    def with_overrides(self, **kwargs: object) -> Settings:
        return replace(self, **kwargs)  # type: ignore[arg-type]


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``ECGSCREEN_*`` variables; unset ones keep defaults."""
    return _load(_Reader(os.environ if env is None else env))


def settings_reference() -> list[Variable]:
    """Every variable :func:`load_settings` reads, with its default and meaning, in reading order."""
    reader = _Reader({})
    _load(reader)
    return reader.seen


def _load(get: _Reader) -> Settings:
    ds = Settings()
    return Settings(
        kafka=_kafka(get),
        redis=_redis(get),
        batch=_batch(get),
        policy=_policy(get),
        triage=_triage(get),
        export=_export(get),
        intake=_intake(get),
        web=_web(get),
        bundle_path=Path(get.text("BUNDLE", str(DEFAULT_BUNDLE), "model bundle folder (weights, config, SHA-256)")),
        engine=get.text("ENGINE", ds.engine, "inference engine: auto, torch-cpu, torch-cpu-bf16, "
                        "torch-cpu-compile, torch-cuda or tensorrt (auto: tensorrt, else torch-cuda, else torch-cpu)"),
        engine_tuning=_engine_tuning(get),
        torch_threads=get.integer("TORCH_THREADS", default_torch_threads(), "intra-op threads of the model",
                                  lo=1, hi=256, shown="CPU cores - 1 (at least 1)"),
        ops=_ops(get),
        state_dir=Path(get.text("STATE_DIR", str(ds.state_dir), "local state: faust's data, the readiness marker")),
        durable_write_timeout_s=get.number(
            "DURABLE_WRITE_TIMEOUT_S", ds.durable_write_timeout_s,
            "how long a failing Redis or Kafka write is retried before the worker exits unacknowledged (exit 75)",
            lo=1, hi=86400),
        broker_lost_exit_s=get.number(
            "BROKER_LOST_EXIT_S", ds.broker_lost_exit_s,
            "how long the broker may be unreachable before the worker exits for its supervisor (exit 69; 0: never)",
            lo=0, hi=86400),
        log_level=get.text("LOG_LEVEL", ds.log_level, "DEBUG, INFO, WARNING or ERROR").upper(),
    )


def _kafka(get: _Reader) -> KafkaSettings:
    dt, dk, sec = Topics(), KafkaSettings(), KafkaSecurity()
    bootstrap = get.text("KAFKA_BOOTSTRAP", dk.bootstrap, "Kafka bootstrap servers (host:port, comma-separated)")
    group_id = get.text("GROUP_ID", dk.group_id, "consumer group of the workers (one group per deployment)")
    topics = Topics(
        events=get.text("TOPIC_EVENTS", dt.events, "topic the worker reads ECG events from"),
        verdicts=get.text("TOPIC_VERDICTS", dt.verdicts, "topic of verdicts (one per screened event)"),
        alerts=get.text("TOPIC_ALERTS", dt.alerts, "topic of alerts (what subscribers read)"),
        deadletter=get.text("TOPIC_DEADLETTER", dt.deadletter, "topic of dead letters (with a reason each)"),
    )
    return KafkaSettings(
        bootstrap=bootstrap,
        group_id=group_id,
        topics=topics,
        partitions=get.integer("PARTITIONS", dk.partitions, "partitions `ecgscreen stack up` creates per topic",
                               lo=1, hi=1024),
        commit_interval_s=get.number("COMMIT_INTERVAL_S", dk.commit_interval_s,
                                     "how often acknowledged offsets are committed", lo=0.05, hi=60),
        session_timeout_s=get.number("SESSION_TIMEOUT_S", dk.session_timeout_s,
                                     "consumer group session timeout (a silent member is dropped after it)",
                                     lo=6, hi=300),
        fetch_max_wait_s=get.number("FETCH_MAX_WAIT_S", dk.fetch_max_wait_s,
                                    "longest a consumer fetch waits for records (a latency floor on "
                                    "brokers that answer only when it ends)", lo=0.005, hi=30),
        security=KafkaSecurity(
            protocol=get.choice("KAFKA_SECURITY_PROTOCOL", sec.protocol, "how clients talk to the brokers",
                                ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")),
            sasl_mechanism=get.choice("KAFKA_SASL_MECHANISM", sec.sasl_mechanism, "SASL mechanism (SASL_* protocols)",
                                      ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")),
            username=get.text("KAFKA_USERNAME", "", "SASL user name") or None,
            password=get.secret("KAFKA_PASSWORD", "SASL password"),
            ssl_cafile=get.text("KAFKA_SSL_CAFILE", "", "CA bundle that signed the brokers' certificates") or None,
            ssl_certfile=get.text("KAFKA_SSL_CERTFILE", "", "client certificate (mutual TLS)") or None,
            ssl_keyfile=get.text("KAFKA_SSL_KEYFILE", "", "client key (mutual TLS)") or None,
        ),
    )


def _redis(get: _Reader) -> RedisSettings:
    dr = RedisSettings()
    return RedisSettings(
        url=get.text("REDIS_URL", dr.url, "Redis of the triage queue (rediss:// for TLS)"),
        key_prefix=get.text("REDIS_PREFIX", dr.key_prefix, "prefix of every Redis key"),
        outcome_ttl_s=get.integer("OUTCOME_TTL_S", dr.outcome_ttl_s,
                                  "how long an event's outcome guards against redelivered duplicates", lo=60, hi=10**9),
        username=get.text("REDIS_USERNAME", "", "Redis ACL user (`ecgscreen triage acl`)") or None,
        password=get.secret("REDIS_PASSWORD", "Redis ACL password"),
        ssl_ca_certs=get.text("REDIS_SSL_CA_CERTS", "", "CA bundle for rediss://") or None,
        ssl_certfile=get.text("REDIS_SSL_CERTFILE", "", "client certificate for rediss://") or None,
        ssl_keyfile=get.text("REDIS_SSL_KEYFILE", "", "client key for rediss://") or None,
        ssl_cert_reqs=get.choice("REDIS_SSL_CERT_REQS", dr.ssl_cert_reqs, "verification of the server certificate",
                                 ("required", "optional", "none")),
        ssl_check_hostname=get.flag("REDIS_SSL_CHECK_HOSTNAME", dr.ssl_check_hostname,
                                    "check the server certificate's host name"),
    )


def _batch(get: _Reader) -> BatchSettings:
    db = BatchSettings()
    return BatchSettings(
        max_batch=get.integer("MAX_BATCH", db.max_batch, "most events per micro-batch", lo=1, hi=4096),
        max_wait_s=get.number("MAX_WAIT_S", db.max_wait_s, "longest wait to fill a micro-batch", lo=0.001, hi=60),
        prep_processes=get.integer("PREP_PROCESSES", db.prep_processes, "processes that decode, gate and "
                                   "preprocess the next batch while the model runs (0: the serial loop)", lo=0, hi=256),
        explain_max_lag_s=get.number("EXPLAIN_MAX_LAG_S", db.explain_max_lag_s,
                                     "alerts carry explanations while the worker is at most this many seconds "
                                     "behind the feed (0: never; 86400: always)", lo=0, hi=86400),
    )


def _triage(get: _Reader) -> TriageSettings:
    d = TriageSettings()
    return TriageSettings(
        actor=get.text("ACTOR", d.actor, "who `triage` commands act as (audit trail); --actor overrides"),
        lease_s=get.number("LEASE_S", d.lease_s, "how long a claim holds an alert", lo=1, hi=7 * 86400),
    )


def _engine_tuning(get: _Reader) -> EngineTuning:
    engine = "the engine's default (models/engine.py)"
    precision = get.choice("ENGINE_PRECISION", "", "GPU engines' precision: fp16 or bf16", ("", "fp16", "bf16"),
                           shown=engine)
    buckets = get.text("ENGINE_BUCKETS", "", "batch sizes compiled engines pad to, ascending, comma-separated",
                       shown=engine)
    opt_batch = get.integer("ENGINE_OPT_BATCH", 0, "batch TensorRT tunes its kernels for", lo=0, hi=4096,
                            shown=engine)
    graphs = get.choice("ENGINE_CUDA_GRAPHS", "", "CUDA graphs per bucket in torch-cuda: true or false",
                        ("", "true", "false"), shown=engine)
    device = get.text("ENGINE_DEVICE", "", "GPU of the GPU engines (cuda, cuda:1, ...)", shown=engine)
    cache = get.text("TRT_CACHE", "", "folder of compiled TensorRT programs (keep it on a volume)", shown=engine)
    return EngineTuning(precision=precision or None, buckets=_buckets(buckets) if buckets else None,
                        opt_batch=opt_batch or None, cuda_graphs=None if not graphs else graphs == "true",
                        device=device or None, trt_cache=Path(cache) if cache else None)


def _buckets(raw: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in raw.split(","))
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}ENGINE_BUCKETS={raw!r} is not a comma-separated list of integers") from None
    if not values or list(values) != sorted(set(values)) or values[0] < 1:
        raise ConfigError(f"{ENV_PREFIX}ENGINE_BUCKETS={raw!r} must be ascending distinct integers >= 1")
    return values


def _ops(get: _Reader) -> OpsSettings:
    d = OpsSettings()
    return OpsSettings(
        metrics_host=get.text("METRICS_HOST", d.metrics_host,
                              "address of /metrics, /healthz, /readyz (0.0.0.0 for a scraper on another host)"),
        metrics_port=get.integer("METRICS_PORT", d.metrics_port,
                                 "port of /metrics, /healthz, /readyz (0: off; the images set 9400)", lo=0, hi=65535),
        stall_after_s=get.number("STALL_AFTER_S", d.stall_after_s,
                                 "/healthz fails when the event loop has not ticked for this long", lo=1, hi=3600),
    )


def _policy(get: _Reader) -> PolicyConfig:
    d = PolicyConfig()
    limit = get.integer("ALERTS_PER_HOUR", -1, "new worklist entries per site per hour; the rest are held",
                        lo=-1, hi=10**6, shown="no limit")
    return PolicyConfig(
        dedup_window_s=get.number("DEDUP_WINDOW_S", d.dedup_window_s,
                                  "one open alert per (site, patient, task) within this much event time",
                                  lo=0, hi=365 * 86400),
        max_future_s=get.number("MAX_FUTURE_S", d.max_future_s,
                                "an event acquired further ahead than this is flagged clock_skew",
                                lo=0, hi=365 * 86400),
        max_past_s=get.number("MAX_PAST_S", d.max_past_s,
                              "an event acquired longer ago than this is flagged late_event, priority capped",
                              lo=0, hi=100 * 365 * 86400),
        max_alerts_per_hour=None if limit < 0 else limit,
        sites=site_policies(get.text("SITE_POLICY", "{}", "per-site overrides, JSON (see Alert policy)")),
        allow_synthetic_labels=get.flag("ALLOW_SYNTHETIC_LABELS", d.allow_synthetic_labels,
                                        "heads trained on synthetic labels may alert (flagged synthetic_labels)"),
        backfill=get.flag("BACKFILL", d.backfill, "alerts flagged backfill, new ones to the backfill review queue "
                          "(workers on a `replay backfill --via-topic` topic)"),
    )


def _export(get: _Reader) -> ExportSettings:
    d = ExportSettings()
    fhir_dir = get.text("FHIR_DIR", "", "folder the FHIR export writes to")
    return ExportSettings(
        fhir_dir=Path(fhir_dir) if fhir_dir else None,
        fhir_endpoint=get.text("FHIR_ENDPOINT", "", "FHIR server the export POSTs to") or None,
        max_attempts=get.integer("FHIR_MAX_ATTEMPTS", d.max_attempts, "POST attempts per alert", lo=1, hi=100),
        backoff_s=get.number("FHIR_BACKOFF_S", d.backoff_s, "first retry delay (doubling, at most 30 s)", lo=0, hi=60),
        timeout_s=get.number("FHIR_TIMEOUT_S", d.timeout_s, "timeout of one POST", lo=0.1, hi=300),
    )


def _intake(get: _Reader) -> IntakeSettings:
    d = IntakeSettings()
    secrets = get.secret("INTAKE_SECRETS", "per-site patient_ref HMAC secrets, JSON site -> secret (16+ characters)")
    return IntakeSettings(
        _secrets(secrets or "{}"),
        get.text("INTAKE_TZ", d.timezone, "zone of vendor times that carry no UTC offset"),
        get.choice("INTAKE_DONE", d.done, "what happens to an ingested file: move (to done/) or delete",
                   ("move", "delete")),
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


def _web(get: _Reader) -> WebSettings:
    d = WebSettings()
    return WebSettings(
        user_header=get.text("WEB_USER_HEADER", "", "`ecgscreen web`: header the authenticating proxy sets to the "
                             "signed-in user (required unless --insecure-dev)") or None,
        redis_username=get.text("WEB_REDIS_USERNAME", d.redis_username, "`ecgscreen web`: Redis reviewer user"),
        redis_password=get.secret("WEB_REDIS_PASSWORD",
                                  "Redis password of the reviewer user `ecgscreen web` connects as"),
        secret=get.secret("WEB_SECRET", "key of `ecgscreen web`'s CSRF tokens (unset: random per process)"),
        host=get.text("WEB_HOST", d.host, "`ecgscreen web`: listen address"),
        port=get.integer("WEB_PORT", d.port, "`ecgscreen web`: port", lo=1, hi=65535),
    )


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


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable as the settings reference (README) shows it."""

    name: str
    default: str
    meaning: str


class _Reader:
    """Typed access to prefixed variables with errors that name the variable.

    Every read names its default and meaning, and is noted in ``seen``: the settings
    reference is made from what the loader reads, so it cannot drift from the code.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.seen: list[Variable] = []

    def _raw(self, name: str, default: object, meaning: str, shown: str | None) -> str:
        self.seen.append(Variable(ENV_PREFIX + name, _shown(default) if shown is None else shown, meaning))
        return self._env.get(ENV_PREFIX + name, "").strip()

    def text(self, name: str, default: str, meaning: str, *, shown: str | None = None) -> str:
        return self._raw(name, default, meaning, shown) or default

    def secret(self, name: str, meaning: str) -> str | None:
        """``NAME`` or the contents of the file named by ``NAME_FILE`` (a mounted secret)."""
        value = self._raw(name, "", meaning, None)
        path = self._raw(f"{name}_FILE", "", f"file holding the {meaning} (a mounted secret)",
                         None)
        if value and path:
            raise ConfigError(f"set {ENV_PREFIX}{name} or {ENV_PREFIX}{name}_FILE, not both")
        if not path:
            return value or None
        try:
            return Path(path).read_text().strip() or None
        except OSError as err:
            raise ConfigError(f"{ENV_PREFIX}{name}_FILE={path!r} cannot be read ({err.strerror})") from None

    def choice(self, name: str, default: str, meaning: str, allowed: tuple[str, ...], *,
               shown: str | None = None) -> str:
        value = self._raw(name, default, meaning, shown) or default
        if value not in allowed:
            raise ConfigError(f"{ENV_PREFIX}{name}={value!r} is not one of {allowed}")
        return value

    def flag(self, name: str, default: bool, meaning: str) -> bool:
        value = (self._raw(name, default, meaning, None) or ("true" if default else "false")).lower()
        if value not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"{ENV_PREFIX}{name}={value!r} is not a boolean (true/false)")
        return value in ("true", "1", "yes")

    def integer(self, name: str, default: int, meaning: str, *, lo: int, hi: int, shown: str | None = None) -> int:
        raw = self._raw(name, default, meaning, shown)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not an integer") from None
        return self._bounded(name, value, lo, hi)

    def number(self, name: str, default: float, meaning: str, *, lo: float, hi: float) -> float:
        raw = self._raw(name, default, meaning, None)
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


def _shown(default: object) -> str:
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default) if default != "" else "unset"
