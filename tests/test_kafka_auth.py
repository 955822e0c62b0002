"""Kafka client security from settings: one mapping for faust and aiokafka (pure; no broker)."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest

from ops.acl_file import acl_file
from schemas.errors import ConfigError
from workers.kafka_auth import aiokafka_auth, faust_credentials
from workers.settings import KafkaSecurity, load_settings
from workers.triage_acl import Role


def test_plaintext_is_the_default_and_needs_nothing() -> None:
    sec = load_settings({}).kafka.security
    assert aiokafka_auth(sec) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(sec) is None


def test_sasl_ssl_reaches_both_clients(tmp_path: Path) -> None:
    secret = tmp_path / "kafka_worker_password"
    secret.write_text("pw-0123456789abcdef\n")
    sec = load_settings({"ECGSCREEN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "ECGSCREEN_KAFKA_USERNAME": "worker",
                         "ECGSCREEN_KAFKA_PASSWORD_FILE": str(secret)}).kafka.security
    kw = aiokafka_auth(sec)
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "worker" and kw["sasl_plain_password"] == "pw-0123456789abcdef"
    assert isinstance(kw["ssl_context"], ssl.SSLContext) and kw["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    creds = faust_credentials(sec)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.mechanism.value == "SCRAM-SHA-512" and creds.protocol.value == "SASL_SSL"
    assert creds.ssl_context is not None and creds.ssl_context.check_hostname


def test_misconfigurations_are_refused() -> None:
    with pytest.raises(ConfigError, match="USERNAME"):
        aiokafka_auth(KafkaSecurity(protocol="SASL_SSL"))
    with pytest.raises(ConfigError, match="not SSL"):
        faust_credentials(KafkaSecurity(ssl_cafile="/ca.pem"))
    with pytest.raises(ConfigError, match="KAFKA_SECURITY_PROTOCOL"):
        load_settings({"ECGSCREEN_KAFKA_SECURITY_PROTOCOL": "SASL"})


def test_acl_file_holds_hashes_not_passwords() -> None:
    text = acl_file("ecg", {Role.WORKER: "w" * 20}, "a" * 20, "m" * 20)
    assert "w" * 20 not in text and "a" * 20 not in text
    users = [line.split()[1] for line in text.splitlines()]
    assert users == ["default", "ecgscreen-worker", "ecgscreen-metrics"]
    assert all(line.split()[3].startswith("#") and len(line.split()[3]) == 65 for line in text.splitlines())
