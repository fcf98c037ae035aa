"""The pages the gateway serves itself (no separate front end, nothing from a CDN):

- ``/``: find and book (patients), with the booking's own page, the waiting room and
  the waitlist on the way (:mod:`gateway.pages.patient`);
- ``/dashboard``: the launch dashboard (operators), live over server-sent events;
- ``/admin``: the site admin (provider-admins, operators) (:mod:`gateway.pages.staff`);
- ``/signin``: sign-in with an API key.

A domain error on a page is a page too, with the API's status and words.
"""

from __future__ import annotations

from fastapi import APIRouter

from gateway.pages import patient, staff, web

__all__ = ["STATIC", "router"]

STATIC = web.STATIC


router = APIRouter(include_in_schema=False)
router.include_router(patient.router)
router.include_router(staff.router)
