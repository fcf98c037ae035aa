"""The staff's pages: sign-in with an API key, the launch dashboard (operators) and the
site admin (provider-admins, for their own sites; operators, for any).

A page shows what the signed-in key's role allows and nothing more: the dashboard is an
operator's; the site admin lists the sites a provider-admin key names. Every form carries
the session's CSRF token. Changes go through the same service calls as the API (a
schedule change that would drop bookings is refused the same way, 409).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError

from actors.shard import check
from engine.errors import HexbookError, InvalidRequest, NotFound
from engine.provider import Provider
from engine.schedule import Blocked, WeeklyTemplate, Window, build_grid
from gateway.auth import Forbidden, Unauthorized
from gateway.deps import Runtime, RuntimeDep
from gateway.pages import web
from gateway.pages.live import pulse_of
from gateway.pages.web import PageRoute
from gateway.schemas import AttendanceIn, ProviderIn, RoomPatch

__all__ = ["router"]

router = APIRouter(route_class=PageRoute, include_in_schema=False)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


# --- sign-in -----------------------------------------------------------------------


@router.get("/signin")
async def signin_page(request: Request, rt: RuntimeDep) -> Response:
    session = await web.session_of(rt, request)
    asked = request.query_params.get("next", "")
    return web.render(request, "signin.html", session=session, failed=None, next=asked)


@router.post("/signin")
async def signin(request: Request, rt: RuntimeDep) -> Response:
    """Sign in with an API key: a session cookie, then the page the role opens."""
    form = await web.form_of(request)
    key = form.get("api_key", "")
    await web.anonymous(rt, request)  # limited per address: guessing keys is slow
    try:
        cookie, session = await web.start_session(rt, request, key)
    except Unauthorized:
        return web.render(
            request, "signin.html", 401, session=None, failed=True, next=form.get("next", "")
        )
    where = {"operator": "/dashboard", "provider-admin": "/admin"}.get(session.role, "/")
    asked = form.get("next", "")
    if asked.startswith("/") and not asked.startswith("//"):
        where = asked
    response = RedirectResponse(where, 303)
    web.set_session_cookie(response, request, cookie)
    return response


@router.post("/signout")
async def signout(request: Request, rt: RuntimeDep) -> Response:
    session = await web.session_of(rt, request)
    if session is not None:
        web.check_csrf(session, await web.form_of(request))
        await web.end_session(rt, request)
    response = RedirectResponse("/signin", 303)
    response.delete_cookie(web.COOKIE, path="/")
    return response


# --- the launch dashboard ----------------------------------------------------------


@router.get("/dashboard")
async def dashboard(request: Request, rt: RuntimeDep) -> Response:
    session = web.allowed(await web.session_of(rt, request), ("operator",))
    pulse = pulse_of(rt)
    if not pulse.shards:
        await pulse.check_shards()
    return web.render(request, "dashboard.html", session=session, snap=pulse.snapshot())


@router.get("/dashboard/events")
async def dashboard_events(request: Request, rt: RuntimeDep) -> Response:
    """The dashboard's numbers as server-sent events (``event: stats``), once a second."""
    web.allowed(await web.session_of(rt, request), ("operator",))
    return StreamingResponse(
        pulse_of(rt).stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.post("/dashboard/rooms/{room_id}")
async def room_control(room_id: str, request: Request, rt: RuntimeDep) -> Response:
    """Pause, resume or close a waiting room, or change its rate."""
    session = web.allowed(await web.session_of(rt, request), ("operator",))
    form = await web.form_of(request)
    web.check_csrf(session, form)
    patch: dict[str, Any] = {}
    if form.get("state"):
        patch["state"] = form["state"]
    if form.get("per_minute"):
        patch["per_minute"] = web.number(form, "per_minute", 1, 1, 1_000_000)
    try:
        body = RoomPatch.model_validate(patch)
    except ValidationError as exc:
        raise InvalidRequest(str(exc.errors()[0].get("msg"))) from None
    await rt.service.rooms.change(room_id, body)
    await _audit(rt, session, "room.change", f"room_id={room_id}")
    return RedirectResponse("/dashboard", 303)


# --- the site admin ----------------------------------------------------------------


def _may(session: web.Session, provider_id: str) -> None:
    if not session.key.may_admin(provider_id):
        raise Forbidden(f"this key may not manage provider {provider_id!r}")


@router.get("/admin")
async def admin_home(request: Request, rt: RuntimeDep) -> Response:
    """The sites this key may manage (an operator: any, found by id or name)."""
    session = web.allowed(await web.session_of(rt, request), ("provider-admin", "operator"))
    find = request.query_params.get("q", "").strip().casefold()
    sites = [
        p
        for pid, p in sorted(rt.service.providers.items())
        if session.key.may_admin(pid)
        and (not find or find in pid.casefold() or find in p.name.casefold())
    ]
    return web.render(request, "admin_home.html", session=session, sites=sites[:50], find=find)


async def _site(rt: Runtime, provider_id: str) -> tuple[Provider, dict[str, Any]]:
    provider = await rt.service.provider(provider_id)
    service = provider.services[0]
    roster = check(await rt.service.router.call(provider_id, "roster", provider_id, service))
    return provider, roster


def _today(provider: Provider, rt: Runtime) -> date:
    return datetime.fromtimestamp(rt.hexbook.clock.seconds(), ZoneInfo(provider.timezone)).date()


@router.get("/admin/{provider_id}")
async def admin_site(provider_id: str, request: Request, rt: RuntimeDep) -> Response:
    """A site's day: its weekly template (a form), the roster of the day, fill by day."""
    session = web.allowed(await web.session_of(rt, request), ("provider-admin", "operator"))
    _may(session, provider_id)
    provider, roster = await _site(rt, provider_id)
    schedule = roster["schedule"]
    template: WeeklyTemplate | None = schedule.template
    day = _day(request.query_params.get("day"), _today(provider, rt))
    return web.render(
        request,
        "admin_site.html",
        session=session,
        **await _site_context(rt, provider, roster, day),
        form=_form_of_template(template, schedule.slot_minutes),
        preview=None,
        problems=[],
    )


async def _site_context(
    rt: Runtime, provider: Provider, roster: dict[str, Any], day: date
) -> dict[str, Any]:
    zone = ZoneInfo(provider.timezone)
    services = list(provider.services)
    bookings = []
    pid = provider.provider_id
    for service in services:
        got = roster
        if service != services[0]:
            got = check(await rt.service.router.call(pid, "roster", pid, service))
        bookings += [(service, b) for b in got["bookings"]]
    on_day = sorted(
        ((b.start, service, b) for service, b in bookings
         if datetime.fromtimestamp(b.start, zone).date() == day),
        key=lambda row: (row[0], row[1], row[2].booking_id),
    )  # fmt: skip
    return {
        "provider": provider,
        "on": day,
        "prev_day": day - timedelta(days=1),
        "next_day": day + timedelta(days=1),
        "roster": on_day,
        "bookings": bookings,
        "fill": await _fill(rt, provider, bookings, _today(provider, rt)),
        "zone": zone,
        "clock": lambda ts: datetime.fromtimestamp(ts, zone).strftime("%H:%M"),
        "now": rt.hexbook.clock.seconds(),
    }


async def _fill(
    rt: Runtime, provider: Provider, bookings: list[tuple[str, Any]], today: date
) -> list[dict[str, Any]]:
    """Per local day of the coming week and the last: places, booked, fill, cancelled."""
    zone = ZoneInfo(provider.timezone)
    places: dict[date, int] = defaultdict(int)
    for service in provider.services:
        grid = check(
            await rt.service.router.call(provider.provider_id, "slots", provider.provider_id,
                                         service)
        )  # fmt: skip
        step = grid["slot_seconds"]
        for i, cap in enumerate(grid["capacity"]):
            if cap:
                places[datetime.fromtimestamp(grid["start"] + i * step, zone).date()] += cap
    booked: dict[date, int] = defaultdict(int)
    cancelled: dict[date, int] = defaultdict(int)
    no_shows: dict[date, int] = defaultdict(int)
    for _, b in bookings:
        d = datetime.fromtimestamp(b.start, zone).date()
        if b.status == "active":
            booked[d] += b.party_size
            no_shows[d] += b.attendance == "no_show"
        else:
            cancelled[d] += 1
    days = [today + timedelta(days=k) for k in range(-7, 8)]
    return [
        {
            "day": d,
            "places": places.get(d, 0),
            "booked": booked.get(d, 0),
            "cancelled": cancelled.get(d, 0),
            "no_shows": no_shows.get(d, 0),
            "fill": round(100 * booked.get(d, 0) / places[d]) if places.get(d) else None,
        }
        for d in days
        if places.get(d) or booked.get(d) or cancelled.get(d)
    ]


def _day(text: str | None, default: date) -> date:
    if not text:
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"day {text[:20]!r} is not a date (YYYY-MM-DD)") from None


def _form_of_template(template: WeeklyTemplate | None, slot_minutes: int) -> dict[str, str]:
    """The template as the form's fields: per weekday "09:00-17:00/2, ..." and so on."""
    days = dict(template.days) if template else {}
    out = {
        d: ", ".join(f"{w.opens}-{w.closes}/{w.capacity}" for w in days.get(d, ()))
        for d in WEEKDAYS
    }
    out["closed_dates"] = "\n".join(template.closed_dates) if template else ""
    out["blocked"] = "\n".join(f"{b.start} {b.end}" for b in template.blocked) if template else ""
    out["slot_minutes"] = str(slot_minutes)
    return out


def _template_of(form: dict[str, str]) -> tuple[WeeklyTemplate | None, list[str]]:
    """The form's template, or what is wrong with it (every field's problem, in words)."""
    problems: list[str] = []
    days: list[tuple[str, tuple[Window, ...]]] = []
    for d in WEEKDAYS:
        windows = []
        for part in filter(None, (p.strip() for p in form.get(d, "").split(","))):
            hours, _, cap = part.partition("/")
            opens, _, closes = hours.partition("-")
            try:
                window = Window(opens.strip(), closes.strip(), int(cap or "1"))
                if not (_hhmm(window.opens) and _hhmm(window.closes)):
                    raise ValueError
                windows.append(window)
            except (ValueError, TypeError, HexbookError):
                problems.append(f"{d}: {part!r} is not opens-closes/capacity, e.g. 09:00-17:00/2")
        if windows:
            days.append((d, tuple(windows)))
    closed = [c.strip() for c in form.get("closed_dates", "").splitlines() if c.strip()]
    for c in closed:
        try:
            date.fromisoformat(c)
        except ValueError:
            problems.append(f"closed date {c!r} is not a date (YYYY-MM-DD)")
    blocked = []
    for line in filter(None, (x.strip() for x in form.get("blocked", "").splitlines())):
        parts = line.split()
        if len(parts) != 2 or not all(_local(p) for p in parts):
            problems.append(f"blocked period {line!r} is not 'start end' (2026-03-10T12:00 ...)")
        else:
            blocked.append(Blocked(parts[0], parts[1]))
    if problems:
        return None, problems
    try:
        return WeeklyTemplate(tuple(days), tuple(closed), tuple(blocked)), []
    except Exception as exc:  # the engine's own checks, in its words
        return None, [str(exc)]


def _hhmm(text: str) -> bool:
    return len(text) == 5 and text[2] == ":" and text.replace(":", "").isdigit()


def _local(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return "T" in text


@router.post("/admin/{provider_id}")
async def admin_schedule(provider_id: str, request: Request, rt: RuntimeDep) -> Response:
    """Preview the slots of the template in the form, or save it (``action=save``)."""
    session = web.allowed(await web.session_of(rt, request), ("provider-admin", "operator"))
    _may(session, provider_id)
    form = await web.form_of(request)
    web.check_csrf(session, form)
    provider, roster = await _site(rt, provider_id)
    template, problems = _template_of(form)
    try:
        slot_minutes = int(form.get("slot_minutes") or roster["schedule"].slot_minutes)
    except ValueError:
        problems.append("slot minutes must be a whole number")
        slot_minutes = roster["schedule"].slot_minutes
    preview = None
    today = _today(provider, rt)
    if template is not None:
        try:
            grid = build_grid(provider.timezone, template, today, 7, slot_minutes)
            preview = _preview(grid, provider.timezone)
        except Exception as exc:  # the engine says why (a slot length, a window)
            problems.append(str(exc))
    if template is not None and not problems and form.get("action") == "save":
        body = ProviderIn.model_validate(
            {
                "name": provider.name, "lat": provider.lat, "lng": provider.lng,
                "timezone": provider.timezone, "services": list(provider.services),
                "languages": list(provider.languages),
                "accessibility": list(provider.accessibility),
                "insurance": list(provider.insurance),
                "schedule": {
                    "days": {d: [{"opens": w.opens, "closes": w.closes, "capacity": w.capacity}
                                 for w in ws] for d, ws in template.days},
                    "closed_dates": list(template.closed_dates),
                    "blocked": [{"start": b.start, "end": b.end} for b in template.blocked],
                },
                "first_day": today.isoformat(),
                "days": await _days_laid_out(rt, provider, today, roster),
                "slot_minutes": slot_minutes,
                "horizon_days": roster["schedule"].horizon_days,
            }
        )  # fmt: skip
        await rt.service.put_provider(session.principal, provider_id, body)
        await _audit(rt, session, "provider.put", f"provider_id={provider_id}")
        return RedirectResponse(f"/admin/{quote(provider_id)}?saved=1", 303)
    day = _day(None, today)
    return web.render(
        request,
        "admin_site.html",
        422 if problems else 200,
        session=session,
        **await _site_context(rt, provider, roster, day),
        form={**form, "slot_minutes": str(slot_minutes)},
        preview=preview,
        problems=problems,
    )


async def _days_laid_out(
    rt: Runtime, provider: Provider, today: date, roster: dict[str, Any]
) -> int:
    """Days from ``today`` to keep laid out: the calendar's own, or its horizon's."""
    service = provider.services[0]
    pid = provider.provider_id
    grid = check(await rt.service.router.call(pid, "slots", pid, service))
    end = grid["start"] + len(grid["capacity"]) * grid["slot_seconds"] - 1
    last = datetime.fromtimestamp(end, ZoneInfo(provider.timezone)).date()
    horizon: int = roster["schedule"].horizon_days
    return max(horizon, (last - today).days + 1, 1)


def _preview(grid: Any, zone_name: str) -> list[tuple[str, list[tuple[str, int]]]]:
    zone = ZoneInfo(zone_name)
    by_day: dict[str, list[tuple[str, int]]] = {}
    for i, cap in enumerate(grid.capacity.tolist()):
        if cap:
            at = datetime.fromtimestamp(grid.start + i * grid.slot_seconds, zone)
            by_day.setdefault(at.strftime("%a %Y-%m-%d"), []).append((at.strftime("%H:%M"), cap))
    return list(by_day.items())


@router.post("/admin/{provider_id}/bookings/{booking_id}")
async def admin_booking(
    provider_id: str, booking_id: str, request: Request, rt: RuntimeDep
) -> Response:
    """A booking of the roster: cancel it (the patient is told, as for any cancellation)
    or, once its slot has started, mark whether the patient came."""
    session = web.allowed(await web.session_of(rt, request), ("provider-admin", "operator"))
    _may(session, provider_id)
    form = await web.form_of(request)
    web.check_csrf(session, form)
    action = form.get("action", "cancel")
    if action == "cancel":
        await rt.service.cancel_at_site(provider_id, booking_id)
        await _audit(rt, session, "booking.cancel", f"booking_id={booking_id}")
    elif action in ("attended", "no_show"):
        body = AttendanceIn.model_validate({"attendance": action})
        await rt.service.mark_attendance(session.principal, booking_id, body, None)
        await _audit(rt, session, "booking.attendance", f"booking_id={booking_id}")
    else:
        raise InvalidRequest("action must be cancel, attended or no_show")
    query = urlencode({"day": form.get("day", "")})
    return RedirectResponse(f"/admin/{quote(provider_id)}?{query}", 303)


async def _audit(rt: Runtime, session: web.Session, action: str, target: str) -> None:
    """A page's admin action in the audit trail, as the API's are (docs/security.md)."""
    if rt.audit is not None:
        await rt.audit.record(session.principal.name, session.role, action, target, 200)


@router.get("/admin/{provider_id}/export.{fmt}")
async def admin_export(provider_id: str, fmt: str, request: Request, rt: RuntimeDep) -> Response:
    """The site's bookings and its fill by day, as CSV or Excel (xlsx)."""
    session = web.allowed(await web.session_of(rt, request), ("provider-admin", "operator"))
    _may(session, provider_id)
    if fmt not in ("csv", "xlsx"):
        raise NotFound("export as .csv or .xlsx")
    provider, roster = await _site(rt, provider_id)
    ctx = await _site_context(rt, provider, roster, _today(provider, rt))
    zone = ctx["zone"]
    rows = [["booking_id", "service", "start", "party_size", "status", "attendance",
             "patient_reference"]]  # fmt: skip
    for service, b in sorted(ctx["bookings"], key=lambda sb: (sb[0], sb[1].start)):
        rows.append([b.booking_id, service, datetime.fromtimestamp(b.start, zone).isoformat(),
                     b.party_size, b.status, b.attendance or "", b.patient_ref])  # fmt: skip
    fill = [["day", "places", "booked", "fill_percent", "cancelled", "no_shows"]] + [
        [f["day"].isoformat(), f["places"], f["booked"], f["fill"], f["cancelled"], f["no_shows"]]
        for f in ctx["fill"]
    ]
    name = f"{provider_id}-bookings"
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out).writerows(rows)
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers=_attachment(f"{name}.csv"))  # fmt: skip
    data = await asyncio.to_thread(_xlsx, rows, fill)
    return Response(data, media_type=XLSX, headers=_attachment(f"{name}.xlsx"))


def _attachment(filename: str) -> dict[str, str]:
    return {"content-disposition": f'attachment; filename="{filename}"'}


def _xlsx(bookings: list[list[Any]], fill: list[list[Any]]) -> bytes:
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    for title, rows in (("bookings", bookings), ("fill by day", fill)):
        sheet = book.create_sheet(title)
        for row in rows:
            sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
