"""Secure headers on every answer (docs/security.md), the fast path's too.

- ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy:
  no-referrer`` everywhere;
- a Content-Security-Policy: pages (HTML) load only from the gateway itself (their
  assets are vendored and served by it; inline scripts and styles, as Swagger UI's
  start-up needs, are allowed), every other answer loads nothing at all;
- ``Strict-Transport-Security`` when the request came over TLS (a browser must not be
  told to insist on HTTPS by a plain-HTTP answer it cannot trust).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["API_CSP", "PAGE_CSP", "SecureHeaders", "secure_headers"]

PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'; object-src 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
HSTS = b"max-age=31536000; includeSubDomains"
_ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


def _set(csp: str, tls: bool) -> list[tuple[bytes, bytes]]:
    out = [*_ALWAYS, (b"content-security-policy", csp.encode())]
    return [*out, (b"strict-transport-security", HSTS)] if tls else out


_PAGE = {False: _set(PAGE_CSP, False), True: _set(PAGE_CSP, True)}
_API = {False: _set(API_CSP, False), True: _set(API_CSP, True)}
_OWN = frozenset(k for k, _ in _PAGE[True])


def secure_headers(headers: list[tuple[bytes, bytes]], tls: bool) -> list[tuple[bytes, bytes]]:
    """``headers`` (an answer's own) with the secure headers added: the page set for an
    HTML answer, the API set otherwise; a header the answer set itself is kept."""
    page = own = False
    for k, v in headers:  # one pass: this heads every answer
        name = k.lower()
        if name in _OWN:
            own = True
        elif name == b"content-type" and v.startswith(b"text/html"):
            page = True
    wanted = (_PAGE if page else _API)[tls]
    if own:  # the answer set some itself: keep them
        names = {k.lower() for k, _ in headers}
        wanted = [kv for kv in wanted if kv[0] not in names]
    return [*headers, *wanted]


class SecureHeaders:
    """ASGI middleware: the headers above on every HTTP answer, unless it set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = secure_headers(list(message.get("headers", ())), tls)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
