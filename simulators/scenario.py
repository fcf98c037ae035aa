"""Launch scenarios as TOML files: the city, the sites, the demand, holds and capacity.

A scenario is everything a planner decides or assumes about one launch. Files are
checked when loaded: a wrong type, a missing table or an impossible value is a
:class:`ScenarioError` that names the field, never a crash later in the run.

>>> s = parse_scenario('name = "tiny"\\n[city]\\npopulation = 1000\\n[sites]\\ncount = 3')
>>> s.name, s.city.population, s.sites.count, s.demand.max_tries
('tiny', 1000, 3, 4)
"""

from __future__ import annotations

import csv
import math
import random
import tomllib
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Literal

import h3
import msgspec

from engine.errors import InvalidRequest
from engine.provider import Provider
from engine.room import RoomPolicy
from engine.schedule import WEEKDAYS, WeeklyTemplate, Window, zone
from simulators.city import Area, read_areas_csv, read_cells_csv, spread_areas, synthetic_city

__all__ = [
    "Arrivals",
    "Capacity",
    "City",
    "Demand",
    "Holds",
    "Room",
    "Scenario",
    "ScenarioError",
    "Site",
    "Sites",
    "build_city",
    "build_sites",
    "load_scenario",
    "parse_scenario",
    "validate",
]


class ScenarioError(ValueError):
    """A scenario file that cannot be run, with the reason."""


class _Table(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class City(_Table):
    """Population per H3 cell: synthetic (dense neighbourhoods over a thin background),
    read from ``cells_csv`` (columns ``cell,population``), or spread from a population
    table by postal code or census tract, ``areas_csv`` (columns ``area,population`` and
    optionally ``lat,lng,name,radius_km``; :func:`simulators.city.read_areas_csv`)."""

    population: int = 2_700_000
    center: tuple[float, float] = (41.85, -87.68)
    radius_km: float = 18.0
    resolution: int = 8
    seed: int = 2021
    cells_csv: str | None = None
    areas_csv: str | None = None


class Site(_Table):
    """One site given by hand (a pop-up clinic in a what-if, say)."""

    id: str
    lat: float
    lng: float
    name: str = ""
    opens: str = "09:00"
    closes: str = "17:00"
    capacity: int = 2
    weekdays: tuple[str, ...] = WEEKDAYS
    services: tuple[str, ...] = ()


class Sites(_Table):
    """``count`` generated sites (placed where people live, some anywhere in the city),
    plus the rows of ``csv`` and the ``extra`` sites; all with the same slot grid."""

    count: int = 300
    seed: int = 7
    spread: float = 0.25  # share placed in any of the city's cells alike, not by population
    hours: tuple[tuple[str, str], ...] = (
        ("08:00", "16:00"),
        ("09:00", "17:00"),
        ("10:00", "18:00"),
        ("07:00", "19:00"),
    )
    capacity: tuple[int, ...] = (1, 2, 2, 3, 4)
    weekend_share: float = 0.4
    first_day: int = 1  # slots start this many days after the opening
    days: int = 7
    slot_minutes: int = 15
    csv: str | None = None
    extra: tuple[Site, ...] = ()


class Arrivals(_Table):
    """When residents come: a spike at the opening that decays, then a second wave."""

    first_wave_share: float = 0.75
    first_decay_minutes: float = 90.0
    second_wave_hours: float = 24.0
    second_decay_minutes: float = 180.0


class Demand(_Table):
    """Who wants a slot and how they behave."""

    eligible_share: float = 0.1
    travel_km_median: float = 5.0
    travel_km_max: float = 25.0
    max_tries: int = 4
    retry_minutes: float = 30.0
    choice: Literal["nearest", "earliest"] = "nearest"
    arrivals: Arrivals = msgspec.field(default_factory=Arrivals)


class Holds(_Table):
    """Holds: how long they last, and what residents do with them."""

    ttl_minutes: float = 10.0
    confirm_share: float = 0.85
    decide_seconds: tuple[float, float] = (15.0, 90.0)  # from search to hold
    confirm_seconds: tuple[float, float] = (30.0, 240.0)  # from hold to confirm


class Capacity(_Table):
    """What the system can take, for the shard and node count. ``make bench`` measures
    these on a machine; ``--bench`` reads its figures instead."""

    searches_per_try: float = 2.0
    shard_ops_per_second: float = 1000.0
    gateway_requests_per_second: float = 900.0
    # journal events (holds, bookings) one Redis makes durable per second, fsync always
    redis_events_per_second: float = 20_000.0
    cores_per_node: int = 2
    # plan to run at most this share of what a shard or a gateway takes (0.7: 30% headroom)
    utilization: float = 0.7


class Room(_Table):
    """The launch's waiting room (``hexbook-sim room`` runs with and without it): the
    policy of ``POST /v1/rooms``, decided by the same :mod:`engine.room`."""

    per_minute: int = 3000
    session_minutes: float = 10.0
    margin: int = 0
    near_km: float = 10.0
    resolution: int = 7
    poll_seconds: float = 5.0  # how often a waiting visitor asks where they stand
    tick_seconds: float = 1.0


class Scenario(_Table):
    name: str
    description: str = ""
    seed: int = 2021
    service: str = "covid-vaccine"
    timezone: str = "America/Chicago"
    opens_at: str = "2026-12-01T08:00:00-06:00"
    hours: float = 48.0
    city: City = msgspec.field(default_factory=City)
    sites: Sites = msgspec.field(default_factory=Sites)
    demand: Demand = msgspec.field(default_factory=Demand)
    holds: Holds = msgspec.field(default_factory=Holds)
    capacity: Capacity = msgspec.field(default_factory=Capacity)
    room: Room | None = None  # a waiting room in front of the booking
    base_dir: str = "."  # where relative file names resolve (set when loading a file)

    @property
    def opening(self) -> int:
        """The launch moment, UTC seconds."""
        return int(datetime.fromisoformat(self.opens_at).timestamp())

    @property
    def first_day(self) -> date:
        """The local date of the first slot day."""
        local = datetime.fromisoformat(self.opens_at).astimezone(zone(self.timezone))
        return local.date() + timedelta(days=self.sites.first_day)

    def path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else Path(self.base_dir) / p


def _check(ok: bool, field: str, why: str) -> None:
    if not ok:
        raise ScenarioError(f"{field}: {why}")


def validate(s: Scenario) -> Scenario:
    """``s`` if every field is in range, else a :class:`ScenarioError` naming the field."""
    return _validate(s)


def _validate(s: Scenario) -> Scenario:
    _check(bool(s.name.strip()), "name", "must not be empty")
    try:
        opened = datetime.fromisoformat(s.opens_at)
    except ValueError:
        raise ScenarioError(
            f"opens_at: {s.opens_at!r} is not RFC 3339 (2026-12-01T08:00:00-06:00)"
        ) from None
    _check(opened.tzinfo is not None, "opens_at", "needs a UTC offset, e.g. -06:00")
    try:
        zone(s.timezone)
        Provider(
            provider_id="check", name="x", lat=0, lng=0, timezone=s.timezone, services=(s.service,)
        )
    except InvalidRequest as exc:
        raise ScenarioError(f"timezone/service: {exc}") from None
    _check(0 < s.hours <= 24 * 30, "hours", "must be more than 0 and at most 720")
    c = s.city
    _check(c.population >= 1, "city.population", "must be at least 1")
    _check(0 < c.radius_km <= 200, "city.radius_km", "must be more than 0 and at most 200")
    _check(5 <= c.resolution <= 10, "city.resolution", "must be 5 to 10")
    _check(
        c.cells_csv is None or c.areas_csv is None,
        "city.areas_csv",
        "give cells_csv or areas_csv, not both",
    )
    lat, lng = c.center
    _check(-90 <= lat <= 90 and -180 <= lng <= 180, "city.center", "must be [lat, lng]")
    t = s.sites
    _check(t.count >= 0, "sites.count", "must not be negative")
    _check(0 <= t.spread <= 1, "sites.spread", "must be 0 to 1")
    _check(0 <= t.weekend_share <= 1, "sites.weekend_share", "must be 0 to 1")
    _check(bool(t.hours), "sites.hours", "needs at least one [opens, closes] pair")
    _check(
        bool(t.capacity) and all(0 <= x <= 65_535 for x in t.capacity),
        "sites.capacity",
        "needs places per slot, each 0 to 65535",
    )
    _check(0 <= t.first_day <= 60, "sites.first_day", "must be 0 to 60 days after opening")
    _check(1 <= t.days <= 366, "sites.days", "must be 1 to 366")
    _check(
        5 <= t.slot_minutes <= 240 and 1440 % t.slot_minutes == 0,
        "sites.slot_minutes",
        "must divide a day and be 5 to 240",
    )
    try:
        for opens, closes in t.hours:
            Window(opens, closes, 1)
        for site in t.extra:
            Window(site.opens, site.closes, site.capacity)
            for day in site.weekdays:
                _check(day in WEEKDAYS, f"sites.extra {site.id}", f"weekday {day!r} unknown")
    except InvalidRequest as exc:
        raise ScenarioError(f"sites: {exc}") from None
    d = s.demand
    _check(0 < d.eligible_share <= 1, "demand.eligible_share", "must be more than 0, at most 1")
    _check(d.travel_km_median > 0, "demand.travel_km_median", "must be positive")
    _check(
        d.travel_km_max >= d.travel_km_median,
        "demand.travel_km_max",
        "must be at least travel_km_median",
    )
    _check(1 <= d.max_tries <= 100, "demand.max_tries", "must be 1 to 100")
    _check(d.retry_minutes > 0, "demand.retry_minutes", "must be positive")
    a = d.arrivals
    _check(0 <= a.first_wave_share <= 1, "demand.arrivals.first_wave_share", "must be 0 to 1")
    _check(
        a.first_decay_minutes > 0 and a.second_decay_minutes > 0,
        "demand.arrivals",
        "decay minutes must be positive",
    )
    _check(a.second_wave_hours >= 0, "demand.arrivals.second_wave_hours", "must be >= 0")
    h = s.holds
    _check(h.ttl_minutes * 60 >= 10, "holds.ttl_minutes", "must be at least 10 seconds")
    _check(0 <= h.confirm_share <= 1, "holds.confirm_share", "must be 0 to 1")
    for name, (lo, hi) in (
        ("decide_seconds", h.decide_seconds),
        ("confirm_seconds", h.confirm_seconds),
    ):
        _check(0 <= lo <= hi, f"holds.{name}", "must be [low, high] with 0 <= low <= high")
    k = s.capacity
    _check(k.searches_per_try > 0, "capacity.searches_per_try", "must be positive")
    _check(
        k.shard_ops_per_second > 0 and k.gateway_requests_per_second > 0,
        "capacity",
        "per-shard and per-gateway rates must be positive",
    )
    _check(k.cores_per_node >= 1, "capacity.cores_per_node", "must be at least 1")
    _check(0 < k.utilization <= 1, "capacity.utilization", "must be more than 0, at most 1")
    if (r := s.room) is not None:
        try:
            RoomPolicy(round(r.per_minute), round(r.session_minutes * 60), r.margin, r.near_km,
                       r.resolution)  # fmt: skip
        except InvalidRequest as exc:
            raise ScenarioError(f"room: {exc}") from None
        _check(r.poll_seconds > 0 and r.tick_seconds > 0, "room", "seconds must be positive")
    return s


def parse_scenario(text: str, base_dir: str | Path = ".") -> Scenario:
    """A scenario from TOML text; relative file names resolve against ``base_dir``."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"not valid TOML: {exc}") from None
    raw["base_dir"] = str(base_dir)
    if "headroom" in raw.get("capacity", {}):
        raise ScenarioError(
            "capacity.headroom is now capacity.utilization, the share of capacity to run at "
            "(utilization = 0.7 leaves 30% headroom)"
        )
    try:
        scenario = msgspec.convert(raw, Scenario)
    except msgspec.ValidationError as exc:
        raise ScenarioError(str(exc).replace("`$.", "`")) from None
    return _validate(scenario)


def load_scenario(path: str | Path) -> Scenario:
    """A scenario from a TOML file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read {p}: {exc.strerror}") from None
    try:
        return parse_scenario(text, p.parent)
    except ScenarioError as exc:
        raise ScenarioError(f"{p}: {exc}") from None


def build_areas(s: Scenario) -> list[Area]:
    """The rows of the scenario's population table (none without ``city.areas_csv``)."""
    if s.city.areas_csv is None:
        return []
    try:
        return read_areas_csv(s.path(s.city.areas_csv))
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"city.areas_csv: {exc}") from None


def build_city(s: Scenario) -> dict[str, int]:
    """Population per H3 cell of the scenario's city."""
    c = s.city
    if c.cells_csv is not None:
        try:
            return read_cells_csv(s.path(c.cells_csv))
        except (OSError, ValueError) as exc:
            raise ScenarioError(f"city.cells_csv: {exc}") from None
    if c.areas_csv is not None:
        return spread_areas(build_areas(s), c.resolution)
    return synthetic_city(
        center=c.center,
        radius_km=c.radius_km,
        population=c.population,
        resolution=c.resolution,
        seed=c.seed,
    )


def _template(weekdays: tuple[str, ...], opens: str, closes: str, capacity: int) -> WeeklyTemplate:
    window = (Window(opens, closes, capacity),)
    return WeeklyTemplate(days=tuple((d, window) for d in weekdays))


def build_sites(
    s: Scenario, cells: dict[str, int]
) -> tuple[list[tuple[Provider, WeeklyTemplate]], list[str]]:
    """The scenario's sites with their weekly templates, and the reasons for any site
    left out (a CSV row that is wrong, a site that does not offer the service)."""
    t = s.sites
    rng = random.Random(t.seed)
    out: list[tuple[Provider, WeeklyTemplate]] = []
    skipped: list[str] = []
    names = list(cells)
    # Sites follow people, but less than one for one: weight by the square root.
    weights = [math.sqrt(cells[c]) for c in names]
    for i in range(t.count):
        # ``spread``: anywhere in the city (any of its cells alike, never off its map,
        # in a lake or beyond a table's areas); otherwise where people live
        if rng.random() < t.spread:
            cell = rng.choice(names)
        else:
            cell = rng.choices(names, weights=weights)[0]
        clat, clng = h3.cell_to_latlng(cell)
        lat, lng = clat + rng.gauss(0, 0.003), clng + rng.gauss(0, 0.004)
        opens, closes = rng.choice(t.hours)
        capacity = rng.choice(t.capacity)
        days = WEEKDAYS if rng.random() < t.weekend_share else WEEKDAYS[:5]
        provider = Provider(
            provider_id=f"site-{i:04d}",
            name=f"Site {i}",
            lat=round(lat, 5),
            lng=round(lng, 5),
            timezone=s.timezone,
            services=(s.service,),
        )
        out.append((provider, _template(days, opens, closes, capacity)))
    if t.csv is not None:
        rows, bad = read_sites_csv(s.path(t.csv), s.timezone, s.service)
        out += rows
        skipped += bad
    for site in t.extra:
        try:
            provider = Provider(
                provider_id=site.id,
                name=site.name or site.id,
                lat=site.lat,
                lng=site.lng,
                timezone=s.timezone,
                services=site.services or (s.service,),
            )
        except InvalidRequest as exc:
            raise ScenarioError(f"sites.extra {site.id!r}: {exc}") from None
        out.append((provider, _template(site.weekdays, site.opens, site.closes, site.capacity)))
    kept = [(p, tpl) for p, tpl in out if s.service in p.services]
    skipped += [
        f"{p.provider_id}: does not offer {s.service}"
        for p, _ in out
        if s.service not in p.services
    ]
    ids = [p.provider_id for p, _ in kept]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ScenarioError(f"sites: ids used twice: {', '.join(dup[:5])}")
    if not kept:
        raise ScenarioError(f"sites: no site offers {s.service!r}")
    return kept, skipped


SITE_COLUMNS = ("id", "lat", "lng", "opens", "closes", "capacity")


def read_sites_csv(
    path: Path, tz: str, service: str
) -> tuple[list[tuple[Provider, WeeklyTemplate]], list[str]]:
    """Sites from a CSV: ``id,lat,lng,opens,closes,capacity`` and optionally ``name``,
    ``weekdays`` (``mon tue ...``, default every day) and ``services`` (space separated).
    A bad row is reported with its line and left out; the good rows are kept."""
    out: list[tuple[Provider, WeeklyTemplate]] = []
    bad: list[str] = []
    try:
        f = open(path, newline="")  # noqa: SIM115
    except OSError as exc:
        raise ScenarioError(f"sites.csv: cannot read {path}: {exc.strerror}") from None
    with f:
        reader = csv.DictReader(f)
        missing = set(SITE_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ScenarioError(f"sites.csv {path}: missing columns {', '.join(sorted(missing))}")
        for row in reader:
            line = reader.line_num
            try:
                weekdays = tuple((row.get("weekdays") or " ".join(WEEKDAYS)).split())
                for d in weekdays:
                    if d not in WEEKDAYS:
                        raise InvalidRequest(f"weekday {d!r} is not one of {' '.join(WEEKDAYS)}")
                provider = Provider(
                    provider_id=(row["id"] or "").strip(),
                    name=(row.get("name") or row["id"] or "").strip(),
                    lat=float(row["lat"]),
                    lng=float(row["lng"]),
                    timezone=tz,
                    services=tuple((row.get("services") or service).split()),
                )
                template = _template(
                    weekdays, row["opens"].strip(), row["closes"].strip(), int(row["capacity"])
                )
            except (InvalidRequest, ValueError, TypeError, AttributeError) as exc:
                bad.append(f"{path.name}:{line}: {exc}")
                continue
            out.append((provider, template))
    return out, bad
