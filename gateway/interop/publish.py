"""hexbook's availability as a SMART Scheduling Links feed: ``/smart/$bulk-publish`` and
its Location, Schedule and Slot NDJSON files, rendered from the gateway's search index.

Slots are published a day at a time, as vaccine finders read them (and as the SMART
example feed does): for each calendar and local day with free places, one ``free`` Slot
from the first free slot's start to the last one's end, with ``slot-capacity`` = the free
places that day and a ``booking-deep-link`` to the booking front-end. A day-level slot
imported from another feed is published back with its own length. Per-slot publishing
of a 1,500-site city would be over a million lines; a day each is about 30,000.

Polling stays cheap: the files are kept rendered. Each calendar's lines are cached and
only calendars the index saw change are rendered again, at most once per
``refresh_seconds``; answers carry ``ETag`` and ``Cache-Control: max-age``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

import numpy as np

from engine.schedule import utc_offsets
from gateway.interop.reconcile import SourceRecord
from gateway.interop.smart import EXT, SERVICE_CODES

__all__ = ["SmartPublisher", "fhir_id"]

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_SERVICE_OF = {v: k for k, v in SERVICE_CODES.items()}
SERVICE_SYSTEM = "http://fhir-registry.smarthealthit.org/CodeSystem/service-type"


def fhir_id(text: str) -> str:
    """A FHIR id (letters, digits, - and ., at most 64) for ``text``: itself when it is
    one, else a readable prefix and a hash."""
    if _FHIR_ID.match(text):
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    return f"{re.sub(r'[^A-Za-z0-9-.]', '-', text)[:40]}-{digest}"


def _local(ts: int, tz: Any) -> datetime:
    return datetime.fromtimestamp(ts, UTC).astimezone(tz)


class SmartPublisher:
    """The rendered feed, refreshed from an :class:`gateway.index.AvailabilityIndex`."""

    def __init__(
        self,
        index: Any,
        sources: Any,
        booking_link: str,
        refresh_seconds: float = 10.0,
    ) -> None:
        self.index = index
        self.sources = sources  # () -> dict[provider id, SourceRecord]
        self.booking_link = booking_link
        self.refresh_seconds = refresh_seconds
        self._lines: dict[tuple[str, str], list[str]] = {}
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.transaction_time = ""
        self._version = -1
        self._rendered_at = 0.0
        self.renders = 0  # full or partial renders done (for tests and metrics)
        self.lock = asyncio.Lock()  # one refresh at a time
        self.calendars_rendered = 0
        self.last_rendered: set[tuple[str, str]] = set()  # calendars of the last refresh

    def refresh(self, now: float | None = None) -> None:
        """Render what changed, if anything did and the last render is old enough."""
        work = self.collect(now)
        if work is not None:
            self.render(*work)

    def collect(
        self, now: float | None = None
    ) -> tuple[list[tuple[Any, ...]], dict[str, Any]] | None:
        """Take what changed from the index (fast: copies of the changed rows), or None.
        Call it where the index is updated (the event loop); :meth:`render` may then run
        in a thread."""
        now = time.monotonic() if now is None else now
        if self._version == self.index.version:
            return None
        if self._version >= 0 and now - self._rendered_at < self.refresh_seconds:
            return None
        dirty, self.index.dirty = self.index.dirty, set()
        if self._version < 0:
            dirty = self.index.calendars()
        self._version = self.index.version
        self._rendered_at = now
        providers = dict(self.index.providers)
        items = [
            (pid, service, providers.get(pid), self.index.free_of(pid, service))
            for pid, service in dirty
        ]
        return items, providers

    def render(self, items: list[tuple[Any, ...]], providers: dict[str, Any]) -> None:
        """Render the changed calendars' lines and assemble the files."""
        from zoneinfo import ZoneInfo

        records: dict[str, SourceRecord] = self.sources()
        self.last_rendered = {(pid, service) for pid, service, _, _ in items}
        for pid, service, provider, free in items:
            if provider is None or free is None:
                self._lines.pop((pid, service), None)
                continue
            record = records.get(pid)
            length = record.slot_seconds.get(service) if record else None
            varying = record.slot_lengths.get(service, {}) if record else {}
            grid_start, step, places = free
            self._lines[(pid, service)] = self._slot_lines(
                provider, service, grid_start, step, places, ZoneInfo(provider.timezone),
                length, varying,
            )  # fmt: skip
            self.calendars_rendered += 1
        self.renders += 1
        self._assemble(records, providers)

    def _slot_lines(
        self,
        provider: Any,
        service: str,
        grid_start: int,
        step: int,
        free: np.ndarray,
        tz: Any,
        length: int | None,
        varying: dict[str, int] | None = None,
    ) -> list[str]:
        cols = np.flatnonzero(free > 0)
        if cols.size == 0:
            return []
        starts = grid_start + cols.astype(np.int64) * step
        # Local days, vectorized: the UTC offset in force at each start (DST-exact).
        local_day = (starts + utc_offsets(provider.timezone, starts)) // 86_400
        bounds = np.flatnonzero(np.diff(local_day)) + 1
        schedule = fhir_id(f"{provider.provider_id}.{service}")
        out = []
        for i, j in zip(
            np.concatenate(([0], bounds)).tolist(),
            (np.concatenate((bounds, [cols.size])) - 1).tolist(),
            strict=True,
        ):
            first, last = int(starts[i]), int(starts[j])
            places = int(free[cols[i : j + 1]].sum())
            # The day ends where its last slot does: its source length when known.
            last_length = (varying or {}).get(str(last)) or length or step
            end = last + last_length
            day = date.fromordinal(int(local_day[i]) + _EPOCH_ORDINAL).isoformat()
            link = self.booking_link.format(
                provider_id=quote(provider.provider_id), service=quote(service), date=day
            )
            out.append(
                json.dumps(
                    {
                        "resourceType": "Slot",
                        "id": fhir_id(f"{schedule}-{day}"),
                        "schedule": {"reference": f"Schedule/{schedule}"},
                        "status": "free",
                        "start": _local(first, tz).isoformat(),
                        "end": _local(end, tz).isoformat(),
                        "extension": [
                            {"url": EXT + "booking-deep-link", "valueUrl": link},
                            {"url": EXT + "slot-capacity", "valueInteger": places},
                        ],
                    },
                    separators=(",", ":"),
                )
            )
        return out

    def _assemble(self, records: dict[str, SourceRecord], providers: dict[str, Any]) -> None:
        calendars = sorted(self._lines)
        listed = sorted({pid for pid, _ in calendars})
        locations = []
        for pid in listed:
            p = providers[pid]
            loc: dict[str, Any] = {
                "resourceType": "Location",
                "id": fhir_id(pid),
                "name": p.name,
                "position": {"latitude": p.lat, "longitude": p.lng},
                "identifier": [{"system": "https://hexbook.dev/provider-id", "value": pid}],
            }
            state = records[pid].state if pid in records else ""
            if state:
                loc["address"] = {"state": state}
            locations.append(json.dumps(loc, separators=(",", ":")))
        schedules = []
        for pid, service in calendars:
            code = _SERVICE_OF.get(service, service)
            schedules.append(
                json.dumps(
                    {
                        "resourceType": "Schedule",
                        "id": fhir_id(f"{pid}.{service}"),
                        "actor": [{"reference": f"Location/{fhir_id(pid)}"}],
                        "serviceType": [
                            {
                                "coding": [
                                    {"system": SERVICE_SYSTEM, "code": code, "display": service}
                                ]
                            }
                        ],
                    },
                    separators=(",", ":"),
                )
            )
        by_state: dict[str, list[str]] = {}
        for pid, service in calendars:
            state = records[pid].state if pid in records else ""
            by_state.setdefault(state, []).extend(self._lines[(pid, service)])
        files = {
            "locations.ndjson": "\n".join(locations),
            "schedules.ndjson": "\n".join(schedules),
        }
        for state, lines in sorted(by_state.items()):
            files[f"slots-{state}.ndjson" if state else "slots.ndjson"] = "\n".join(lines)
        self.files = {k: (v + "\n" if v else "").encode() for k, v in files.items()}
        self.etags = {
            k: '"' + hashlib.sha1(v).hexdigest()[:20] + '"' for k, v in self.files.items()
        }
        self.transaction_time = (
            datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )

    def manifest(self, base: str, request_url: str, state: str | None = None) -> dict[str, Any]:
        out: list[dict[str, Any]] = [
            {"type": "Location", "url": f"{base}/smart/locations.ndjson"},
            {"type": "Schedule", "url": f"{base}/smart/schedules.ndjson"},
        ]
        for name in sorted(self.files):
            if not name.startswith("slots"):
                continue
            st = name[len("slots-") : -len(".ndjson")] if name.startswith("slots-") else ""
            if state and st != state:
                continue
            entry: dict[str, Any] = {"type": "Slot", "url": f"{base}/smart/{name}"}
            if st:
                entry["extension"] = {"state": [st]}
            out.append(entry)
        return {
            "transactionTime": self.transaction_time,
            "request": request_url,
            "output": out,
            "error": [],
        }
