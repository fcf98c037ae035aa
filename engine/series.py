"""Dose series: the second appointment booked with the first, all or nothing.

A :class:`SeriesTemplate` says when the next dose falls (``min_days`` to ``max_days``
after the one before, at the same provider or any). A series is held as one hold per
dose; confirming it is a small protocol over calendars that may live on different
shards, so it is written down as data (:class:`SeriesRecord`, kept durable by the
caller before each step) and driven by two pure functions:

- :func:`next_step` says what to do now (confirm, cancel or release one dose, under a
  key derived from the series id, so every step can be repeated safely);
- :func:`advance` records what a step's outcome was: ``ok``, ``refused`` (a definite
  answer: the hold expired, the rule refuses) or ``unknown`` (the shard did not
  answer: the step may or may not have happened, so it is simply tried again);
- :func:`next_steps` and :func:`advance_all` do the same for the doses' confirms sent
  together (their calendars may be on different shards).

Whatever fails, a series ends ``confirmed`` (every dose booked) or ``aborted`` (none
booked, the holds given back): a confirm that fails for one dose turns the series into
``undoing``, which cancels what was booked and releases the rest. An ``unknown``
outcome changes nothing: the same step is sent again under the same key, and a calendar
answers a repeat with its first result (it remembers keys for
:data:`engine.horizon.RETENTION_SECONDS`, so a series must end within that: the
sweeper sees to it), so a confirm that did happen is not done twice and one that did
not happens now. That is also how ``undoing`` learns whether a dose it has no answer
for was booked: it sends the same confirm again, then cancels what that booked, or
releases the hold if it was refused.

>>> t = SeriesTemplate(service="vaccine", min_days=21, max_days=42)
>>> dose_window(t, 0) == (21 * 86400, 42 * 86400)
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec
import numpy as np

from engine.errors import InvalidRequest
from engine.records import Contact

__all__ = [
    "Dose",
    "SeriesRecord",
    "SeriesTemplate",
    "Step",
    "advance",
    "advance_all",
    "dose_window",
    "first_doses",
    "next_step",
    "next_steps",
    "pick_slot",
    "plan_move",
    "request_cancel",
    "request_confirm",
    "request_move",
    "validate_template",
]

DAY = 86_400
SeriesState = Literal[
    "held",
    "confirming",
    "confirmed",
    "undoing",
    "aborted",
    "cancelling",
    "cancelled",
    "moving",
    "unmoving",
]
DoseState = Literal["held", "booked", "refused", "released", "cancelled"]
Outcome = Literal["ok", "refused", "unknown"]
TERMINAL: frozenset[str] = frozenset({"confirmed", "aborted", "cancelled"})
SlotFinder = Callable[[int, tuple[int, int], int], int | None]


class SeriesTemplate(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Dose 2 between ``min_days`` and ``max_days`` after dose 1 (whole days of 24 h,
    from the first dose's start); at the same provider, or at any (``same_provider``
    false: the patient or the search picks the site)."""

    service: str
    min_days: int
    max_days: int
    same_provider: bool = False


def validate_template(t: SeriesTemplate) -> None:
    if not 1 <= t.min_days <= t.max_days <= 365:
        raise InvalidRequest(
            f"a series needs 1 <= min_days <= max_days <= 365; got {t.min_days}..{t.max_days}"
        )


def dose_window(t: SeriesTemplate, first_start: int) -> tuple[int, int]:
    """UTC seconds [lo, hi] in which the next dose may start."""
    return first_start + t.min_days * DAY, first_start + t.max_days * DAY


def pick_slot(
    starts: np.ndarray,
    free: np.ndarray,
    window: tuple[int, int],
    party: int,
    prefer: int | None = None,
) -> int | None:
    """The slot for the next dose: with ``party`` free places inside ``window``, the
    nearest to ``prefer`` (default: the earliest); ``None`` if there is none."""
    lo, hi = window
    ok = (starts >= lo) & (starts <= hi) & (free >= party)
    candidates = starts[ok]
    if candidates.size == 0:
        return None
    if prefer is None:
        return int(candidates[0])
    return int(candidates[np.argmin(np.abs(candidates - prefer))])


class Dose(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One dose of a series: its calendar, slot, hold and (once confirmed) booking."""

    provider_id: str
    service: str
    start: int
    party_size: int
    hold_id: str
    booking_id: str
    state: DoseState = "held"
    target: int = 0  # a move under way: where to (0: none)
    origin: int = 0  # where a moved dose was, to move it back if the move fails


class SeriesRecord(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A series and where its protocol stands (stored before every step)."""

    series_id: str
    state: SeriesState
    doses: tuple[Dose, ...]
    patient_ref: str = ""
    token_digest: bytes = b""
    created_at: int = 0
    reason: str = ""
    moves: int = 0  # moves asked so far (each move's steps have keys of their own)
    contact: Contact | None = None  # given at confirm, for every dose's booking


class Step(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One call to a calendar: ``confirm``, ``cancel`` or ``release`` dose ``dose``,
    under ``key`` (derived from the series id: the same step repeats the same key)."""

    kind: Literal["confirm", "cancel", "release", "reschedule"]
    dose: int
    key: str


def _key(rec: SeriesRecord, kind: str, i: int) -> str:
    return f"{rec.series_id}:{kind}:{i}"


def request_confirm(
    rec: SeriesRecord, patient_ref: str, token_digest: bytes, contact: Contact | None = None
) -> SeriesRecord:
    """Decide to confirm a held series (the caller stores this before any step)."""
    if rec.state != "held":
        if rec.state in ("confirming", "confirmed", "undoing", "aborted"):
            return rec  # a repeat: carry on where it stands
        raise InvalidRequest(f"series {rec.series_id!r} is {rec.state}; it cannot be confirmed")
    return msgspec.structs.replace(
        rec,
        state="confirming",
        patient_ref=patient_ref,
        token_digest=token_digest,
        contact=contact,
    )


def request_cancel(rec: SeriesRecord) -> SeriesRecord:
    """Decide to cancel a confirmed series (every dose)."""
    if rec.state in ("cancelling", "cancelled"):
        return rec
    if rec.state != "confirmed":
        raise InvalidRequest(f"series {rec.series_id!r} is {rec.state}; only a booked one cancels")
    return msgspec.structs.replace(rec, state="cancelling")


def plan_move(
    rec: SeriesRecord, t: SeriesTemplate, dose: int, new_start: int, free_for: SlotFinder
) -> dict[int, int]:
    """Where each dose goes when dose ``dose`` moves to ``new_start``: the doses after it
    stay if they are still in their window, else move to the slot in the new window
    nearest to keeping their interval (``free_for(i, window, prefer)``: a slot of dose
    ``i``'s calendar, or ``None``); a dose before it must leave it in its window.
    Raises :class:`InvalidRequest` if no plan keeps the series in its windows."""
    if rec.state != "confirmed":
        raise InvalidRequest(f"series {rec.series_id!r} is {rec.state}; only a booked one moves")
    if not 0 <= dose < len(rec.doses):
        raise InvalidRequest(f"series {rec.series_id!r} has doses 1 to {len(rec.doses)}")
    starts = [d.start for d in rec.doses]
    if starts[dose] == new_start:
        raise InvalidRequest(f"dose {dose + 1} is already at {new_start}")
    if dose > 0:
        lo, hi = dose_window(t, starts[dose - 1])
        if not lo <= new_start <= hi:
            raise InvalidRequest(
                f"dose {dose + 1} must start {t.min_days} to {t.max_days} days after dose {dose}"
            )
    plan = {dose: new_start}
    shift = new_start - starts[dose]
    previous = new_start
    for i in range(dose + 1, len(starts)):
        window = dose_window(t, previous)
        if window[0] <= starts[i] <= window[1]:
            break  # it stays, and so do the ones after it
        picked = free_for(i, window, starts[i] + shift)
        if picked is None:
            raise InvalidRequest(
                f"no slot with room for dose {i + 1} {t.min_days} to {t.max_days} days after "
                "the new date: the series stays as it is"
            )
        plan[i] = previous = picked
    return plan


def request_move(rec: SeriesRecord, plan: dict[int, int]) -> SeriesRecord:
    """Decide a move (the caller stores this before any step)."""
    doses = tuple(
        msgspec.structs.replace(d, target=plan[i], origin=d.start) if i in plan else d
        for i, d in enumerate(rec.doses)
    )
    return msgspec.structs.replace(rec, state="moving", doses=doses, moves=rec.moves + 1, reason="")


def next_steps(rec: SeriesRecord) -> list[Step]:
    """The steps that may be sent together now: every dose's confirm while confirming
    (their calendars answer in parallel), else the one :func:`next_step`."""
    if rec.state == "confirming":
        return [
            Step("confirm", i, _key(rec, "confirm", i))
            for i, d in enumerate(rec.doses)
            if d.state == "held"
        ]
    step = next_step(rec)
    return [] if step is None else [step]


def advance_all(rec: SeriesRecord, results: list[tuple[Step, Outcome, str]]) -> SeriesRecord:
    """The record after steps sent together had these outcomes. Refusals count only once
    every step of the batch has answered: a dose whose confirm is unknown might be
    booked, and undoing must not start before it is known (it is sent again)."""
    if any(outcome == "unknown" for _, outcome, _ in results):
        results = [r for r in results if r[1] == "ok"]
    ordered = [r for r in results if r[1] == "ok"] + [r for r in results if r[1] != "ok"]
    for step, outcome, reason in ordered:
        rec = advance(rec, step, outcome, reason)
    return rec


def next_step(rec: SeriesRecord) -> Step | None:
    """What to do now; ``None`` when the series is not in a protocol (held or final)."""
    if rec.state == "confirming":
        for i, d in enumerate(rec.doses):
            if d.state == "held":
                return Step("confirm", i, _key(rec, "confirm", i))
    elif rec.state == "undoing":
        for i, d in enumerate(rec.doses):
            if d.state == "booked":
                return Step("cancel", i, _key(rec, "cancel", i))
            if d.state == "held":  # its confirm may have been sent: the same confirm tells
                return Step("confirm", i, _key(rec, "confirm", i))
            if d.state == "refused":
                return Step("release", i, _key(rec, "release", i))
    elif rec.state == "cancelling":
        for i, d in enumerate(rec.doses):
            if d.state == "booked":
                return Step("cancel", i, _key(rec, "cancel", i))
    elif rec.state in ("moving", "unmoving"):
        # The later doses first: a dose moving earlier never passes one still to move.
        for i in reversed(range(len(rec.doses))):
            if rec.doses[i].target:
                kind = "move" if rec.state == "moving" else "moveback"
                return Step("reschedule", i, f"{rec.series_id}:{kind}{rec.moves}:{i}")
    return None


_AFTER: dict[tuple[str, str], DoseState] = {
    ("confirm", "ok"): "booked",
    ("confirm", "refused"): "refused",
    ("cancel", "ok"): "cancelled",
    ("cancel", "refused"): "cancelled",  # already cancelled
    ("release", "ok"): "released",
    ("release", "refused"): "released",  # already gone (expired or released)
}


def advance(rec: SeriesRecord, step: Step, outcome: Outcome, reason: str = "") -> SeriesRecord:
    """The record after ``step`` had ``outcome``; a final state once nothing is left."""
    if outcome == "unknown":
        return rec
    if step.kind == "reschedule":
        return _after_move(rec, step, outcome, reason)
    doses = list(rec.doses)
    doses[step.dose] = msgspec.structs.replace(doses[step.dose], state=_AFTER[(step.kind, outcome)])
    state: SeriesState = rec.state
    if state == "confirming" and outcome == "refused":
        state, reason = "undoing", reason or "a dose could not be confirmed"
    else:
        reason = rec.reason
    out = msgspec.structs.replace(rec, doses=tuple(doses), state=state, reason=reason)
    if next_step(out) is None:
        final: dict[str, SeriesState] = {
            "confirming": "confirmed",
            "undoing": "aborted",
            "cancelling": "cancelled",
        }
        out = msgspec.structs.replace(out, state=final.get(out.state, out.state))
    return out


def _after_move(rec: SeriesRecord, step: Step, outcome: Outcome, reason: str) -> SeriesRecord:
    doses = list(rec.doses)
    d = doses[step.dose]
    state: SeriesState = rec.state
    if outcome == "ok":
        doses[step.dose] = msgspec.structs.replace(d, start=d.target, target=0)
    elif rec.state == "moving":  # move back what moved, leave the rest
        state, reason = "unmoving", f"the move was refused: dose {step.dose + 1}: {reason}"
        doses = [
            msgspec.structs.replace(x, target=x.origin if x.start != x.origin else 0)
            if x.origin
            else x
            for x in doses
        ]
    else:  # a dose that cannot go back stays where it moved (the series stays whole)
        doses[step.dose] = msgspec.structs.replace(d, target=0)
        reason = f"{rec.reason}; dose {step.dose + 1} could not move back: {reason}"
    out = msgspec.structs.replace(rec, doses=tuple(doses), state=state, reason=reason or rec.reason)
    if next_step(out) is None:
        out = msgspec.structs.replace(
            out,
            state="confirmed",
            doses=tuple(msgspec.structs.replace(x, origin=0) for x in out.doses),
        )
    return out


def first_doses(
    first: tuple[int, int, np.ndarray],
    seconds: list[tuple[str, tuple[int, int, np.ndarray]]],
    t: SeriesTemplate,
    party: int,
    t_from: int,
    t_to: int | None = None,
    limit: int = 3,
) -> list[tuple[int, str, int]]:
    """The first ``limit`` slots of a calendar (``first``: start, slot seconds, free
    places per slot) that can start a series: (first start, provider of dose 2, the
    earliest dose-2 start in its window), dose 2 taken from the first of ``seconds``
    (provider, grid; nearest first) that has room in the window."""
    start, step, free = first
    starts = start + np.arange(free.size, dtype=np.int64) * step
    ok = (free >= party) & (starts >= t_from)
    if t_to is not None:
        ok &= starts < t_to
    out: list[tuple[int, str, int]] = []
    prepared = []
    for pid, (s2, step2, free2) in seconds:
        starts2 = s2 + np.arange(free2.size, dtype=np.int64) * step2
        prepared.append((pid, starts2[free2 >= party]))
    for s in starts[ok].tolist():
        lo, hi = dose_window(t, s)
        for pid, room in prepared:
            i = int(np.searchsorted(room, lo))
            if i < room.size and room[i] <= hi:
                out.append((s, pid, int(room[i])))
                break
        if len(out) >= limit:
            break
    return out
