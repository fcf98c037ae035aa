"""Moving providers between shards (actors.moves) on a real local Ray and redis-server:
a move cut short at any step is finished by whoever resumes it, with the shards
restarted in between, and a move under load loses no acknowledged booking and answers
no command from a stale copy."""

from __future__ import annotations

import threading

import pytest
import ray

from actors import moves
from actors.api import Hexbook
from actors.audit import audit
from actors.embedded_redis import EmbeddedRedis
from engine.errors import Moving, ScheduleConflict
from tests.actors.test_shard_faults import (
    SERVICE,
    Clients,
    active_bookings,
    assert_nothing_acknowledged_lost,
    check_no_overbooking,
    committed,
    setup_city,
)
from tests.polling import until

pytestmark = pytest.mark.usefixtures("ray_local")


class Crash(Exception):
    """The mover's process dies here (nothing after the step runs)."""


def crash_at(step: moves.Step) -> moves.OnStep:
    def hook(at: moves.Step, provider_id: str) -> None:
        if at == step:
            raise Crash(f"{provider_id} at {step}")

    return hook


def book_some(hb: Hexbook, starts: dict[str, list[int]], pid: str, n: int) -> list[str]:
    out = []
    for start in starts[pid][:n]:
        hold = hb.hold(pid, SERVICE, start)
        booking, _ = hb.confirm(hold.hold_id, pid, SERVICE, "ref")
        out.append(booking.booking_id)
    return out


@pytest.mark.parametrize("step", ["intent", "handed", "taken", "routed", "ended"])
def test_a_move_cut_short_at_any_step_is_finished_by_resume(
    module_redis: EmbeddedRedis, namespace: str, step: moves.Step
) -> None:
    hb, starts = setup_city(module_redis.url, namespace)
    pid = sorted(starts)[0]
    booked = book_some(hb, starts, pid, 3)
    source = hb.directory.shard_of(pid)
    target = next(s for s in hb.directory.shards if s != source)
    with pytest.raises(Crash):
        moves.move_provider(hb, pid, target, on_step=crash_at(step))
    assert moves.pending(hb) == {f"provider:{pid}": {"from": source, "to": target}}
    # The source compacts its journal into a snapshot (what it handed off must be in
    # it), then both shards die and recover before anyone resumes.
    hb._call(source, "write_snapshot")
    for shard in (source, target):
        ray.kill(ray.get_actor(shard, namespace=namespace), no_restart=False)
    # A booking asked meanwhile is refused as "moving" (retry) or served by the shard
    # the directory names; never "not found", never from a copy nobody is routed to.
    later = Hexbook(module_redis.url, namespace=namespace, retry_seconds=60)
    try:
        extra = book_some(later, {pid: starts[pid][3:4]}, pid, 1)
    except Moving:
        assert step in ("handed", "taken", "routed")
        extra = []
    # Another process resumes (its own caches empty): the move finishes.
    assert later.resume_moves() == [f"provider:{pid}"]
    assert moves.pending(later) == {}
    assert later.directory.shard_of(pid) == target
    states = committed(later)
    assert pid not in states[source].providers and states[source].handed == []
    assert {p.provider_id for p in states[target].providers} >= {pid}
    live = active_bookings({target: states[target]})
    assert set(booked + extra) <= set(live), "an acknowledged booking was lost"
    check_no_overbooking(states)
    report = audit(later.redis, [{"op": "booked", "booking_id": b} for b in booked + extra])
    assert report.ok, report.violations[:5]
    # Served from the new shard, and a further booking lands there.
    more = book_some(later, {pid: starts[pid][4:5]}, pid, 1)
    assert set(more) <= set(active_bookings({target: committed(later)[target]}))


def test_a_mover_that_lags_behind_another_keeps_what_the_new_shard_served(
    module_redis: EmbeddedRedis, namespace: str
) -> None:
    """Two gateways resume one move: the second got the hand-off before the first
    switched the directory, and takes over after bookings were made on the new shard."""
    hb, starts = setup_city(module_redis.url, namespace)
    pid = sorted(starts)[0]
    source = hb.directory.shard_of(pid)
    target = next(s for s in hb.directory.shards if s != source)
    booked = book_some(hb, starts, pid, 2)
    first_taken, go_first = threading.Event(), threading.Event()
    second_handed, go_second = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def pause(step: moves.Step, reached: threading.Event, go: threading.Event) -> moves.OnStep:
        def hook(at: moves.Step, _: str) -> None:
            if at == step:
                reached.set()
                assert go.wait(60)

        return hook

    def mover(hook: moves.OnStep) -> None:
        try:
            moves.move_provider(
                Hexbook(module_redis.url, namespace=namespace), pid, target, on_step=hook
            )
        except BaseException as exc:  # the test fails on it below
            errors.append(exc)

    first = threading.Thread(target=mover, args=(pause("taken", first_taken, go_first),))
    second = threading.Thread(target=mover, args=(pause("handed", second_handed, go_second),))
    first.start()
    assert first_taken.wait(60)
    second.start()
    assert second_handed.wait(60)
    go_first.set()
    first.join(60)
    assert hb.directory.shard_of(pid) == target
    served = book_some(Hexbook(module_redis.url, namespace=namespace), starts, pid, 4)[2:]
    go_second.set()
    second.join(60)
    assert errors == []
    assert moves.pending(hb) == {}
    live = active_bookings({target: committed(hb)[target]})
    assert set(booked + served) <= set(live), "the late mover dropped what the shard served"


def test_a_move_to_another_shard_waits_for_the_one_under_way(
    module_redis: EmbeddedRedis, namespace: str
) -> None:
    hb, starts = setup_city(module_redis.url, namespace)
    pid = sorted(starts)[0]
    source = hb.directory.shard_of(pid)
    target = next(s for s in hb.directory.shards if s != source)
    with pytest.raises(Crash):
        moves.move_provider(hb, pid, target, on_step=crash_at("handed"))
    with pytest.raises(ScheduleConflict):
        moves.move_provider(hb, pid, source)
    assert hb.move_provider(pid, target) is True  # the same move again: resumed
    assert hb.move_provider(pid, target) is False  # there already


def test_a_cell_moves_under_load_and_a_hot_site_gets_its_own_shard(
    module_redis: EmbeddedRedis, namespace: str
) -> None:
    hb, starts = setup_city(module_redis.url, namespace)
    pid = sorted(starts)[0]
    res = hb.directory.resolution
    cell = hb._call(hb.directory.shard_of(pid), "provider", pid).cell(res)
    source = hb.directory.shard_of(pid)
    target = next(s for s in hb.directory.shards if s != source)
    with Clients(hb, starts) as clients:
        until(lambda: len(clients.acked) >= 10, seconds=60)
        assert pid in hb.move_cell(cell, target)
        before = len(clients.acked)
        until(lambda: len(clients.acked) >= before + 10, seconds=60)
        stadium = sorted(starts)[1]
        dedicated = hb.promote(stadium)
        before = len(clients.acked)
        until(lambda: len(clients.acked) >= before + 10, seconds=60)
    assert dedicated == f"dedicated-{stadium}"
    assert hb.directory.shard_of(pid) == target and hb.directory.cells()[cell] == target
    assert hb.directory.shard_of(stadium) == dedicated
    states = committed(hb)
    assert [p.provider_id for p in states[dedicated].providers] == [stadium]
    check_no_overbooking(states)
    assert_nothing_acknowledged_lost(clients, states)
    acks = [{"op": "booked", "booking_id": b.booking_id} for _, b, _ in clients.acked]
    report = audit(hb.redis, acks)
    assert report.ok, report.violations[:5]
    assert moves.pending(hb) == {}
