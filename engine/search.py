"""Search over many calendars: nearest providers with free places, vectorized.

:class:`AvailabilityGrid` holds the free places of many calendars as the rows of one
numpy matrix on a common UTC slot grid, with the providers' positions beside it. A
query computes every distance at once, keeps the rows within the radius that offer the
service and match the filters, and finds each row's earliest free slot in the time
window with one ``argmax`` over the window's columns. The gateway keeps one of these
current from the availability stream; the simulators use it directly.

>>> import numpy as np
>>> from engine.provider import Provider
>>> grid = AvailabilityGrid(start=0, slot_seconds=900, n_slots=4)
>>> p = Provider(provider_id="a", name="A", lat=41.9, lng=-87.6,
...              timezone="America/Chicago", services=("vaccine",))
>>> grid.upsert(p, "vaccine", start=0, remaining=np.array([0, 0, 3, 1]))
>>> [(m.provider.provider_id, m.slots) for m in grid.search(41.9, -87.6, 5, "vaccine")]
[('a', [(1800, 3), (2700, 1)])]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, NamedTuple

import numpy as np

from engine.errors import InvalidRequest
from engine.geo import bounding_box, haversine_km
from engine.provider import Provider

__all__ = ["AvailabilityGrid", "Match"]


class Match(NamedTuple):
    """One search hit: a provider, its distance, and its next free slots in the window."""

    provider: Provider
    service: str
    distance_km: float
    slots: list[tuple[int, int]]  # (UTC start, free places)


class AvailabilityGrid:
    """Free places of many (provider, service) calendars on one UTC slot grid."""

    def __init__(self, start: int, slot_seconds: int, n_slots: int) -> None:
        if slot_seconds <= 0 or n_slots <= 0:
            raise InvalidRequest("the grid needs a positive slot length and slot count")
        self.start = start
        self.slot_seconds = slot_seconds
        self.n_slots = n_slots
        # Search reads free places in blocks: rows nearest first, or a day of columns.
        self.block_rows = 64
        self.block_cols = 96
        self._rows: dict[tuple[str, str], int] = {}
        self._providers: list[Provider] = []
        self._services: list[str] = []
        self._service_codes: dict[str, int] = {}
        size = 64
        self._lat = np.zeros(size)
        self._lng = np.zeros(size)
        self._service = np.full(size, -1, dtype=np.int32)
        self._free = np.zeros((size, n_slots), dtype=np.uint16)

    def __len__(self) -> int:
        return len(self._providers)

    @property
    def end(self) -> int:
        """UTC second just after the grid's last slot."""
        return self.start + self.n_slots * self.slot_seconds

    def _grow(self) -> None:
        size = self._lat.size * 2
        self._lat = np.resize(self._lat, size)
        self._lng = np.resize(self._lng, size)
        service = np.full(size, -1, dtype=np.int32)
        service[: self._service.size] = self._service
        self._service = service
        free = np.zeros((size, self.n_slots), dtype=np.uint16)
        free[: self._free.shape[0]] = self._free
        self._free = free

    def upsert(self, provider: Provider, service: str, start: int, remaining: np.ndarray) -> None:
        """Set a calendar's free places (one value per slot from ``start``, same slot
        length as the grid); the part outside the grid's span is ignored."""
        offset, rest = divmod(start - self.start, self.slot_seconds)
        if rest:
            raise InvalidRequest(
                f"calendar starting at {start} is not aligned to the grid's "
                f"{self.slot_seconds // 60}-minute slots"
            )
        row = self._rows.get((provider.provider_id, service))
        if row is None:
            row = len(self._providers)
            if row == self._lat.size:
                self._grow()
            self._rows[(provider.provider_id, service)] = row
            self._providers.append(provider)
            self._services.append(service)
        else:
            self._providers[row] = provider
        self._lat[row], self._lng[row] = provider.lat, provider.lng
        self._service[row] = self._service_codes.setdefault(service, len(self._service_codes))
        self._free[row] = 0
        lo, hi = max(offset, 0), min(offset + remaining.size, self.n_slots)
        if lo < hi:
            self._free[row, lo:hi] = np.clip(remaining[lo - offset : hi - offset], 0, 65_535)

    def remove(self, provider_id: str, service: str) -> None:
        """Take a calendar out (its row stays, empty, and never matches again)."""
        row = self._rows.pop((provider_id, service), None)
        if row is not None:
            self._service[row] = -1
            self._free[row] = 0

    def move_to(self, start: int) -> None:
        """Move the window to begin at ``start`` (on the grid): the columns still inside
        keep their places, the new ones are empty until filled."""
        shift, rest = divmod(start - self.start, self.slot_seconds)
        if rest:
            raise InvalidRequest(f"{start} is not on the grid's {self.slot_seconds} s slots")
        free = np.zeros_like(self._free)
        n = self.n_slots
        if 0 <= shift < n:
            free[:, : n - shift] = self._free[:, shift:]
        elif -n < shift < 0:
            free[:, -shift:] = self._free[:, : n + shift]
        self._free = free
        self.start = start

    def set_free(self, provider_id: str, service: str, start: int, free: int) -> bool:
        """Apply one availability delta; ``False`` when the calendar or slot is not here."""
        row = self._rows.get((provider_id, service))
        col, rest = divmod(start - self.start, self.slot_seconds)
        if row is None or rest or not 0 <= col < self.n_slots:
            return False
        self._free[row, col] = max(0, min(free, 65_535))
        return True

    def places_by_row(self, service: str, t_from: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every calendar of ``service``: (lats, lngs, free places in the slots starting at
        or after ``t_from``), one entry per calendar: what a waiting room weighs areas by."""
        n = len(self._providers)
        code = self._service_codes.get(service)
        if code is None or n == 0:
            empty = np.zeros(0)
            return empty, empty, np.zeros(0, dtype=np.int64)
        rows = np.flatnonzero(self._service[:n] == code)
        a = max(0, -(-(t_from - self.start) // self.slot_seconds))
        free = self._free[rows, a:].sum(axis=1, dtype=np.int64)
        return self._lat[rows], self._lng[rows], free

    def free_of(self, provider_id: str, service: str) -> np.ndarray:
        """The free places of one calendar over the grid (a copy)."""
        row = self._rows.get((provider_id, service))
        if row is None:
            raise InvalidRequest(f"no calendar {provider_id!r}/{service!r} in the grid")
        out: np.ndarray = self._free[row].copy()
        return out

    def _nearest_open(
        self,
        candidates: np.ndarray,
        cand_dist: np.ndarray,
        a: int,
        b: int,
        party_size: int,
        limit: int,
        block: int = 64,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The nearest candidates with an open slot in [a, b), and their first one: read
        in blocks of ``block`` rows, nearest first, until ``limit`` are found (and every
        row tied with the last one's distance is in). Reading the whole window for every
        candidate was most of a search's time."""
        by_dist = candidates[np.argsort(cand_dist, kind="stable")]
        sorted_dist = np.sort(cand_dist, kind="stable")
        rows: list[np.ndarray] = []
        firsts: list[np.ndarray] = []
        dists: list[np.ndarray] = []
        found = 0
        cutoff = np.inf
        for i in range(0, by_dist.size, block):
            if sorted_dist[i] > cutoff:
                break
            chunk = by_dist[i : i + block]
            first = self._first_cols(chunk, a, b, party_size, self.block_cols)
            has = first >= 0
            rows.append(chunk[has])
            firsts.append(first[has])
            dists.append(sorted_dist[i : i + block][has])
            found += int(has.sum())
            if found >= limit and cutoff == np.inf:
                # Matches come nearest first: nothing farther than the limit-th can enter.
                cutoff = float(np.concatenate(dists)[limit - 1])
        if not rows:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(rows), np.concatenate(firsts)

    def _first_cols(
        self, rows: np.ndarray, a: int, b: int, party_size: int, width: int
    ) -> np.ndarray:
        """For each row, its first column in [a, b) with ``party_size`` free places,
        counted from ``a`` (-1 for none), reading ``width`` columns at a time and only
        for the rows still without one: most rows have one in their first day, and
        reading all 14 days of them was most of a search's time."""
        first = np.full(rows.size, -1, dtype=np.int64)
        left = np.arange(rows.size)
        for c0 in range(a, b, width):
            if left.size == 0:
                break
            open_ = self._free[rows[left], c0 : min(c0 + width, b)] >= party_size
            has = open_.any(axis=1)
            first[left[has]] = open_[has].argmax(axis=1) + (c0 - a)
            left = left[~has]
        return first

    def search(
        self,
        lat: float,
        lng: float,
        radius_km: float,
        service: str,
        t_from: int | None = None,
        t_to: int | None = None,
        *,
        limit: int = 20,
        next_slots: int = 3,
        party_size: int = 1,
        languages: Iterable[str] = (),
        accessibility: Iterable[str] = (),
        insurance: Iterable[str] = (),
        order: Literal["distance", "earliest"] = "distance",
    ) -> list[Match]:
        """Providers within ``radius_km`` with at least ``party_size`` free places in a slot
        starting in [t_from, t_to), nearest first (``order="earliest"``: earliest first),
        each with its next ``next_slots`` free slots. Filters keep providers that offer
        every language, accessibility feature and insurance named."""
        if not 1 <= limit <= 1000 or not 1 <= next_slots <= 100 or party_size < 1:
            raise InvalidRequest("limit must be 1 to 1000, next_slots 1 to 100, party_size >= 1")
        code = self._service_codes.get(service)
        n = len(self._providers)
        if code is None or n == 0:
            return []
        a = 0 if t_from is None else max(0, -(-(t_from - self.start) // self.slot_seconds))
        b = (
            self.n_slots
            if t_to is None
            else min(self.n_slots, -(-(t_to - self.start) // self.slot_seconds))
        )
        if a >= b:
            return []
        # Exact distances only for the rows in the query's bounding box: computing them
        # for every row was a quarter of a search's time at the demo city's size.
        lats, lngs = self._lat[:n], self._lng[:n]
        near = self._service[:n] == code
        box = bounding_box(lat, lng, radius_km)
        if box is not None:
            south, north, west, east = box
            near &= (lats >= south) & (lats <= north) & (lngs >= west) & (lngs <= east)
        rows_near = np.flatnonzero(near)
        dist_near = haversine_km(lat, lng, lats[rows_near], lngs[rows_near])
        within = dist_near <= radius_km
        candidates = rows_near[within]
        dist = np.empty(n)
        dist[candidates] = dist_near[within]
        wanted = [
            (set(languages), "languages"),
            (set(accessibility), "accessibility"),
            (set(insurance), "insurance"),
        ]
        if any(w for w, _ in wanted):
            candidates = np.array(
                [
                    r
                    for r in candidates
                    if all(w <= set(getattr(self._providers[r], f)) for w, f in wanted if w)
                ],
                dtype=np.int64,
            )
        if candidates.size == 0:
            return []
        cand_dist = dist[candidates]
        if order == "distance":
            rows, first = self._nearest_open(
                candidates, cand_dist, a, b, party_size, limit, self.block_rows
            )
        else:
            first = self._first_cols(candidates, a, b, party_size, self.block_cols)
            rows, first = candidates[first >= 0], first[first >= 0]
        d = dist[rows]
        keys = (first, d) if order == "distance" else (d, first)
        pick = np.lexsort(keys)[:limit]
        ranked, first_col = rows[pick], first[pick] + a
        # Next free slots, for every ranked row at once: a day of columns from each row's
        # first open one (one gather); a row with fewer than ``next_slots`` in its day and
        # more columns left reads the rest of its window alone.
        cols = first_col[:, None] + np.arange(self.block_cols)
        window = self._free[ranked[:, None], np.minimum(cols, self.n_slots - 1)]
        hit_row, hit_col = np.nonzero((window >= party_size) & (cols < b))
        row_start = np.searchsorted(hit_row, np.arange(ranked.size))
        keep = np.arange(hit_row.size) - row_start[hit_row] < next_slots
        hit_row, hit_col = hit_row[keep], hit_col[keep]
        starts = (self.start + cols[hit_row, hit_col] * self.slot_seconds).tolist()
        places = window[hit_row, hit_col].tolist()
        slots: list[list[tuple[int, int]]] = [[] for _ in range(ranked.size)]
        for r, t, f in zip(hit_row.tolist(), starts, places, strict=True):
            slots[r].append((t, f))
        for r in np.flatnonzero(
            (np.bincount(hit_row, minlength=ranked.size) < next_slots)
            & (first_col + self.block_cols < b)
        ).tolist():
            row, c0 = int(ranked[r]), int(first_col[r])
            more = np.flatnonzero(self._free[row, c0:b] >= party_size)[:next_slots] + c0
            slots[r] = [
                (self.start + int(c) * self.slot_seconds, int(self._free[row, c])) for c in more
            ]
        return [
            Match(self._providers[row], self._services[row], d_km, row_slots)
            for row, d_km, row_slots in zip(
                ranked.tolist(), dist[ranked].tolist(), slots, strict=True
            )
        ]
