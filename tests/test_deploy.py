"""The production compose files, checked as far as a machine without a Docker engine allows:
their structure (PyYAML), `docker-compose config` when installed, the commands they run (parsed
by the real CLI), and the Redis ACL file they make (loaded by a real Redis)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from ops.acl_file import write_acl_file
from ops.cli import build_parser
from ops.stack import _terminate, _wait_port, find_redis_server, free_port
from workers.settings import settings_reference

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SECURE = ROOT / "docker-compose.secure.yml"
SETTINGS = {v.name for v in settings_reference()}
ECGSCREEN_SERVICES = {"redis-acl", "worker-cpu", "worker-gpu", "fhir-export"}


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())  # safe_load resolves anchors and << merge keys
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load(COMPOSE)


@pytest.fixture(scope="module")
def secure() -> dict[str, Any]:
    return _load(SECURE)


def test_services_are_the_stack(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "kafka", "kafka-topics", "redis-acl", "redis", "worker-cpu", "worker-gpu", "fhir-export",
        "redis-exporter", "kafka-exporter", "prometheus", "grafana"}
    assert compose["services"]["worker-cpu"]["profiles"] == ["cpu"]
    assert compose["services"]["worker-gpu"]["profiles"] == ["gpu"]


def test_every_service_is_pinned_non_root_and_health_checked(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert (repo and tag and tag != "latest" and tag[0].isdigit()) or tag.startswith("v"), f"{name}: {image}"
        user = str(svc.get("user", ""))
        assert user and user.split(":")[0] not in ("0", "root"), f"{name} runs as root"
        check = svc.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_volumes_are_declared_and_bind_mounts_exist(compose: dict[str, Any], secure: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = set()
    for doc in (compose, secure):
        for name, svc in doc["services"].items():
            for spec in svc.get("volumes", []):
                source = spec.split(":")[0]
                if source.startswith("./"):
                    generated = source.startswith(("./ops/deploy/tls", "./ops/deploy/secrets"))
                    assert generated or (ROOT / source).exists(), f"{name} mounts missing {source}"
                else:
                    used.add(source)
    assert used == declared, f"declared but unused: {declared - used}; used but undeclared: {used - declared}"
    assert {"kafka-data", "redis-data", "trt-cache", "prometheus-data", "grafana-data"} <= declared


def test_environment_is_what_the_worker_reads(compose: dict[str, Any], secure: dict[str, Any]) -> None:
    for doc in (compose, secure):
        for name, svc in doc["services"].items():
            env = svc.get("environment", {})
            assert isinstance(env, dict), f"{name}: environment as a mapping"
            ours = {k for k in env if k.startswith("ECGSCREEN_")}
            assert ours <= SETTINGS, f"{name} sets variables no setting reads: {sorted(ours - SETTINGS)}"
            if name in ECGSCREEN_SERVICES:
                assert set(env) == ours, f"{name} sets non-ECGSCREEN variables: {sorted(set(env) - ours)}"
                assert not any("PASSWORD" in k and not k.endswith("_FILE") for k in env), f"{name}: inline password"


def test_secrets_come_from_ignored_files(compose: dict[str, Any], secure: dict[str, Any]) -> None:
    declared = {**compose["secrets"], **secure["secrets"]}
    for doc in (compose, secure):
        for name, svc in doc["services"].items():
            assert set(svc.get("secrets", [])) <= set(declared), name
    ignored = (ROOT / ".gitignore").read_text()
    assert "ops/deploy/secrets/" in ignored and "ops/deploy/tls/" in ignored
    assert all(s["file"].startswith("./ops/deploy/secrets/") for s in declared.values())
    made = (ROOT / "ops" / "deploy" / "make-secrets.sh").read_text()
    assert all(Path(s["file"]).name.removesuffix("_password") in made for s in declared.values())


def test_gpu_worker_reserves_a_gpu_and_keeps_its_engine_cache(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert len(devices[0]["device_ids"]) == 1  # one worker per GPU
    cache = gpu["environment"]["ECGSCREEN_TRT_CACHE"]
    assert f"trt-cache:{cache}" in gpu["volumes"]
    assert gpu["environment"]["ECGSCREEN_ENGINE"] == "tensorrt"
    assert "nvcr.io/nvidia/pytorch:" in (ROOT / gpu["build"]["dockerfile"]).read_text()


def test_ecgscreen_commands_parse(compose: dict[str, Any]) -> None:
    parser = build_parser()
    for name in ECGSCREEN_SERVICES:
        command = compose["services"][name].get("command", ["ecgscreen", "worker"])
        assert command[0] == "ecgscreen"
        args = parser.parse_args(command[1:])
        assert hasattr(args, "func"), f"{name}: {command}"


def test_prometheus_scrapes_every_ops_port(compose: dict[str, Any]) -> None:
    prom = _load(ROOT / "ops" / "deploy" / "prometheus" / "prometheus.yml")
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    svcs = compose["services"]
    for name in ("worker-cpu", "worker-gpu"):
        assert f"{name}:{svcs[name]['environment']['ECGSCREEN_METRICS_PORT']}" in targets
    export = svcs["fhir-export"]["command"]
    assert f"fhir-export:{export[export.index('--metrics-port') + 1]}" in targets
    assert {"kafka-exporter:9308", "redis-exporter:9121"} <= targets


def test_topics_have_stated_partitions_and_retention() -> None:
    script = (ROOT / "ops" / "deploy" / "kafka" / "create-topics.sh").read_text()
    table = script.split("<<TOPICS\n", 1)[1].split("TOPICS", 1)[0].split("\n")
    rows = {ln.split()[0]: (int(ln.split()[1]), int(ln.split()[2])) for ln in table if ln.strip()}
    assert rows == {"ecg.events": (12, 7), "ecg.verdicts": (12, 30), "ecg.alerts": (6, 90), "ecg.deadletter": (3, 90)}


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="needs docker-compose (apt-get install docker-compose)")
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, SECURE]], ids=["base", "with-secure-override"])
def test_docker_compose_config_accepts_the_files(files: list[Path]) -> None:
    cmd = ["docker-compose", *(a for f in files for a in ("-f", str(f))), "--profile", "cpu", "--profile", "gpu",
           "config", "-q"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{shlex.join(cmd)}: {done.stderr}"


# --- the Redis ACL file --------------------------------------------------------------------------


@pytest.fixture()
def acl_redis(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    passwords = {r: f"{r}-password-0123456789" for r in ("admin", "worker", "reviewer", "auditor", "metrics")}
    for role, pw in passwords.items():
        (secrets / f"redis_{role}_password").write_text(pw + "\n")
    aclfile = tmp_path / "acl" / "users.acl"
    write_acl_file(aclfile, "ecg", secrets)
    assert not any(pw in aclfile.read_text() for pw in passwords.values()), "passwords written in clear"
    port = free_port()
    proc = subprocess.Popen([find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--aclfile", str(aclfile), "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, "redis with aclfile")
        yield port, passwords
    finally:
        _terminate(proc.pid)


def test_acl_file_users_can_do_their_job_only(acl_redis: tuple[int, dict[str, str]]) -> None:
    port, pw = acl_redis

    def as_user(user: str, role: str) -> redis.Redis:
        return redis.Redis(port=port, username=user, password=pw[role])

    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()  # the default user needs the admin password
    assert as_user("default", "admin").acl_whoami() == "default"
    worker = as_user("ecgscreen-worker", "worker")
    assert worker.ping()
    worker.hset("ecg:alert:x", "a", "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        worker.zrem("ecg:worklist:site", "x")  # the worker cannot drop an alert
    metrics = as_user("ecgscreen-metrics", "metrics")
    assert "redis_version" in metrics.info()
    with pytest.raises(redis.exceptions.NoPermissionError):
        metrics.hgetall("ecg:alert:x")  # the exporter reads server figures, never a key
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_user("ecgscreen-auditor", "auditor").hset("ecg:alert:x", "a", "2")
