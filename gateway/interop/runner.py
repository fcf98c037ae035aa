"""Running a connector: fetch the source, map it, reconcile it into hexbook. One function
serves ``POST /v1/imports`` (once, now) and the import scheduler (on a schedule).

Synchronous (httpx, redis-py, Ray calls); the gateway runs it in a thread.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from actors.api import Hexbook
from engine.errors import InvalidRequest
from engine.provider import Provider
from engine.schedule import zone
from gateway.interop.files import parse_bundle, parse_sites_csv
from gateway.interop.reconcile import reconcile
from gateway.interop.smart import fetch_smart, map_smart
from gateway.schemas import ImportIn, ImportOut

__all__ = ["check_spec", "run_import"]


def check_spec(spec: ImportIn) -> None:
    """Refuse a spec that cannot run (InvalidRequest, a 422), before anything is fetched."""
    zone(spec.timezone)
    if (spec.url is None) == (spec.content is None) or (
        spec.connector == "smart" and spec.url is None
    ):
        raise InvalidRequest(
            "give either url or content (smart: url); "
            f"connector {spec.connector!r} got {'both' if spec.url else 'neither'}"
        )


def _read(url: str) -> str:
    try:
        r = httpx.get(url, timeout=60, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise InvalidRequest(f"cannot fetch {url}: {type(exc).__name__}") from None
    if r.status_code != 200:
        raise InvalidRequest(f"{url}: HTTP {r.status_code}")
    return r.text


def run_import(
    hb: Hexbook, spec: ImportIn, placed: Callable[[dict[str, Provider]], None]
) -> ImportOut:
    """Run ``spec`` once and summarise it; ``placed`` gets the providers created or
    updated (the gateway refreshes its provider cache with them). A SMART source is
    fetched only when its ``max-age`` has run out (unless ``spec.force``)."""
    check_spec(spec)
    if spec.connector == "smart":
        url = str(spec.url)
        fetched = fetch_smart(url, hb.redis, force=spec.force, states=set(spec.states) or None)
        if fetched.not_modified or fetched.skipped:
            note = fetched.skipped or "not modified since the last import (HTTP 304)"
            return ImportOut(
                url=url, fetched=False, note=note, created=0, updated=0,
                unchanged=0, unplaced=[], conflicts=[], errors=[], providers=[],
            )  # fmt: skip
        sites, problems = map_smart(fetched, states=set(spec.states) or None)
    else:
        text = spec.content if spec.content is not None else _read(str(spec.url))
        url = spec.source or spec.url or spec.connector
        if spec.connector == "fhir":
            sites, problems = parse_bundle(text, f"fhir:{url}")
        else:
            sites, problems = parse_sites_csv(text, f"csv:{url}", spec.timezone)
    summary = reconcile(hb, hb.redis, sites, default_timezone=spec.timezone, now=hb.now())
    placed(summary.placed)
    d = summary.as_dict()
    d["errors"] = problems + d["errors"]
    return ImportOut(url=url, fetched=True, **d)
