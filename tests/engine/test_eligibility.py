"""Eligibility (engine/eligibility.py and the calendar's checks): the rule decides at
hold and again at confirm, a booking keeps the version that admitted it, a refusal
takes nothing, and the journal rebuilds what the patient attested."""

from __future__ import annotations

from datetime import date, timedelta

import h3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import codec
from engine.calendar import Calendar
from engine.eligibility import (
    AgeBand,
    Attestation,
    Residence,
    Rule,
    age_on,
    refusals,
    validate_rule,
)
from engine.errors import InvalidRequest, NotEligible
from engine.records import ConfirmHold, PlaceHold
from engine.schedule import WeeklyTemplate

DAY = date(2026, 3, 2)
TEMPLATE = WeeklyTemplate.uniform(("mon", "tue"), "09:00", "10:00", 2)
SENIORS = Rule(service="vaccine", version=1, ages=(AgeBand(65),))
HOME = h3.latlng_to_cell(41.88, -87.63, 9)


def birthdays_passed(birth: date, day: date) -> int:
    """The reference: count the birthdays up to ``day`` one by one."""
    n = 0
    while True:
        year = birth.year + n + 1
        try:
            anniversary = birth.replace(year=year)
        except ValueError:  # 29 February in a common year: 1 March
            anniversary = date(year, 3, 1)
        if anniversary > day:
            return n
        n += 1


@given(
    st.dates(min_value=date(1900, 1, 1), max_value=date(2026, 12, 31)),
    st.integers(0, 120 * 366),
)
def test_age_is_the_number_of_birthdays_passed(birth: date, days: int) -> None:
    day = birth + timedelta(days=days)
    assert age_on(birth, day) == birthdays_passed(birth, day)


def test_ages_count_on_the_appointment_day_or_the_reference_date() -> None:
    born = Attestation(birth_date="1961-03-02")  # 65 on 2026-03-02
    assert refusals(SENIORS, born, DAY) == ()
    assert refusals(SENIORS, born, DAY - timedelta(days=1)) == (
        "age 64 on 2026-03-01 is outside the bands 65+",
    )
    fixed = Rule(service="vaccine", version=2, ages=(AgeBand(65),), reference_date="2026-01-01")
    assert refusals(fixed, born, DAY) == ("age 64 on 2026-01-01 is outside the bands 65+",)
    bands = Rule(service="vaccine", ages=(AgeBand(0, 4), AgeBand(65)))
    assert refusals(bands, Attestation(birth_date="2023-01-01"), DAY) == ()
    assert refusals(bands, Attestation(birth_date="2000-01-01"), DAY) != ()
    assert refusals(SENIORS, Attestation(), DAY) == ("the date of birth was not attested",)
    assert refusals(SENIORS, None, DAY) == ("the date of birth was not attested",)


def test_residence_by_postal_code_cell_or_radius() -> None:
    by_code = Rule(service="v", residence=Residence(postal_codes=("60601", "60602")))
    assert refusals(by_code, Attestation(postal_code="60601"), DAY) == ()
    assert refusals(by_code, Attestation(postal_code="10001"), DAY) == (
        "the attested residence is outside the rule's area",
    )
    assert refusals(by_code, Attestation(), DAY) == (
        "no residence was attested (postal code or home cell)",
    )
    parent = h3.cell_to_parent(HOME, 6)
    by_cell = Rule(service="v", residence=Residence(cells=(parent,)))
    assert refusals(by_cell, Attestation(cell=HOME), DAY) == ()
    elsewhere = h3.latlng_to_cell(40.71, -74.0, 9)  # New York
    assert refusals(by_cell, Attestation(cell=elsewhere), DAY) != ()
    # a coarser home cell than the rule's cells cannot prove it lies inside one
    assert refusals(by_cell, Attestation(cell=h3.cell_to_parent(HOME, 5)), DAY) != ()
    by_radius = Rule(service="v", residence=Residence(lat=41.90, lng=-87.65, radius_km=5))
    assert refusals(by_radius, Attestation(cell=HOME), DAY) == ()
    assert refusals(by_radius, Attestation(cell=elsewhere), DAY) != ()


def test_groups_admit_any_of_them_and_reasons_add_up() -> None:
    rule = Rule(
        service="v",
        version=3,
        ages=(AgeBand(18),),
        groups=("healthcare", "educator"),
        residence=Residence(postal_codes=("60601",)),
    )
    ok = Attestation(birth_date="1980-01-01", postal_code="60601", groups=("educator",))
    assert refusals(rule, ok, DAY) == ()
    assert len(refusals(rule, Attestation(birth_date="2015-01-01", groups=("other",)), DAY)) == 3


attestations = st.builds(
    Attestation,
    birth_date=st.none() | st.dates(date(1920, 1, 1), date(2026, 1, 1)).map(date.isoformat),
    postal_code=st.none() | st.sampled_from(["60601", "60602", "10001"]),
    cell=st.none() | st.just(HOME),
    groups=st.lists(st.sampled_from(["a", "b", "c"]), max_size=2).map(tuple),
)
bands = st.lists(
    st.builds(AgeBand, st.integers(0, 90), st.none() | st.integers(90, 120)), max_size=3
).map(tuple)


groups = st.lists(st.sampled_from(["a", "b", "c"]), max_size=2)


@given(attestations, bands, bands, groups, groups)
def test_a_wider_rule_admits_everyone_a_narrower_one_admits(
    att: Attestation,
    some: tuple[AgeBand, ...],
    more: tuple[AgeBand, ...],
    first: list[str],
    added: list[str],
) -> None:
    narrow = Rule(service="v", ages=some, groups=tuple(first))
    # more bands, more groups (a part that was empty stays empty: it admits everyone)
    wide = Rule(
        service="v", ages=some + more if some else (), groups=tuple(first + added) if first else ()
    )
    if not refusals(narrow, att, DAY):
        assert not refusals(wide, att, DAY)
    assert refusals(Rule(service="v"), att, DAY) == ()  # a rule with no parts admits all


def test_rules_that_cannot_apply_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="min <= max"):
        validate_rule(Rule(service="v", ages=(AgeBand(70, 60),)))
    with pytest.raises(InvalidRequest, match="not a date"):
        validate_rule(Rule(service="v", reference_date="March 1st"))
    with pytest.raises(InvalidRequest, match="H3"):
        validate_rule(Rule(service="v", residence=Residence(cells=("nowhere",))))
    with pytest.raises(InvalidRequest, match="lat, lng and radius_km"):
        validate_rule(Rule(service="v", residence=Residence(lat=41.0, radius_km=3)))
    with pytest.raises(InvalidRequest, match="postal codes, cells or a radius"):
        validate_rule(Rule(service="v", residence=Residence()))
    validate_rule(SENIORS)


def _calendar() -> Calendar:
    return Calendar.from_template("p1", "vaccine", "America/Chicago", TEMPLATE, DAY, 2)


def test_the_calendar_checks_at_hold_and_takes_nothing_when_it_refuses() -> None:
    cal = _calendar()
    start = int(cal.starts()[cal.capacity > 0][0])
    young = Attestation(birth_date="2000-05-05")
    with pytest.raises(NotEligible) as err:
        cal.handle(PlaceHold("p1", "vaccine", "k", 0, "h1", start, 1, 300, young, SENIORS))
    assert (err.value.rule, err.value.version) == ("vaccine", 1)
    assert "age 25 on 2026-03-02" in err.value.message
    assert cal.remaining_at(start) == 2
    assert not cal.drain()
    old = Attestation(birth_date="1950-05-05")
    hold = cal.handle(PlaceHold("p1", "vaccine", "k2", 0, "h2", start, 1, 300, old, SENIORS))
    assert hold.attested == old


def test_a_rule_tightened_between_hold_and_confirm_refuses_the_confirm() -> None:
    cal = _calendar()
    start = int(cal.starts()[cal.capacity > 0][0])
    att = Attestation(birth_date="1958-01-01", postal_code="60601")  # 68
    cal.handle(PlaceHold("p1", "vaccine", "k", 0, "h1", start, 1, 300, att, SENIORS))
    tighter = Rule(service="vaccine", version=2, ages=(AgeBand(75),))
    with pytest.raises(NotEligible, match="version 2"):
        cal.handle(ConfirmHold("p1", "vaccine", "c", 1, "h1", "b1", b"", "pat", tighter))
    assert "h1" in cal.holds  # the hold stays until released or expired
    looser = Rule(service="vaccine", version=3, ages=(AgeBand(60),))
    booking = cal.handle(ConfirmHold("p1", "vaccine", "c2", 2, "h1", "b1", b"", "pat", looser))
    assert (booking.rule, booking.rule_version, booking.attested) == ("vaccine", 3, att)


def test_what_was_attested_comes_back_from_the_journal_and_the_snapshot() -> None:
    cal = _calendar()
    start = int(cal.starts()[cal.capacity > 0][0])
    att = Attestation(birth_date="1950-01-01", groups=("healthcare",))
    rule = Rule(service="vaccine", version=4, provider_id="p1", ages=(AgeBand(65),))
    cal.handle(PlaceHold("p1", "vaccine", "k", 0, "h1", start, 1, 300, att, rule))
    cal.handle(ConfirmHold("p1", "vaccine", "c", 1, "h1", "b1", b"", "pat", rule, "s1"))
    events = [codec.decode(codec.encode(e)) for e in cal.drain()]
    replayed = _calendar()
    replayed.replay(events)  # type: ignore[arg-type]
    booking = replayed.bookings["b1"]
    assert (booking.rule, booking.rule_version) == ("vaccine@p1", 4)
    assert (booking.attested, booking.series_id) == (att, "s1")
    again = Calendar.from_snapshot(codec.decode(codec.encode(replayed.snapshot())))  # type: ignore[arg-type]
    assert again.bookings["b1"] == booking
    # a repeat with the key but another attestation is another command
    with pytest.raises(InvalidRequest):
        again.handle(PlaceHold("p1", "vaccine", "k", 5, "h9", start, 1, 300, None, None))
