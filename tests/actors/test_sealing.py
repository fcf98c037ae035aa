"""Patient data sealed at rest (actors.sealing) and erased (ShardCore.erase), on a real
redis-server without Ray: what the journal, snapshot and archive hold in Redis, key
rotation, re-encryption and erasure by request or retention."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from actors import archive, journal
from actors.embedded_redis import EmbeddedRedis
from actors.sealed_data import CLEAR, census, reseal_archive
from actors.sealing import KEYS_FILE, Keyring, key_id_of, write_key_file
from actors.shard_core import ShardCore
from engine.calendar import Calendar
from engine.eligibility import Attestation
from engine.errors import KeyringError
from engine.records import Booking, ConfirmHold, Contact, PlaceHold
from engine.schedule import WEEKDAYS, WeeklyTemplate
from tests.actors.test_shard_core import provider
from tests.redis_values import every_value

TEMPLATE = WeeklyTemplate.uniform(WEEKDAYS, "09:00", "11:00", 2)
DOB, EMAIL, PHONE = "1931-02-17", "zq.sealed@example.org", "+13125550199"
NEEDLES = (DOB.encode(), EMAIL.encode(), PHONE.encode())


async def booked(core: ShardCore, n: int, now: int = 1000) -> list[Booking]:
    """``n`` bookings of p0 with a date of birth and contact details."""
    p = provider(0)
    cal = Calendar.from_template(
        "p0", "vaccine", p.timezone, TEMPLATE, date(2026, 3, 2), 3, horizon_days=3
    )
    if ("p0", "vaccine") not in core.calendars:
        core.add_calendars(p, [cal.snapshot()])
    out = []
    c = core.calendars[("p0", "vaccine")]
    starts = [int(s) for s in c.starts()[c.remaining() > 0]]
    for k in range(n):
        hold_id = f"h-{now}-{k}"
        core.apply([PlaceHold("p0", "vaccine", f"kh{now}{k}", now, hold_id, starts[k], 1, 60,
                              Attestation(DOB, "60614"))])  # fmt: skip
        confirm = ConfirmHold("p0", "vaccine", f"kc{now}{k}", now, hold_id, f"b{now}{k}", b"",
                              f"ref-{k}", None, None, Contact(EMAIL, PHONE))  # fmt: skip
        got = core.apply([confirm])
        assert isinstance(got[0], Booking) and got[0].contact == Contact(EMAIL, PHONE)
        out.append(got[0])
    await core.commit()
    return out


def test_a_keyring_seals_binds_and_refuses_what_it_cannot_open(tmp_path: Path) -> None:
    ring = Keyring.generate()
    sealed = ring.seal(DOB.encode(), b"hexbook:shard:s0:journal")
    assert key_id_of(sealed) == ring.current and DOB.encode() not in sealed
    assert ring.open(sealed, b"hexbook:shard:s0:journal") == DOB.encode()
    with pytest.raises(KeyringError, match="altered or moved"):  # bound to its place
        ring.open(sealed, b"hexbook:shard:s1:journal")
    with pytest.raises(KeyringError, match=f"sealed with key '{ring.current}'"):
        Keyring.generate().open(sealed, b"hexbook:shard:s0:journal")
    assert ring.open(b"\x93clear", b"x") == b"\x93clear"  # written before sealing
    # A key file: owner-only, the last key current; the environment form is the same ring.
    path = tmp_path / KEYS_FILE
    write_key_file(path, ring.rotated())
    assert path.stat().st_mode & 0o777 == 0o600
    again = Keyring.from_file(path)
    assert ring.current in again.keys and again.current != ring.current
    assert Keyring.parse(again.as_env()).keys == again.keys
    assert Keyring.parse(again.as_env()).current == again.current
    for bad, why in (("k1", "id:base64"), ("k!:AAAA", "key id"), ("k1:AAAA", "needs 32")):
        with pytest.raises(KeyringError, match=why):
            Keyring.parse(bad)
    made = Keyring.load(data_dir=tmp_path / "fresh", create=True)
    assert made is not None and made.path == tmp_path / "fresh" / KEYS_FILE
    assert Keyring.load(data_dir=tmp_path / "fresh") is not None  # read, not made again
    assert Keyring.load(data_dir=tmp_path / "fresh").keys == made.keys  # type: ignore[union-attr]
    assert Keyring.load(data_dir=tmp_path / "none") is None


def test_nothing_of_a_patient_reaches_redis_or_its_files_in_clear(
    tmp_path: Path,
) -> None:
    ring = Keyring.generate()

    async def go(url: str) -> bytes:
        core = ShardCore("s0", aioredis.from_url(url), keyring=ring)
        await core.recover()
        bookings = await booked(core, 4)
        await core.write_snapshot()
        await booked(core, 2, now=2000)  # in the journal after the snapshot
        # Roll the calendar past its first day: those bookings go to the archive.
        cal = core.calendars[("p0", "vaccine")]
        assert core.roll(cal.start + 2 * 86400 + 3600) == 1
        await core.commit()
        assert any(b.start < core.calendars[("p0", "vaccine")].start for b in bookings)
        await core.redis.aclose()
        return journal.encode(core.shard_snapshot())

    async def recovered(url: str, keys: Keyring) -> bytes:
        core = ShardCore("s0", aioredis.from_url(url), keyring=keys)
        try:
            await core.recover()
            return journal.encode(core.shard_snapshot())
        finally:
            await core.redis.aclose()

    with EmbeddedRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        state = asyncio.run(go(server.url))
        blob = every_value(client)
        assert not [n for n in NEEDLES if n in blob]
        counts = census(client)
        assert counts[ring.current or ""] >= 3 and CLEAR not in counts  # journal, snapshot, archive
        assert client.hlen(archive.archive_key("p0", "vaccine")) >= 1
        # What was sealed opens again: a new core recovers every booking, contact included.
        assert asyncio.run(recovered(server.url, ring)) == state
        archived = list(archive.export(client, ring))
        assert archived and all(b.contact == Contact(EMAIL, PHONE) for _, _, b in archived)
        # Without the key, recovery says which key is missing.
        with pytest.raises(KeyringError, match=ring.current or ""):
            asyncio.run(recovered(server.url, Keyring()))
        client.bgrewriteaof()
        client.close()
    files = [p for p in (tmp_path / "redis").rglob("*") if p.is_file()]
    assert any("aof" in p.name for p in files)
    for p in files:
        data = p.read_bytes()
        assert not [n for n in NEEDLES if n in data], p


def test_a_rotated_key_seals_new_values_and_reencryption_leaves_only_it(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    old = Keyring.generate()
    new = old.rotated()

    async def go() -> None:
        core = ShardCore("rot", aioredis.from_url(redis_server.url), keyring=old)
        await core.recover()
        await booked(core, 3)
        cal = core.calendars[("p0", "vaccine")]
        core.roll(cal.start + 2 * 86400 + 3600)
        await core.commit()
        core.keyring = new  # what ShardActor.use_keyring does between two batches
        await booked(core, 2, now=3000)
        # Old and new values side by side, both readable by the new ring.
        mixed = census(redis_client)
        assert mixed[old.current or ""] >= 1 and mixed[new.current or ""] >= 1
        again = ShardCore("rot", aioredis.from_url(redis_server.url), keyring=new)
        await again.recover()
        assert len(again.calendars[("p0", "vaccine")].bookings) == len(cal.bookings)
        # Re-encrypt: a snapshot under the new key trims the whole journal, and the
        # archive is rewritten; nothing is left that needs the old key.
        await core.write_snapshot()
        assert reseal_archive(redis_client, new) >= 1
        after = census(redis_client)
        assert set(after) == {new.current}, after
        only_new = Keyring({new.current or "": new.keys[new.current or ""]})
        last = ShardCore("rot", aioredis.from_url(redis_server.url), keyring=only_new)
        await last.recover()
        assert journal.encode(last.shard_snapshot()) == journal.encode(core.shard_snapshot())
        assert len(list(archive.export(redis_client, only_new))) >= 1
        for c in (core, again, last):
            await c.redis.aclose()

    asyncio.run(go())


def test_erasure_drops_patient_data_in_calendars_archive_and_journal(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    ring = Keyring()  # clear values: what is left in Redis can be read here

    async def go() -> None:
        core = ShardCore("era", aioredis.from_url(redis_server.url), keyring=ring)
        await core.recover()
        first = await booked(core, 3)
        cal = core.calendars[("p0", "vaccine")]
        core.roll(cal.start + 2 * 86400 + 3600)  # the first day's bookings go to the archive
        await core.commit()
        later = await booked(core, 2, now=4000)
        # On request: ref-1's bookings (one archived, one in the calendar) lose it.
        n = core.erase(5000, "ref-1", None) + await core.erase_archived(5000, "ref-1", None)
        await core.commit()
        await core.write_snapshot()
        assert n == 2
        everyone = list(core.calendars[("p0", "vaccine")].bookings.values())
        everyone += [b for _, _, b in archive.export(redis_client, ring)]
        erased = [b for b in everyone if b.patient_ref == "ref-1"]
        assert len(erased) == 2 and all(
            b.attested is None and b.contact is None and b.erased_at == 5000 for b in erased
        )
        assert all(b.has_patient_data for b in everyone if b.patient_ref != "ref-1")
        assert all(b.status == "active" for b in erased)  # the booking's fact stays
        # By retention: every appointment ended by then loses it; later ones keep it.
        cutoff = max(b.start for b in first) + cal.slot_seconds
        n = core.erase(6000, None, cutoff) + await core.erase_archived(6000, None, cutoff)
        await core.commit()
        await core.write_snapshot()
        assert n == len(first) - 1  # ref-1's was erased already
        kept = {b.booking_id for b in later if b.start + cal.slot_seconds > cutoff}
        every = list(core.calendars[("p0", "vaccine")].bookings.values())
        every += [b for _, _, b in archive.export(redis_client, ring)]
        assert {b.booking_id for b in every if b.has_patient_data} == kept - {
            b.booking_id for b in later if b.patient_ref == "ref-1"
        }
        assert EMAIL.encode() in every_value(redis_client)  # the kept ones, clear here
        # Once every appointment is past retention, nothing of any patient is left in
        # Redis: not in the calendars, the archive, remembered results or the journal.
        far = cal.end + 86400
        await core.erase_archived(7000, None, far)
        await core.erase_notices(None, far)  # the confirmations not delivered yet
        core.erase(7000, None, far)
        await core.commit()
        await core.write_snapshot()
        blob = every_value(redis_client)
        assert not [n for n in NEEDLES if n in blob]
        # A new core recovers the same state: the erasure is durable.
        again = ShardCore("era", aioredis.from_url(redis_server.url), keyring=ring)
        await again.recover()
        assert journal.encode(again.shard_snapshot()) == journal.encode(core.shard_snapshot())
        for c in (core, again):
            await c.redis.aclose()

    asyncio.run(go())
