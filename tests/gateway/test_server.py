"""The gateway's HTTP protocol: the writes of one turn of the event loop leave in one send
(uvicorn writes a response's head and body apart), in order, and nothing is lost when the
connection closes. A real socket pair and event loop; the transport is wrapped only to
count what reaches it."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx

from gateway.server import _Coalesced, in_thread


class Counted:
    """A real transport, the writes that reach it counted."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def _pair() -> tuple[Counted, socket.socket]:
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    theirs.setblocking(False)
    return Counted(transport), theirs  # type: ignore[arg-type]


async def _read(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = b""
    while len(out) < n:
        out += await asyncio.wait_for(loop.sock_recv(sock, n - len(out)), 5)
    return out


def test_the_writes_of_one_turn_leave_in_one_send_in_order() -> None:
    async def go() -> None:
        counted, peer = await _pair()
        t = _Coalesced(counted, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n")
        t.write(b"{}")
        assert counted.writes == []  # not yet: at the end of the turn
        await asyncio.sleep(0)
        assert counted.writes == [b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}"]
        t.write(b"next")
        await asyncio.sleep(0)
        assert counted.writes[1:] == [b"next"]  # a later turn: a send of its own
        sent = b"".join(counted.writes)
        assert await _read(peer, len(sent)) == sent
        peer.close()
        t.close()

    asyncio.run(go())


def test_closing_sends_what_waits_first_and_later_writes_are_dropped() -> None:
    async def go() -> None:
        counted, peer = await _pair()
        t = _Coalesced(counted, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        t.close()
        assert counted.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and t.is_closing()
        t.write(b"late")
        await asyncio.sleep(0)
        assert counted.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"]
        assert await _read(peer, 28) == b"HTTP/1.1 400 Bad Request\r\n\r\n"
        peer.close()

    asyncio.run(go())


def test_the_gateway_serves_over_the_coalescing_protocol() -> None:
    """uvicorn as hexbook configures it: answers whole, keep-alive and all."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"part one, ", "more_body": True})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    with in_thread(app) as url, httpx.Client(base_url=url) as client:
        for path in ("/a", "/b", "/c"):  # one connection, kept alive
            r = client.get(path)
            assert (r.status_code, r.text) == (201, f"part one, {path}")


class _Sink:
    """What a cycle writes (a transport that keeps it)."""

    def __init__(self) -> None:
        self.out = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _answer(cls: type, method: str, keep_alive: bool, start: dict[str, Any], body: bytes) -> Any:
    """Drive one uvicorn cycle of class ``cls`` through an answer; what it wrote, its
    framing state, or the error it raised."""
    from uvicorn.protocols.http.flow_control import FlowControl

    async def go() -> Any:
        sink = _Sink()
        cycle = cls(scope={"type": "http", "method": method, "path": "/"}, transport=sink,
                    flow=FlowControl(sink), logger=None, access_logger=None, access_log=False,
                    default_headers=[(b"date", b"Sun, 06 Dec 2026 04:00:00 GMT")],
                    message_event=asyncio.Event(), expect_100_continue=False,
                    keep_alive=keep_alive, on_response=lambda: None)  # fmt: skip
        try:
            await cycle.send({"type": "http.response.start", **start})
            await cycle.send({"type": "http.response.body", "body": body})
        except RuntimeError as exc:
            return ("refused", str(exc))
        return sink.out, sink.closed, cycle.keep_alive, cycle.chunked_encoding

    return asyncio.run(go())


def test_the_fast_response_head_writes_what_uvicorn_writes() -> None:
    """Every head, common or not, goes out as uvicorn's own send writes it (the fast head
    for the common ones, uvicorn for the rest); a bad header is refused the same way."""
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from gateway.headers import secure_headers
    from gateway.server import _LINES, _Cycle

    length = (b"content-length", b"2")
    json_head = secure_headers([length, (b"content-type", b"application/json")], False)
    cases = [  # (method, keep-alive, status, headers, body)
        ("POST", True, 201, json_head, b"{}"),
        ("POST", True, 409, json_head, b"{}"),  # again: from the kept lines
        ("GET", True, 200, [(b"Content-Length", b"2"), (b"X-A", b"b")], b"ok"),
        ("GET", True, 200, [(b"content-type", b"text/plain")], b"chunked"),
        ("GET", True, 200, [length, (b"content-length", b"9")], b"ok"),
        ("GET", True, 200, [(b"content-length", b"5"), (b"connection", b"close")], b"close"),
        ("GET", True, 200, [(b"transfer-encoding", b"chunked")], b"te"),
        ("GET", False, 200, [length], b"ok"),
        ("HEAD", True, 200, [length], b""),
        ("GET", True, 204, [], b""),
        ("GET", True, 200, [length, (b"x-bad", b"a\r\nb")], b"ok"),
        ("GET", True, 200, [(b"bad name", b"x"), length], b"ok"),
    ]
    for method, keep_alive, status, headers, body in cases:
        start = {"status": status, "headers": headers}
        theirs = _answer(RequestResponseCycle, method, keep_alive, start, body)
        ours = _answer(_Cycle, method, keep_alive, start, body)
        assert ours == theirs, (start, ours, theirs)
    assert (b"content-type", b"application/json") in _LINES  # the common lines are kept
    assert not any(b"bad" in name or b"\r" in value for name, value in _LINES)
