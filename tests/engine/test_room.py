"""The waiting room's admission policy against random launches (hypothesis, stateful).

Visitors join for random areas, places appear and go (other people book, sites add
capacity), admitted visitors hold or walk away, ticks run with random budgets. After
every tick: nobody was admitted to an area with no holdable place; an area's admitted
visitors who hold nothing yet never exceed its places plus the margin by an admission of
this tick; every visitor waiting for an area whose places are gone is told so in that
tick (the bound: one tick); within an area the queue's order is kept; no tick admits more
than its budget. The lottery is a permutation that depends on the seed and the set of
entrants only.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine.errors import InvalidRequest
from engine.room import (
    RoomPolicy,
    Waiting,
    decide,
    estimated_wait_seconds,
    lottery,
    next_rate,
    refill,
)

AREAS = ["a", "b", "c", "d"]


class Launch(RuleBasedStateMachine):
    """A room over a few areas, kept the way the gateway keeps it."""

    @initialize(margin=st.integers(0, 3))
    def start(self, margin: int) -> None:
        self.margin = margin
        self.places: dict[str, int] = dict.fromkeys(AREAS, 0)
        self.queue: list[Waiting] = []  # waiting, head first
        self.active: dict[str, list[str]] = {a: [] for a in AREAS}  # admitted, holding nothing
        self.told: set[str] = set()
        self.n = 0

    @rule(area=st.sampled_from(AREAS), k=st.integers(1, 5))
    def join(self, area: str, k: int) -> None:
        for _ in range(k):
            self.n += 1
            self.queue.append(Waiting(f"v{self.n}", area))

    @rule(area=st.sampled_from(AREAS), places=st.integers(0, 6))
    def places_change(self, area: str, places: int) -> None:
        self.places[area] = places

    @precondition(lambda self: any(self.active.values()))
    @rule(data=st.data(), holds=st.booleans())
    def admitted_one_acts(self, data: st.DataObject, holds: bool) -> None:
        area = data.draw(st.sampled_from([a for a in AREAS if self.active[a]]))
        self.active[area].pop(0)
        if holds and self.places[area] > 0:  # a hold takes a place; else the session ends
            self.places[area] -= 1

    @rule(budget=st.integers(0, 6), depth=st.integers(1, 30))
    def tick(self, budget: int, depth: int) -> None:
        head = self.queue[:depth]
        active = {a: len(v) for a, v in self.active.items()}
        room_places = sum(self.places.values()) // 2  # areas overlap: the room has fewer
        d = decide(head, {w.area for w in self.queue}, self.places, active, budget, self.margin,
                   room_places)  # fmt: skip
        if d.admitted:
            after = sum(len(v) for v in self.active.values()) + len(d.admitted)
            assert after <= room_places + self.margin, "the room admitted beyond its places"
        assert len(d.admitted) <= budget
        for w in d.admitted:
            assert self.places[w.area] > 0, "admitted to an area with nothing left"
            self.active[w.area].append(w.visitor)
        for area in AREAS:
            added = sum(1 for w in d.admitted if w.area == area)
            if added:
                assert len(self.active[area]) <= self.places[area] + self.margin
        # within an area nobody is passed over: those admitted are its first in the queue
        admitted = {w.visitor for w in d.admitted}
        for area in AREAS:
            mine = [w.visitor for w in self.queue if w.area == area]
            got = [v for v in mine if v in admitted]
            assert got == mine[: len(got)]
        sold = set(d.sold_out)
        for w in self.queue:
            if self.places[w.area] <= 0:
                assert w.area in sold, "a visitor of a sold-out area was not told"
            else:
                assert w.area not in sold
        self.told |= {w.visitor for w in self.queue if w.area in sold}
        self.queue = [w for w in self.queue if w.visitor not in admitted and w.area not in sold]

    @invariant()
    def nobody_waits_for_nothing_after_a_tick(self) -> None:
        # (checked in tick: a tick removes every visitor of a sold-out area)
        assert not ({w.visitor for w in self.queue} & self.told)


TestLaunch = Launch.TestCase
TestLaunch.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


@given(seed=st.integers(0, 2**63), visitors=st.lists(st.text(min_size=1, max_size=6), max_size=60))
def test_the_lottery_is_a_permutation_drawn_again_from_its_seed(
    seed: int, visitors: list[str]
) -> None:
    order = lottery(seed, visitors)
    assert sorted(order) == sorted(set(visitors))
    assert lottery(seed, reversed(visitors)) == order  # arrival order does not matter


def test_the_lottery_depends_on_the_seed() -> None:
    people = [f"v{i}" for i in range(50)]
    assert lottery(1, people) != lottery(2, people)


def test_the_rate_backs_off_when_the_stack_sheds_and_comes_back() -> None:
    assert next_rate(1000, 1000, shed=3) == 500
    assert next_rate(20, 1000, shed=1) == 10  # never below the floor
    rate = 10.0
    for _ in range(10):
        rate = next_rate(rate, 1000, shed=0)
    assert rate == 1000
    assert next_rate(1000, 1000, shed=0) == 1000


def test_the_bucket_fills_at_the_rate_up_to_its_burst() -> None:
    assert refill(0, 600, 1.0) == pytest.approx(10)
    assert refill(0, 600, 60.0) == pytest.approx(20)  # two seconds' worth at most
    assert refill(0.5, 6, 0.0) == 0.5
    assert refill(0, 6, 100) == 1.0  # at least one admission
    assert estimated_wait_seconds(100, 600) == 10
    assert estimated_wait_seconds(5, 0) is None


def test_a_policy_out_of_range_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        RoomPolicy(per_minute=0)
    with pytest.raises(InvalidRequest):
        RoomPolicy(per_minute=10, session_seconds=5)
    with pytest.raises(InvalidRequest):
        RoomPolicy(per_minute=10, near_km=0)
