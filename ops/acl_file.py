"""A Redis ACL file (``aclfile``) for the triage queue's users, from ``workers.triage_acl``'s rules.

Passwords are read from secret files and written only as SHA-256 hashes (``#<hex>``),
so the file itself holds no password. Beside the three roles it defines ``default``
(the administrator: every command, from its own secret) and a ``metrics`` user for
the Prometheus exporter (INFO and friends, no key access).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from schemas.errors import ConfigError
from workers.triage_acl import Role, acl_rules

# What redis_exporter runs: server figures, never a key.
METRICS_RULES = ("-@all", "+ping", "+hello", "+select", "+client|setname", "+client|setinfo", "+info",
                 "+config|get", "+client|list", "+slowlog|get", "+slowlog|len", "+latency|latest",
                 "+memory|stats", "+dbsize", "+cluster|info", "resetkeys")
ADMIN_RULES = ("~*", "&*", "+@all")


def read_secret(path: Path) -> str:
    try:
        value = path.read_text().strip()
    except OSError as err:
        raise ConfigError(f"password file {path} cannot be read ({err.strerror})") from None
    if len(value) < 16:
        raise ConfigError(f"password in {path} is shorter than 16 characters")
    return value


def _user(name: str, password: str, rules: tuple[str, ...] | list[str]) -> str:
    digest = hashlib.sha256(password.encode()).hexdigest()
    return f"user {name} on #{digest} {' '.join(rules)}"


def acl_file(prefix: str, passwords: Mapping[Role, str], admin_password: str, metrics_password: str | None) -> str:
    """The ACL file's text: default (admin), one user per role given, and the metrics user."""
    lines = [_user("default", admin_password, ADMIN_RULES)]
    lines += [_user(f"ecgscreen-{role.value}", pw, acl_rules(role, prefix)) for role, pw in passwords.items()]
    if metrics_password is not None:
        lines.append(_user("ecgscreen-metrics", metrics_password, METRICS_RULES))
    return "\n".join(lines) + "\n"


def write_acl_file(out: Path, prefix: str, secrets_dir: Path) -> list[str]:
    """Read ``redis_{admin,worker,reviewer,auditor,metrics}_password`` from ``secrets_dir``; write ``out``."""
    passwords = {role: read_secret(secrets_dir / f"redis_{role.value}_password") for role in Role}
    metrics = secrets_dir / "redis_metrics_password"
    text = acl_file(prefix, passwords, read_secret(secrets_dir / "redis_admin_password"),
                    read_secret(metrics) if metrics.exists() else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)  # the Redis server, another user, reads it; it holds hashes only
    tmp.replace(out)
    return [line.split()[1] for line in text.splitlines()]
