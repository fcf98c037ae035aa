"""Routing commands to shards, coalescing concurrent requests into one batch.

Requests for one shard that arrive in the same turn of the event loop leave together
as one batch (or sooner, when ``batch_max`` is reached); the shard then commits them
together, so the gateway's throughput is not bounded by one call (or one fsync) per
request. At most ``calls_per_shard`` batches are out to one shard at a time; what
arrives meanwhile leaves together when one returns, so batches grow with the load.
Batches go over the shard's command channel (:mod:`actors.channel`, ADR 0026), not as
Ray calls: a Ray call cost the shard a millisecond of CPU whatever it carried. The
channel's address is asked of the actor (a Ray call, which waits while Ray restarts
it); a channel that breaks or stalls is dropped and asked for again. No batch waits
longer than ``deadline`` seconds: a shard that stalls (stopped, swapping, a stuck node)
gets its callers a 503 with ``Retry-After`` instead of a hang. A command whose answer
came too late may still have been applied; a retry under the same Idempotency-Key
returns its first result.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from ray.exceptions import RayActorError, RayError

from actors.api import Hexbook
from actors.channel import ChannelClient, ChannelClosed
from engine.codec import Outcome, encode_commands
from engine.errors import (
    CalendarNotFound,
    HexbookError,
    Moving,
    ProviderNotFound,
    Unavailable,
)
from engine.records import Command

__all__ = ["ShardRouter"]

log = logging.getLogger("hexbook.gateway")
# What a shard answers for a provider it does not serve (any more): the directory is
# read again, and the command goes once to the shard it names if that is another.
_ELSEWHERE = (CalendarNotFound, Moving)
_ELSEWHERE_READ = (*_ELSEWHERE, ProviderNotFound)  # a read of the provider record too


class ShardRouter:
    """Micro-batching access to the shards for one gateway process."""

    def __init__(
        self,
        hexbook: Hexbook,
        batch_max: int = 1000,
        max_inflight: int = 20_000,
        on_batch: Callable[[int], None] | None = None,
        calls_per_shard: int = 1,
        deadline: float = 5.0,
    ) -> None:
        self.hexbook = hexbook
        self.deadline = deadline
        self.on_batch = on_batch
        self.batch_max = batch_max
        self.max_inflight = max_inflight
        self.calls_per_shard = calls_per_shard
        self._calls: dict[str, int] = {}
        self._channels: dict[str, ChannelClient] = {}
        self.inflight = 0
        self._queues: dict[str, list[tuple[Command, asyncio.Future[Outcome]]]] = {}
        self._scheduled: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.batch_sizes: Counter[int] = Counter()

    async def shard_of(self, provider_id: str, refresh: bool = False) -> str:
        """The provider's shard (cached; the directory is read off the event loop)."""
        cached = None if refresh else self.hexbook.cached_shard(provider_id)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self.hexbook.shard_of, provider_id, refresh=refresh)

    async def _relocated(self, provider_id: str, shard: str) -> str | None:
        return await asyncio.to_thread(self.hexbook.relocated, provider_id, shard)

    async def submit(self, command: Command) -> Outcome:
        """Send one command with whatever else is going to its shard; its outcome.
        With ``max_inflight`` commands already waiting, answer ``Unavailable`` at once
        (a 503 with Retry-After) instead of queueing without bound."""
        if self.inflight >= self.max_inflight:
            return Unavailable(
                f"the gateway has {self.inflight} commands waiting on shards; retry shortly"
            )
        self.inflight += 1
        try:
            pid = command.provider_id  # (a cached shard without a coroutine: the common case)
            shard = self.hexbook.cached_shard(pid) or await self.shard_of(pid)
            out = await self._enqueue(shard, command)
            if isinstance(out, _ELSEWHERE) and (
                moved := await self._relocated(command.provider_id, shard)
            ):
                out = await self._enqueue(moved, command)
            return out
        finally:
            self.inflight -= 1

    def _enqueue(self, shard: str, command: Command) -> asyncio.Future[Outcome]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outcome] = loop.create_future()
        queue = self._queues.setdefault(shard, [])
        queue.append((command, fut))
        if len(queue) >= self.batch_max:
            self._flush(shard, force=True)
        elif shard not in self._scheduled and self._calls.get(shard, 0) < self.calls_per_shard:
            self._scheduled.add(shard)
            loop.call_soon(self._flush, shard)  # the next turn: whoever came meanwhile
        return fut

    def _flush(self, shard: str, force: bool = False) -> None:
        """Send what waits for ``shard``, unless ``calls_per_shard`` calls are out already
        (then it leaves with the next one to return: under load, batches grow instead of
        calls multiplying). A full batch (``force``) leaves at once."""
        self._scheduled.discard(shard)
        if not force and self._calls.get(shard, 0) >= self.calls_per_shard:
            return
        batch = self._queues.pop(shard, None)
        if batch:
            self._calls[shard] = self._calls.get(shard, 0) + 1
            task = asyncio.get_running_loop().create_task(self._send(shard, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, shard: str, batch: list[tuple[Command, asyncio.Future[Outcome]]]) -> None:
        self.batch_sizes[len(batch)] += 1
        if self.on_batch is not None:
            self.on_batch(len(batch))
        outcomes: list[Outcome]
        try:
            async with asyncio.timeout(self.deadline):
                channel = await self._channel(shard)
                outcomes = await channel.call(encode_commands([c for c, _ in batch]))
        except TimeoutError:
            log.warning("shard %s did not answer within %g s", shard, self.deadline)
            self._drop(shard)  # a stalled shard's connection is not trusted again
            outcomes = [self._late(shard)] * len(batch)
        except HexbookError as exc:  # the whole batch refused (recovering, journal away)
            outcomes = [exc] * len(batch)
        except (RayActorError, RayError, ChannelClosed) as exc:
            log.warning("shard %s call failed: %s", shard, type(exc).__name__)
            self._drop(shard)
            outcomes = [Unavailable(f"shard {shard} is restarting; retry shortly")] * len(batch)
        finally:
            self._calls[shard] -= 1
            if self._queues.get(shard):
                self._flush(shard)
        for (_, fut), out in zip(batch, outcomes, strict=True):
            if not fut.done():
                fut.set_result(out)

    async def _channel(self, shard: str) -> ChannelClient:
        """The shard's command channel, connected the first time (its address asked of
        the actor, a Ray call that waits while Ray restarts it)."""
        channel = self._channels.get(shard)
        if channel is None or channel.closed:
            address = await self.hexbook.shard(shard).channel.remote()
            channel = self._channels.get(shard)
            if channel is None or channel.closed:
                channel = self._channels[shard] = ChannelClient(address)
        return channel

    async def aclose(self) -> None:
        """Close the shards' channels (the gateway is stopping)."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.aclose()

    def _drop(self, shard: str) -> None:
        channel = self._channels.pop(shard, None)
        if channel is not None:
            channel.close()

    def _late(self, shard: str) -> Unavailable:
        return Unavailable(
            f"shard {shard} did not answer within {self.deadline:g} s; retry shortly "
            "with the same Idempotency-Key"
        )

    async def call(self, provider_id: str, method: str, *args: Any) -> Any:
        """Call a read method on the provider's shard (no batching); a calendar that
        moved is looked up again, once."""
        shard = await self.shard_of(provider_id)
        out = await self._call(shard, method, *args)
        if isinstance(out, _ELSEWHERE_READ) and (
            moved := await self._relocated(provider_id, shard)
        ):
            out = await self._call(moved, method, *args)
        return out

    async def call_shard(self, shard: str, method: str, *args: Any) -> Any:
        """Call a read method of one shard by name (fan-outs over every shard)."""
        return await self._call(shard, method, *args)

    async def _call(self, shard: str, method: str, *args: Any) -> Any:
        try:
            ref = getattr(self.hexbook.shard(shard), method).remote(*args)
            return await asyncio.wait_for(ref, self.deadline)
        except TimeoutError:
            raise self._late(shard) from None
        except Unavailable:
            raise
        except (RayActorError, RayError) as exc:
            raise Unavailable(f"shard {shard} is restarting; retry shortly") from exc
