"""Access rules of the web app: the user from the proxy's header, CSRF tokens, strict headers.

Sign-in is the reverse proxy's job. The app trusts one configured header for the
user's name and refuses any request without it (401), so it must only be
reachable through a proxy that sets that header and strips any copy a client
sends. Every form carries a CSRF token: an HMAC of the user and its issue time
under a server key, so another site can neither read nor forge one. Responses
carry a Content-Security-Policy that allows scripts, styles and images from the
app itself only (no inline script), and are not cached, since pages hold patient data.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.triage import InvalidActor, _check_actor

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on a form POST,
    # which the origin check must refuse. URLs hold no patient data, so the referrer leaks none.
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
}
TOKEN_TTL_S = 12 * 3600
DEV_USER = "dev"
OPEN_PATHS = frozenset({"/healthz"})


@dataclass(frozen=True, slots=True)
class AccessConfig:
    user_header: str  # lower case, as ASGI gives header names
    secret: bytes
    insecure_dev: bool = False


def csrf_token(secret: bytes, user: str, now: float | None = None) -> str:
    issued = str(int(time.time() if now is None else now))
    return f"{issued}.{_mac(secret, user, issued)}"


def csrf_ok(secret: bytes, user: str, token: str, now: float | None = None) -> bool:
    issued, _, mac = token.partition(".")
    if not issued.isdigit() or not hmac.compare_digest(mac, _mac(secret, user, issued)):
        return False
    age = (time.time() if now is None else now) - int(issued)
    return -60 <= age <= TOKEN_TTL_S


def _mac(secret: bytes, user: str, issued: str) -> str:
    return hmac.new(secret, f"{user}\x1f{issued}".encode(), hashlib.sha256).hexdigest()[:40]


def same_origin(origin: str | None, host: str | None) -> bool:
    """A browser's Origin on a POST must name this host (absent: an old client; the token still binds)."""
    if not origin:
        return True
    return origin != "null" and urlsplit(origin).netloc == (host or "")


def user_from_header(value: str | None, insecure_dev: bool) -> str | None:
    """The acting user, or None when the request must be refused."""
    if value is None:
        return DEV_USER if insecure_dev else None
    try:
        return _check_actor(value.strip())
    except InvalidActor:
        return None


class AccessMiddleware:
    """Resolve the user from the trusted header (401 without it) and add the security headers."""

    def __init__(self, app: ASGIApp, config: AccessConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] += [(k.encode(), v.encode()) for k, v in HEADERS.items()]
            await send(message)

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        user = user_from_header(headers.get(self.config.user_header), self.config.insecure_dev)
        if user is None and scope["path"] not in OPEN_PATHS:
            await _plain(send_with_headers, 401, "no valid user: this app must be reached through the "
                                                 "authenticating proxy that sets the trusted user header")
            return
        scope.setdefault("state", {})["user"] = user
        await self.app(scope, receive, send_with_headers)


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
