"""Serving the gateway: the listening socket first, then uvicorn on it.

``hexbook up`` and the tests serve the same way: the port is bound before anything else
starts (a port in use is a clear error, not a traceback after the banner), uvicorn never
rewrites the client address from ``X-Forwarded-For`` (:func:`gateway.auth.client_address`
does, for configured proxies only), and ``on_started`` runs once the app has started
and is taking connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

__all__ = [
    "CoalescingProtocol",
    "PortInUse",
    "bind",
    "check_tls",
    "in_thread",
    "loopback",
    "server",
    "when_started",
]


class PortInUse(OSError):
    """The address to listen on is taken."""


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A socket bound to ``host:port`` (``port`` 0: a free one), or :class:`PortInUse`.
    ``reuse_port``: shared with the other gateway processes of this machine that bind it
    so (SO_REUSEPORT; the kernel spreads new connections over them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                exc.errno,
                f"{host}:{port} is in use (another hexbook up?); stop it or choose "
                "another port with --port"
                + (
                    " (a gateway that shares a port needs every holder to share it)"
                    if reuse_port
                    else ""
                ),
            ) from None
        raise
    sock.set_inheritable(True)
    return sock


class _Coalesced:
    """A connection's transport whose writes of one turn of the event loop leave in one
    send: uvicorn writes a response's head and its body apart (two send calls, a fifth
    of the gateway's time on a hold, py-spy); written here, they go out together at the
    end of the turn. Closing sends what waits first; the rest is the transport's own."""

    __slots__ = ("_loop", "_parts", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._parts is None:
            self._parts = [data]
            self._loop.call_soon(self._flush)
        else:
            self._parts.append(data)

    def _flush(self) -> None:
        parts, self._parts = self._parts, None
        if parts and not self._transport.is_closing():
            self._transport.write(b"".join(parts))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# A response header's line as uvicorn writes it (name lower-cased), checked once as
# uvicorn checks it, with whether it is the Content-Length: the same few headers (the
# secure ones, the content type, the lengths of this second's answers, the date) head
# nearly every answer, and uvicorn's two regular expressions and lower() per header
# were a tenth of the gateway's time on a hold (cProfile, CPU time).
_LINES: dict[tuple[bytes, bytes], tuple[bytes, bool]] = {}
_LINES_MAX = 4096


def _line(name: bytes, value: bytes) -> tuple[bytes, bool] | None:
    """The header's line and whether it is a Content-Length; ``None`` for what uvicorn's
    own ``send`` must see (an invalid header, which it refuses; Transfer-Encoding or
    Connection, which change how the answer is framed)."""
    hit = _LINES.get((name, value))
    if hit is not None:
        return hit
    if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
        return None
    lower = name.lower()
    if lower in (b"transfer-encoding", b"connection"):
        return None
    if len(_LINES) >= _LINES_MAX:
        _LINES.clear()
    hit = _LINES[(name, value)] = (b"%s: %s\r\n" % (lower, value), lower == b"content-length")
    return hit


class _Cycle(RequestResponseCycle):
    """uvicorn's request-response cycle whose common response head (keep-alive, one
    Content-Length, no access log) is written from :func:`_line`'s checked lines; any
    other head, and every body, is uvicorn's own ``send``, unchanged."""

    async def send(self, message: Any) -> None:
        if (
            message["type"] == "http.response.start"
            and not self.response_started
            and self.keep_alive
            and not (self.disconnected or self.flow.write_paused or self.access_log)
            and self.scope["method"] != "HEAD"
            and (head := self._head(message["status"], message.get("headers", ()))) is not None
        ):
            self.response_started = True
            self.waiting_for_100_continue = False
            self.transport.write(head)
            return
        await super().send(message)

    def _head(self, status: int, headers: Any) -> bytes | None:
        if status in (204, 304):
            return None
        parts = [STATUS_LINE[status]]
        length: bytes | None = None
        for name, value in (*self.default_headers, *headers):
            got = _line(name, value)
            if got is None or (got[1] and length is not None):  # (two lengths: uvicorn's)
                return None
            parts.append(got[0])
            if got[1]:
                length = value
        if length is None:  # uvicorn answers it chunked
            return None
        self.expected_content_length = int(length)
        self.chunked_encoding = False
        parts.append(b"\r\n")
        return b"".join(parts)


class CoalescingProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, its writes coalesced per turn (:class:`_Coalesced`)
    and its common response heads written by :class:`_Cycle`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _Coalesced(transport, self.loop)  # type: ignore[assignment]

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        # The new cycle's task has not started yet: it sends through _Cycle.send.
        if self.cycle is not before and type(self.cycle) is RequestResponseCycle:
            self.cycle.__class__ = _Cycle


def server(
    app: FastAPI,
    *,
    keep_alive_seconds: int = 5,
    log_level: str = "warning",
    tls: tuple[Path, Path] | None = None,
) -> uvicorn.Server:
    """A uvicorn server for ``app`` as hexbook serves it (no proxy-header rewriting);
    HTTPS with ``tls`` = (certificate chain, private key), PEM files."""
    config = uvicorn.Config(
        app,
        log_level=log_level,
        log_config=None,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        # hexbook's own access log is Watch's (gateway.observe); uvicorn's, filtered out
        # by its level anyway, still formatted each request's path and client first.
        access_log=False,
        http=CoalescingProtocol,
        timeout_keep_alive=keep_alive_seconds,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
    )
    return uvicorn.Server(config)


def check_tls(cert: Path, key: Path) -> str | None:
    """Why ``cert`` and ``key`` cannot serve HTTPS, in one line (None: they can)."""
    import ssl

    for what, path in (("certificate", cert), ("key", key)):
        if not path.is_file():
            return f"the TLS {what} {path} is not a file"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        return f"the TLS certificate {cert} and key {key} do not load: {exc}"
    return None


def loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def when_started(srv: uvicorn.Server, on_started: Callable[[], None]) -> threading.Thread:
    """Call ``on_started`` (in a thread) once ``srv`` has started."""

    def wait() -> None:
        while not srv.started:
            if srv.should_exit:
                return
            time.sleep(0.05)
        on_started()

    thread = threading.Thread(target=wait, name="hexbook-started", daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def in_thread(
    app: FastAPI,
    *,
    keep_alive_seconds: int = 5,
    seconds: float = 120,
    tls: tuple[Path, Path] | None = None,
) -> Iterator[str]:
    """Serve ``app`` as ``hexbook up`` does, from a thread of this process, on a free
    loopback port (tests, benchmarks); its base URL once it takes connections."""
    sock = bind("127.0.0.1", 0)
    srv = server(app, keep_alive_seconds=keep_alive_seconds, tls=tls)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the gateway did not start")
        time.sleep(0.05)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
        sock.close()
