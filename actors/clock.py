"""The stack's clock: what "now" is for holds, sweeps, rolling horizons and the index.

Every part that needs the time of day asks a :class:`Clock` (the engine never reads one:
time is passed in). In production it is the system's time. A test, or the soak, moves it
on (``offset``) or speeds it up (``rate``) with :meth:`actors.api.Hexbook.set_clock`,
which tells every shard and keeps the settings in Redis (``hexbook:clock``), where a
shard that restarts, or a gateway that starts, reads them: days pass in seconds and the
whole stack agrees on the date.

>>> clock = Clock()
>>> clock.set(offset=86_400)   # tomorrow, same time
>>> abs(clock.now() - time.time() - 86_400) < 1
True
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["CLOCK_KEY", "Clock", "clock_from_redis", "stored"]

CLOCK_KEY = "hexbook:clock"


class Clock:
    """UTC seconds: ``anchor + (system time - anchor) * rate + offset``."""

    def __init__(self, offset: float = 0.0, rate: float = 1.0, anchor: float | None = None):
        self.set(offset, rate, anchor)

    def set(self, offset: float = 0.0, rate: float = 1.0, anchor: float | None = None) -> None:
        """Run ``rate`` times as fast as the system's from system time ``anchor`` (now
        when not given; processes that must agree share one), ``offset`` ahead."""
        if rate <= 0:
            raise ValueError(f"a clock rate must be positive, not {rate}")
        self.anchor = time.time() if anchor is None else anchor
        self.offset, self.rate = offset, rate

    def now(self) -> float:
        wall = time.time()
        return self.anchor + (wall - self.anchor) * self.rate + self.offset

    def seconds(self) -> int:
        """Now in whole UTC seconds (what commands carry)."""
        return int(self.now())

    def settings(self) -> tuple[float, float, float]:
        """(offset, rate, anchor): what another process needs to keep the same time."""
        return self.offset, self.rate, self.anchor

    def __repr__(self) -> str:
        return f"Clock(offset={self.offset:g}, rate={self.rate:g})"


def stored(settings: tuple[float, float, float]) -> dict[str, str]:
    """The clock settings as the ``hexbook:clock`` hash keeps them."""
    offset, rate, anchor = settings
    return {"offset": repr(offset), "rate": repr(rate), "anchor": repr(anchor)}


def clock_from_redis(raw: dict[Any, Any] | None) -> tuple[float, float, float] | None:
    """(offset, rate, anchor) from the ``hexbook:clock`` hash, or ``None`` when unset."""
    if not raw:
        return None
    d = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
    return d["offset"], d["rate"], d["anchor"]
