"""The audit against real journals in a real redis-server: clean runs pass, and each
planted violation is found (and only it)."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from actors import journal
from actors.audit import audit, read_acks
from actors.embedded_redis import EmbeddedRedis
from actors.journal import CalendarEvents, JournalBatch
from engine.records import Booking, HoldConfirmed, HoldPlaced
from tests.actors.test_shard_core import new_core, open_starts, run, workload


def acks_of(outcomes: list[object]) -> list[dict[str, str]]:
    return [
        {"op": "booked", "booking_id": o.booking_id} for o in outcomes if isinstance(o, Booking)
    ]


def test_a_clean_journal_passes_with_counts(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    async def go() -> list[object]:
        core = await new_core(redis_server.url)
        out = await workload(core, 40)
        await core.write_snapshot()  # some history compacted, some after the snapshot
        out += await workload(core, 20, first=3)
        return out

    outcomes = run(go())
    acks = acks_of(outcomes)  # type: ignore[arg-type]
    report = audit(redis_client, acks)
    assert report.ok, report.summary()
    assert report.acknowledged == len({a["booking_id"] for a in acks}) > 0
    assert report.calendars == 6 and report.slots > 0
    assert report.confirms_checked > 0 and report.keys_checked > 0
    assert report.summary().splitlines()[-1].split() == ["violations", "0"]


def test_planted_over_capacity_and_lost_booking_are_caught(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    async def go() -> tuple[list[object], int]:
        core = await new_core(redis_server.url)
        out = await workload(core, 30)
        return out, open_starts(core, "p0")[0]

    outcomes, start = run(go())  # type: ignore[misc]
    # Plant: three more holds on a slot of capacity 2, written past the shard's checks.
    planted = JournalBatch(
        [
            CalendarEvents(
                "p0",
                "vaccine",
                [HoldPlaced(f"x{i}", start, 1, 5000, 30, None) for i in range(3)],
            )
        ]
    )
    redis_client.xadd(journal.journal_key("s0"), {"b": journal.encode(planted)})
    # Plant: a booking a client was told about that the journal never got.
    acks_file = tmp_path / "acks.jsonl"
    lines = [*acks_of(outcomes), {"op": "booked", "booking_id": "never-journaled-booking"}]
    acks_file.write_text("\n".join(json.dumps(x) for x in lines) + "\n{torn")
    report = audit(redis_client, read_acks([acks_file]))
    assert len(report.violations) == 2, report.summary()
    assert any("p0/vaccine: slot" in v and "of 2" in v for v in report.violations)
    assert any("never-journaled" in v and "not in the journal" in v for v in report.violations)


def test_planted_confirm_after_expiry_and_duplicate_key_are_caught(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    async def go() -> int:
        core = await new_core(redis_server.url)
        await workload(core, 3)
        return open_starts(core, "p1")[4]

    start = run(go())
    events = [
        HoldPlaced("late-hold", start, 1, 10_000, 30, "same-key"),
        HoldConfirmed("late-hold", "late-booking", b"", "r", 10_031, None),
        HoldPlaced("twin-hold", start + 900, 1, 10_000, 30, "same-key"),
    ]
    batch = JournalBatch([CalendarEvents("p1", "vaccine", events)])
    redis_client.xadd(journal.journal_key("s0"), {"b": journal.encode(batch)})
    report = audit(redis_client)
    assert len(report.violations) == 2, report.summary()
    assert any("expired at 10030" in v for v in report.violations)
    assert any("'p1/vaccine/same-key' made 2 holds" in v for v in report.violations)
