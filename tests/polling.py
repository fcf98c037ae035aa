"""Waiting in tests: poll for a condition until a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(check: Callable[[], T], seconds: float = 60, every: float = 0.1) -> T:
    """``check()`` once it is truthy; fails the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (out := check()):
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(every)
    return out
