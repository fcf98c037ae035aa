"""The launch model: a discrete-event simulation of residents booking on the engine's
own calendars.

Residents arrive (a spike at the opening, a second wave later), search near home for
the nearest site with a free place (or the earliest slot within reach), take a moment
to choose, and hold one of that site's next free slots: a real
:class:`engine.calendar.Calendar` decides, so a slot taken meanwhile is a 409 as in
production. A share confirm within the hold time; the others let it lapse, and the
calendar expires it. A try that finds nothing or loses the race costs a try; after
``max_tries`` the resident gives up.

Search reads a mirror of every calendar's free places kept from the events the
calendars emit (as the gateway's index is kept from the availability stream), with a
pointer per site to its first free slot, so a search costs microseconds.

Everything random comes from one seed: the same scenario gives the same result.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import h3
import numpy as np

from engine.calendar import Calendar
from engine.errors import HoldExpired, SlotUnavailable
from engine.geo import haversine_km
from engine.provider import Provider
from engine.records import ConfirmHold, HoldPlaced, HoldReleased, PlaceHold
from engine.room import Waiting, refill
from engine.room import decide as admit_tick
from simulators.scenario import Scenario, build_city, build_sites

__all__ = ["Outcome", "SimResult", "simulate"]


class Outcome:
    """What became of a resident."""

    BOOKED = 0
    GAVE_UP = 1
    WAITING = 2  # still without a booking, tries left, when the simulated span ended


@dataclass
class SimResult:
    """Everything a report needs, as arrays (times are seconds after the opening)."""

    scenario: Scenario
    providers: list[Provider]
    cells: dict[str, int]
    slot_start: int  # UTC start of slot 0 of every calendar
    slot_seconds: int
    places: np.ndarray  # per site: places offered over the horizon
    booked: np.ndarray  # per site: places booked at the end
    capacity_grid: np.ndarray  # sites x slots: places per slot
    booked_grid: np.ndarray  # sites x slots: places booked per slot at the end
    # per resident
    home: np.ndarray  # index into cell_names
    travel_km: np.ndarray  # how far each would go
    arrival: np.ndarray
    outcome: np.ndarray
    booked_at: np.ndarray  # NaN unless booked
    site: np.ndarray  # -1 unless booked
    distance_km: np.ndarray  # NaN unless booked
    tries: np.ndarray
    cell_names: list[str]
    not_arrived: int  # eligible residents whose arrival fell after the span
    # requests, as (seconds after opening, site or -1)
    searches: np.ndarray
    hold_times: np.ndarray
    hold_sites: np.ndarray
    conflicts: np.ndarray  # times of holds refused (slot taken meanwhile)
    confirm_times: np.ndarray
    confirm_sites: np.ndarray
    expired_times: np.ndarray  # holds that lapsed
    late_confirms: int  # confirms that came after the hold had expired
    skipped_sites: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the run
    # the waiting room (scenario.room): per resident, NaN where it did not happen
    admitted_at: np.ndarray | None = None
    told_sold_out_at: np.ndarray | None = None
    polls: int = 0  # visitor-view requests of those waiting (small, cacheable)
    joins: np.ndarray | None = None  # times of queue joins

    @property
    def arrivals(self) -> int:
        return int(self.arrival.size)

    def count(self, outcome: int) -> int:
        return int(np.count_nonzero(self.outcome == outcome))


_TRY, _HOLD, _CONFIRM, _WALK, _EXPIRE, _TICK, _SESSION = range(7)


def _arrival_times(s: Scenario, n: int, rng: np.random.Generator) -> np.ndarray:
    a = s.demand.arrivals
    first = rng.random(n) < a.first_wave_share
    t = np.where(
        first,
        rng.exponential(a.first_decay_minutes * 60, n),
        a.second_wave_hours * 3600 + rng.exponential(a.second_decay_minutes * 60, n),
    )
    return np.sort(t)


def simulate(
    s: Scenario,
    progress: Callable[[float], None] | None = None,
) -> SimResult:
    """Run the scenario; ``progress`` is called with the share of simulated time done."""
    wall = time.perf_counter()
    rng = np.random.default_rng(s.seed)
    cells = build_city(s)
    sites, skipped = build_sites(s, cells)
    providers = [p for p, _ in sites]
    t = s.sites
    cals = [
        Calendar.from_template(
            p.provider_id, s.service, s.timezone, tpl, s.first_day, t.days, t.slot_minutes
        )
        for p, tpl in sites
    ]
    slot0, slot_s = cals[0].start, cals[0].slot_seconds
    n_sites, n_slots = len(cals), cals[0].n_slots
    free = np.stack([c.remaining() for c in cals]).astype(np.int32)
    places = free.sum(axis=1)
    opening = s.opening
    span = s.hours * 3600.0

    # Where residents live: cells, and each cell's sites by distance (within the most
    # anyone would travel).
    cell_names = list(cells)
    pops = np.array([cells[c] for c in cell_names], dtype=np.float64)
    centres = np.array([h3.cell_to_latlng(c) for c in cell_names])
    site_lat = np.array([p.lat for p in providers])
    site_lng = np.array([p.lng for p in providers])
    max_km = s.demand.travel_km_max
    near: list[np.ndarray] = []
    near_km: list[np.ndarray] = []
    for lat, lng in centres:
        d = haversine_km(float(lat), float(lng), site_lat, site_lng)
        order = np.argsort(d, kind="stable")
        order = order[d[order] <= max_km]
        near.append(order)
        near_km.append(d[order])

    eligible = round(pops.sum() * s.demand.eligible_share)
    times = _arrival_times(s, eligible, rng)
    not_arrived = int(np.count_nonzero(times >= span))
    times = times[times < span]
    n = times.size
    home = rng.choice(len(cell_names), size=n, p=pops / pops.sum())
    sigma = 0.5
    travel = np.minimum(rng.lognormal(math.log(s.demand.travel_km_median), sigma, n), max_km)
    # How many of its cell's sites each resident would consider.
    reach = np.array(
        [np.searchsorted(near_km[h], tr, side="right") for h, tr in zip(home, travel, strict=True)],
        dtype=np.int64,
    )
    h = s.holds
    ttl = round(h.ttl_minutes * 60)
    decide = rng.uniform(h.decide_seconds[0], h.decide_seconds[1], n * 2)
    confirm_delay = rng.uniform(h.confirm_seconds[0], h.confirm_seconds[1], n * 2)
    confirms = rng.random(n * 2) < h.confirm_share
    pick = rng.integers(0, 3, n * 2)  # which of the site's next three free slots
    retry_mean = s.demand.retry_minutes * 60
    max_tries = s.demand.max_tries
    nearest = s.demand.choice == "nearest"

    outcome = np.full(n, Outcome.WAITING, dtype=np.int8)
    booked_at = np.full(n, np.nan)
    chosen = np.full(n, -1, dtype=np.int64)
    dist_km = np.full(n, np.nan)
    pending_km = np.zeros(n)  # distance to the site of the try under way
    tries = np.zeros(n, dtype=np.int32)

    # The first free slot of each site at or after "now" (n_slots when none).
    col_now = 0
    next_free = np.full(n_sites, n_slots, dtype=np.int64)

    def recompute_next() -> None:
        open_ = free[:, col_now:] > 0
        has = open_.any(axis=1)
        next_free[:] = np.where(has, open_.argmax(axis=1) + col_now, n_slots)

    recompute_next()
    next_boundary = float(slot0 + (col_now + 1) * slot_s - opening) if n_slots else math.inf

    searches: list[float] = []
    hold_times: list[float] = []
    hold_sites: list[int] = []
    conflicts: list[float] = []
    confirm_times: list[float] = []
    confirm_sites: list[int] = []
    expired_times: list[float] = []
    late = 0

    heap: list[tuple[float, int, int, int, int, str]] = []
    seq = 0
    draws = 0  # index into the pre-drawn per-try randoms

    # The waiting room: the same rules as the gateway's (engine.room), on the mirror.
    room = s.room
    admitted_at = np.full(n, np.nan)
    told_at = np.full(n, np.nan)
    joined_at = np.full(n, np.nan)
    session_end = np.full(n, -np.inf)
    active_flag = np.zeros(n, dtype=bool)
    in_queue = np.zeros(n, dtype=bool)
    queue: list[int] = []
    qhead = 0
    members: dict[str, list[int]] = {}
    waiting_in: Counter[str] = Counter()
    active: Counter[str] = Counter()
    joins: list[float] = []
    polls = 0.0
    bucket, last_tick, tick_due = 0.0, 0.0, False
    area_of: list[str] = []
    area_sites: dict[str, np.ndarray] = {}
    if room is not None:
        res = room.resolution
        area_of = [
            h3.cell_to_parent(c, res) if h3.get_resolution(c) > res else c for c in cell_names
        ]
        for a in set(area_of):
            alat, alng = h3.cell_to_latlng(a)
            d = haversine_km(alat, alng, site_lat, site_lng)
            area_sites[a] = np.flatnonzero(d <= room.near_km)
        bucket = refill(0.0, room.per_minute, 1e9)  # the opening starts with a full bucket
    # the room's places: every site near one of its areas
    room_sites = np.unique(np.concatenate([*area_sites.values(), np.zeros(0, dtype=np.int64)]))

    def enqueue(r: int, now: float) -> None:
        nonlocal seq, tick_due
        a = area_of[home[r]]
        joins.append(now)
        joined_at[r] = now
        in_queue[r] = True
        queue.append(r)
        members.setdefault(a, []).append(r)
        waiting_in[a] += 1
        if not tick_due:
            tick_due = True
            seq += 1
            assert room is not None
            at = math.ceil(now / room.tick_seconds) * room.tick_seconds
            heapq.heappush(heap, (at, seq, _TICK, -1, 0, ""))

    def leave(r: int, now: float) -> None:
        nonlocal polls
        assert room is not None
        in_queue[r] = False
        waiting_in[area_of[home[r]]] -= 1
        polls += (now - joined_at[r]) / room.poll_seconds

    def tick(now: float) -> None:
        nonlocal bucket, last_tick, qhead, seq, tick_due
        assert room is not None
        bucket = refill(bucket, room.per_minute, now - last_tick)
        last_tick = now
        free_now = free[:, col_now:].sum(axis=1)
        want = [a for a, k in waiting_in.items() if k > 0]
        places = {a: int(free_now[area_sites[a]].sum()) for a in want}
        while qhead < len(queue) and not in_queue[queue[qhead]]:
            qhead += 1
        budget = int(bucket)
        head: list[Waiting] = []
        j = qhead
        while j < len(queue) and len(head) < budget * 4 + 100:
            if in_queue[queue[j]]:
                head.append(Waiting(str(queue[j]), area_of[home[queue[j]]]))
            j += 1
        whole = int(free_now[room_sites].sum())
        d = admit_tick(head, want, places, active, budget, room.margin, whole)
        for a in d.sold_out:
            for r in members.pop(a, []):
                if in_queue[r]:
                    leave(r, now)
                    told_at[r] = now
                    outcome[r] = Outcome.GAVE_UP
        for w in d.admitted:
            r = int(w.visitor)
            leave(r, now)
            if np.isnan(admitted_at[r]):
                admitted_at[r] = now
            active[w.area] += 1
            active_flag[r] = True
            session_end[r] = now + room.session_minutes * 60
            seq += 1
            heapq.heappush(heap, (now, seq, _TRY, r, 0, ""))
            seq += 1
            heapq.heappush(heap, (session_end[r], seq, _SESSION, r, 0, ""))
        bucket -= len(d.admitted)
        tick_due = any(in_queue[queue[k]] for k in range(qhead, len(queue)))
        if tick_due:
            seq += 1
            heapq.heappush(heap, (now + room.tick_seconds, seq, _TICK, -1, 0, ""))

    def end_session(r: int) -> None:
        if active_flag[r]:
            active_flag[r] = False
            active[area_of[home[r]]] -= 1

    def after_events(site: int, cal: Calendar, now: float) -> None:
        # The sim places one place per hold, so a released hold frees one place.
        for ev in cal.drain():
            if type(ev) is HoldPlaced:
                col = (ev.start - slot0) // slot_s
                free[site, col] -= ev.party_size
                if free[site, col] <= 0 and next_free[site] == col:
                    rest = (free[site, col:] > 0).nonzero()[0]
                    next_free[site] = col + int(rest[0]) if rest.size else n_slots
            elif type(ev) is HoldReleased:
                if ev.reason == "expired":
                    expired_times.append(now)
                col = (ev.start - slot0) // slot_s
                free[site, col] += 1
                if col >= col_now and col < next_free[site]:
                    next_free[site] = col

    def fail(r: int, now: float) -> None:
        nonlocal seq
        tries[r] += 1
        if tries[r] >= max_tries:
            outcome[r] = Outcome.GAVE_UP
            end_session(r)
            return
        seq += 1
        heapq.heappush(heap, (now + rng.exponential(retry_mean), seq, _TRY, r, 0, ""))

    i_arr = 0
    report_every = max(n // 200, 1)
    steps = 0
    while True:
        if i_arr < n and (not heap or times[i_arr] <= heap[0][0]):
            now, kind, r, site, hold_id = float(times[i_arr]), _TRY, i_arr, 0, ""
            i_arr += 1
            if room is not None:
                if now < span:
                    enqueue(r, now)
                continue
        elif heap:
            now, _, kind, r, site, hold_id = heapq.heappop(heap)
        else:
            break
        if now >= span:
            break
        steps += 1
        if progress is not None and steps % report_every == 0:
            # Work follows arrivals (each brings its tries soon after), so count those.
            progress(i_arr / n)
        while now >= next_boundary:
            col_now += 1
            next_boundary += slot_s
            recompute_next()
        utc = opening + int(now)

        if kind == _TICK:
            tick(now)
            continue
        if kind == _SESSION:
            end_session(r)
            continue
        if kind == _TRY and room is not None and now >= session_end[r]:
            enqueue(r, now)  # the admission ran out: back to the queue
            continue
        if kind == _TRY:
            searches.append(now)
            cand = near[home[r]][: reach[r]]
            nf = next_free[cand]
            if nearest:
                mask = nf < n_slots
                k = int(mask.argmax()) if mask.size else 0
                if not mask.size or not mask[k]:
                    fail(r, now)
                    continue
            else:
                k = int(nf.argmin()) if nf.size else 0
                if not nf.size or nf[k] >= n_slots:
                    fail(r, now)
                    continue
            best = int(cand[k])
            first = int(next_free[best])
            cols = (free[best, first : first + 96] > 0).nonzero()[0][:3]
            col = first + int(cols[pick[draws % pick.size] % cols.size])
            pending_km[r] = near_km[home[r]][k]
            seq += 1
            heapq.heappush(heap, (now + decide[draws % decide.size], seq, _HOLD, r, best, str(col)))
            draws += 1
        elif kind == _HOLD:
            cal = cals[site]
            col = int(hold_id)
            hid = f"h{seq}"
            hold_times.append(now)
            hold_sites.append(site)
            try:
                held = cal.handle(
                    PlaceHold(
                        cal.provider_id, s.service, None, utc, hid, slot0 + col * slot_s, 1, ttl
                    )
                )
            except SlotUnavailable:
                after_events(site, cal, now)
                conflicts.append(now)
                fail(r, now)
                continue
            after_events(site, cal, now)
            assert held is not None
            end_session(r)  # holding now: no longer one of the area's admitted
            seq += 1
            heapq.heappush(heap, (now + ttl, seq, _EXPIRE, -1, site, ""))
            j = draws % confirms.size
            draws += 1
            seq += 1
            heapq.heappush(
                heap,
                (now + confirm_delay[j], seq, _CONFIRM if confirms[j] else _WALK, r, site, hid),
            )
        elif kind == _CONFIRM:
            cal = cals[site]
            try:
                booking = cal.handle(
                    ConfirmHold(
                        cal.provider_id, s.service, None, utc, hold_id, "b" + hold_id, b"", str(r)
                    )
                )
            except HoldExpired:
                after_events(site, cal, now)
                late += 1
                fail(r, now)
                continue
            after_events(site, cal, now)
            assert booking is not None
            confirm_times.append(now)
            confirm_sites.append(site)
            outcome[r] = Outcome.BOOKED
            booked_at[r] = now
            chosen[r] = site
            dist_km[r] = pending_km[r]
            tries[r] += 1
        elif kind == _WALK:
            fail(r, now)
        else:  # _EXPIRE: the calendar releases what is due (it also does so on access)
            cal = cals[site]
            cal.expire(utc)
            after_events(site, cal, now)
    if progress is not None:
        progress(1.0)
    if room is not None:
        still = np.flatnonzero(in_queue)
        polls += float((span - joined_at[still]).sum()) / room.poll_seconds

    booked_grid = np.stack([c.booked for c in cals])
    booked_places = booked_grid.sum(axis=1, dtype=np.int64)
    return SimResult(
        scenario=s,
        providers=providers,
        cells=cells,
        slot_start=slot0,
        slot_seconds=slot_s,
        places=places.astype(np.int64),
        booked=booked_places,
        capacity_grid=np.stack([c.capacity for c in cals]),
        booked_grid=booked_grid,
        home=home,
        travel_km=travel,
        arrival=times,
        outcome=outcome,
        booked_at=booked_at,
        site=chosen,
        distance_km=dist_km,
        tries=tries,
        cell_names=cell_names,
        not_arrived=not_arrived,
        searches=np.asarray(searches),
        hold_times=np.asarray(hold_times),
        hold_sites=np.asarray(hold_sites, dtype=np.int64),
        conflicts=np.asarray(conflicts),
        confirm_times=np.asarray(confirm_times),
        confirm_sites=np.asarray(confirm_sites, dtype=np.int64),
        expired_times=np.asarray(expired_times),
        late_confirms=late,
        skipped_sites=skipped,
        seconds=time.perf_counter() - wall,
        admitted_at=admitted_at if room is not None else None,
        told_sold_out_at=told_at if room is not None else None,
        polls=round(polls),
        joins=np.asarray(joins) if room is not None else None,
    )
