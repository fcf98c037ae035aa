"""Who may book: eligibility rules, versioned, and what a patient attests.

A :class:`Rule` says who may book a service (at every site, or at one provider): age
bands on a reference date, a residence area (postal codes, H3 cells, a radius) and the
priority groups that admit. A front-end states what the patient attested
(:class:`Attestation`: date of birth, postal code, home cell, groups: the minimum, never
logged) with the hold; the calendar checks it at hold against the version in force and
again at confirm against the version in force then, and the booking keeps the version
that admitted it (:mod:`engine.calendar`). :func:`refusals` is the whole decision.

>>> rule = Rule(service="vaccine", version=2, ages=(AgeBand(min_years=65),))
>>> refusals(rule, Attestation(birth_date="1950-06-01"), date(2026, 3, 2))
()
>>> refusals(rule, Attestation(birth_date="1990-06-01"), date(2026, 3, 2))
('age 35 on 2026-03-02 is outside the bands 65+',)
"""

from __future__ import annotations

import math
from datetime import date

import h3
import msgspec

from engine.errors import InvalidRequest
from engine.geo import check_area, haversine_km

__all__ = [
    "AgeBand",
    "Attestation",
    "Residence",
    "Rule",
    "age_on",
    "refusals",
    "rule_name",
    "validate_rule",
]


class AgeBand(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Ages ``min_years`` to ``max_years`` (both included; no maximum if ``None``)."""

    min_years: int = 0
    max_years: int | None = None

    def __str__(self) -> str:
        if self.max_years is None:
            return f"{self.min_years}+"
        return f"{self.min_years}-{self.max_years}"


class Residence(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Where patients must live: any of the postal codes, inside any of the H3 cells
    (of any resolution), or within ``radius_km`` of (``lat``, ``lng``)."""

    postal_codes: tuple[str, ...] = ()
    cells: tuple[str, ...] = ()
    lat: float | None = None
    lng: float | None = None
    radius_km: float | None = None


class Rule(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One version of who may book ``service`` (at ``provider_id`` only, if given).

    Empty parts admit everyone: no bands, no residence, no groups. ``reference_date``
    is the day ages are counted on (``None``: the appointment's local day)."""

    service: str
    version: int = 0
    provider_id: str | None = None
    ages: tuple[AgeBand, ...] = ()
    reference_date: str | None = None
    residence: Residence | None = None
    groups: tuple[str, ...] = ()
    published_at: int = 0


class Attestation(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What a patient attested through a front-end: ISO date of birth, postal code,
    the H3 cell of their home (any resolution from 7), priority groups."""

    birth_date: str | None = None
    postal_code: str | None = None
    cell: str | None = None
    groups: tuple[str, ...] = ()


def rule_name(rule: Rule) -> str:
    """How problems and lists name a rule: ``service`` or ``service@provider``."""
    return rule.service if rule.provider_id is None else f"{rule.service}@{rule.provider_id}"


def _day(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"{what} {text!r} is not a date (YYYY-MM-DD)") from None


def age_on(birth: date, day: date) -> int:
    """Whole years from ``birth`` to ``day`` (a 29 February birthday counts on 1 March
    in other years)."""
    years = day.year - birth.year
    return years - 1 if (day.month, day.day) < (birth.month, birth.day) else years


def validate_rule(rule: Rule) -> None:
    """Raise :class:`InvalidRequest` for a rule that could never be applied as meant."""
    for band in rule.ages:
        if band.min_years < 0 or (band.max_years is not None and band.max_years < band.min_years):
            raise InvalidRequest(f"age band {band} must have 0 <= min <= max")
    if rule.reference_date is not None:
        _day(rule.reference_date, "reference date")
    res = rule.residence
    if res is not None:
        radius = check_area(res.cells, res.lat, res.lng, res.radius_km, "residence")
        if not radius and not res.postal_codes and not res.cells:
            raise InvalidRequest("a residence needs postal codes, cells or a radius")


def _lives_in(res: Residence, att: Attestation) -> bool:
    if att.postal_code is not None and att.postal_code in res.postal_codes:
        return True
    if att.cell is None or not h3.is_valid_cell(att.cell):
        return False
    home_res = h3.get_resolution(att.cell)
    for cell in res.cells:
        r = h3.get_resolution(cell)
        if r <= home_res and h3.cell_to_parent(att.cell, r) == cell:
            return True
    if res.radius_km is not None and res.lat is not None and res.lng is not None:
        lat, lng = h3.cell_to_latlng(att.cell)
        distance = float(haversine_km(res.lat, res.lng, lat, lng))
        return not math.isnan(distance) and distance <= res.radius_km
    return False


def refusals(rule: Rule, attested: Attestation | None, appointment_day: date) -> tuple[str, ...]:
    """Why ``rule`` refuses a patient who attested ``attested`` for an appointment on
    ``appointment_day`` (local): one reason per part not met; empty when admitted."""
    att = attested if attested is not None else Attestation()
    out: list[str] = []
    if rule.ages:
        day = (
            appointment_day
            if rule.reference_date is None
            else _day(rule.reference_date, "reference date")
        )
        if att.birth_date is None:
            out.append("the date of birth was not attested")
        else:
            try:
                age = age_on(_day(att.birth_date, "date of birth"), day)
            except InvalidRequest as exc:
                out.append(str(exc))
            else:
                bands = [b for b in rule.ages if b.min_years <= age]
                if not any(b.max_years is None or age <= b.max_years for b in bands):
                    shown = ", ".join(str(b) for b in rule.ages)
                    out.append(f"age {age} on {day.isoformat()} is outside the bands {shown}")
    if rule.residence is not None and not _lives_in(rule.residence, att):
        if att.postal_code is None and att.cell is None:
            out.append("no residence was attested (postal code or home cell)")
        else:
            out.append("the attested residence is outside the rule's area")
    if rule.groups and not set(att.groups) & set(rule.groups):
        out.append(f"none of the priority groups {', '.join(rule.groups)} was attested")
    return tuple(out)
