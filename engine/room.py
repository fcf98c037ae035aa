"""The launch-day waiting room's rules, pure: the pre-queue lottery, who is admitted in a
tick, who is told their area is sold out, and how fast the room admits.

A room queues the visitors of one launch (a service in an area). Each visitor waits for
one *area*: the H3 cell of where they are, and the places within ``near_km`` of it. A
tick of the room (:func:`decide`) walks the queue from its head and

- tells every visitor waiting for an area with no holdable place left that it is sold
  out, at once (not when they reach the head): they can go to the waitlist instead;
- admits, up to the tick's budget, the visitors whose area has room: an area takes
  admitted visitors while those admitted and not yet holding are fewer than its holdable
  places plus the room's ``margin`` (admitted people who will not book, stated in places),
  and the room as a whole while all its admitted not yet holding are fewer than all its
  places plus the margin (areas overlap);
- leaves the others waiting, in order.

Arrivals before the opening wait in a pre-queue; at the opening :func:`lottery` draws
their order from a seed that is kept, so anyone can draw it again. The admission rate
follows the operator's rate and backs off when the stack sheds load (:func:`next_rate`).

The gateway keeps the queue in Redis and asks these functions; the invariants
(admitted never beyond holdable plus margin, nobody admitted to a sold-out area, a
sold-out area's visitors told within one tick) are proved here by property tests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from engine.errors import InvalidRequest

__all__ = [
    "Decision",
    "RoomPolicy",
    "Waiting",
    "decide",
    "estimated_wait_seconds",
    "lottery",
    "next_rate",
    "refill",
]


@dataclass(frozen=True, slots=True)
class RoomPolicy:
    """How a room admits: ``per_minute`` visitors a minute at most (the operator's rate),
    each for ``session_seconds``; an area takes ``margin`` admitted visitors beyond its
    holdable places; places count within ``near_km`` of a visitor's area cell (H3
    resolution ``resolution``)."""

    per_minute: int
    session_seconds: int = 600
    margin: int = 0
    near_km: float = 10.0
    resolution: int = 7

    def __post_init__(self) -> None:
        if not 1 <= self.per_minute <= 1_000_000:
            raise InvalidRequest("a room admits 1 to 1,000,000 visitors a minute")
        if not 30 <= self.session_seconds <= 86_400:
            raise InvalidRequest("an admission lasts 30 s to 24 h")
        if not 0 <= self.margin <= 100_000:
            raise InvalidRequest("the margin is 0 to 100,000 places")
        if not 0 < self.near_km <= 500:
            raise InvalidRequest("near_km must be more than 0 and at most 500")
        if not 0 <= self.resolution <= 15:
            raise InvalidRequest("an H3 resolution is 0 to 15")


@dataclass(frozen=True, slots=True)
class Waiting:
    """A visitor in the queue and the area (H3 cell) they wait for."""

    visitor: str
    area: str


@dataclass(slots=True)
class Decision:
    """What a tick decided: who is admitted (in queue order) and which areas are sold out
    (every visitor waiting for one is told so)."""

    admitted: list[Waiting] = field(default_factory=list)
    sold_out: list[str] = field(default_factory=list)


def lottery(seed: int, visitors: Iterable[str]) -> list[str]:
    """The pre-queue's order: the visitors sorted, then shuffled by ``random.Random(seed)``.
    It depends on the seed and the set of visitors only (not on when or where each
    joined), so the seed and the list of entrants are enough to draw it again."""
    order = sorted(set(visitors))
    random.Random(seed).shuffle(order)
    return order


def decide(
    head: Sequence[Waiting],
    waiting_areas: Iterable[str],
    places: Mapping[str, int],
    active: Mapping[str, int],
    budget: int,
    margin: int,
    room_places: int | None = None,
) -> Decision:
    """One tick. ``head``: the queue's first visitors, in order; ``waiting_areas``: every
    area someone waits for (the whole queue, not only its head); ``places``: holdable
    places near each area now (missing: none); ``active``: visitors admitted to each area
    who hold nothing yet and whose admission still runs; ``budget``: admissions this tick.
    ``room_places``: the holdable places of the whole room, which bound the admitted who
    hold nothing yet over every area together (areas overlap: each alone would admit
    against the same places)."""
    sold = sorted(a for a in set(waiting_areas) | {w.area for w in head} if places.get(a, 0) <= 0)
    out = Decision(sold_out=sold)
    gone = set(sold)
    taken = dict(active)
    if room_places is not None:
        budget = min(budget, max(0, room_places + margin - sum(active.values())))
    for w in head:
        if len(out.admitted) >= budget:
            break
        if w.area in gone:
            continue
        if taken.get(w.area, 0) < places.get(w.area, 0) + margin:
            taken[w.area] = taken.get(w.area, 0) + 1
            out.admitted.append(w)
    return out


def refill(
    bucket: float, rate_per_minute: float, elapsed: float, burst_seconds: float = 2.0
) -> float:
    """The admission bucket after ``elapsed`` seconds: it fills at the rate, up to
    ``burst_seconds`` of it (at least one admission)."""
    cap = max(rate_per_minute * burst_seconds / 60.0, 1.0)
    return min(cap, bucket + max(elapsed, 0.0) * rate_per_minute / 60.0)


def next_rate(rate: float, target: int, shed: int, floor: int = 10) -> float:
    """The rate for the next tick: halved when the stack shed load (503) since the last
    tick, else grown by a tenth of the target, up to the operator's ``target``."""
    if shed > 0:
        return max(float(min(floor, target)), rate / 2)
    return min(float(target), rate + max(target / 10.0, 1.0))


def estimated_wait_seconds(ahead: int, rate_per_minute: float) -> int | None:
    """Roughly when a visitor with ``ahead`` people in front is admitted at the current
    rate (``None`` while nobody is admitted: the room is paused)."""
    if rate_per_minute <= 0:
        return None
    return math.ceil(ahead * 60.0 / rate_per_minute)
