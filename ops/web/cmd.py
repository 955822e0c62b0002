"""`ecgscreen web`: serve the triage pages behind the authenticating proxy."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from schemas.errors import ConfigError
from workers.settings import Settings
from workers.triage import TriageStore


def register(sub: Any) -> None:
    p = sub.add_parser("web", help="the triage worklist in a browser (behind an authenticating reverse proxy)")
    p.add_argument("--host", default=None, help="listen address (default: ECGSCREEN_WEB_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: ECGSCREEN_WEB_PORT, 8080)")
    p.add_argument("--insecure-dev", action="store_true",
                   help="local trial only: no trusted user header needed (user 'dev'), Redis as configured")
    p.set_defaults(func=cmd_web)


def build_app(settings: Settings, insecure_dev: bool = False) -> Any:
    """The Starlette app as configured; refuses an unsafe configuration unless ``insecure_dev``."""
    from ops.web.app import WebConfig, create_web_app, new_secret
    from ops.web.security import AccessConfig

    web = settings.web
    if web.user_header is None and not insecure_dev:
        raise ConfigError("ECGSCREEN_WEB_USER_HEADER is not set: name the header your authenticating proxy sets "
                          "to the signed-in user (e.g. X-Remote-User), or pass --insecure-dev for a local trial")
    if web.redis_password is None and not insecure_dev:
        raise ConfigError("ECGSCREEN_WEB_REDIS_PASSWORD is not set: the app connects to Redis as the reviewer "
                          f"user ({web.redis_username}); `ecgscreen triage acl` prints its rules")
    redis = settings.redis
    if web.redis_password is not None:
        redis = dataclasses.replace(redis, username=web.redis_username, password=web.redis_password)
    access = AccessConfig(user_header=(web.user_header or "x-remote-user").lower(), secret=new_secret(web.secret),
                          insecure_dev=insecure_dev)
    config = WebConfig(access=access, lease_s=settings.triage.lease_s)
    return create_web_app(config, lambda: TriageStore.from_settings(redis, settings.policy, actor="web"))


def cmd_web(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from workers.logs import configure_logging

    app = build_app(settings, args.insecure_dev)
    configure_logging(settings.log_level)
    host, port = args.host or settings.web.host, args.port or settings.web.port
    if args.insecure_dev:
        print("ecgscreen web: --insecure-dev: every request acts as 'dev' unless the header is sent; "
              "never expose this beyond your own machine", file=sys.stderr)
    # uvicorn's access log would print URLs; the app logs the route template instead.
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning", server_header=False)
    return 0


@contextlib.contextmanager
def serving(app: Any, port: int = 0) -> Iterator[str]:
    """Serve ``app`` on loopback in a background thread (screenshots, browser tests); yields its base URL."""
    import uvicorn

    from ops.stack import free_port

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False, log_level="warning"))
    thread = threading.Thread(target=server.run, name="web", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the web server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
