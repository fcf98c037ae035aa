"""Providers: the sites people book at, with where they are and what they offer."""

from __future__ import annotations

import re

import msgspec

from engine.errors import InvalidRequest
from engine.geo import DEFAULT_RESOLUTION, provider_cell
from engine.schedule import zone

__all__ = ["ID_RULE", "Provider", "is_id"]

# Provider ids and service names: what the API's schemas require too (one rule).
ID_RULE = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
_ID = re.compile(ID_RULE)


def is_id(text: str) -> bool:
    """Whether ``text`` is a whole provider id or service name (a final newline is not:
    ``re.match`` with ``$`` would let one through)."""
    return _ID.fullmatch(text) is not None


class Provider(msgspec.Struct, frozen=True, kw_only=True):
    """A vaccination site, clinic or pharmacy.

    ``timezone`` is an IANA name; the provider's schedule is written in it and API
    answers give its local times with their offset.

    >>> p = Provider(provider_id="chi-001", name="Clinic", lat=41.88, lng=-87.63,
    ...              timezone="America/Chicago", services=("covid-vaccine",))
    >>> p.cell()
    '882664c1a9fffff'
    """

    provider_id: str
    name: str
    lat: float
    lng: float
    timezone: str
    services: tuple[str, ...]
    languages: tuple[str, ...] = ()
    accessibility: tuple[str, ...] = ()
    insurance: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not is_id(self.provider_id):
            raise InvalidRequest(
                f"provider id {self.provider_id!r} must be 1 to 128 letters, digits or . _ : -"
            )
        if not -90.0 <= self.lat <= 90.0 or not -180.0 <= self.lng <= 180.0:
            raise InvalidRequest(
                f"position ({self.lat}, {self.lng}) is outside latitude -90..90, "
                "longitude -180..180"
            )
        zone(self.timezone)
        if not self.services:
            raise InvalidRequest(f"provider {self.provider_id!r} must offer at least one service")
        for service in self.services:
            if not is_id(service):
                raise InvalidRequest(f"service name {service!r} must be letters, digits or . _ : -")

    def cell(self, resolution: int = DEFAULT_RESOLUTION) -> str:
        """The H3 cell of the provider's position at ``resolution``."""
        return provider_cell(self.lat, self.lng, resolution)
