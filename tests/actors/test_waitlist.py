"""The waitlist on shards: offers made in the writer's step, claimed in a real Redis so
two shards never offer one entry two places, and kept across a crash."""

from __future__ import annotations

import asyncio
from datetime import date

import msgspec
import redis
import redis.asyncio as aioredis

from actors import waitlist as claims
from actors.audit import audit
from actors.embedded_redis import EmbeddedRedis
from actors.shard_core import ShardCore
from engine.calendar import Calendar
from engine.provider import Provider
from engine.records import CancelBooking, ConfirmHold, Hold, PlaceHold, ReleaseHold
from engine.schedule import WEEKDAYS, WeeklyTemplate
from engine.waitlist import WaitArea, WaitEntry

TEMPLATE = WeeklyTemplate.uniform(WEEKDAYS, "09:00", "10:00", 1)  # 4 slots of 1 place
NOW = 1_772_000_000  # 2026-02-25, before the calendars' days
AREA = WaitArea(lat=41.88, lng=-87.63, radius_km=20.0)


def site(pid: str) -> Provider:
    return Provider(
        provider_id=pid,
        name=pid,
        lat=41.88,
        lng=-87.63,
        timezone="America/Chicago",
        services=("vaccine",),
    )


def entry(entry_id: str, joined: int = NOW, party: int = 1) -> WaitEntry:
    return WaitEntry(
        entry_id, "vaccine", AREA, NOW, NOW + 30 * 86_400, party, joined, NOW + 86_400,
        f"ref-{entry_id}", b"",
    )  # fmt: skip


async def core_with(url: str, name: str, pid: str) -> ShardCore:
    core = ShardCore(name, aioredis.from_url(url, socket_timeout=2))
    await core.recover(now=NOW)
    if (pid, "vaccine") not in core.calendars:
        cal = Calendar.from_template(
            pid, "vaccine", "America/Chicago", TEMPLATE, date(2026, 3, 2), 1
        )
        core.add_calendars(site(pid), [cal.snapshot()])
        await core.commit()
    return core


async def step(core: ShardCore, *commands: object, now: int = NOW) -> list[object]:
    """One writer step: apply, offer what was freed, commit."""
    out = core.apply(commands)  # type: ignore[arg-type]
    await core.make_offers(now)
    await core.commit()
    return out


def fill(core: ShardCore, pid: str) -> list[Hold]:
    cal = core.calendars[(pid, "vaccine")]
    starts = [int(s) for s in cal.starts()[cal.capacity > 0]]
    holds = core.apply(
        [PlaceHold(pid, "vaccine", None, NOW, f"h-{pid}-{s}", s, 1, 3600) for s in starts]
    )
    assert all(isinstance(h, Hold) for h in holds)
    return holds  # type: ignore[return-value]


def offers_of(core: ShardCore) -> dict[str, str]:
    return dict(core.offers.by_entry)


def test_two_shards_freeing_at_once_offer_one_entry_one_place(tmp_path) -> None:
    with EmbeddedRedis(tmp_path) as server:

        async def main() -> None:
            a = await core_with(server.url, "s-a", "pa")
            b = await core_with(server.url, "s-b", "pb")
            holds_a, holds_b = fill(a, "pa"), fill(b, "pb")
            await a.commit()
            await b.commit()
            for core in (a, b):
                assert core.join(entry("w1"), NOW)
                await step(core)
            assert offers_of(a) == offers_of(b) == {}  # nothing free: it waits
            # Both shards free a place in the same moment: one offer between them.
            await asyncio.gather(
                step(a, ReleaseHold("pa", "vaccine", None, NOW, holds_a[0].hold_id)),
                step(b, ReleaseHold("pb", "vaccine", None, NOW, holds_b[0].hold_id)),
            )
            offered = {**offers_of(a), **offers_of(b)}
            assert list(offered) == ["w1"]
            assert len(offers_of(a)) + len(offers_of(b)) == 1
            winner, loser = (a, b) if offers_of(a) else (b, a)
            hold_id = offered["w1"]
            claim = claims.parse_claim(await a.redis.get(claims.claim_key("w1")))
            assert (claim.state, claim.shard, claim.hold_id) == ("offered", winner.name, hold_id)
            # The other shard's freed place stays free (nobody else waits).
            pid = "pa" if loser is a else "pb"
            assert loser.calendars[(pid, "vaccine")].remaining().sum() == 1
            # The patient takes it with one call: the entry is over everywhere.
            wpid = "pa" if winner is a else "pb"
            booking = (
                await step(
                    winner,
                    ConfirmHold(wpid, "vaccine", None, NOW + 5, hold_id, "bk-1", b"", "ref-w1"),
                )
            )[0]
            assert getattr(booking, "hold_id", None) == hold_id
            assert claims.parse_claim(await a.redis.get(claims.claim_key("w1"))).state == "booked"
            assert "w1" not in winner.waitlist
            # The loser learns the entry is over the next time it would offer it a place.
            await step(loser, ReleaseHold(pid, "vaccine", None, NOW, fill_next(loser, pid)))
            assert "w1" not in loser.waitlist
            assert offers_of(loser) == {}

        asyncio.run(main())
        # The audit checks each offer against its entry's claim: one offer per entry.
        sync = redis.Redis.from_url(server.url)
        report = audit(sync)
        assert report.ok and report.offers_checked == 1, report.summary()
        sync.set(claims.claim_key("w1"), claims.offered_value("s-b", "another", "pb", "v", 0, 0))
        report = audit(sync)
        assert len(report.violations) == 1 and "w1" in report.violations[0], report.summary()


def fill_next(core: ShardCore, pid: str) -> str:
    """Hold the free place of ``pid`` (to release it again: a place frees)."""
    cal = core.calendars[(pid, "vaccine")]
    start = int(cal.starts()[cal.remaining() > 0][0])
    hold = core.apply([PlaceHold(pid, "vaccine", None, NOW, "again", start, 1, 60)])[0]
    assert isinstance(hold, Hold)
    return hold.hold_id


def test_an_offer_not_taken_passes_to_the_next_in_line_and_a_cancellation_frees_one(
    tmp_path,
) -> None:
    with EmbeddedRedis(tmp_path) as server:

        async def main() -> None:
            core = await core_with(server.url, "s0", "p1")
            holds = fill(core, "p1")
            await core.commit()
            core.join(entry("first", NOW), NOW)
            core.join(entry("second", NOW + 1), NOW + 1)
            core.join(entry("pair", NOW + 2, party=2), NOW + 2)
            await step(core, ReleaseHold("p1", "vaccine", None, NOW, holds[0].hold_id))
            assert list(offers_of(core)) == ["first"]
            # Its offer lapses: the place passes to the next in line, in the same step.
            lapse = NOW + core.offer_seconds
            core.sweep(lapse)
            await core.make_offers(lapse)
            await core.commit()
            assert list(offers_of(core)) == ["second"]
            state = await core.redis.get(claims.claim_key("first"))
            assert claims.parse_claim(state).state == "lapsed"
            assert "first" not in core.waitlist
            # A cancellation frees a place too; a party of two does not fit one place.
            second = offers_of(core)["second"]
            await step(core, ConfirmHold("p1", "vaccine", None, lapse, second, "b2", b"", "r"))
            await step(core, CancelBooking("p1", "vaccine", None, lapse, "b2"), now=lapse)
            assert offers_of(core) == {}
            assert "pair" in core.waitlist
            # Recovery gives back the same waitlist and offers.
            again = await core_with(server.url, "s0", "p1")
            assert [e.entry_id for e in again.waitlist.entries()] == ["pair"]
            assert again.offers.by_entry == core.offers.by_entry

        asyncio.run(main())


def test_a_claim_whose_offer_never_reached_the_journal_is_taken_back_at_recovery(
    tmp_path,
) -> None:
    with EmbeddedRedis(tmp_path) as server:

        async def main() -> None:
            core = await core_with(server.url, "s0", "p1")
            holds = fill(core, "p1")
            core.join(entry("w1"), NOW)
            await core.commit()
            core.apply([ReleaseHold("p1", "vaccine", None, NOW, holds[0].hold_id)])
            await core.make_offers(NOW)  # claimed in Redis...
            assert claims.parse_claim(await core.redis.get(claims.claim_key("w1"))).state == (
                "offered"
            )
            core.fail_stop()  # ...and the commit never happened
            again = await core_with(server.url, "s0", "p1")
            assert await again.redis.get(claims.claim_key("w1")) is None  # waiting again
            assert "w1" in again.waitlist
            await again.make_offers(NOW)  # the release was not journaled either
            await again.commit()
            assert offers_of(again) == {}
            await step(again, ReleaseHold("p1", "vaccine", None, NOW, holds[0].hold_id))
            assert list(offers_of(again)) == ["w1"]

        asyncio.run(main())


def test_the_owner_leaving_gives_back_the_offer_and_it_goes_to_the_next(tmp_path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        sync = redis.Redis.from_url(server.url)

        async def main() -> None:
            core = await core_with(server.url, "s0", "p1")
            holds = fill(core, "p1")
            core.join(entry("w1"), NOW)
            core.join(entry("w2", NOW + 1), NOW + 1)
            await step(core, ReleaseHold("p1", "vaccine", None, NOW, holds[0].hold_id))
            assert list(offers_of(core)) == ["w1"]
            # The gateway ends the claim, then tells the shards.
            sync.eval(claims.LEAVE, 1, claims.claim_key("w1"), "done:cancelled", 60)
            assert core.leave("w1", NOW + 10)
            await core.make_offers(NOW + 10)
            await core.commit()
            assert list(offers_of(core)) == ["w2"]
            assert claims.parse_claim(sync.get(claims.claim_key("w1"))).state == "cancelled"

        asyncio.run(main())


def outbox_notices(client: redis.Redis, ring: object = None) -> list[object]:
    from actors import outbox

    return [
        outbox.open_notice(None, fields[b"n"])  # type: ignore[index]
        for _, fields in client.xrange(outbox.OUTBOX)  # type: ignore[union-attr]
    ]


def test_every_message_worthy_event_puts_one_notice_in_the_outbox_with_its_commit(
    tmp_path,
) -> None:
    from engine.notices import REMIND_BEFORE
    from engine.records import Contact, RescheduleBooking

    with EmbeddedRedis(tmp_path) as server:
        sync = redis.Redis.from_url(server.url)
        mail = Contact("pat@example.org", None, "es")

        async def main() -> None:
            core = await core_with(server.url, "s0", "p1")
            cal = core.calendars[("p1", "vaccine")]
            starts = [int(s) for s in cal.starts()[cal.capacity > 0]]
            # Booked without contact details: nobody to tell, no notice.
            await step(core, PlaceHold("p1", "vaccine", None, NOW, "h0", starts[0], 1, 600))
            await step(core, ConfirmHold("p1", "vaccine", None, NOW, "h0", "b0", b"", "r0"))
            assert outbox_notices(sync) == []
            await step(core, PlaceHold("p1", "vaccine", None, NOW, "h1", starts[1], 1, 600))
            confirm = ConfirmHold(
                "p1", "vaccine", None, NOW, "h1", "b1", b"", "r1", None, None, mail
            )
            await step(core, confirm)
            await step(core, RescheduleBooking("p1", "vaccine", None, NOW, "b1", starts[2]))
            # The waitlist: an entry with contact details is offered the place b0 frees.
            waiting = msgspec.structs.replace(entry("w1"), contact=mail)
            core.join(waiting, NOW)
            await step(core, CancelBooking("p1", "vaccine", None, NOW, "b0"))
            offer = core.offers.by_entry["w1"]
            # An offer about to lapse, and the reminder the day before the appointment.
            core.sweep(NOW + core.offer_seconds - core.timers.lead)
            await core.commit()
            core.sweep(starts[2] - REMIND_BEFORE)
            await core.commit()
            core.sweep(starts[2] - REMIND_BEFORE + 5)  # due once only
            await step(core, CancelBooking("p1", "vaccine", None, NOW, "b1"))
            got = [(n.kind, n.notice_id) for n in outbox_notices(sync)]  # type: ignore[attr-defined]
            assert got == [
                ("booking.confirmed", "booking.confirmed:b1"),
                ("booking.rescheduled", f"booking.rescheduled:b1:{starts[2]}"),
                ("offer.made", f"offer.made:{offer}"),
                ("offer.expiring", f"offer.expiring:{offer}"),
                ("booking.reminder", f"booking.reminder:b1:{starts[2]}"),
                ("booking.cancelled", "booking.cancelled:b1"),
            ]
            made = outbox_notices(sync)[2]
            assert made.contact == mail and made.start == starts[0]  # type: ignore[attr-defined]
            # A restart arms the timers again from the calendars: the same notice.
            await step(core, PlaceHold("p1", "vaccine", None, NOW, "h3", starts[3], 1, 600))
            c3 = ConfirmHold("p1", "vaccine", None, NOW, "h3", "b3", b"", "r3", None, None, mail)
            await step(core, c3)
            again = ShardCore("s0", aioredis.from_url(server.url, socket_timeout=2))
            await again.recover(now=NOW)
            due = again.timers.due(starts[3] - REMIND_BEFORE, again._calendar, again._offered_to)
            assert [n.notice_id for n in due] == [f"booking.reminder:b3:{starts[3]}"]

        asyncio.run(main())
