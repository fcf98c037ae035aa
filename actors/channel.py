"""The shard's command channel: batches of commands over a socket of their own.

A Ray actor call costs the shard about a millisecond of CPU (and the gateway part of
one) whatever it carries, and under load the calls, not the commands, were where the
shard's time went (ADR 0026). So the hot path, ``submit``, also listens on a TCP socket
the shard opens on its node; the gateway asks the actor (a Ray call) where it is, then
sends each batch as one frame. Everything else, and the shard's life (placement,
restarts, death), stays with Ray: when the actor dies its socket closes, and the gateway
asks Ray again.

The format, written and read only here: a frame is a header ``!II`` (call id, length)
and the payload. The first frame a client sends is the token the actor handed out (a
connection without it is closed before anything is read from it). A call's payload is
:func:`engine.codec.encode_commands`; its answer :func:`engine.codec.encode_answer`
(the outcomes, or the :class:`~engine.errors.Unavailable` the shard answered instead).
Both ends decode typed msgpack only: nothing read from the socket is unpickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from engine.codec import Outcome, decode_answer, encode_answer
from engine.errors import CodecError, HexbookError, Unavailable

__all__ = ["Address", "ChannelClient", "ChannelClosed", "ChannelServer"]

log = logging.getLogger("hexbook.channel")
_HEADER = struct.Struct("!II")
MAX_FRAME = 64 * 1024 * 1024  # a batch of commands is a few hundred kilobytes at most


class ChannelClosed(ConnectionError):
    """The channel broke (the shard died, restarted or was cut off): calls on it have
    unknown outcomes, as a failed Ray call's."""


@dataclass(frozen=True, slots=True)
class Address:
    """Where a shard's channel listens, and the token it wants first."""

    host: str
    port: int
    token: bytes


def _frame(call_id: int, payload: bytes) -> bytes:
    return _HEADER.pack(call_id, len(payload)) + payload


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    call_id, length = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if length > MAX_FRAME:
        raise ChannelClosed(f"a frame of {length} bytes is over the limit")
    return call_id, await reader.readexactly(length)


class ChannelServer:
    """The shard's end: each frame is handed to ``handle`` (the shard's ``submit``); its
    outcomes go back with the frame's call id, in whatever order the answers come."""

    def __init__(self, handle: Callable[[bytes], Awaitable[list[Outcome]]], host: str) -> None:
        self.handle = handle
        self.host = host
        self.token = secrets.token_bytes(16)
        self._server: asyncio.Server | None = None

    async def address(self) -> Address:
        """Start listening (once) on a free port of ``host``; where that is."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self.host, 0)
        port = self._server.sockets[0].getsockname()[1]
        return Address(self.host, int(port), self.token)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            _, token = await _read_frame(reader)
            if not hmac.compare_digest(token, self.token):
                log.warning("channel: a connection without the token was closed")
                return
            while True:
                call_id, payload = await _read_frame(reader)
                task = asyncio.get_running_loop().create_task(
                    self._answer(call_id, payload, writer)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, ChannelClosed):
            pass  # the client went away (or sent garbage): its connection ends here
        finally:
            writer.close()

    async def _answer(self, call_id: int, payload: bytes, writer: asyncio.StreamWriter) -> None:
        out: list[Outcome] | HexbookError
        try:
            out = await self.handle(payload)
        except HexbookError as exc:  # the shard refused the whole batch (recovering...)
            out = exc
        except Exception as exc:  # a shard bug: the batch's outcome is unknown
            log.exception("channel: a batch failed in the shard")
            out = Unavailable(f"the shard failed this batch ({type(exc).__name__}); retry")
        if not writer.is_closing():
            writer.write(_frame(call_id, encode_answer(out)))


class ChannelClient:
    """The gateway's end, one connection per shard: ``call`` sends a frame and waits for
    its answer; any break fails every call waiting on it with :class:`ChannelClosed`
    and leaves the client closed (make a new one, from a fresh :class:`Address`)."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._next = 1
        self._reading: asyncio.Task[None] | None = None
        self.closed = False

    async def call(self, payload: bytes) -> list[Outcome]:
        """Send a batch (:func:`engine.codec.encode_commands`); its outcomes. The
        :class:`~engine.errors.Unavailable` the shard answered instead is raised."""
        writer = await self._connect()
        call_id, self._next = self._next, (self._next % 0xFFFFFFFF) + 1
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = fut
        try:
            writer.write(_frame(call_id, payload))
            answer = await fut
        finally:
            self._waiting.pop(call_id, None)
        try:
            out = decode_answer(answer)
        except CodecError as exc:  # not the shard speaking: trust nothing more from it
            self.close()
            raise ChannelClosed(f"the shard's channel answered garbage: {exc}") from exc
        if isinstance(out, HexbookError):
            raise out
        return out

    async def _connect(self) -> asyncio.StreamWriter:
        if self.closed:
            raise ChannelClosed("the channel is closed")
        if self._writer is not None:
            return self._writer
        async with self._connecting:
            if self._writer is None:
                try:
                    reader, writer = await asyncio.open_connection(
                        self.address.host, self.address.port
                    )
                except OSError as exc:
                    self.closed = True
                    raise ChannelClosed(f"cannot reach the shard's channel: {exc}") from exc
                writer.write(_frame(0, self.address.token))
                self._writer = writer
                self._reading = asyncio.get_running_loop().create_task(self._read(reader))
        assert self._writer is not None
        return self._writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                call_id, payload = await _read_frame(reader)
                fut = self._waiting.get(call_id)
                if fut is not None and not fut.done():
                    fut.set_result(payload)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self._fail(ChannelClosed(f"the shard's channel closed: {type(exc).__name__}"))

    def _fail(self, exc: ChannelClosed) -> None:
        self.closed = True
        if self._writer is not None:
            # Aborted, not closed: a close waits to flush what the shard has not read,
            # and a stalled shard reads nothing (what was unsent has no outcome anyway).
            self._writer.transport.abort()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(exc)
        self._waiting.clear()

    def close(self) -> None:
        """Cut the connection; calls waiting on it fail with :class:`ChannelClosed`."""
        if self._reading is not None:
            self._reading.cancel()
        self._fail(ChannelClosed("the channel was closed"))

    async def aclose(self) -> None:
        """:meth:`close`, and wait until the connection is gone."""
        self.close()
        if self._reading is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        if self._writer is not None:
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(self._writer.wait_closed(), 5)
