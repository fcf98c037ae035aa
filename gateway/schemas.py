"""Request and response bodies of the v1 API (see ../shared/CONTRACT.md)."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field

_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class HoldRequest(_Strict):
    provider_id: str = Field(pattern=_ID)
    service: str = Field(pattern=_ID)
    start: str = Field(description="RFC 3339 with offset, e.g. 2026-03-08T09:15:00-06:00")
    party_size: int = Field(1, ge=1, le=50)


class Patient(_Strict):
    reference: str = Field(
        min_length=1, max_length=128, description="opaque reference chosen by the front-end"
    )


class BookingRequest(_Strict):
    hold_id: str = Field(min_length=24, max_length=512)
    patient: Patient


class RescheduleRequest(_Strict):
    provider_id: str = Field(pattern=_ID)
    service: str = Field(pattern=_ID)
    start: str


class WindowIn(_Strict):
    opens: str = Field(examples=["09:00"])
    closes: str = Field(examples=["17:00"])
    capacity: int = Field(ge=0, le=65_535)


class BlockedIn(_Strict):
    start: str = Field(examples=["2026-03-10T12:00"])
    end: str


class ScheduleIn(_Strict):
    days: dict[str, list[WindowIn]] = Field(description="keys mon..sun")
    closed_dates: list[str] = []
    blocked: list[BlockedIn] = []


class ProviderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    lat: float = Field(ge=-90, le=90)
    lng: float = Field(ge=-180, le=180)
    timezone: str = Field(examples=["America/Chicago"])
    services: list[str] = Field(min_length=1, max_length=20)
    languages: list[str] = []
    accessibility: list[str] = []
    insurance: list[str] = []
    schedule: ScheduleIn
    first_day: date
    days: int = Field(14, ge=1, le=366)
    slot_minutes: int = Field(15, ge=5, le=240)


class ProviderOut(BaseModel):
    provider_id: str
    name: str
    lat: float
    lng: float
    timezone: str
    services: list[str]
    languages: list[str]
    accessibility: list[str]
    insurance: list[str]


class HoldOut(BaseModel):
    hold_id: str
    provider_id: str
    service: str
    start: str
    party_size: int
    expires_at: str


class BookingOut(BaseModel):
    booking_id: str
    booking_token: str | None = Field(None, description="only in the answer that created it")
    provider_id: str
    service: str
    start: str
    party_size: int
    status: str
    patient: Patient


class SlotOut(BaseModel):
    start: str
    capacity: int
    remaining: int


class SlotsOut(BaseModel):
    provider_id: str
    service: str
    slot_minutes: int
    slots: list[SlotOut]


class KeyIn(_Strict):
    role: str = Field(pattern="^(booking-client|provider-admin|operator)$")
    name: str = Field(min_length=1, max_length=128, description="who or what uses the key")
    providers: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="provider-admin only: provider ids, or prefixes ending in *",
    )
    rate_per_second: float | None = Field(None, gt=0, le=1_000_000)


class KeyOut(BaseModel):
    key_id: str
    role: str
    name: str
    providers: list[str]
    rate_per_second: float | None
    created_at: float
    revoked_at: float | None
    key: str | None = Field(None, description="the key itself: shown once, at creation")


class ImportIn(_Strict):
    connector: str = Field(
        pattern="^(smart|fhir|csv)$",
        description="smart: a SMART Scheduling Links manifest (url); fhir: a FHIR R4 Bundle of "
        "Location, Schedule and Slot (url or content); csv: the sites CSV (url or content)",
    )
    url: str | None = Field(
        None, min_length=8, max_length=2000, examples=["https://example.org/$bulk-publish"]
    )
    content: str | None = Field(None, description="fhir or csv: the file itself")
    source: str | None = Field(
        None, max_length=200, description="names the source of content (default: the connector)"
    )
    states: list[str] = Field(default_factory=list, description="only Slot files of these states")
    force: bool = Field(False, description="fetch even if the manifest's max-age has not run out")
    timezone: str = Field(
        "America/New_York", description="time zone of sites the source does not place"
    )


class ImportOut(BaseModel):
    url: str
    fetched: bool = Field(description="false: not modified (304) or max-age not run out")
    note: str = ""
    created: int
    updated: int
    unchanged: int
    unplaced: list[str]
    conflicts: list[str]
    errors: list[str]
    providers: list[str]


class ImportScheduleIn(_Strict):
    connector: str = Field(
        pattern="^(smart|fhir|csv)$", description="as in POST /v1/imports; the source is a url"
    )
    url: str = Field(min_length=8, max_length=2000, examples=["https://example.org/$bulk-publish"])
    every_seconds: int = Field(
        ge=1,
        le=7 * 86400,
        description="run this often (a SMART source is still fetched only when its max-age "
        "has run out); the first run is at once",
    )
    states: list[str] = Field(default_factory=list, description="only Slot files of these states")
    timezone: str = Field(
        "America/New_York", description="time zone of sites the source does not place"
    )


class ImportScheduleOut(BaseModel):
    schedule_id: str
    connector: str
    url: str
    every_seconds: int
    states: list[str]
    timezone: str
    created_at: float = Field(description="Unix time")
    next_run_at: float = Field(description="Unix time of the next run")
    runs: int = Field(0, description="runs so far")
    failures: int = Field(0, description="runs that failed (the source unreachable, ...)")
    last_run_at: float | None = None
    last_result: ImportOut | None = Field(None, description="the summary of the last good run")
    last_error: str | None = Field(None, description="why the last run failed (None: it did not)")
