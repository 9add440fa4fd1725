"""Who may drive the studio: its own page, opened by the person who started it. Three checks, as Jupyter does.

Why: the studio listens on 127.0.0.1, but any web page the user visits can send requests there. Without these
checks a page on another origin posted a `no-cors` form and a job ran, and a DNS-rebinding page (`Host:
evil.example`, resolving to 127.0.0.1) started jobs and downloaded their files.

1. **Host allow-list** (every request): the `Host` header must name the address the studio listens on, or
   localhost / 127.0.0.1 / ::1 (any port). Listening on a wildcard address (0.0.0.0, ::) also allows IP
   literals and this machine's own names; `--allow-host NAME` adds others. Defeats DNS rebinding: the
   attacker's page can reach the socket, but its requests carry the attacker's host name.
2. **Origin check** (every request that is not GET/HEAD/OPTIONS): a browser sends `Origin` with each POST; it
   must be this studio's own origin (`http://<Host>`). A request without `Origin` is not from a browser page
   (curl, scripts) and still needs the token.
3. **Per-run token** (every route but the static assets): a random token made at start and printed in the
   URL (`http://127.0.0.1:8000/?token=...`). Opening that URL serves the page and sets a cookie
   (`HttpOnly; SameSite=Strict`, so no other site's request carries it) with which the page's own requests
   are authorised; scripts may send `Authorization: token <token>` or `?token=` instead. A studio built in
   code without a token (`StudioConfig(token=None)`, the tests) skips this check, not the other two.

Every refusal is a 403 with the usual one-line JSON `{"error": ...}`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import parse_qs

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
PUBLIC_PREFIXES = ("/static/",)

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]], Awaitable[None]]


def host_name(host_header: str) -> str:
    """The host part of a `Host` header (`[::1]:8000` -> `::1`, `Example.COM.:80` -> `example.com`)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def cookie_name(host_header: str) -> str:
    """One cookie per port: two studios on one machine do not log each other out (cookies ignore ports)."""
    port = host_header.rsplit(":", 1)[1] if host_header.count(":") == 1 or "]:" in host_header else "80"
    return f"musicgen-studio-{port if port.isdigit() else 'x'}"


class StudioGuard:
    """ASGI middleware applying the three checks of the module docstring to every HTTP request."""

    def __init__(self, app: ASGIApp, listen_host: str = "127.0.0.1", token: str | None = None,
                 allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.token = token
        listen = host_name(listen_host) if listen_host not in WILDCARDS else listen_host
        self.wildcard = listen in WILDCARDS
        self.hosts = {h.lower() for h in (*LOCAL_HOSTS, *allowed_hosts)} | ({listen} if not self.wildcard else set())
        if self.wildcard:
            for name in (socket.gethostname(), socket.getfqdn()):
                if name:
                    self.hosts.add(name.lower().rstrip("."))

    def host_allowed(self, name: str) -> bool:
        return name in self.hosts or (self.wildcard and _is_ip(name))

    async def __call__(self, scope: Scope, receive: Callable[..., Awaitable[Any]],
                       send: Callable[..., Awaitable[Any]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not self.host_allowed(host_name(host)):
            await _refuse(send, f"Host {host!r} is not this studio's address: open the URL the studio printed "
                                "(a page on another site, or a DNS-rebinding attack, sends its own host name)")
            return
        if scope.get("method", "GET").upper() not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and origin.rstrip("/").lower() != f"http://{host}".lower():
                await _refuse(send, f"requests from {origin} are refused: only the studio's own page may "
                                    "start jobs")
                return
            if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
                await _refuse(send, "cross-site requests are refused: only the studio's own page may start jobs")
                return
        set_cookie = None
        if self.token is not None and not scope.get("path", "/").startswith(PUBLIC_PREFIXES):
            given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
            auth = headers.get("authorization", "")
            if auth.lower().startswith("token "):
                given = given or auth[6:].strip()
            name = cookie_name(host)
            cookie = _cookies(headers.get("cookie", "")).get(name)
            if given is not None and _same(given, self.token):
                if scope.get("path") == "/":
                    set_cookie = f"{name}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            elif cookie is None or not _same(cookie, self.token):
                await _refuse(send, "this studio needs its token: open the URL it printed when it started "
                                    "(http://.../?token=...)")
                return
        if set_cookie is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []),
                                                 (b"set-cookie", set_cookie.encode("latin-1"))])
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


def _cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, eq, value = part.strip().partition("=")
        if eq:
            out.setdefault(name, value)
    return out


async def _refuse(send: Callable[..., Awaitable[Any]], message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
