"""SMART Scheduling Links reader: follow a ``$bulk-publish`` manifest, read its Location,
Schedule and Slot NDJSON files, and map them to :class:`SourceSite` records.

Polite polling: the manifest's ``ETag`` is sent back as ``If-None-Match`` (a 304 means
nothing changed), ``Cache-Control: max-age`` is honoured (no fetch before it runs out,
unless forced), and once a manifest has been read the next one is asked ``_since`` its
``transactionTime``; a publisher that honours it answers with changes only, which are
merged into what hexbook has instead of replacing it. The fetch state lives in Redis
(``hexbook:import:smart:<url>``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import httpx
import redis

from engine.errors import InvalidRequest
from engine.schedule import CAPACITY_MAX
from gateway.interop.reconcile import SourceSite, SourceSlot

__all__ = ["SERVICE_CODES", "SmartFetch", "fetch_smart", "map_smart"]

EXT = "http://fhir-registry.smarthealthit.org/StructureDefinition/"
# serviceType codes of the SMART registry -> hexbook service names
SERVICE_CODES = {
    "covid19-immunization": "covid-vaccine",
    "influenza-immunization": "flu-vaccine",
}
_NAME = re.compile(r"[^A-Za-z0-9._:-]+")


@dataclass
class SmartFetch:
    """What a fetch found: the resources, or that nothing changed."""

    url: str
    not_modified: bool = False
    skipped: str = ""  # why nothing was fetched (max-age not run out)
    incremental: bool = False
    transaction_time: str = ""
    locations: list[dict[str, Any]] = field(default_factory=list)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    slots: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _state_key(url: str) -> str:
    return f"hexbook:import:smart:{url}"


def _max_age(cache_control: str | None) -> int:
    for part in (cache_control or "").split(","):
        name, _, value = part.strip().partition("=")
        if name.lower() == "max-age" and value.isdigit():
            return int(value)
    return 0


def _ndjson(text: str, what: str, errors: list[str]) -> Iterator[dict[str, Any]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError):
            errors.append(f"{what} line {n}: not JSON (or nested too deeply)")
            continue
        if isinstance(item, dict):
            yield item
        else:
            errors.append(f"{what} line {n}: not a resource")


def fetch_smart(
    url: str,
    client: redis.Redis | None = None,
    *,
    force: bool = False,
    states: set[str] | None = None,
    http: httpx.Client | None = None,
    now: float | None = None,
) -> SmartFetch:
    """Fetch the manifest at ``url`` and its files (Slot files only of ``states``)."""
    now = time.time() if now is None else now
    state: dict[str, Any] = {}
    if client is not None:
        raw: Any = client.get(_state_key(url))
        state = json.loads(raw) if raw else {}
    out = SmartFetch(url)
    if not force and state.get("fresh_until", 0) > now:
        out.skipped = "the manifest's max-age has not run out (use --force to fetch anyway)"
        return out
    own = http is None
    http = http or httpx.Client(timeout=30, follow_redirects=True)
    try:
        headers = {"Accept": "application/json"}
        target = url
        if state.get("etag") and not force:
            headers["If-None-Match"] = state["etag"]
        if state.get("transaction_time") and not force:
            parts = urlsplit(url)
            query = "&".join(
                x for x in (parts.query, urlencode({"_since": state["transaction_time"]})) if x
            )
            target = urlunsplit(parts._replace(query=query))
        r = http.get(target, headers=headers)
        max_age = _max_age(r.headers.get("Cache-Control"))
        new_state = {**state, "fresh_until": now + max_age}
        if r.status_code == 304:
            out.not_modified = True
            _save(client, url, new_state)
            return out
        if r.status_code != 200:
            raise InvalidRequest(f"manifest {target}: HTTP {r.status_code}")
        try:
            manifest = r.json()
            outputs = manifest["output"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise InvalidRequest(f"manifest {target}: not a $bulk-publish manifest") from None
        out.transaction_time = str(manifest.get("transactionTime", ""))
        out.incremental = "_since=" in str(manifest.get("request", ""))
        for entry in outputs:
            kind, file_url = entry.get("type"), entry.get("url")
            if kind not in ("Location", "Schedule", "Slot") or not file_url:
                continue
            wanted = (entry.get("extension") or {}).get("state")
            if states and wanted and not states & set(wanted):
                continue  # Location, Schedule and Slot files alike
            fr = http.get(urljoin(target, file_url))
            if fr.status_code != 200:
                out.errors.append(f"{file_url}: HTTP {fr.status_code}")
                continue
            bucket = {"Location": out.locations, "Schedule": out.schedules, "Slot": out.slots}
            bucket[kind].extend(_ndjson(fr.text, file_url.rsplit("/", 1)[-1], out.errors))
        new_state["etag"] = r.headers.get("ETag", "")
        new_state["transaction_time"] = out.transaction_time
        _save(client, url, new_state)
        return out
    except httpx.HTTPError as exc:
        raise InvalidRequest(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from None
    finally:
        if own:
            http.close()


def _save(client: redis.Redis | None, url: str, state: dict[str, Any]) -> None:
    if client is not None:
        client.set(_state_key(url), json.dumps(state))


def _service(schedule: dict[str, Any]) -> str:
    for st in schedule.get("serviceType") or []:
        for coding in st.get("coding") or []:
            code = str(coding.get("code", ""))
            if code in SERVICE_CODES:
                return SERVICE_CODES[code]
    for st in schedule.get("serviceType") or []:
        for coding in st.get("coding") or []:
            if "smarthealthit" in str(coding.get("system", "")) and coding.get("code"):
                return _NAME.sub("-", str(coding["code"]))[:64]
    return "appointment"


def _ext(resource: dict[str, Any], name: str) -> Any:
    for e in resource.get("extension") or []:
        if e.get("url") == EXT + name:
            for k, v in e.items():
                if k.startswith("value"):
                    return v
    return None


def _instant(text: Any, what: str) -> tuple[int, int | None]:
    """UTC seconds of a FHIR instant, and the offset it was written with (``None`` for
    UTC, ``Z`` or ``+00:00``: many publishers write every time in UTC, which says
    nothing about the site's zone)."""
    raw = str(text)
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{what}: {text!r} is not a date-time") from None
    offset = moment.utcoffset()
    if offset is None:
        raise InvalidRequest(f"{what}: {text!r} has no UTC offset")
    written = int(offset.total_seconds()) or None
    return int(moment.timestamp()), written


def map_smart(
    fetched: SmartFetch, source_name: str = "smart", states: set[str] | None = None
) -> tuple[list[SourceSite], list[str]]:
    """SourceSites from the fetched resources (of ``states`` only, when given), and the
    problems found (per resource)."""
    errors = list(fetched.errors)
    sites: dict[str, SourceSite] = {}
    for loc in fetched.locations:
        address_state = str((loc.get("address") or {}).get("state") or "")
        if states and address_state and address_state not in states:
            continue  # a file of every state: keep the states asked for
        if loc.get("resourceType") != "Location" or not loc.get("id"):
            errors.append(f"Location without an id: {str(loc)[:80]}")
            continue
        pos = loc.get("position") or {}
        addr = loc.get("address") or {}
        try:
            lat = float(pos["latitude"]) if "latitude" in pos else None
            lng = float(pos["longitude"]) if "longitude" in pos else None
        except (TypeError, ValueError):
            errors.append(f"Location/{loc['id']}: position is not numeric")
            lat = lng = None
        sites[str(loc["id"])] = SourceSite(
            source=f"{source_name}:{fetched.url}",
            source_id=str(loc["id"]),
            name=str(loc.get("name") or loc["id"]),
            lat=lat,
            lng=lng,
            postal_code=addr.get("postalCode"),
            state=str(addr.get("state") or ""),
            complete=not fetched.incremental,
        )
    schedule_site: dict[str, tuple[str, str]] = {}
    for sch in fetched.schedules:
        ref = next(
            (
                a.get("reference", "")
                for a in sch.get("actor") or []
                if "Location/" in a.get("reference", "")
            ),
            "",
        )
        loc_id = ref.split("Location/", 1)[-1]
        if loc_id not in sites:
            errors.append(f"Schedule/{sch.get('id')}: refers to unknown {ref or 'nothing'}")
            continue
        service = _service(sch)
        schedule_site[str(sch.get("id"))] = (loc_id, service)
        sites[loc_id].slots.setdefault(service, [])
    for slot in fetched.slots:
        ref = str((slot.get("schedule") or {}).get("reference", ""))
        sch_id = ref.split("Schedule/", 1)[-1]
        if sch_id not in schedule_site:
            errors.append(f"Slot/{slot.get('id')}: refers to unknown {ref or 'nothing'}")
            continue
        try:
            start, offset = _instant(slot.get("start"), f"Slot/{slot.get('id')} start")
            end, _ = _instant(slot.get("end"), f"Slot/{slot.get('id')} end")
        except InvalidRequest as exc:
            errors.append(str(exc))
            continue
        capacity = _ext(slot, "slot-capacity")
        if capacity is None:
            places = 1  # the specification's default: one place
        elif (
            isinstance(capacity, int)
            and not isinstance(capacity, bool)
            and 0 <= capacity <= CAPACITY_MAX
        ):
            places = capacity
        else:
            errors.append(
                f"Slot/{slot.get('id')}: slot-capacity {capacity!r} is not a number of places "
                f"from 0 to {CAPACITY_MAX:,}; not imported"
            )
            continue
        if slot.get("status") != "free":
            places = 0
        loc_id, service = schedule_site[sch_id]
        sites[loc_id].slots[service].append(SourceSlot(start, max(end, start + 1), places, offset))
    return list(sites.values()), errors
