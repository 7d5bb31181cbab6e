"""What the server decides before any route runs, as one ASGI layer around the app.

A server on 127.0.0.1 is still reachable from every web page its user opens: a page can
post a form to it without a CORS preflight, and a page whose name is rebound to 127.0.0.1
(DNS rebinding) is same-origin with it. So, in this order:

- only the names it serves are answered (the bound address, the loopback names, and
  `--allowed-hosts`); a rebound name is refused before anything else;
- a request that changes state and comes from another origin (its `Origin`, or a
  browser's `Sec-Fetch-Site`) is refused unless `--cors-origin` names that origin;
- the API key is checked from the headers, before a byte of the body is read;
- the body is counted as it streams (whatever Content-Length says, or without one) and
  timed: a body over the limit answers 413, one that stalls answers 408;
- every response carries security headers (a default CSP that a page may replace).

Refusals are OpenAI-shaped JSON errors like every other error of the server.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("", "0.0.0.0", "::")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
}


# HTTP exceptions, so that the framework's body parsing passes them through as they are
class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over {limit} bytes")


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float, whole: bool = False) -> None:
        super().__init__(408, f"the request body took over {seconds:g} s in all" if whole else
                         f"the request body stalled for {seconds:g} s")


@dataclass(frozen=True)
class GuardOptions:
    bind: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()  # names a proxy serves us under; "*" for any
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API ("*" for any)
    api_key: str | None = None
    key_prefix: str = "/v1/"  # paths that need the key (the page, /healthz and /docs do not)
    max_body_bytes: int = 50 * 2**20
    body_timeout: float = 30.0  # seconds a body may go without sending a byte
    body_deadline: float = 300.0  # seconds a whole body may take (a byte every few seconds never stalls)
    policies: tuple[tuple[str, str], ...] = ()  # (path prefix, Content-Security-Policy) of pages that need more


def served_hosts(options: GuardOptions) -> frozenset[str] | None:
    """The Host names answered, lower case without port; None answers any (a wildcard bind
    with no --allowed-hosts: there the API key, which such a bind requires, protects it)."""
    if "*" in options.allowed_hosts:
        return None
    names = {h.lower().strip("[]") for h in options.allowed_hosts}
    if options.bind in WILDCARD_BINDS:
        return frozenset(names | set(LOOPBACK_NAMES)) if names else None
    return frozenset(names | set(LOOPBACK_NAMES) | {options.bind.lower().strip("[]")})


def host_name(value: str) -> str:
    """'Example.org:8080' -> 'example.org', '[::1]:7860' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": None}}).encode()


class Guard:
    def __init__(self, app, options: GuardOptions) -> None:
        self.app, self.options = app, options
        self.hosts = served_hosts(options)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        policy = next((csp for prefix, csp in self.options.policies if scope["path"].startswith(prefix)), None)
        send = _with_headers(send, {**SECURITY_HEADERS, **({"content-security-policy": policy} if policy else {})})
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            status, message, param, kind = refusal
            return await _answer(send, status, error_body(message, param, kind))
        await self.app(scope, _limited(receive, self.options.max_body_bytes, self.options.body_timeout,
                                       self.options.body_deadline), send)

    def refusal(self, scope, headers: dict[str, str]) -> tuple[int, str, str | None, str] | None:
        """(status, message, param, type) of a request refused on its headers alone, or None."""
        host = host_name(headers.get("host", ""))
        if self.hosts is not None and host not in self.hosts:
            return (421, f"this server does not answer for host {host[:100]!r} (--allowed-hosts adds a name)",
                    "host", "invalid_request_error")
        method = scope["method"]
        if method not in SAFE_METHODS and not self.same_or_allowed_origin(scope, headers):
            return (403, "cross-origin request refused (--cors-origin allows a web page's origin)", "origin",
                    "permission_error")
        if self.options.api_key is not None and method != "OPTIONS" and scope["path"].startswith(
                self.options.key_prefix):
            if not self.authorized(headers):
                return 401, "missing or wrong API key (send Authorization: Bearer <key>)", None, "authentication_error"
        size = headers.get("content-length", "")
        if size.isdigit() and int(size) > self.options.max_body_bytes:
            return (413, f"the request body is {int(size)} bytes; at most {self.options.max_body_bytes}", None,
                    "invalid_request_error")
        return None

    def authorized(self, headers: dict[str, str]) -> bool:
        return authorized(headers.get("authorization", ""), self.options.api_key)

    def same_or_allowed_origin(self, scope, headers: dict[str, str]) -> bool:
        """A browser names the page that sent a request in Origin (every cross-origin POST) and
        Sec-Fetch-Site; a client that is not a browser sends neither, and is not a web page."""
        origin = headers.get("origin")
        if origin is not None:
            own = f"{scope.get('scheme', 'http')}://{headers.get('host', '').lower()}"
            return origin.lower() == own or origin in self.options.cors_origins or "*" in self.options.cors_origins
        return headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


def authorized(header: str, api_key: str | None) -> bool:
    """An `Authorization` header of `Bearer <key>`: the scheme required, in any case (RFC 9110
    11.1). A server without a key authorizes everyone."""
    if api_key is None:
        return True
    scheme, _, given = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), api_key.encode())


def _with_headers(send, extra: dict[str, str]):
    async def sending(message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            added = [(k.encode(), v.encode()) for k, v in extra.items() if k.encode() not in present]
            message = {**message, "headers": [*message.get("headers", []), *added]}
        await send(message)

    return sending


def _limited(receive, limit: int, timeout: float, deadline: float) -> Callable[[], Awaitable[dict]]:
    """receive() that counts the body and times each part of it and the whole of it (from the
    first read); once the body is complete it is the plain receive() again (which waits for the
    client to go away)."""
    state = {"bytes": 0, "done": False, "ends": None}

    async def receiving() -> dict:
        if state["done"]:
            return await receive()
        loop = asyncio.get_running_loop()
        if state["ends"] is None:
            state["ends"] = loop.time() + deadline
        left = state["ends"] - loop.time()
        try:
            message = await asyncio.wait_for(receive(), min(timeout, max(left, 0.0)))
        except asyncio.TimeoutError:
            raise BodyTimeout(*((deadline, True) if left <= timeout else (timeout,))) from None
        if message["type"] == "http.request":
            state["bytes"] += len(message.get("body", b""))
            if state["bytes"] > limit:
                raise BodyTooLarge(limit)
            state["done"] = not message.get("more_body", False)
        return message

    return receiving


async def _answer(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def header_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol with a limit on the time a client takes to send a request's
    headers (uvicorn has none: a client sending a byte a minute holds a connection for ever).
    The clock starts when the connection opens and again after each response."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimedH11(H11Protocol):
        _timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if not self._waiting_for_headers() and self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def connection_lost(self, exc) -> None:
            if self._timer is not None:
                self._timer.cancel()
            super().connection_lost(exc)

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_later(seconds, self._expire)

        def _expire(self) -> None:
            self._timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimedH11
