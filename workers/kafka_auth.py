"""Kafka client security from :class:`KafkaSecurity`: faust credentials and aiokafka keyword arguments.

One mapping for every client (the worker's faust app, the subscribers, the readiness
probe), so that the override file's SASL/SCRAM + TLS reaches all of them alike.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust
from aiokafka.helpers import create_ssl_context

from schemas.errors import ConfigError
from workers.settings import KafkaSecurity


def ssl_context(sec: KafkaSecurity) -> ssl.SSLContext | None:
    """A verifying TLS context for SSL / SASL_SSL (the system CAs unless a CA file is named)."""
    if not sec.uses_ssl:
        if sec.ssl_cafile or sec.ssl_certfile or sec.ssl_keyfile:
            raise ConfigError("Kafka TLS files are set but ECGSCREEN_KAFKA_SECURITY_PROTOCOL is not SSL or SASL_SSL")
        return None
    return create_ssl_context(cafile=sec.ssl_cafile, certfile=sec.ssl_certfile, keyfile=sec.ssl_keyfile)


def aiokafka_auth(sec: KafkaSecurity) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaConsumer / AIOKafkaProducer / AIOKafkaClient."""
    kw: dict[str, Any] = {"security_protocol": sec.protocol}
    ctx = ssl_context(sec)
    if ctx is not None:
        kw["ssl_context"] = ctx
    if sec.uses_sasl:
        _need_user(sec)
        kw.update(sasl_mechanism=sec.sasl_mechanism, sasl_plain_username=sec.username,
                  sasl_plain_password=sec.password)
    return kw


def faust_credentials(sec: KafkaSecurity) -> faust.auth.Credentials | None:
    """``broker_credentials`` of the faust app; None for PLAINTEXT."""
    ctx = ssl_context(sec)
    if sec.uses_sasl:
        _need_user(sec)
        return faust.SASLCredentials(username=sec.username, password=sec.password, mechanism=sec.sasl_mechanism,
                                     ssl_context=ctx)
    return faust.SSLCredentials(ctx) if ctx is not None else None


def _need_user(sec: KafkaSecurity) -> None:
    if not sec.username or not sec.password:
        raise ConfigError(f"{sec.protocol} needs ECGSCREEN_KAFKA_USERNAME and ECGSCREEN_KAFKA_PASSWORD(_FILE)")
