"""Two more connectors: a FHIR R4 Bundle (Location, Schedule, Slot resources) and the CSV
an operations team fills in a spreadsheet (sites and their weekly hours).

CSV columns (a header row; one row per opening window, several rows per site for more):

    id,name,lat,lng,postal_code,timezone,services,weekdays,opens,closes,capacity,first_day,days

``id``, ``opens``, ``closes``, ``capacity`` and ``first_day`` are needed; ``lat``/``lng``
or a ``postal_code``; ``services`` and ``weekdays`` are space-separated (default
``covid-vaccine`` and ``mon tue wed thu fri``); ``days`` defaults to 14. Each bad row is
reported with its line and left out; the good rows are imported.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date

from engine.errors import InvalidRequest
from engine.provider import Provider
from engine.schedule import WEEKDAYS, WeeklyTemplate, Window, build_grid
from gateway.interop.reconcile import STEP, SourceSite, SourceSlot, geocode, zone_at
from gateway.interop.smart import SmartFetch, map_smart

__all__ = ["CSV_COLUMNS", "parse_bundle", "parse_sites_csv"]

CSV_COLUMNS = (
    "id", "name", "lat", "lng", "postal_code", "timezone", "services", "weekdays",
    "opens", "closes", "capacity", "first_day", "days",
)  # fmt: skip
REQUIRED = ("id", "opens", "closes", "capacity", "first_day")


def parse_bundle(text: str, source: str) -> tuple[list[SourceSite], list[str]]:
    """SourceSites from a FHIR R4 Bundle (JSON) of Location, Schedule and Slot entries."""
    try:
        bundle = json.loads(text)
    except ValueError:
        raise InvalidRequest("the FHIR Bundle is not JSON") from None
    except RecursionError:
        raise InvalidRequest("the FHIR Bundle is nested too deeply to be a Bundle") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidRequest("not a FHIR Bundle (resourceType must be Bundle)")
    fetched = SmartFetch(source)
    for n, entry in enumerate(bundle.get("entry") or [], 1):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        bucket = {
            "Location": fetched.locations,
            "Schedule": fetched.schedules,
            "Slot": fetched.slots,
        }.get(str(kind))
        if bucket is None or not isinstance(resource, dict):
            fetched.errors.append(f"entry {n}: {kind or 'no resource'} is not read")
            continue
        bucket.append(resource)
    return map_smart(fetched, "fhir")


def parse_sites_csv(
    text: str, source: str, default_timezone: str
) -> tuple[list[SourceSite], list[str]]:
    """SourceSites from the operations CSV; bad rows as ``line N: why``."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InvalidRequest(
            f"the CSV header lacks {', '.join(missing)}; columns: {','.join(CSV_COLUMNS)}"
        )
    errors: list[str] = []
    rows: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for row in reader:
        clean = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not clean.get("id"):
            errors.append(f"line {reader.line_num}: no id")
            continue
        rows.setdefault(clean["id"], []).append((reader.line_num, clean))
    sites = []
    for site_id, site_rows in rows.items():
        site, bad = _site(site_id, site_rows, source, default_timezone)
        errors += bad
        if site is not None:
            sites.append(site)
    errors.sort(key=lambda e: int(e.split(":")[0].removeprefix("line ")))
    return sites, errors


def _site(
    site_id: str, rows: list[tuple[int, dict[str, str]]], source: str, default_tz: str
) -> tuple[SourceSite | None, list[str]]:
    errors = []
    first_line, first = rows[0]
    windows: dict[str, list[Window]] = {}
    try:
        lat = float(first["lat"]) if first.get("lat") else None
        lng = float(first["lng"]) if first.get("lng") else None
        if (lat is None) != (lng is None):
            raise InvalidRequest("give both lat and lng, or neither (and a postal_code)")
        tz = first.get("timezone") or ""
        if not tz and lat is not None and lng is not None:
            tz = zone_at(lat, lng) or ""
        if not tz:
            found = geocode(first.get("postal_code"))
            tz = (found[2] if found else None) or default_tz
        services = tuple((first.get("services") or "covid-vaccine").split())
        # A Provider checks the id, position, zone and service names for us.
        Provider(
            provider_id=site_id, name=first.get("name") or site_id,
            lat=lat if lat is not None else 0.0, lng=lng if lng is not None else 0.0,
            timezone=tz, services=services,
        )  # fmt: skip
        first_day = date.fromisoformat(first["first_day"])
        days = int(first.get("days") or 14)
    except (InvalidRequest, ValueError) as exc:
        return None, [f"line {first_line}: {exc}"]
    for line, row in rows:
        try:
            weekdays = tuple((row.get("weekdays") or "mon tue wed thu fri").split())
            for d in weekdays:
                if d not in WEEKDAYS:
                    raise InvalidRequest(f"weekday {d!r} is not one of {' '.join(WEEKDAYS)}")
            window = Window(row["opens"], row["closes"], int(row["capacity"]))
            if row.get("first_day") and row["first_day"] != first["first_day"]:
                raise InvalidRequest(f"first_day differs from line {first_line} of site {site_id}")
        except (InvalidRequest, ValueError, KeyError) as exc:
            errors.append(f"line {line}: {exc}")
            continue
        for d in weekdays:
            windows.setdefault(d, []).append(window)
    if not windows:
        return None, errors
    template = WeeklyTemplate(days=tuple((d, tuple(w)) for d, w in windows.items()))
    try:
        grid = build_grid(tz, template, first_day, days, STEP // 60)
    except InvalidRequest as exc:
        return None, [*errors, f"line {first_line}: {exc}"]
    slots = [
        SourceSlot(grid.start + i * STEP, grid.start + (i + 1) * STEP, int(c))
        for i, c in enumerate(grid.capacity.tolist())
        if c
    ]
    site = SourceSite(
        source=source,
        source_id=site_id,
        name=first.get("name") or site_id,
        lat=lat,
        lng=lng,
        postal_code=first.get("postal_code") or None,
        timezone=tz,
        slots=dict.fromkeys(services, slots),
    )
    return site, errors
