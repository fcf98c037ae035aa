"""The waitlist and its offers, over random sequences, on two writers (two shards).

Both writers hold every entry (a patient waits wherever a place could come up) and
claim an entry before offering it a place (a shared table here; Redis in
:mod:`actors.waitlist`). After every step:

- no slot has booked + held > capacity;
- an entry holds at most one offer, on one writer, and its claim names that hold;
- no free place is left while a waiting entry could take it: every freed place went to
  exactly one matching entry (as a hold, so it is not free) or stayed on the grid;
- an entry whose offer ended (booked, declined, lapsed) is never offered again;
- the waitlist replays from its journal to the same entries, and the live offers are
  those the calendars' holds name.
"""

from __future__ import annotations

import os
from typing import Any

import h3
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from engine import errors
from engine.calendar import Calendar
from engine.errors import InvalidRequest
from engine.provider import Provider
from engine.records import (
    CancelBooking,
    Command,
    ConfirmHold,
    Event,
    PlaceHold,
    ReleaseHold,
    SetCapacity,
)
from engine.waitlist import (
    Offers,
    WaitArea,
    WaitEntry,
    Waitlist,
    freed_starts,
    offer_hold,
    open_starts,
    plan_offers,
    validate_entry,
)

SLOT = 900
START = 1_800_000_000 - 1_800_000_000 % SLOT
N_SLOTS = 6
OFFER_TTL = 600
SITES = [
    Provider(provider_id="a", name="A", lat=41.88, lng=-87.63, timezone="UTC", services=("v",)),
    Provider(provider_id="b", name="B", lat=41.98, lng=-87.70, timezone="UTC", services=("v",)),
]
# Near a only, near b only, both (a radius), both (their cells at resolution 5).
AREAS = [
    WaitArea(lat=41.88, lng=-87.63, radius_km=2.0),
    WaitArea(cells=(h3.latlng_to_cell(41.98, -87.70, 9),)),
    WaitArea(lat=41.93, lng=-87.66, radius_km=15.0),
    WaitArea(cells=tuple({h3.latlng_to_cell(s.lat, s.lng, 5) for s in SITES})),
]
EXAMPLES = int(os.environ.get("HEXBOOK_WAITLIST_EXAMPLES", "150"))


class Writer:
    """One shard's part: a calendar, its copy of the waitlist, its live offers."""

    def __init__(self, site: Provider, capacity: list[int]) -> None:
        self.site = site
        self.cal = Calendar(site.provider_id, "v", START, SLOT, np.array(capacity, np.uint16))
        self.waitlist = Waitlist()
        self.offers = Offers()
        self.wl_journal: list[Any] = []


class WaitlistMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START - 3600
        self.counter = 0
        self.claims: dict[str, str] = {}  # entry id -> "writer/hold id", or "done"
        self.ended: set[str] = set()  # entries whose offer ended
        self.holds: list[tuple[int, str]] = []
        self.bookings: list[tuple[int, str]] = []
        self.entries: list[str] = []

    @initialize(
        cap_a=st.lists(st.integers(0, 2), min_size=N_SLOTS, max_size=N_SLOTS),
        cap_b=st.lists(st.integers(0, 2), min_size=N_SLOTS, max_size=N_SLOTS),
    )
    def setup(self, cap_a: list[int], cap_b: list[int]) -> None:
        self.writers = [Writer(SITES[0], cap_a), Writer(SITES[1], cap_b)]

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    # --- what a shard's writer step does ------------------------------------------------

    def drain_waitlist(self, w: Writer) -> None:
        w.wl_journal.extend(w.waitlist.drain())

    def settle(self, i: int, events: list[Event], starts: set[int] | None = None) -> None:
        """After a command on writer ``i``: end the offers its events ended, then offer
        the places they freed (or ``starts``) to the waiting entries."""
        w = self.writers[i]
        for entry_id, hold_id, how in w.offers.observe(events):
            assert self.claims.get(entry_id) == f"{i}/{hold_id}"
            self.claims[entry_id] = "done"
            self.ended.add(entry_id)
            w.waitlist.leave(entry_id, how, self.now)
        for x in self.writers:  # a claim seen "done" takes the entry off (lazily, in turn)
            for entry_id in [e.entry_id for e in x.waitlist.entries()]:
                if self.claims.get(entry_id) == "done":
                    x.waitlist.leave(entry_id, "taken", self.now)
            self.drain_waitlist(x)
        freed = freed_starts(w.cal, events) if starts is None else starts
        for offer in plan_offers(
            w.waitlist, w.cal, w.site, freed, self.now, lambda e: e in self.claims
        ):
            entry_id = offer.entry.entry_id
            assert entry_id not in self.ended, "an ended entry was offered again"
            hold_id = self.fresh("offer")
            self.claims[entry_id] = f"{i}/{hold_id}"  # the claim comes before the offer
            w.cal.handle(offer_hold(offer, hold_id, self.now, OFFER_TTL))
            w.offers.observe(w.cal.drain())

    def command(self, i: int, cmd: Command) -> Any:
        w = self.writers[i]
        try:
            result = w.cal.handle(cmd)
        except errors.HexbookError:
            result = None
        self.settle(i, w.cal.drain())
        return result

    # --- rules ----------------------------------------------------------------------

    @rule(
        area=st.integers(0, len(AREAS) - 1),
        first=st.integers(0, N_SLOTS - 1),
        span=st.integers(1, N_SLOTS),
        party=st.sampled_from([1, 1, 2, 3]),
        lasts=st.sampled_from([600, 3600, 86_400]),
    )
    def join(self, area: int, first: int, span: int, party: int, lasts: int) -> None:
        entry_id = self.fresh("w")
        entry = WaitEntry(
            entry_id,
            "v",
            AREAS[area],
            START + first * SLOT,
            START + (first + span) * SLOT,
            party,
            self.now,
            self.now + lasts,
            f"patient-{entry_id}",
            b"",
        )
        self.entries.append(entry_id)
        for w in self.writers:
            assert w.waitlist.join(entry, self.now)
            assert not w.waitlist.join(entry, self.now)  # a repeat changes nothing
            self.drain_waitlist(w)
        for i, w in enumerate(self.writers):  # a new entry is offered what is free now
            self.settle(i, [], open_starts(w.cal))

    @rule(pick=st.integers(0, 50))
    def leave(self, pick: int) -> None:
        """The owner leaves: off every waitlist, and an offer they hold is given back."""
        if not self.entries:
            return
        entry_id = self.entries[pick % len(self.entries)]
        claim = self.claims.get(entry_id)
        self.claims[entry_id] = "done"
        self.ended.add(entry_id)
        for w in self.writers:
            w.waitlist.leave(entry_id, "cancelled", self.now)
            self.drain_waitlist(w)
        if claim not in (None, "done"):
            writer, hold_id = claim.split("/")  # type: ignore[union-attr]
            i = int(writer)
            self.claims[entry_id] = claim  # the offer's own end marks it done
            self.command(i, ReleaseHold(SITES[i].provider_id, "v", None, self.now, hold_id))
            assert self.claims[entry_id] == "done"

    @rule(i=st.integers(0, 1), slot=st.integers(0, N_SLOTS - 1), party=st.sampled_from([1, 2]))
    def hold(self, i: int, slot: int, party: int) -> None:
        hold_id = self.fresh("h")
        pid = SITES[i].provider_id
        cmd = PlaceHold(pid, "v", None, self.now, hold_id, START + slot * SLOT, party, 300)
        if self.command(i, cmd) is not None:
            self.holds.append((i, hold_id))

    @rule(pick=st.integers(0, 50), offered=st.booleans())
    def confirm(self, pick: int, offered: bool) -> None:
        """Confirm a patient's hold, or an offer (the one call its patient makes)."""
        if offered:
            live = [(c.split("/"), e) for e, c in self.claims.items() if c != "done"]
            if not live:
                return
            (i_text, hold_id), entry_id = live[pick % len(live)]
            i, ref = int(i_text), f"patient-{entry_id}"
        else:
            if not self.holds:
                return
            i, hold_id = self.holds[pick % len(self.holds)]
            ref = "walk-in"
        booking_id = self.fresh("b")
        pid = SITES[i].provider_id
        cmd = ConfirmHold(pid, "v", None, self.now, hold_id, booking_id, b"", ref)
        if self.command(i, cmd) is not None:
            self.bookings.append((i, booking_id))

    @rule(pick=st.integers(0, 50), offered=st.booleans())
    def release(self, pick: int, offered: bool) -> None:
        """Give back a patient's hold, or decline an offer."""
        pairs = (
            [(int(c.split("/")[0]), c.split("/")[1]) for c in self.claims.values() if c != "done"]
            if offered
            else self.holds
        )
        if pairs:
            i, hold_id = pairs[pick % len(pairs)]
            self.command(i, ReleaseHold(SITES[i].provider_id, "v", None, self.now, hold_id))

    @rule(pick=st.integers(0, 50))
    def cancel(self, pick: int) -> None:
        if self.bookings:
            i, booking_id = self.bookings[pick % len(self.bookings)]
            self.command(i, CancelBooking(SITES[i].provider_id, "v", None, self.now, booking_id))

    @rule(i=st.integers(0, 1), cap=st.lists(st.integers(0, 3), min_size=N_SLOTS, max_size=N_SLOTS))
    def set_capacity(self, i: int, cap: list[int]) -> None:
        raw = np.array(cap, np.uint16).tobytes()
        self.command(i, SetCapacity(SITES[i].provider_id, "v", None, self.now, raw))

    @rule(dt=st.sampled_from([1, 60, 300, 599, 600, 601, 900, 1800]))
    def advance(self, dt: int) -> None:
        """Time passes: holds and offers lapse, entries expire, the sweep runs."""
        self.now += dt
        for w in self.writers:
            w.waitlist.expire(self.now)
            self.drain_waitlist(w)
        for i, w in enumerate(self.writers):
            w.cal.expire(self.now)
            self.settle(i, w.cal.drain())

    # --- invariants -----------------------------------------------------------------

    @invariant()
    def capacity_is_never_exceeded(self) -> None:
        for w in self.writers:
            cal = w.cal
            assert (cal.booked.astype(int) + cal.held <= cal.capacity).all()

    @invariant()
    def one_offer_per_entry(self) -> None:
        live: dict[str, str] = {}
        for i, w in enumerate(self.writers):
            for hold in w.cal.holds.values():
                if hold.offer is not None:
                    assert hold.offer not in live, f"entry {hold.offer} holds two offers"
                    live[hold.offer] = f"{i}/{hold.hold_id}"
            assert w.offers.by_entry == Offers.of([w.cal]).by_entry
        assert live == {e: c for e, c in self.claims.items() if c != "done"}

    @invariant()
    def no_place_left_for_a_waiting_entry(self) -> None:
        for w in self.writers:
            cal = w.cal
            for entry in w.waitlist.waiting("v", w.site, self.now):
                if entry.entry_id in self.claims:
                    continue
                for start in open_starts(cal):
                    if start > self.now and entry.earliest <= start < entry.latest:
                        assert entry.party_size > cal.remaining_at(start), (
                            f"{entry.entry_id} waits while {start} has "
                            f"{cal.remaining_at(start)} free place(s)"
                        )

    @invariant()
    def waitlist_replays(self) -> None:
        for w in self.writers:
            again = Waitlist()
            for event in w.wl_journal:
                again.apply(event)
            assert again.entries() == w.waitlist.entries()


def test_waitlist_offers_on_two_writers() -> None:
    run_state_machine_as_test(
        WaitlistMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_an_entry_that_could_never_be_offered_is_refused() -> None:
    base = WaitEntry("w", "v", AREAS[0], START, START + SLOT, 1, 0, 10, "r", b"")
    validate_entry(base)
    bad = [
        {"area": WaitArea()},
        {"area": WaitArea(lat=41.0, lng=-87.0)},
        {"area": WaitArea(cells=("not-a-cell",))},
        {"area": WaitArea(lat=41.0, lng=-87.0, radius_km=0.0)},
        {"latest": START},
        {"party_size": 0},
        {"expires_at": 0},
    ]
    import msgspec

    for change in bad:
        with pytest.raises(InvalidRequest):
            validate_entry(msgspec.structs.replace(base, **change))  # type: ignore[arg-type]


def test_entries_of_the_same_second_are_drawn_by_lot_and_the_earlier_goes_first() -> None:
    site = SITES[0]
    wl = Waitlist()
    late = WaitEntry("late", "v", AREAS[0], START, START + SLOT, 1, 5, 100, "r", b"")
    wl.join(late, 5)
    same = [
        WaitEntry(f"s{n}", "v", AREAS[0], START, START + SLOT, 1, 1, 100, "r", b"")
        for n in range(20)
    ]
    for e in same:
        wl.join(e, 1)
    order = [e.entry_id for e in wl.waiting("v", site, 2)]
    assert order[-1] == "late"
    assert order[:-1] != [e.entry_id for e in same]  # a lot, not the order they came in
    assert sorted(order[:-1]) == sorted(e.entry_id for e in same)
    assert [e.entry_id for e in wl.waiting("v", site, 2)] == order  # the same draw again
