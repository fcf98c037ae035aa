"""Shard features on real Ray and Redis: the hold sweep, the availability stream,
rescheduling across shards."""

from __future__ import annotations

import time

import pytest
import redis

from actors.api import Hexbook
from actors.availability import CalendarChanged, SlotFree, read_availability
from actors.embedded_redis import EmbeddedRedis
from engine.errors import BookingNotActive, SlotUnavailable
from engine.provider import Provider
from engine.schedule import WEEKDAYS, WeeklyTemplate
from tests.actors.test_shard_faults import SERVICE, committed
from tests.dates import ahead

pytestmark = pytest.mark.usefixtures("ray_local")
TEMPLATE = WeeklyTemplate.uniform(WEEKDAYS, "09:00", "10:00", 1)


@pytest.fixture
def city(module_redis: EmbeddedRedis, namespace: str) -> Hexbook:
    client = redis.Redis.from_url(module_redis.url)
    client.flushdb()
    client.close()
    hb = Hexbook.connect(
        module_redis.url, shards=2, namespace=namespace, shard_options={"sweep_seconds": 0.2}
    )
    # Far apart, so they are on different cells; pinned to different shards below.
    a = Provider(
        provider_id="north",
        name="North",
        lat=42.01,
        lng=-87.67,
        timezone="America/Chicago",
        services=(SERVICE,),
    )
    b = Provider(
        provider_id="south",
        name="South",
        lat=41.66,
        lng=-87.60,
        timezone="America/Chicago",
        services=(SERVICE,),
    )
    hb.provision(a, TEMPLATE, ahead(), days=1)
    hb.provision(b, TEMPLATE, ahead(), days=1, dedicated=True)
    return hb


def open_starts(hb: Hexbook, pid: str) -> list[int]:
    g = hb.slots(pid, SERVICE)
    return [g["start"] + i * g["slot_seconds"] for i, c in enumerate(g["capacity"]) if c]


def test_sweep_expires_holds_nobody_touches(city: Hexbook) -> None:
    start = open_starts(city, "north")[0]
    hold = city.hold("north", SERVICE, start, ttl=1)
    time.sleep(2.5)  # no command reaches this calendar: only the sweep can expire it
    snap = committed(city)[city.shard_of("north")]
    cal = next(c for c in snap.calendars if c.provider_id == "north")
    assert [e.hold_id for e in cal.expired_holds] == [hold.hold_id]
    assert cal.holds == []
    assert city.hold("north", SERVICE, start).start == start  # the place is free again


def test_availability_stream_can_be_followed_from_any_point(
    city: Hexbook, module_redis: EmbeddedRedis
) -> None:
    client = redis.Redis.from_url(module_redis.url)
    _, mark = read_availability(client)  # the provisioning entries
    s1, s2 = open_starts(city, "north")[:2]
    h = city.hold("north", SERVICE, s1)
    city.confirm(h.hold_id, "north", SERVICE, "r")
    city.hold("north", SERVICE, s2)
    entries, last = read_availability(client, after=mark)
    changes = [c for e in entries for c in e.changes]
    assert changes == [
        SlotFree("north", SERVICE, s1, 0),
        SlotFree("north", SERVICE, s1, 0),
        SlotFree("north", SERVICE, s2, 0),
    ]
    assert read_availability(client, after=last) == ([], last)
    everything, _ = read_availability(client, after="0-0")
    whole = {c for e in everything for c in e.changes if isinstance(c, CalendarChanged)}
    assert whole == {CalendarChanged("north", SERVICE), CalendarChanged("south", SERVICE)}
    client.close()


def test_reschedule_across_shards(city: Hexbook) -> None:
    assert city.shard_of("north") != city.shard_of("south")
    old_start, new_start = open_starts(city, "north")[0], open_starts(city, "south")[0]
    hold = city.hold("north", SERVICE, old_start)
    booking, _ = city.confirm(hold.hold_id, "north", SERVICE, "patient-7")
    moved = city.reschedule(
        booking.booking_id, "north", SERVICE, new_start, new_provider_id="south", key="move-1"
    )
    assert (moved.start, moved.patient_ref) == (new_start, "patient-7")
    assert (
        city.slots("south", SERVICE)["booked"][
            (new_start - city.slots("south", SERVICE)["start"]) // 900
        ]
        == 1
    )
    north = city.slots("north", SERVICE)
    assert sum(north["booked"]) == 0  # the old place is free
    # The same request again (a client retry) finishes nothing twice.
    again = city.reschedule(
        booking.booking_id, "north", SERVICE, new_start, new_provider_id="south", key="move-1"
    )
    assert again.booking_id == moved.booking_id
    assert sum(city.slots("south", SERVICE)["booked"]) == 1
    # A new move of the cancelled old booking is refused.
    with pytest.raises(BookingNotActive):
        city.reschedule(
            booking.booking_id, "north", SERVICE, new_start, new_provider_id="south", key="move-2"
        )


def test_failed_cross_shard_reschedule_keeps_the_old_booking(city: Hexbook) -> None:
    old_start, full_start = open_starts(city, "north")[0], open_starts(city, "south")[0]
    city.hold("south", SERVICE, full_start)  # the target slot (capacity 1) is taken
    hold = city.hold("north", SERVICE, old_start)
    booking, _ = city.confirm(hold.hold_id, "north", SERVICE, "p")
    with pytest.raises(SlotUnavailable):
        city.reschedule(
            booking.booking_id, "north", SERVICE, full_start, new_provider_id="south", key="move-x"
        )
    north = city.slots("north", SERVICE)
    assert sum(north["booked"]) == 1
    assert sum(city.slots("south", SERVICE)["held"]) == 1  # only the other hold


def test_shard_snapshots_by_itself_every_n_events(
    module_redis: EmbeddedRedis, namespace: str
) -> None:
    client = redis.Redis.from_url(module_redis.url)
    client.flushdb()
    hb = Hexbook.connect(
        module_redis.url,
        shards=1,
        namespace=namespace,
        shard_options={"snapshot_every_events": 10, "sweep_seconds": 0},
    )
    p = Provider(
        provider_id="solo",
        name="Solo",
        lat=41.9,
        lng=-87.6,
        timezone="America/Chicago",
        services=(SERVICE,),
    )
    hb.provision(p, WeeklyTemplate.uniform(WEEKDAYS, "08:00", "20:00", 5), ahead(), days=1)
    for start in open_starts(hb, "solo")[:12]:
        hb.hold("solo", SERVICE, start)
    from actors import journal

    raw = client.get(journal.snapshot_key("shard-0"))
    assert raw is not None, "no snapshot was written"
    snap = journal.open_snapshot(raw, None, "shard-0")  # type: ignore[arg-type]
    assert len(snap.calendars[0].holds) >= 10
    # The journal was trimmed up to the snapshot: at most the entries written after it.
    assert client.xlen(journal.journal_key("shard-0")) <= 12 - len(snap.calendars[0].holds) + 1
    client.close()


def test_capacity_set_below_bookings_keeps_them_and_survives_a_crash(city: Hexbook) -> None:
    """A re-import lowers capacity under a booked slot: the booking stays, the slot has no
    free place, the conflict is reported; the shard recovers the same after a kill."""
    import numpy as np
    import ray

    grid = city.slots("north", SERVICE)
    first, second = open_starts(city, "north")[:2]
    # Wall-clock times throughout: the shard's sweep (every 0.2 s here) expires holds by
    # the wall clock, so a hold placed at an invented "now" in the past could expire
    # between the hold and its confirm.
    hold = city.hold("north", SERVICE, first)
    booking, _ = city.confirm(hold.hold_id, "north", SERVICE, "r1")
    wanted = np.array(grid["capacity"]) * 3
    i = (first - grid["start"]) // grid["slot_seconds"]
    wanted[i] = 0  # the source no longer offers the booked slot
    conflicts = city.set_capacity("north", SERVICE, wanted)
    assert conflicts == [(first, 1, 0)]
    after = city.slots("north", SERVICE)
    assert after["capacity"][i] == 1 and after["booked"][i] == 1  # kept, none free
    assert after["capacity"][i + 1] == wanted[i + 1] == 3  # raised where nothing is taken
    with pytest.raises(SlotUnavailable):
        city.hold("north", SERVICE, first)
    city.hold("north", SERVICE, second, party_size=3)
    # The shard dies; it recovers the lowered capacity and the target from Redis.
    shard = city.shard_of("north")
    ray.kill(city.shard(shard), no_restart=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            recovered = city.slots("north", SERVICE)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert recovered["capacity"] == after["capacity"]
    assert [tuple(t) for t in recovered["targets"]] == [(i, 0)]
    # Cancelling the booking gives the place back to the source's capacity: zero.
    city.cancel(booking.booking_id, "north", SERVICE)
    final = city.slots("north", SERVICE)
    assert final["capacity"][i] == 0 and final["booked"][i] == 0 and not final["targets"]
