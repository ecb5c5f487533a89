"""What keeps another web site from reading or driving the dashboard.

* **Allowed hosts** (``PGCELERY_DASHBOARD_ALLOWED_HOSTS``, default the bind address,
  ``localhost`` and ``127.0.0.1``): any other ``Host`` gets 400. A DNS-rebinding page reaches the
  dashboard under its own host name, so it is refused before it can read a task's arguments.
* **Same origin for every POST**: an ``Origin`` (or, without one, a ``Referer``) naming another
  host or port gets 403. Requests without either (curl, scripts) still need a confirmation token.
* **Single-use confirmation tokens** (:class:`SingleUseTokens`): a token works once, for one
  action on one target, for ten minutes.
* **Headers on every response**: ``X-Frame-Options: DENY`` and a ``Content-Security-Policy``
  that allows only the dashboard's own scripts, styles and images and no framing, so the
  confirmation page cannot be framed and clicked through; ``X-Content-Type-Options: nosniff``
  and ``Referrer-Policy: same-origin``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pgcelery.dashboard.actions import Tokens

SECURITY_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        b" object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_name(value: str) -> str:
    """The host of a ``Host`` header value (``[::1]:8008`` → ``::1``), lowercased."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def allowed_hosts(configured: Iterable[str], bind_host: str) -> frozenset[str]:
    hosts = [host_name(h) for h in configured if h.strip()]
    if not hosts:
        hosts = [host_name(bind_host), "localhost", "127.0.0.1"]
    return frozenset(hosts)


class Guard:
    """ASGI middleware: allowed hosts, same-origin POSTs, security headers."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        refusal = None
        if "*" not in self.hosts and host_name(host) not in self.hosts:
            refusal = PlainTextResponse("unknown host: see PGCELERY_DASHBOARD_ALLOWED_HOSTS", 400)
        elif scope["method"] not in SAFE_METHODS and not _same_origin(headers, host):
            refusal = PlainTextResponse("cross-site request refused", 403)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _same_origin(headers: Headers, host: str) -> bool:
    """Whether the request's ``Origin`` (else ``Referer``) is this host and port, or absent."""
    source = headers.get("origin") or headers.get("referer")
    if source is None:
        return True
    found = urlsplit(source)
    return bool(found.scheme in ("http", "https") and found.netloc.lower() == host.lower())


class SingleUseTokens(Tokens):
    """Confirmation tokens that work once: a used token is remembered until it expires."""

    def __init__(self) -> None:
        super().__init__()
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

    def valid(self, token: str, action: str, target: str) -> bool:
        if not super().valid(token, action, target):
            return False
        now = time.time()
        with self._lock:
            for old in [t for t, expires in self._used.items() if expires < now]:
                del self._used[old]
            if token in self._used:
                return False
            self._used[token] = float(token.partition(".")[0])
        return True
