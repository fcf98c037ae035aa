"""Stopping the index's background tasks ends them even when one swallows a cancel, as
a redis-py read inside its socket-timeout context can (a gateway's shutdown hung for
good on one after its Redis restarted)."""

from __future__ import annotations

import asyncio

from actors.availability import stop_tasks


async def _swallows(times: list[int], heard: list[int]) -> None:
    """Like the follower's loop around a read that turned a cancel into a timeout: the
    first ``times[0]`` cancels are swallowed."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            heard.append(1)
            if len(heard) > times[0]:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]


def test_a_task_that_swallows_cancels_is_stopped() -> None:
    heard: list[int] = []

    async def scenario() -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(_swallows([3], heard))
        await asyncio.sleep(0)
        await asyncio.wait_for(stop_tasks([task], every=0.05), timeout=30)
        return task

    task = asyncio.run(scenario())
    assert task.cancelled() and len(heard) == 4


def test_a_task_that_never_stops_is_given_up_on_and_named(caplog) -> None:  # type: ignore[no-untyped-def]
    heard: list[int] = []

    async def scenario() -> None:
        times = [10**6]
        task = asyncio.get_running_loop().create_task(_swallows(times, heard))
        await asyncio.sleep(0)
        await asyncio.wait_for(stop_tasks([task], tries=3, every=0.05), timeout=30)
        assert not task.done() and len(heard) == 3
        times[0] = 0  # the test's own clean-up: this one gives in at last
        task.cancel()
        await asyncio.wait([task], timeout=30)

    asyncio.run(scenario())
    assert "would not stop" in caplog.text
