"""One settings reference: README's table is what the loader reads, and nothing else reads the environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ops.settings_ref import README, settings_table, with_table
from schemas.errors import ConfigError
from workers.settings import Settings, load_settings, settings_reference

ROOT = Path(__file__).resolve().parents[1]
CODE = [p for d in ("schemas", "models", "workers", "ops") for p in (ROOT / d).rglob("*.py")]
ENV_READ = re.compile(r"environ\.get\(|environ\[|getenv\(")
NAME = re.compile(r"ECGSCREEN_[A-Z0-9_]+")  # a name ending in "_" is a prefix (ECGSCREEN_REDIS_SSL_{...})


def test_readme_table_is_the_generated_one() -> None:
    text = README.read_text()
    assert with_table(text) == text, "run: python -m ops.settings_ref"
    assert settings_table() in text


def test_every_variable_is_listed_once_with_a_meaning() -> None:
    ref = settings_reference()
    names = [v.name for v in ref]
    assert len(names) == len(set(names))
    assert all(v.meaning and v.default for v in ref)
    assert {"ECGSCREEN_TORCH_THREADS", "ECGSCREEN_TRT_CACHE", "ECGSCREEN_ENGINE_PRECISION",
            "ECGSCREEN_ENGINE_BUCKETS", "ECGSCREEN_METRICS_PORT", "ECGSCREEN_REDIS_PASSWORD_FILE"} <= set(names)


def test_only_settings_reads_the_environment() -> None:
    readers = [p.relative_to(ROOT).as_posix() for p in CODE if ENV_READ.search(p.read_text())]
    assert readers == [], f"read the environment through workers/settings.py, not in {readers}"


def _test_opt_ins() -> set[str]:
    """Switches the test suite reads itself (e.g. ECGSCREEN_SLOW_TESTS): not worker settings."""
    lines = (ln for p in (ROOT / "tests").glob("*.py") for ln in p.read_text().splitlines())
    return {n for ln in lines if "environ" in ln or "getenv" in ln for n in NAME.findall(ln)}


def test_every_variable_named_in_code_and_docs_exists() -> None:
    known = {v.name for v in settings_reference()} | _test_opt_ins()
    docs = [ROOT / "README.md", ROOT / "models" / "README.md", ROOT / "docker-compose.yml",
            *(ROOT / "ops" / "deploy").rglob("*.yml")]
    for path in [*CODE, *(d for d in docs if d.exists())]:
        unknown = {n for n in NAME.findall(path.read_text()) if not n.endswith("_")} - known
        assert not unknown, f"{path.relative_to(ROOT)} names variables no setting reads: {sorted(unknown)}"


def test_the_dataclass_defaults_are_the_loaders() -> None:
    assert load_settings({}) == Settings()


def test_engine_options_can_be_set() -> None:
    s = load_settings({"ECGSCREEN_ENGINE_PRECISION": "bf16", "ECGSCREEN_ENGINE_BUCKETS": "2,8,32",
                       "ECGSCREEN_ENGINE_CUDA_GRAPHS": "false", "ECGSCREEN_TRT_CACHE": "/cache/trt"})
    assert s.engine_tuning.options() == {"precision": "bf16", "buckets": (2, 8, 32), "cuda_graphs": False,
                                         "cache_dir": Path("/cache/trt")}
    assert Settings().engine_tuning.options() == {}
    with pytest.raises(ConfigError, match="ENGINE_BUCKETS"):
        load_settings({"ECGSCREEN_ENGINE_BUCKETS": "8,2"})


def test_passwords_come_from_secret_files(tmp_path: Path) -> None:
    secret = tmp_path / "redis_worker_password"
    secret.write_text("s3cret\n")
    s = load_settings({"ECGSCREEN_REDIS_PASSWORD_FILE": str(secret), "ECGSCREEN_KAFKA_PASSWORD": "k"})
    assert s.redis.password == "s3cret" and s.kafka.security.password == "k"
    assert "s3cret" not in repr(s)
    with pytest.raises(ConfigError, match="not both"):
        load_settings({"ECGSCREEN_REDIS_PASSWORD_FILE": str(secret), "ECGSCREEN_REDIS_PASSWORD": "x"})
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings({"ECGSCREEN_KAFKA_PASSWORD_FILE": str(tmp_path / "missing")})
