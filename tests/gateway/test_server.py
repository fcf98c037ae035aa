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
