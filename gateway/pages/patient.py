"""The patient's pages: find a place, hold it, confirm it; the booking's own page (its
token link) to cancel or move it; the waiting room and the waitlist on the way.

Every step is a plain form or link, so the whole path works with JavaScript off. The
pages call :class:`~gateway.service.BookingService` and :class:`~gateway.waitlist.
Waitlists` as an anonymous caller of the patient's address (limited per address, as the
open API is); each form that changes something carries an Idempotency-Key of its own, so
a double click or a reload after a slow answer does the thing once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any
from urllib.parse import quote, urlencode

import h3
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from engine.errors import InvalidRequest, NotFound
from gateway.auth import Principal
from gateway.deps import RuntimeDep
from gateway.pages.places import cell_map, locate
from gateway.pages.web import PageRoute, anonymous, degrees, form_of, language_of, number, page
from gateway.schemas import (
    BookingRequest,
    HoldRequest,
    JoinIn,
    RescheduleRequest,
    SearchQuery,
    WaitlistIn,
)
from gateway.timefmt import format_local, rfc3339_seconds

__all__ = ["router"]

router = APIRouter(route_class=PageRoute, include_in_schema=False)
MAP_RESOLUTION = 7  # cells of about 5 km² at the city's scale
ADMISSION_COOKIE = "hb_admission"
IDEM = re.compile(r"[A-Za-z0-9_-]{8,64}")


async def _patient(rt: RuntimeDep, request: Request) -> Principal:
    """The patient as the API sees them: anonymous, from their address, rate-limited."""
    return await anonymous(rt, request)


def _invalid(exc: ValidationError) -> InvalidRequest:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return InvalidRequest(f"{where}: {first.get('msg', 'invalid')}".strip(": "))


def _services(rt: RuntimeDep) -> list[str]:
    return sorted({s for _, s in rt.index.calendars()}) or ["covid-vaccine"]


@router.get("/")
async def find(request: Request, rt: RuntimeDep) -> Response:
    """The find page: a search form; with ``q`` (or ``lat`` and ``lng``) the places near."""
    await _patient(rt, request)
    q = request.query_params
    services = _services(rt)
    service = q.get("service") or services[0]
    asked = {
        "q": q.get("q", ""),
        "service": service,
        "radius": q.get("radius", "5"),
        "party": q.get("party", "1"),
    }
    context: dict[str, Any] = {"asked": asked, "services": services, "results": None}
    point: tuple[float, float] | None = None
    if q.get("lat") and q.get("lng"):
        point = locate(f"{q.get('lat')},{q.get('lng')}")
        if point is None:
            raise InvalidRequest("lat and lng must be a point (degrees)")
    elif asked["q"]:
        point = locate(asked["q"])
        if point is None:
            return await page(rt, request, "find.html", 422, unknown=asked["q"], **context)
    if point is not None:
        try:
            query = SearchQuery.model_validate(
                {
                    "lat": point[0],
                    "lng": point[1],
                    "service": service,
                    "radius_km": asked["radius"],
                    "party_size": asked["party"],
                    "limit": 20,
                }
            )
        except ValidationError as exc:
            raise _invalid(exc) from None
        found = rt.service.search(query)["results"]
        for r in found:
            r["slots"] = [rfc3339_seconds(s["start"]) for s in r["next_slots"][:6]]
            r["timezone"] = rt.service.providers[r["provider_id"]].timezone
        context |= {
            "results": found,
            "point": point,
            "map": _near_map(rt, point, query.radius_km, service),
            "waitlist_at": point,
        }
    return await page(
        rt, request, "find.html", unknown=None, idem_waitlist=secrets.token_urlsafe(16), **context
    )


def _near_map(rt: RuntimeDep, point: tuple[float, float], radius_km: float, service: str) -> str:
    """Free places by cell within the radius, drawn as hexagons."""
    lats, lngs, free = rt.index.places_rows(service, rt.hexbook.clock.seconds())
    values: dict[str, float] = {}
    for lat, lng, n in zip(lats.tolist(), lngs.tolist(), free.tolist(), strict=True):
        if n <= 0 or _km(point, (lat, lng)) > radius_km:
            continue
        cell = h3.latlng_to_cell(lat, lng, MAP_RESOLUTION)
        values[cell] = values.get(cell, 0) + n
    return cell_map(
        values,
        label="free places by area near the search",
        marker=point,
        titles={c: f"{int(v)} free" for c, v in values.items()},
    )


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(h3.great_circle_distance(a, b, unit="km"))


@router.get("/book")
async def pick(request: Request, rt: RuntimeDep) -> Response:
    """A slot chosen: what it is, the service's eligibility questions, the hold button
    (or the waiting room first, while one covers the site)."""
    await _patient(rt, request)
    q = request.query_params
    provider_id, service, start = q.get("provider_id", ""), q.get("service", ""), q.get("start")
    try:
        at = rfc3339_seconds(start or "")
    except ValueError as exc:
        raise InvalidRequest(f"start: {exc}") from None
    provider = await rt.service.provider(provider_id)
    if service not in provider.services:
        raise NotFound(f"{provider.name} does not offer {service!r}")
    rule = await rt.service.policies.rule(service, provider_id)
    room = rt.service.rooms.room_for(provider, service)
    admission = request.cookies.get(ADMISSION_COOKIE)
    return await page(
        rt,
        request,
        "book.html",
        provider=provider,
        service=service,
        start=start,
        at=at,
        party=q.get("party", "1"),
        rule=rule,
        room=room if room is not None and not admission else None,
        idem=secrets.token_urlsafe(16),
    )


@router.post("/book")
async def hold(request: Request, rt: RuntimeDep) -> Response:
    """Hold the chosen place, then the hold's page (its patient details and confirm)."""
    patient = await _patient(rt, request)
    form = await form_of(request)
    body: dict[str, Any] = {
        "provider_id": form.get("provider_id", ""),
        "service": form.get("service", ""),
        "start": form.get("start", ""),
        "party_size": number(form, "party", 1, 1, 50),
    }
    attest = {k: form[k] for k in ("birth_date", "postal_code") if form.get(k)}
    if attest:
        body["attestation"] = attest
    admission = request.cookies.get(ADMISSION_COOKIE)
    if admission:
        body["admission"] = admission
    try:
        req = HoldRequest.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from None
    out = await rt.service.hold(patient, req, _idem(form))
    where = f"/hold/{quote(out['hold_id'])}?" + urlencode({"lang": language_of(request)})
    response = RedirectResponse(where, 303)
    if admission:
        response.delete_cookie(ADMISSION_COOKIE)  # spent on this hold
    return response


@router.get("/hold/{hold_id}")
async def held(hold_id: str, request: Request, rt: RuntimeDep) -> Response:
    """The hold: until when it is kept, the patient's details, confirm or let go."""
    await _patient(rt, request)
    hold_ = await rt.service.hold_of(hold_id)
    provider = await rt.service.provider(hold_["provider_id"])
    return await page(
        rt,
        request,
        "hold.html",
        hold=hold_,
        provider=provider,
        at=rfc3339_seconds(hold_["start"]),
        expires=rfc3339_seconds(hold_["expires_at"]),
        idem=secrets.token_urlsafe(16),
    )


@router.post("/hold/{hold_id}")
async def confirm(hold_id: str, request: Request, rt: RuntimeDep) -> Response:
    """Confirm (or let go of) a hold; a booking goes to its own page, the token link."""
    patient = await _patient(rt, request)
    form = await form_of(request)
    if form.get("action") == "release":
        await rt.service.release(patient, hold_id, _idem(form))
        return RedirectResponse("/?" + urlencode({"lang": language_of(request)}), 303)
    contact: dict[str, str] = {"language": language_of(request)}
    if form.get("email"):
        contact["email"] = form["email"]
    try:
        req = BookingRequest.model_validate(
            {
                "hold_id": hold_id,
                "patient": {"reference": _reference(form), "contact": contact},
            }
        )
    except ValidationError as exc:
        raise _invalid(exc) from None
    out = await rt.service.book(patient, req, _idem(form))
    return RedirectResponse(_booking_link(out["booking_id"], out["booking_token"], request), 303)


def _booking_link(booking_id: str, token: str, request: Request) -> str:
    query = urlencode({"token": token, "lang": language_of(request)})
    return f"/booking/{quote(booking_id)}?{query}"


@router.get("/booking/{booking_id}")
async def booking(booking_id: str, request: Request, rt: RuntimeDep) -> Response:
    """The booking's page (its token in the link): when and where, cancel, move."""
    patient = await _patient(rt, request)
    token = request.query_params.get("token")
    out = await rt.service.booking(patient, booking_id, token)
    provider = await rt.service.provider(out["provider_id"])
    later: list[int] = []
    if out["status"] == "active":
        later = _free_starts(rt, out["provider_id"], out["service"], out["party_size"])
    return await page(
        rt,
        request,
        "booking.html",
        booking=out,
        at=rfc3339_seconds(out["start"]),
        provider=provider,
        token=token,
        later=later,
        idem=secrets.token_urlsafe(16),
        iso=lambda ts: format_local(ts, provider.timezone),
    )


def _free_starts(rt: RuntimeDep, provider_id: str, service: str, party: int) -> list[int]:
    grid = rt.index.free_of(provider_id, service)
    if grid is None:
        return []
    start, step, free = grid
    now = rt.hexbook.clock.seconds()
    out = []
    for i, n in enumerate(free.tolist()):
        if n >= party and start + i * step > now:
            out.append(start + i * step)
            if len(out) == 8:
                break
    return out


@router.post("/booking/{booking_id}")
async def change(booking_id: str, request: Request, rt: RuntimeDep) -> Response:
    """Cancel or move a booking, by its token."""
    patient = await _patient(rt, request)
    form = await form_of(request)
    token = form.get("token")
    if form.get("action") == "cancel":
        await rt.service.cancel(patient, booking_id, token, _idem(form))
    elif form.get("action") == "move":
        current = await rt.service.booking(patient, booking_id, token)
        try:
            req = RescheduleRequest.model_validate(
                {
                    "provider_id": current["provider_id"],
                    "service": current["service"],
                    "start": form.get("start", ""),
                }
            )
        except ValidationError as exc:
            raise _invalid(exc) from None
        moved = await rt.service.reschedule(patient, booking_id, token, req, _idem(form))
        booking_id = moved["booking_id"]
    else:
        raise InvalidRequest("action must be cancel or move")
    return RedirectResponse(_booking_link(booking_id, token or "", request), 303)


# --- the waiting room --------------------------------------------------------------


@router.post("/room/{room_id}")
async def room_join(room_id: str, request: Request, rt: RuntimeDep) -> Response:
    """Join a room's line from the slot page; its page says where one stands."""
    patient = await _patient(rt, request)
    form = await form_of(request)
    try:
        body = JoinIn.model_validate(
            {"lat": degrees(form, "lat", 90), "lng": degrees(form, "lng", 180)}
        )
    except ValidationError as exc:
        raise _invalid(exc) from None
    _, view = await rt.service.rooms.join(room_id, patient, body)
    back = form.get("next", "/")
    if not back.startswith("/book?"):
        back = "/"
    query = urlencode({"next": back, "lang": language_of(request)})
    return RedirectResponse(f"/room/{quote(room_id)}/{quote(view['visitor_id'])}?{query}", 303)


@router.get("/room/{room_id}/{visitor_id}")
async def room_wait(room_id: str, visitor_id: str, request: Request, rt: RuntimeDep) -> Response:
    """Where the visitor stands; it refreshes itself (no script) until they are let in,
    then sends them back to their slot with the admission kept in a cookie."""
    patient = await _patient(rt, request)
    view = await rt.service.rooms.visitor(room_id, visitor_id, patient)
    back = request.query_params.get("next", "/")
    if not back.startswith("/book?"):
        back = "/"
    if view.get("admission"):
        response = RedirectResponse(back, 303)
        response.set_cookie(
            ADMISSION_COOKIE,
            view["admission"],
            max_age=900,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response
    answer = await page(rt, request, "room.html", view=view, back=back)
    answer.headers["refresh"] = str(int(view.get("poll_after_seconds") or 5))
    return answer


# --- the waitlist ------------------------------------------------------------------


@router.post("/waitlist")
async def waitlist_join(request: Request, rt: RuntimeDep) -> Response:
    """Join the waitlist for places near the search, over the next two weeks."""
    patient = await _patient(rt, request)
    form = await form_of(request)
    now = rt.hexbook.clock.seconds()
    contact: dict[str, str] = {"language": language_of(request)}
    if form.get("email"):
        contact["email"] = form["email"]
    try:
        req = WaitlistIn.model_validate(
            {
                "service": form.get("service", ""),
                "area": {
                    "lat": degrees(form, "lat", 90),
                    "lng": degrees(form, "lng", 180),
                    "radius_km": number(form, "radius", 5, 1, 100),
                },
                "earliest": format_local(now + 3600, "UTC"),
                "latest": format_local(now + 14 * 86400, "UTC"),
                "party_size": number(form, "party", 1, 1, 50),
                "patient": {"reference": _reference(form), "contact": contact},
            }
        )
    except ValidationError as exc:
        raise _invalid(exc) from None
    waitlists = rt.waitlists
    assert waitlists is not None
    out = await waitlists.join(patient, req, _idem(form))
    query = urlencode({"token": out["waitlist_token"], "lang": language_of(request)})
    return RedirectResponse(f"/waitlist/{quote(out['entry_id'])}?{query}", 303)


@router.get("/waitlist/{entry_id}")
async def waitlist_entry(entry_id: str, request: Request, rt: RuntimeDep) -> Response:
    """The entry's page (its token link): waiting, or the place offered and a button."""
    patient = await _patient(rt, request)
    waitlists = rt.waitlists
    assert waitlists is not None
    token = request.query_params.get("token")
    out = await waitlists.read(patient, entry_id, token)
    offer = out.get("offer")
    provider = await rt.service.provider(offer["provider_id"]) if offer else None
    return await page(
        rt,
        request,
        "waitlist.html",
        entry=out,
        offer=offer,
        provider=provider,
        at=rfc3339_seconds(offer["start"]) if offer else None,
        token=token,
        idem=secrets.token_urlsafe(16),
    )


@router.post("/waitlist/{entry_id}")
async def waitlist_act(entry_id: str, request: Request, rt: RuntimeDep) -> Response:
    """Accept the offer (a booking, to its page) or leave the waitlist."""
    patient = await _patient(rt, request)
    form = await form_of(request)
    waitlists = rt.waitlists
    assert waitlists is not None
    token = form.get("token")
    if form.get("action") == "leave":
        await waitlists.leave(patient, entry_id, token)
        return RedirectResponse("/?" + urlencode({"lang": language_of(request)}), 303)
    out = await waitlists.accept(patient, entry_id, token, _idem(form))
    return RedirectResponse(_booking_link(out["booking_id"], out["booking_token"], request), 303)


def _idem(form: dict[str, str]) -> str | None:
    key = form.get("idem") or None
    if key is not None and not (
        8 <= len(key) <= 64 and key.replace("-", "").replace("_", "").isalnum()
    ):
        raise InvalidRequest("the form's idem field is malformed; reload the page")
    return key


def _reference(form: dict[str, str]) -> str:
    """The patient's reference for a form: the same for the same form sent again (so
    the repeat is the same request), else a new one."""
    key = _idem(form)
    if key is None:
        return "web-" + secrets.token_hex(8)
    return "web-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _lang(request: Request) -> str:
    return language_of(request)
