"""What every page shares: the templates, the two languages, local times, forms, and the
signed-in session with its CSRF token.

Pages are server-rendered HTML (Jinja2, autoescaped) that work with JavaScript off; the
one script (``static/pages.js``) adds "use my location" and the dashboard's live updates.
Forms arrive as ``application/x-www-form-urlencoded`` and are parsed here (no multipart).

Sign-in takes an API key of :mod:`gateway.keys`. The session lives in Redis
(``hexbook:session:<sha256 of the cookie>``, 8 h), never the key itself: each request reads
the key's record by id again, so a revoked key's session ends at once. The cookie is
HttpOnly, SameSite=Strict and Secure over TLS; every form of a signed-in page carries the
session's CSRF token, checked on POST.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode
from zoneinfo import ZoneInfo

import jinja2
from babel.dates import format_date, format_time
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute

from engine.errors import HexbookError, InvalidRequest
from gateway.auth import (
    Forbidden,
    Principal,
    RateLimited,
    Unauthorized,
    client_address,
    retry_after_seconds,
)
from gateway.deps import Runtime
from gateway.keys import ApiKey
from gateway.problems import status_of

__all__ = [
    "LANGUAGES",
    "PAGE_CSP",
    "STATIC",
    "PageRoute",
    "Session",
    "anonymous",
    "end_session",
    "form_of",
    "language_of",
    "local_day",
    "local_time",
    "page",
    "render",
    "session_of",
    "start_session",
]

HERE = Path(__file__).parent
STATIC = HERE / "static"
LANGUAGES = ("en", "es")
COOKIE = "hb_session"
LANG_COOKIE = "hb_lang"
SESSION_SECONDS = 8 * 3600
MAX_FORM_BYTES = 64 * 1024
# Pages load only the gateway's own files, and no inline script at all.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
    "object-src 'none'"
)

# The patient pages' words, in both languages (staff pages are in English).
TEXT: dict[str, tuple[str, str]] = {
    "title": ("Find a vaccination appointment", "Buscar una cita de vacunación"),
    "where": ("Address, postal code or place", "Dirección, código postal o lugar"),
    "where_hint": (
        "For example 60614, or 233 S Wacker Dr, Chicago 60606",
        "Por ejemplo 60614, o 233 S Wacker Dr, Chicago 60606",
    ),
    "service": ("Service", "Servicio"),
    "radius": ("Within (km)", "A menos de (km)"),
    "party": ("People", "Personas"),
    "search": ("Search", "Buscar"),
    "locate": ("Use my location", "Usar mi ubicación"),
    "results": ("Places nearby", "Lugares cercanos"),
    "none": ("No free places near there.", "No hay lugares libres cerca."),
    "km": ("km away", "km de distancia"),
    "free": ("free", "libres"),
    "map": ("Map of free places nearby", "Mapa de lugares libres cercanos"),
    "map_key": (
        "Each hexagon is an area; darker means more free places.",
        "Cada hexágono es una zona; más oscuro significa más lugares libres.",
    ),
    "pick": ("Choose a time", "Elija una hora"),
    "hold": ("Hold this place", "Reservar este lugar"),
    "held": ("This place is held for you until", "Este lugar está reservado para usted hasta"),
    "eligibility": (
        "Who may book this service",
        "Quién puede reservar este servicio",
    ),
    "birth_date": ("Date of birth", "Fecha de nacimiento"),
    "postal_code": ("Postal code where you live", "Código postal donde vive"),
    "email": ("E-mail (for the confirmation, optional)", "Correo (para la confirmación, opcional)"),
    "confirm": ("Confirm the booking", "Confirmar la cita"),
    "release": ("Let the place go", "Liberar el lugar"),
    "booked": ("Your appointment is booked", "Su cita está reservada"),
    "keep_link": (
        "Keep this page's address: it is your link to change or cancel.",
        "Guarde la dirección de esta página: es su enlace para cambiar o cancelar.",
    ),
    "cancel": ("Cancel the appointment", "Cancelar la cita"),
    "cancelled": ("This appointment is cancelled.", "Esta cita está cancelada."),
    "reschedule": ("Move to another time", "Cambiar a otra hora"),
    "move": ("Move here", "Cambiar aquí"),
    "status": ("Status", "Estado"),
    "when": ("When", "Cuándo"),
    "where_site": ("Where", "Dónde"),
    "waitlist": ("Tell me when a place frees up", "Avíseme cuando haya un lugar"),
    "waitlist_join": ("Join the waitlist", "Unirse a la lista de espera"),
    "waiting": (
        "You are on the waitlist. A freed place will be held for you.",
        "Está en la lista de espera. Un lugar liberado se reservará para usted.",
    ),
    "offer": ("A place is held for you", "Hay un lugar reservado para usted"),
    "accept": ("Book it", "Reservarlo"),
    "leave": ("Leave the waitlist", "Salir de la lista de espera"),
    "room": ("Waiting room", "Sala de espera"),
    "room_join": ("Join the waiting room", "Entrar en la sala de espera"),
    "room_wait": (
        "Many people are booking now. You keep your place in line; this page refreshes.",
        "Mucha gente está reservando. Conserva su lugar en la fila; esta página se actualiza.",
    ),
    "position": ("Your place in line", "Su lugar en la fila"),
    "problem": ("Something needs your attention", "Algo necesita su atención"),
    "back": ("Back to the search", "Volver a la búsqueda"),
    "language": ("Español", "English"),
    "skip": ("Skip to the content", "Saltar al contenido"),
}


def language_of(request: Request) -> str:
    """``?lang=``, else the language cookie, else the browser's first of ours, else en."""
    asked = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE)
    if asked in LANGUAGES:
        return asked
    for part in request.headers.get("accept-language", "").split(","):
        tag = part.split(";")[0].strip().lower()[:2]
        if tag in LANGUAGES:
            return tag
    return "en"


def local_day(ts: int, zone: str, lang: str) -> str:
    """The day of ``ts`` at the site, written the language's way."""
    return str(format_date(datetime.fromtimestamp(ts, ZoneInfo(zone)), "full", locale=lang))


def local_time(ts: int, zone: str, lang: str) -> str:
    """The time of day of ``ts`` at the site."""
    return str(format_time(datetime.fromtimestamp(ts, ZoneInfo(zone)), "short", locale=lang))


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("gateway.pages", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(
    request: Request,
    template: str,
    status: int = 200,
    *,
    session: Session | None = None,
    **context: Any,
) -> HTMLResponse:
    """A page: ``template`` with ``context``, the language's words as ``t``, the session's
    role and CSRF token; its own CSP (no inline script)."""
    lang = language_of(request)
    other = "es" if lang == "en" else "en"
    query = dict(request.query_params)
    query["lang"] = other
    html = _env.get_template(template).render(
        lang=lang,
        t=lambda k: TEXT[k][LANGUAGES.index(lang)],
        day=lambda ts, zone: local_day(ts, zone, lang),
        time=lambda ts, zone: local_time(ts, zone, lang),
        switch="?" + urlencode(query),
        session=session,
        role=session.role if session else "anonymous",
        csrf=session.csrf if session else "",
        path=request.url.path,
        **context,
    )
    response = HTMLResponse(html, status)
    response.headers["content-security-policy"] = PAGE_CSP
    response.headers["cache-control"] = "no-store"
    if request.query_params.get("lang") in LANGUAGES:
        response.set_cookie(
            LANG_COOKIE, lang, max_age=365 * 86400, samesite="lax", secure=_tls(request)
        )
    return response


async def page(
    rt: Runtime, request: Request, template: str, status: int = 200, **context: Any
) -> HTMLResponse:
    """:func:`render` for a page anyone may open: signed-in staff still see their menu."""
    return render(request, template, status, session=await session_of(rt, request), **context)


async def form_of(request: Request) -> dict[str, str]:
    """A url-encoded form's fields (the first value of each); a 4xx for anything else."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise InvalidRequest("send the form as application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise InvalidRequest("the form is too large")
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=200)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"the form cannot be read: {exc}") from None
    return {k: v[0].strip() for k, v in fields.items()}


def _tls(request: Request) -> bool:
    return request.url.scheme == "https"


# --- the signed-in session ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser: its key's record and its CSRF token."""

    key: ApiKey
    csrf: str
    address: str

    @property
    def role(self) -> str:
        return self.key.role

    @property
    def principal(self) -> Principal:
        return Principal(self.key, self.address)


def _session_key(cookie: str) -> str:
    return "hexbook:session:" + hashlib.sha256(cookie.encode()).hexdigest()


async def start_session(rt: Runtime, request: Request, api_key: str) -> tuple[str, Session]:
    """Sign in with ``api_key``: the cookie's value and the session (401 if unknown)."""
    record = await rt.auth.key(api_key)
    if record is None:
        raise Unauthorized("unknown or revoked API key")
    cookie = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    value = json.dumps({"key_id": record.key_id, "csrf": csrf})
    await asyncio.to_thread(rt.hexbook.redis.set, _session_key(cookie), value, ex=SESSION_SECONDS)
    return cookie, Session(record, csrf, _address(rt, request))


def _address(rt: Runtime, request: Request) -> str:
    return client_address(request.scope, rt.trusted_proxies)


async def anonymous(rt: Runtime, request: Request) -> Principal:
    """The caller as the open API sees one without a key: its address, rate-limited."""
    principal = Principal(None, _address(rt, request))
    await rt.auth.limit(principal)
    return principal


async def session_of(rt: Runtime, request: Request) -> Session | None:
    """The signed-in session of ``request``, if any (a revoked key has none)."""
    cookie = request.cookies.get(COOKIE)
    if not cookie or len(cookie) > 100:
        return None
    raw = await asyncio.to_thread(rt.hexbook.redis.get, _session_key(cookie))
    if raw is None:
        return None
    data = json.loads(raw)
    record = await asyncio.to_thread(rt.keys.get, data["key_id"])
    if record is None or not record.active:
        return None
    session = Session(record, data["csrf"], _address(rt, request))
    await rt.auth.limit(session.principal)  # a signed-in browser counts against its key's rate
    return session


async def end_session(rt: Runtime, request: Request) -> None:
    cookie = request.cookies.get(COOKIE)
    if cookie and len(cookie) <= 100:
        await asyncio.to_thread(rt.hexbook.redis.delete, _session_key(cookie))


def set_session_cookie(response: Response, request: Request, cookie: str) -> None:
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=_tls(request),
        path="/",
    )


def check_csrf(session: Session, form: dict[str, str]) -> None:
    """A signed-in form must carry its session's CSRF token (403 otherwise)."""
    if not hmac.compare_digest(form.get("csrf", ""), session.csrf):
        raise Forbidden("this form is out of date or not from this site; reload the page")


def allowed(session: Session | None, roles: tuple[str, ...]) -> Session:
    """The session, if its role is one of ``roles``; else 401 (signed out) or 403."""
    if session is None:
        raise Unauthorized("sign in with an API key to see this page")
    if session.role not in roles:
        raise Forbidden(f"a {session.role} key may not open this page ({' or '.join(roles)})")
    return session


def redirect_to_signin(request: Request) -> Response:
    """A signed-out visit to a staff page: to the sign-in, and back after."""
    from fastapi.responses import RedirectResponse

    return RedirectResponse("/signin?" + urlencode({"next": request.url.path}), 303)


class PageRoute(APIRoute):
    """A page's route: domain errors become a problem page (HTML) of the same status."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                err = InvalidRequest(str(first.get("msg", "the request is not valid")))
                return problem_page(request, err, 422)
            except HexbookError as exc:
                status = status_of(exc)
                if isinstance(exc, Unauthorized) and request.method == "GET":
                    return redirect_to_signin(request)
                answer = problem_page(request, exc, status)
                if isinstance(exc, RateLimited):
                    answer.headers["retry-after"] = retry_after_seconds(exc.retry_after)
                return answer

        return page


def problem_page(request: Request, exc: HexbookError, status: int) -> HTMLResponse:
    """A domain error as a page (the same words as the API's problem)."""
    return render(request, "problem.html", status, code=exc.code, detail=str(exc))


def number(form: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    """A whole number of a form, in [low, high] (422 saying which field otherwise)."""
    raw = form.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number, not {raw[:20]!r}") from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be from {low} to {high}")
    return value


def degrees(form: dict[str, str], name: str, limit: float) -> float:
    """A latitude or longitude of a form."""
    raw = form.get(name, "")
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number of degrees") from None
    if not -limit <= value <= limit:
        raise InvalidRequest(f"{name} must be from -{limit:g} to {limit:g}")
    return value
