"""Moving providers between shards online, resumable after a crash at any step.

A provider moves from shard A to shard B in five steps, each durable before the next:

1. **intent**: ``hexbook:directory:moves`` records ``provider:{id}`` -> ``{"from": A,
   "to": B}`` (a cell's move records ``cell:{cell}`` -> B, then moves its providers);
2. **handed**: A gives the calendars up (journaled with their full state, and kept
   by A, unserved: its commands answer :class:`~engine.errors.Moving`, a 503 with
   Retry-After, so no request is answered from a copy that is about to be stale);
3. **taken**: B takes them over (journaled; its offers and reminders go on at B);
4. **routed**: the directory names B; a gateway that still routes to A hears
   ``Moving`` or ``CalendarNotFound``, reads the directory again and goes to B;
5. **ended**: A forgets what it handed off (journaled), and the intent is deleted.

Every step repeats safely: A answers a second hand-off with the state it gave up the
first time; B keeps what it took over the first time (it may have served commands
since); the switch and the end are idempotent. Two movers at once (two gateways
resuming) therefore end where one would. So whoever finds an intent (the operator calling
again, :func:`resume` at a gateway's start) finishes the move, and an acknowledged
booking is in exactly one served calendar at every moment.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import h3

from actors import archive
from actors.shard import check
from engine.errors import InvalidRequest, ScheduleConflict

if TYPE_CHECKING:
    from actors.api import Hexbook
    from actors.journal import HandedOff

__all__ = ["MOVES", "Step", "move_cell", "move_provider", "pending", "promote", "resume"]

MOVES = "hexbook:directory:moves"
Step = Literal["intent", "handed", "taken", "routed", "ended"]
OnStep = Callable[[Step, str], None]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _noop(step: Step, provider_id: str) -> None:
    """The default step hook (tests pass one that stops a move at a step)."""


def pending(hb: Hexbook) -> dict[str, dict[str, str]]:
    """The moves under way: ``provider:{id}`` -> {from, to}, ``cell:{cell}`` -> {to}."""
    out: dict[str, dict[str, str]] = {}
    for k, v in hb.redis.hgetall(MOVES).items():
        key, raw = _s(k), _s(v)
        out[key] = json.loads(raw) if key.startswith("provider:") else {"to": raw}
    return out


def _known_shard(hb: Hexbook, shard: str) -> None:
    if shard not in hb.directory.shards:
        raise InvalidRequest(f"unknown shard {shard!r}; shards are {hb.directory.shards}")


def move_provider(hb: Hexbook, provider_id: str, to_shard: str, *, on_step: OnStep = _noop) -> bool:
    """Move one provider's calendars to ``to_shard`` (the five steps above); ``False``
    if it is there already. A move of this provider to another shard that is under way
    is a :class:`~engine.errors.ScheduleConflict`: finish it first (:func:`resume`)."""
    _known_shard(hb, to_shard)
    field = f"provider:{provider_id}"
    raw: Any = hb.redis.hget(MOVES, field)
    if raw is not None:
        intent = json.loads(_s(raw))
        if intent["to"] != to_shard:
            raise ScheduleConflict(
                f"provider {provider_id!r} is being moved to {intent['to']}; "
                "that move finishes first (resume it)"
            )
        from_shard = intent["from"]
    else:
        from_shard = hb.directory.shard_of(provider_id)
        if from_shard == to_shard:
            return False
        if not hb.redis.hsetnx(MOVES, field, json.dumps({"from": from_shard, "to": to_shard})):
            return move_provider(hb, provider_id, to_shard, on_step=on_step)  # one began
    on_step("intent", provider_id)
    if hb.directory.shard_of(provider_id) != to_shard:
        try:
            handed = check(hb._call(from_shard, "hand_off", provider_id))
        except InvalidRequest:
            if hb.directory.shard_of(provider_id) != to_shard:
                raise
            handed = None  # another mover finished meanwhile: only the end is left
    else:
        handed = None
    if handed is not None:
        on_step("handed", provider_id)
        _carry_archive(hb, handed, from_shard, to_shard)
        check(hb._call(to_shard, "take_over", handed))
        on_step("taken", provider_id)
        hb.directory.set_provider_shard(provider_id, to_shard)
        hb._placement[provider_id] = to_shard
        on_step("routed", provider_id)
    check(hb._call(from_shard, "end_hand_off", provider_id))
    _drop_archive(hb, provider_id, handed, from_shard, to_shard)
    on_step("ended", provider_id)
    hb.redis.hdel(MOVES, field)
    return True


def _archive_keys(client: Any, provider_id: str, handed: HandedOff | None) -> list[Any]:
    """The provider's archive keys: one per service it handed off, or (a move resumed
    past its hand-off) those a scan finds."""
    if handed is not None:
        return [archive.archive_key(provider_id, c.service) for c in handed.calendars]
    return list(client.scan_iter(match=f"{archive.PREFIX}{provider_id}/*", count=500))


def _carry_archive(hb: Hexbook, handed: HandedOff, from_shard: str, to_shard: str) -> None:
    """Copy a provider's archived days to the Redis its new shard journals to, when that
    is another server (ADR 0025): before the take-over, while neither shard rolls its
    calendars, and again if a move resumes (the same values)."""
    src, dst = hb.journal_redis(from_shard), hb.journal_redis(to_shard)
    if src is dst:
        return
    for key in _archive_keys(src, handed.provider.provider_id, handed):
        rows: dict[Any, Any] = {}
        for field, value in src.hscan_iter(key, count=500):
            rows[field] = value
            if len(rows) >= 500:
                dst.hset(key, mapping=rows)
                rows = {}
        if rows:
            dst.hset(key, mapping=rows)


def _drop_archive(
    hb: Hexbook, provider_id: str, handed: HandedOff | None, from_shard: str, to_shard: str
) -> None:
    """Delete the old server's copy of a moved provider's archive (after the switch:
    no patient data left behind where nothing erases it)."""
    src, dst = hb.journal_redis(from_shard), hb.journal_redis(to_shard)
    if src is not dst and (keys := _archive_keys(src, provider_id, handed)):
        src.delete(*keys)


def move_cell(hb: Hexbook, cell: str, to_shard: str, *, on_step: OnStep = _noop) -> list[str]:
    """Map ``cell`` to ``to_shard`` (new providers there land on it) and move the
    providers already in it; returns the ids moved by this call."""
    _known_shard(hb, to_shard)
    res = hb.directory.resolution
    if not h3.is_valid_cell(cell) or h3.get_resolution(cell) != res:
        raise InvalidRequest(f"{cell!r} is not an H3 cell of resolution {res}")
    hb.redis.hset(MOVES, f"cell:{cell}", to_shard)
    hb.directory.assign_cell(cell, to_shard)
    moved = []
    for shard in hb.directory.shards:
        if shard == to_shard:
            continue
        for provider_id in hb._call(shard, "providers_in", cell, res):
            if move_provider(hb, provider_id, to_shard, on_step=on_step):
                moved.append(provider_id)
    hb.redis.hdel(MOVES, f"cell:{cell}")
    return moved


def promote(hb: Hexbook, provider_id: str, *, on_step: OnStep = _noop) -> str:
    """Give a hot site (a stadium) a shard of its own and move it there; returns that
    shard's name. The new shard is detached (it outlives the process that made it) and
    joins every waiting entry first: every shard holds the whole waitlist."""
    source = hb.directory.shard_of(provider_id)
    shard = hb.directory.dedicate(provider_id)
    hb.shard(shard, detached=True)
    hb._call(shard, "info")  # started and recovered before the site stops being served
    if source != shard:
        for entry in hb._call(source, "waitlist_entries"):
            hb._call(shard, "waitlist_join", entry)
    move_provider(hb, provider_id, shard, on_step=on_step)
    return shard


def resume(hb: Hexbook) -> list[str]:
    """Finish every move under way (providers first, then cells); what was finished."""
    done = []
    moves = pending(hb)
    for key, intent in moves.items():
        if key.startswith("provider:"):
            move_provider(hb, key.removeprefix("provider:"), intent["to"])
            done.append(key)
    for key, intent in moves.items():
        if key.startswith("cell:"):
            move_cell(hb, key.removeprefix("cell:"), intent["to"])
            done.append(key)
    return done
