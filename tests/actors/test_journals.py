"""Shards journaling to Redis servers of their own (ADR 0025), with real redis-servers:
what a shard writes goes to its server, the waitlist's claims stay in the deployment's,
and an offer's end that a crash separated from its commit is finished at recovery."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from actors import availability, journal, outbox
from actors import waitlist as claims
from actors.audit import audit
from actors.directory import Directory, servers_of
from actors.embedded_redis import EmbeddedRedis
from actors.shard_core import ShardCore
from engine.records import ConfirmHold, ReleaseHold
from tests.actors.test_waitlist import NOW, entry, fill, fill_next, offers_of, step

from .test_waitlist import core_with


async def split_core(control_url: str, journal_url: str, name: str, pid: str) -> ShardCore:
    """A core journaling to ``journal_url`` whose claims are in ``control_url``."""
    core = ShardCore(
        name,
        aioredis.from_url(journal_url, socket_timeout=2),
        control=aioredis.from_url(control_url, socket_timeout=2),
    )
    await core.recover(now=NOW)
    if (pid, "vaccine") not in core.calendars:
        seed = await core_with(journal_url, name, pid)  # the same calendar, provisioned
        await seed.redis.aclose()
        await core.recover(now=NOW)
    return core


def test_a_shard_writes_to_its_own_server_and_claims_to_the_deployments(tmp_path) -> None:
    with EmbeddedRedis(tmp_path / "c") as control, EmbeddedRedis(tmp_path / "j") as other:
        c, j = redis.Redis.from_url(control.url), redis.Redis.from_url(other.url)

        async def main() -> None:
            core = await split_core(control.url, other.url, "s-j", "pj")
            holds = fill(core, "pj")
            core.join(entry("w1"), NOW)
            await core.commit()
            await step(core, ReleaseHold("pj", "vaccine", None, NOW, holds[0].hold_id))
            assert list(offers_of(core)) == ["w1"]
            await step(core, ConfirmHold("pj", "vaccine", None, NOW, offers_of(core)["w1"],
                                         "bk-1", b"", "ref-w1"))  # fmt: skip

        asyncio.run(main())
        for key in (journal.journal_key("s-j"), availability.AVAILABILITY_STREAM):
            assert j.exists(key), key
        for key in (journal.journal_key("s-j"), availability.AVAILABILITY_STREAM, outbox.OUTBOX):
            assert not c.exists(key), key
        assert claims.parse_claim(c.get(claims.claim_key("w1"))).state == "booked"
        assert j.get(claims.claim_key("w1")) is None


@pytest.mark.parametrize(
    ("end", "state"), [("confirm", "booked"), ("release", "declined"), ("lapse", "lapsed")]
)
def test_an_offers_end_cut_from_its_commit_by_a_crash_is_finished_at_recovery(
    tmp_path, end: str, state: str
) -> None:
    """The offer ends in the journal (server J), then the deployment's Redis (C) is
    down when its claim should end: the shard fails stop; once C is back, recovery
    finds the end in the journal and finishes the claim. Taken back instead (as an
    offer never committed would be), another shard offers the patient a second place."""
    with EmbeddedRedis(tmp_path / "c") as control, EmbeddedRedis(tmp_path / "j") as other:

        async def main() -> None:
            a = await split_core(control.url, other.url, "s-a", "pa")
            b = await core_with(control.url, "s-b", "pb")  # journals to C
            holds_a, holds_b = fill(a, "pa"), fill(b, "pb")
            for core in (a, b):
                core.join(entry("w1"), NOW)
                await core.commit()
            await step(a, ReleaseHold("pa", "vaccine", None, NOW, holds_a[0].hold_id))
            offer = offers_of(a)["w1"]
            control.stop()
            if end == "confirm":
                a.apply([ConfirmHold("pa", "vaccine", None, NOW, offer, "bk", b"", "r")])
            elif end == "release":
                a.apply([ReleaseHold("pa", "vaccine", None, NOW, offer)])
            else:
                a.sweep(NOW + a.offer_seconds)
            with pytest.raises((redis.ConnectionError, redis.TimeoutError, OSError)):
                await a.commit()  # the journal takes it; the claim's end fails
            a.fail_stop()
            control.start()
            again = await split_core(control.url, other.url, "s-a", "pa")
            claim = claims.parse_claim(await again.control.get(claims.claim_key("w1")))
            assert claim.state == state
            assert "w1" not in again.waitlist
            # The other shard frees a place: the patient, over, is not offered it.
            b = await core_with(control.url, "s-b", "pb")
            await step(b, ReleaseHold("pb", "vaccine", None, NOW, holds_b[0].hold_id))
            assert offers_of(b) == {}
            await step(b, ReleaseHold("pb", "vaccine", None, NOW, fill_next(b, "pb")))
            assert offers_of(b) == {}

        asyncio.run(main())


class _DiesAtTheMap(redis.Redis):
    """A real client whose process "dies" (raises) at its first write of the journal map."""

    died = False

    def hsetnx(self, name: str, key: str, value: str) -> int:  # type: ignore[override]
        if name == "hexbook:directory:journals" and not self.died:
            type(self).died = True
            raise redis.ConnectionError("the first start died here")
        return int(super().hsetnx(name, key, value))


def test_a_first_start_cut_short_while_configuring_leaves_no_shard_without_its_map(
    tmp_path,
) -> None:
    """With the shard list written before the map, a start that died between the two
    left a deployment whose next start (not new any more) never wrote the map: every
    shard journaled to the deployment's Redis."""
    with EmbeddedRedis(tmp_path / "c") as control:
        dying = _DiesAtTheMap.from_url(control.url)
        with pytest.raises(redis.ConnectionError):
            Directory(dying).configure(["shard-0", "shard-1"], 8, ["redis://j:6379/0"])
        again = Directory(redis.Redis.from_url(control.url))
        again.configure(["shard-0", "shard-1"], 8, ["redis://j:6379/0"])
        assert again.shards == ["shard-0", "shard-1"]
        assert again.journals() == {"shard-1": "redis://j:6379/0"}


def test_the_directory_spreads_shards_over_the_servers_and_the_audit_reads_them_all(
    tmp_path,
) -> None:
    with EmbeddedRedis(tmp_path / "c") as control, EmbeddedRedis(tmp_path / "j") as other:
        c = redis.Redis.from_url(control.url)
        d = Directory(c)
        d.configure(["shard-0", "shard-1", "shard-2"], 8, [other.url])
        assert [d.journal_of(s) for s in d.shards] == [None, other.url, None]
        d.configure(["shard-0"], 8, [])  # an existing deployment keeps its map
        assert d.journals() == {"shard-1": other.url}
        d.configure(["shard-0", "shard-1"], 8, ["redis://elsewhere:6379/0"])
        assert d.journals() == {"shard-1": other.url}
        assert len(servers_of(c)) == 2
        # A dedicated shard goes to the server with fewer shards.
        assert d.journal_of(d.dedicate("stadium")) == other.url
        assert d.journal_of(d.dedicate("arena")) is None

        async def main() -> None:
            core = await split_core(control.url, other.url, "shard-1", "pj")
            holds = fill(core, "pj")
            await core.commit()
            await step(core, ConfirmHold("pj", "vaccine", None, NOW, holds[0].hold_id,
                                         "bk-j", b"", "ref"))  # fmt: skip

        asyncio.run(main())
        report = audit(c)
        assert report.ok, report.violations
        assert report.shards == 1 and report.bookings == 1
