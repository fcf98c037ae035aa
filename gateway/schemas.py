"""The v1 API contract: every request and answer shape, defined once.

The FastAPI routes declare these models (so the OpenAPI document is generated from
them), and the fast path of :mod:`gateway.fast` validates with the very same models, so
a limit changed here changes everywhere. ``docs/api.md`` describes the API in prose.

Types used across the models:

- :data:`Id`: provider ids and service names, 1 to 128 of ``A-Z a-z 0-9 . _ : -``
  (the rule of :mod:`engine.provider`, matched whole: no final newline);
- :data:`RoutableId`: hold and booking ids as hexbook issues them;
- :data:`Instant`: an RFC 3339 timestamp with an offset, in whole seconds, which the
  models turn into UTC seconds (``2026-03-08T09:15:00-06:00``);
- :data:`TimeZone`: an IANA zone name this installation knows.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from actors.availability import CURSOR_PATTERN
from engine.provider import ID_RULE
from engine.schedule import FIRST_DAY_MAX, FIRST_DAY_MIN, zone_names
from gateway.timefmt import RFC3339, rfc3339_seconds

__all__ = [
    "IDEMPOTENCY_KEY",
    "Admission",
    "AuditEntryOut",
    "AuditQuery",
    "BookingOut",
    "BookingRequest",
    "FeedQuery",
    "Health",
    "HoldOut",
    "HoldRequest",
    "Id",
    "ImportIn",
    "ImportOut",
    "ImportScheduleIn",
    "ImportScheduleOut",
    "IndexFreshness",
    "Instant",
    "JoinIn",
    "KeyIn",
    "KeyOut",
    "LotteryOut",
    "Patient",
    "Problem",
    "ProblemIssue",
    "ProviderIn",
    "ProviderOut",
    "Ready",
    "RescheduleRequest",
    "RoomIn",
    "RoomOut",
    "RoomPatch",
    "RoutableId",
    "SearchOut",
    "SearchQuery",
    "SearchResult",
    "SlotOut",
    "SlotsOut",
    "SlotsQuery",
    "SmartManifest",
    "TimeZone",
    "VisitorOut",
    "idempotency_key_ok",
]

ID_PATTERN = f"^{ID_RULE}$"  # pydantic's regex engine: $ is the very end
ROUTABLE_PATTERN = r"^[A-Za-z0-9_-]{2,480}\.[A-Za-z0-9_-]{22,32}$"
ENTRY_ID_PATTERN = r"^[0-9]{1,20}-[0-9]{1,20}$"
FEED_CURSOR_PATTERN = CURSOR_PATTERN  # one entry id per stream (actors.availability)
IDEMPOTENCY_KEY = r"^[!-~]{1,200}$"  # visible ASCII, as an HTTP header carries it
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY.strip("^$"))


def idempotency_key_ok(key: str) -> bool:
    """Whether ``key`` is an Idempotency-Key the Header declaration accepts."""
    return _IDEMPOTENCY_KEY.fullmatch(key) is not None


def _instant(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string, e.g. 2026-03-08T09:15:00-06:00")
    return rfc3339_seconds(value)


def _zone(name: str) -> str:
    if name not in zone_names():
        raise ValueError(f"{name!r} is not an IANA time zone name (e.g. America/Chicago)")
    return name


def _http_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname  # parses the netloc: a broken [IPv6] raises here
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("must be an http:// or https:// URL with a host")
    return url


Id = Annotated[
    str,
    Field(
        pattern=ID_PATTERN,
        description="1 to 128 of A-Z a-z 0-9 . _ : - (starting with a letter or digit)",
        examples=["chi-0001"],
    ),
]
RoutableId = Annotated[
    str,
    Field(
        pattern=ROUTABLE_PATTERN,
        min_length=24,
        max_length=512,
        description="an id hexbook issued: <calendar>.<128 random bits>, both base64url",
    ),
]
Instant = Annotated[
    int,
    BeforeValidator(_instant),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": RFC3339,
            "description": "RFC 3339 with an offset, whole seconds",
            "examples": ["2026-03-08T09:15:00-06:00"],
        }
    ),
]
TimeZone = Annotated[
    str,
    AfterValidator(_zone),
    Field(max_length=64, description="an IANA time zone name", examples=["America/Chicago"]),
]
HttpUrl = Annotated[
    str,
    Field(min_length=8, max_length=2000, examples=["https://example.org/$bulk-publish"]),
    AfterValidator(_http_url),
]
Tag = Annotated[str, Field(min_length=1, max_length=64)]
LocalTime = Annotated[str, Field(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")]
LocalDate = Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
LocalDateTime = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2})?$",
        examples=["2026-03-10T12:00"],
    ),
]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Query(BaseModel):
    """Query parameters: strings coerced to numbers; an empty value is the default."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v != ""}
        return data


# --- requests ----------------------------------------------------------------------


Language = Literal["en", "es"]


class ContactIn(_Strict):
    """How to reach the patient about this booking (reminders, offers of a freed place),
    and in which language. Patient data: sealed at rest, never logged, erased on request
    or after retention."""

    email: str | None = Field(
        None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", examples=["pat@example.org"]
    )
    phone: str | None = Field(
        None, pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164", examples=["+13125550100"]
    )
    language: Language = Field("en", description="of the messages: English or Spanish")


class Patient(_Strict):
    reference: str = Field(
        min_length=1, max_length=128, description="opaque reference chosen by the front-end"
    )
    contact: ContactIn | None = None


DAY_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
Group = Annotated[str, Field(min_length=1, max_length=64)]


class AttestationIn(_Strict):
    """What the patient attested (minimum data; never logged): checked against the
    service's eligibility rule at hold and at confirm."""

    birth_date: str | None = Field(None, pattern=DAY_PATTERN, description="YYYY-MM-DD")
    postal_code: str | None = Field(None, min_length=1, max_length=16)
    cell: str | None = Field(None, pattern=r"^[0-9a-f]{15}$", description="home H3 cell")
    groups: list[Group] = Field(default_factory=list, max_length=16)


# A waiting room's admission token (see ``RoomIn``): needed for holds in a room's area
# while the room is active.
Admission = Annotated[
    str,
    Field(
        min_length=20,
        max_length=400,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="the admission token the waiting room gave this visitor",
    ),
]


class HoldRequest(_Strict):
    provider_id: Id
    service: Id
    start: Instant
    party_size: int = Field(1, ge=1, le=50)
    attestation: AttestationIn | None = None
    admission: Admission | None = None


class AgeBandIn(_Strict):
    min_years: int = Field(0, ge=0, le=150)
    max_years: int | None = Field(None, ge=0, le=150)


class ResidenceIn(_Strict):
    postal_codes: list[Annotated[str, Field(min_length=1, max_length=16)]] = Field(
        default_factory=list, max_length=20_000
    )
    cells: list[Annotated[str, Field(pattern=r"^[0-9a-f]{15}$")]] = Field(
        default_factory=list, max_length=20_000
    )
    lat: float | None = Field(None, ge=-90, le=90, allow_inf_nan=False)
    lng: float | None = Field(None, ge=-180, le=180, allow_inf_nan=False)
    radius_km: float | None = Field(None, gt=0, le=500, allow_inf_nan=False)


class RuleIn(_Strict):
    """Who may book: every part given must be met; a part left out admits everyone."""

    ages: list[AgeBandIn] = Field(default_factory=list, max_length=16)
    reference_date: str | None = Field(
        None, pattern=DAY_PATTERN, description="ages counted on this day (default: the slot's)"
    )
    residence: ResidenceIn | None = None
    groups: list[Group] = Field(default_factory=list, max_length=64)


class RefusedBooking(BaseModel):
    provider_id: str
    booking_id: str
    reasons: list[str]


class RuleOut(RuleIn):
    model_config = ConfigDict(extra="forbid", strict=False)
    rule: str = Field(description="service, or service@provider for one provider's rule")
    service: str
    provider_id: str | None = None
    version: int
    published_at: int
    would_refuse: list[RefusedBooking] = Field(
        default_factory=list,
        description="active bookings this version would refuse: listed for a person to "
        "decide, never cancelled by the publication",
    )


class SeriesTemplateIn(_Strict):
    min_days: int = Field(ge=1, le=365, description="dose 2 at least this many days after dose 1")
    max_days: int = Field(ge=1, le=365, description="and at most this many")
    same_provider: bool = False


class SeriesTemplateOut(SeriesTemplateIn):
    service: Id = Field(description="the service the template is for")


class SecondDoseIn(_Strict):
    provider_id: Id | None = Field(None, description="default: the first dose's provider")
    start: Instant | None = Field(None, description="default: the earliest slot in the window")


class SeriesHoldRequest(_Strict):
    provider_id: Id
    service: Id
    start: Instant
    party_size: int = Field(1, ge=1, le=50)
    second: SecondDoseIn | None = None
    attestation: AttestationIn | None = None
    admission: Admission | None = None


class SeriesBookingRequest(_Strict):
    series_id: RoutableId
    patient: Patient


class SeriesRescheduleRequest(_Strict):
    dose: int = Field(ge=1, le=10, description="which dose moves (1 is the first)")
    start: Instant


class DoseOut(BaseModel):
    dose: int
    provider_id: str
    service: str
    start: str
    hold_id: str
    booking_id: str
    status: str


class SeriesOut(BaseModel):
    series_id: str
    state: str
    reason: str = ""
    booking_token: str | None = None
    doses: list[DoseOut]


VISITOR_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
OneBy = Literal["visitor", "key", "address"]
ONE_PER: tuple[OneBy, ...] = ("visitor", "key", "address")


class _Room(_Strict):
    room_id: Id
    service: Id
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lng: float = Field(ge=-180, le=180, allow_inf_nan=False)
    radius_km: float = Field(gt=0, le=500, allow_inf_nan=False, description="the launch's area")
    per_minute: int = Field(
        ge=1, le=1_000_000, description="admissions a minute at most (less while shedding)"
    )
    session_seconds: int = Field(600, ge=30, le=86_400, description="how long an admission lasts")
    margin: int = Field(
        0, ge=0, le=100_000, description="admitted visitors an area takes beyond its places"
    )
    near_km: float = Field(
        10.0, gt=0, le=500, allow_inf_nan=False, description="places count this near a visitor"
    )
    resolution: int = Field(7, ge=0, le=15, description="H3 resolution of visitors' areas")
    one_per: list[OneBy] = Field(
        default_factory=lambda: list(ONE_PER),
        min_length=1,
        max_length=3,
        description="one place in the queue per visitor id, per API key, per address",
    )
    seed: int | None = Field(
        None, ge=0, lt=2**63, description="the pre-queue lottery's seed (default: drawn at random)"
    )


class RoomIn(_Room):
    """A waiting room for a launch: who it queues (a service in an area), when it opens,
    and how it admits. While it is not closed, holds of its service at providers in its
    area need an admission."""

    opens_at: Instant


class RoomPatch(_Strict):
    """An operator's change to a running room."""

    per_minute: int | None = Field(None, ge=1, le=1_000_000)
    state: Literal["open", "paused", "closed"] | None = None


class JoinIn(_Strict):
    """A visitor joining a room's queue, for the places near where they are."""

    visitor_id: str | None = Field(
        None, pattern=VISITOR_PATTERN, description="the visitor's own id (default: made one)"
    )
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lng: float = Field(ge=-180, le=180, allow_inf_nan=False)


class VisitorOut(BaseModel):
    """Where a visitor stands: small, so the largest crowd of the day can poll it."""

    room_id: str
    visitor_id: str
    status: Literal["pre-queue", "waiting", "admitted", "holding", "sold_out", "expired"]
    position: int | None = Field(None, description="1 at the head; none outside the queue")
    ahead: int | None = None
    estimated_wait_seconds: int | None = None
    places_near: int = Field(description="holdable places within near_km of the visitor")
    near_km: float
    admission: str | None = Field(None, description="the token for holds, once admitted")
    admission_expires_at: str | None = None
    poll_after_seconds: int | None = Field(
        None, description="ask again after this long (none: nothing more to wait for)"
    )
    message: str


class RoomOut(_Room):
    """A room with its state and counts (the seed shows once the lottery is drawn)."""

    opens_at: str
    state: Literal["scheduled", "open", "paused", "closed"]
    drawn: bool = Field(description="the pre-queue's lottery was drawn")
    rate_per_minute: float = Field(description="the admission rate now (backs off on 503s)")
    waiting: int
    pre_queue: int
    joined: int
    admitted: int
    holding: int
    expired: int
    sold_out: int
    sold_out_areas: list[str]


class LotteryOut(BaseModel):
    """The pre-queue's draw: enough to draw it again (``engine.room.lottery``)."""

    room_id: str
    seed: int
    order: list[str]


class BookingRequest(_Strict):
    hold_id: RoutableId
    patient: Patient


Cell = Annotated[str, Field(pattern=r"^[0-9a-f]{15}$", description="an H3 cell")]


class WaitAreaIn(_Strict):
    """Where the patient would go: inside any of ``cells`` (H3, any resolution), or
    within ``radius_km`` of (``lat``, ``lng``); both may be given."""

    cells: list[Cell] = Field(default_factory=list, max_length=500)
    lat: float | None = Field(None, ge=-90, le=90, allow_inf_nan=False)
    lng: float | None = Field(None, ge=-180, le=180, allow_inf_nan=False)
    radius_km: float | None = Field(None, gt=0, le=500, allow_inf_nan=False)


class WaitlistIn(_Strict):
    """Wait for ``party_size`` places of ``service`` in ``area``, in a slot starting in
    [``earliest``, ``latest``). A freed place is offered as a hold (``offer``), which one
    call accepts; until ``expires_at`` (default and at most: ``latest``)."""

    service: Id
    area: WaitAreaIn
    earliest: Instant
    latest: Instant
    party_size: int = Field(1, ge=1, le=50)
    patient: Patient
    attestation: AttestationIn | None = None
    expires_at: Instant | None = None


class WaitlistBookingIn(_Strict):
    """Accept the entry's offer (the body may be empty: the entry has the patient)."""


class AttendanceIn(_Strict):
    """Whether the patient of a booking came (once its slot has started)."""

    attendance: Literal["attended", "no_show"]


class RescheduleRequest(_Strict):
    provider_id: Id
    service: Id
    start: Instant


class SearchQuery(_Query):
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lng: float = Field(ge=-180, le=180, allow_inf_nan=False)
    service: Id
    radius_km: float = Field(10.0, gt=0, le=100, allow_inf_nan=False)
    from_: Instant | None = Field(None, alias="from", description="from this instant (now)")
    to: Instant | None = Field(None, description="before this instant")
    limit: int = Field(20, ge=1, le=100)
    party_size: int = Field(1, ge=1, le=50)
    language: list[Tag] = Field(default_factory=list, max_length=20)
    accessibility: list[Tag] = Field(default_factory=list, max_length=20)
    insurance: list[Tag] = Field(default_factory=list, max_length=20)
    order: Literal["distance", "earliest"] = "distance"
    series: bool = Field(
        False,
        description="only first slots with a dose-2 slot in the service's series window "
        "(at the same site, or at another one nearby unless the template keeps one site)",
    )


class SlotsQuery(_Query):
    service: Id
    from_: Instant | None = Field(None, alias="from")
    to: Instant | None = None


class AuditQuery(_Query):
    after: str | None = Field(
        None, pattern=ENTRY_ID_PATTERN, description="entries after this id (the oldest first)"
    )
    limit: int = Field(100, ge=1, le=1000)
    format: Literal["json", "csv"] = "json"


class ErasureIn(_Strict):
    patient_ref: str = Field(
        min_length=1, max_length=128, description="the patient's opaque reference"
    )


class ErasureOut(BaseModel):
    patient_ref: str
    bookings_erased: int = Field(description="bookings whose patient data was erased now")


class AuditEntryOut(BaseModel):
    id: str = Field(description="the entry's id: give it as `after` to read on")
    at: str = Field(description="when (UTC)")
    who: str = Field(description="`key:<key id>`, or `cli:<user>` for `hexbook keys`")
    role: str
    action: str = Field(examples=["provider.put", "key.revoke", "booking.cancel"])
    target: str = Field(description="the ids the action was on", examples=["provider_id=chi-0001"])
    status: int = Field(description="the HTTP status answered (0: a command)")
    outcome: Literal["ok", "refused", "failed"]


class FeedQuery(_Query):
    after: str | None = Field(
        None, pattern=FEED_CURSOR_PATTERN, description="resume after this event id"
    )


class WindowIn(_Strict):
    opens: LocalTime = Field(examples=["09:00"])
    closes: LocalTime = Field(examples=["17:00"])
    capacity: int = Field(ge=0, le=65_535)


class BlockedIn(_Strict):
    start: LocalDateTime
    end: LocalDateTime


class ScheduleIn(_Strict):
    days: dict[Weekday, Annotated[list[WindowIn], Field(max_length=24)]]
    closed_dates: list[LocalDate] = Field(default_factory=list, max_length=400)
    blocked: list[BlockedIn] = Field(default_factory=list, max_length=1000)


class ProviderIn(_Strict):
    name: str = Field(min_length=1, max_length=200)
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lng: float = Field(ge=-180, le=180, allow_inf_nan=False)
    timezone: TimeZone
    services: list[Id] = Field(min_length=1, max_length=20)
    languages: list[Tag] = Field(default_factory=list, max_length=50)
    accessibility: list[Tag] = Field(default_factory=list, max_length=50)
    insurance: list[Tag] = Field(default_factory=list, max_length=50)
    schedule: ScheduleIn
    first_day: date = Field(ge=FIRST_DAY_MIN, le=FIRST_DAY_MAX, strict=False)
    days: int = Field(14, ge=1, le=366, description="days laid out from first_day")
    slot_minutes: int = Field(15, ge=5, le=240, description="a divisor of a day's minutes")
    horizon_days: int = Field(
        28,
        ge=0,
        le=366,
        description="then kept this many local days ahead of today as days pass (the "
        "rolling horizon; 0: only the days laid out). Past days leave the calendar; their "
        "bookings stay readable by id",
    )


class KeyIn(_Strict):
    role: Literal["booking-client", "provider-admin", "operator"]
    name: str = Field(min_length=1, max_length=128, description="who or what uses the key")
    providers: list[Annotated[str, Field(min_length=1, max_length=129)]] = Field(
        default_factory=list,
        max_length=1000,
        description="provider-admin only: provider ids, or prefixes ending in *",
    )
    rate_per_second: float | None = Field(None, gt=0, le=1_000_000, allow_inf_nan=False)


Connector = Literal["smart", "fhir", "csv"]


class CellShardIn(_Strict):
    shard: str = Field(pattern=ID_PATTERN, max_length=140, description="a shard of GET /v1/shards")


class ImportIn(_Strict):
    connector: Connector = Field(
        description="smart: a SMART Scheduling Links manifest (url); fhir: a FHIR R4 Bundle of "
        "Location, Schedule and Slot (url or content); csv: the sites CSV (url or content)",
    )
    url: HttpUrl | None = None
    content: str | None = Field(None, description="fhir or csv: the file itself")
    source: str | None = Field(
        None, max_length=200, description="names the source of content (default: the connector)"
    )
    states: list[Tag] = Field(
        default_factory=list, max_length=60, description="only Slot files of these states"
    )
    force: bool = Field(False, description="fetch even if the manifest's max-age has not run out")
    timezone: TimeZone = Field(
        "America/New_York", description="time zone of sites the source does not place"
    )


class ImportScheduleIn(_Strict):
    connector: Connector = Field(description="as in POST /v1/imports; the source is a url")
    url: HttpUrl
    every_seconds: int = Field(
        ge=1,
        le=7 * 86400,
        description="run this often (a SMART source is still fetched only when its max-age "
        "has run out); the first run is at once",
    )
    states: list[Tag] = Field(
        default_factory=list, max_length=60, description="only Slot files of these states"
    )
    timezone: TimeZone = Field(
        "America/New_York", description="time zone of sites the source does not place"
    )


# --- answers -----------------------------------------------------------------------


class ProblemIssue(BaseModel):
    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """An error (RFC 9457 problem details) with a stable ``code``."""

    type: str = Field(examples=["https://hexbook.dev/problems/slot_unavailable"])
    title: str
    status: int
    detail: str = Field(description="what happened and what to do")
    code: str = Field(description="stable and machine-readable", examples=["slot_unavailable"])
    errors: list[ProblemIssue] | None = Field(None, description="validation_error: each issue")


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    shards: int
    redis_restarts: int = Field(0, description="restarts of the embedded redis-server")


class ShardOut(BaseModel):
    name: str
    providers: int = Field(description="providers the directory places on it")
    cells: int = Field(description="H3 cells mapped to it (new providers there land on it)")
    dedicated_to: str | None = Field(None, description="the hot site it was made for")


class MoveOut(BaseModel):
    kind: Literal["provider", "cell"]
    id: str = Field(description="the provider id or the H3 cell")
    from_shard: str | None = None
    to_shard: str


class ShardsOut(BaseModel):
    resolution: int = Field(description="the H3 resolution of the directory's cells")
    shards: list[ShardOut]
    moves: list[MoveOut] = Field(description="moves under way (a crash cut them short)")


class CellMoveOut(BaseModel):
    cell: str
    shard: str
    moved: list[str] = Field(description="providers this call moved (none: there already)")


class PromotionOut(BaseModel):
    provider_id: str
    shard: str = Field(description="the shard of its own it is served from now")


class MovesResumed(BaseModel):
    finished: list[str] = Field(description="moves finished, as provider:{id} or cell:{cell}")


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
    hold_id: str = Field(description="a bearer secret: whoever has it may confirm or release")
    provider_id: str
    service: str
    start: str = Field(description="RFC 3339, the provider's local time and offset")
    party_size: int
    expires_at: str


class BookingOut(BaseModel):
    booking_id: str
    booking_token: str | None = Field(
        None,
        description="the secret that reads, cancels or moves this booking: in the answer that "
        "created it (and in a repeat of that request under the same Idempotency-Key)",
    )
    provider_id: str
    service: str
    start: str
    party_size: int
    status: Literal["active", "cancelled"]
    patient: Patient
    attendance: Literal["attended", "no_show"] | None = Field(
        None, description="whether the patient came, as the site marked it (none yet: null)"
    )


class OfferOut(BaseModel):
    hold_id: str = Field(description="the offer is a hold: it counts against capacity")
    provider_id: str
    service: str
    start: str = Field(description="RFC 3339, the provider's local time and offset")
    expires_at: str


class WaitlistOut(BaseModel):
    entry_id: str
    waitlist_token: str | None = Field(
        None,
        description="the secret that reads, leaves or accepts this entry: in the answer that "
        "created it (and in a repeat of that request under the same Idempotency-Key)",
    )
    status: Literal[
        "waiting", "offered", "booked", "declined", "lapsed", "cancelled", "expired"
    ] = Field(
        description="waiting; offered (see offer: accept it before it expires); or over: "
        "booked, declined (the offer was released), lapsed (not accepted in time), "
        "cancelled (left), expired (no place came before expires_at)"
    )
    service: str
    area: WaitAreaIn
    earliest: str
    latest: str
    party_size: int
    joined_at: str
    expires_at: str
    patient: Patient
    offer: OfferOut | None = None


class SlotOut(BaseModel):
    start: str
    capacity: int
    remaining: int


class SlotsOut(BaseModel):
    provider_id: str
    service: str
    slot_minutes: int
    slots: list[SlotOut]


class SecondDoseOut(BaseModel):
    provider_id: str
    start: str


class NextSlot(BaseModel):
    start: str
    remaining: int
    second_dose: SecondDoseOut | None = Field(
        None, description="with series=true: the earliest dose 2 in this slot's window"
    )


class SearchResult(BaseModel):
    provider_id: str
    name: str
    lat: float
    lng: float
    distance_km: float
    service: str
    next_slots: list[NextSlot]


class IndexFreshness(BaseModel):
    as_of_ms: int = Field(description="Unix ms of the last change applied")
    age_ms: int
    entries_applied: int


class SearchOut(BaseModel):
    results: list[SearchResult]
    index: IndexFreshness


class KeyOut(BaseModel):
    key_id: str
    role: str
    name: str
    providers: list[str]
    rate_per_second: float | None
    created_at: float
    revoked_at: float | None
    key: str | None = Field(None, description="the key itself: shown once, at creation")


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


class ManifestFile(BaseModel):
    type: Literal["Location", "Schedule", "Slot"]
    url: str
    extension: dict[str, list[str]] | None = Field(None, description="Slot files: their state")


class SmartManifest(BaseModel):
    """A SMART Scheduling Links ``$bulk-publish`` manifest."""

    transactionTime: str  # noqa: N815 (the name in the SMART specification)
    request: str
    output: list[ManifestFile]
    error: list[Any]


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
