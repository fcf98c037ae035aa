"""Waiting in tests: poll for a condition until a deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def until(check: Callable[[], T], seconds: float = 60, every: float = 0.1) -> T:
    """``check()`` once it is truthy; fails the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (out := check()):
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(every)
    return out


async def until_async(
    check: Callable[[], Awaitable[T]], seconds: float = 60, every: float = 0.01
) -> T:
    """:func:`until` on an event loop: ``await check()`` once it is truthy."""
    deadline = time.monotonic() + seconds
    while not (out := await check()):
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(every)
    return out
