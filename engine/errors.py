"""Domain errors: the one place where hexbook's failures are named.

Every error has a stable machine-readable ``code`` (the gateway maps each code to one
HTTP status and a problem+json body) and a message that tells the caller what to do.

    HexbookError
    ├── InvalidRequest          validation_error      the command itself is wrong
    │   └── IdempotencyConflict idempotency_conflict  key reused with another command
    ├── NotFound                not_found
    │   ├── ProviderNotFound    provider_not_found
    │   ├── CalendarNotFound    calendar_not_found
    │   ├── HoldNotFound        hold_not_found
    │   ├── RoomNotFound        room_not_found
    │   ├── EntryNotFound       waitlist_entry_not_found
    │   └── BookingNotFound     booking_not_found
    ├── SlotUnavailable         slot_unavailable      no free capacity (try another slot)
    ├── HoldExpired             hold_expired          the hold ran out before confirm
    ├── ScheduleConflict        schedule_conflict     a schedule change would drop bookings
    ├── BookingNotActive        booking_not_active    cancelled already
    ├── NoOffer                 no_offer              the waitlist entry holds no offer now
    ├── AlreadyWaiting          already_waiting       one waitlist entry per patient and service
    ├── NotEligible             not_eligible          the service's rule refuses the patient
    ├── AdmissionRequired       admission_required    a waiting room is active: join it first
    ├── AdmissionSpent          admission_spent       this admission holds a place already
    ├── AlreadyQueued           already_queued        one place in a room's queue per visitor
    ├── RoomClosed              room_closed           the room is closed
    ├── RoomExists              room_exists           a room of that id exists already
    ├── Unavailable             unavailable           retry later, same idempotency key
    ├── KeyringError            keyring_error         a data key is missing or bad
    └── CodecError              codec_error
        └── UnsupportedVersion  unsupported_version   record written by another version
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AdmissionRequired",
    "AdmissionSpent",
    "AlreadyQueued",
    "AlreadyWaiting",
    "BookingNotActive",
    "BookingNotFound",
    "CalendarNotFound",
    "CodecError",
    "EntryNotFound",
    "HexbookError",
    "HoldExpired",
    "HoldNotFound",
    "IdempotencyConflict",
    "InvalidRequest",
    "KeyringError",
    "Moving",
    "NoOffer",
    "NotEligible",
    "NotFound",
    "ProviderNotFound",
    "RoomClosed",
    "RoomExists",
    "RoomNotFound",
    "ScheduleConflict",
    "SlotUnavailable",
    "Unavailable",
    "UnsupportedVersion",
    "error_from_parts",
    "error_parts",
]


class HexbookError(Exception):
    """Base of every domain error; ``code`` is stable and machine-readable."""

    code = "hexbook_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type[HexbookError], tuple[str]]:
        # Keeps subclasses with extra constructor arguments picklable across Ray.
        return (_rebuild_error, (type(self), self.message))  # type: ignore[return-value]


def _rebuild_error(cls: type[HexbookError], message: str) -> HexbookError:
    err = cls.__new__(cls)
    HexbookError.__init__(err, message)
    return err


class InvalidRequest(HexbookError):
    """The command is malformed or names something impossible (fix the request)."""

    code = "validation_error"


class IdempotencyConflict(InvalidRequest):
    """An idempotency key was reused with a different command."""

    code = "idempotency_conflict"

    def __init__(self, key: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for a different request; "
            "use a new key for a new request, or resend the original request unchanged"
        )


class NotFound(HexbookError):
    """Something named by the request does not exist."""

    code = "not_found"


class ProviderNotFound(NotFound):
    """No provider with that id."""

    code = "provider_not_found"

    def __init__(self, provider_id: str) -> None:
        super().__init__(f"provider {provider_id!r} does not exist; search for providers first")


class CalendarNotFound(NotFound):
    """The provider does not offer that service."""

    code = "calendar_not_found"

    def __init__(self, provider_id: str, service: str) -> None:
        super().__init__(
            f"provider {provider_id!r} has no calendar for service {service!r}; "
            "check the provider's services"
        )


class HoldNotFound(NotFound):
    """No live hold with that id (never made, released, expired and swept, or confirmed)."""

    code = "hold_not_found"

    def __init__(self, hold_id: str) -> None:
        super().__init__(
            f"hold {_redact(hold_id)} does not exist or was already released; place a new hold"
        )


class BookingNotFound(NotFound):
    """No booking with that id."""

    code = "booking_not_found"

    def __init__(self, booking_id: str) -> None:
        super().__init__(f"booking {booking_id!r} does not exist")


class SlotUnavailable(HexbookError):
    """The slot has not enough free capacity left for the party."""

    code = "slot_unavailable"

    def __init__(self, provider_id: str, service: str, start: int, party_size: int, free: int):
        super().__init__(
            f"slot {start} of provider {provider_id!r} ({service}) has {free} free place(s) "
            f"for a party of {party_size}; choose another slot"
        )
        self.free = free


class ScheduleConflict(HexbookError):
    """A schedule change would drop holds or bookings; nothing was changed."""

    code = "schedule_conflict"


class HoldExpired(HexbookError):
    """The hold expired before it was confirmed; its capacity went back to the pool."""

    code = "hold_expired"

    def __init__(self, hold_id: str, expired_at: int) -> None:
        super().__init__(
            f"hold {_redact(hold_id)} expired at {expired_at}; place a new hold and confirm "
            "it before it expires"
        )


class BookingNotActive(HexbookError):
    """The booking was cancelled; it cannot be cancelled or moved again."""

    code = "booking_not_active"

    def __init__(self, booking_id: str) -> None:
        super().__init__(f"booking {booking_id!r} is cancelled; make a new booking")


class NotEligible(HexbookError):
    """The eligibility rule in force refuses what the patient attested (at hold, or at
    confirm when a rule changed in between). ``rule`` names the rule, ``version`` its
    version, ``reasons`` each part not met."""

    code = "not_eligible"

    def __init__(self, rule: str, version: int, reasons: tuple[str, ...]) -> None:
        super().__init__(
            f"eligibility rule {rule!r} version {version} refuses this patient: "
            + "; ".join(reasons)
        )
        self.rule, self.version, self.reasons = rule, version, tuple(reasons)

    def __reduce__(self) -> tuple[type[NotEligible], tuple[str, int, tuple[str, ...]]]:  # type: ignore[override]
        return (NotEligible, (self.rule, self.version, self.reasons))


class AdmissionRequired(HexbookError):
    """A hold in the area of an active waiting room without a valid admission of that
    room (missing, expired, or given to another caller). ``room`` names the room."""

    code = "admission_required"

    def __init__(self, room: str, why: str) -> None:
        super().__init__(
            f"waiting room {room!r} is active here: {why}; join it with "
            f"POST /v1/rooms/{room}/visitors and hold with the admission it gives"
        )
        self.room, self.why = room, why

    def __reduce__(self) -> tuple[type[AdmissionRequired], tuple[str, str]]:  # type: ignore[override]
        return (AdmissionRequired, (self.room, self.why))


class AdmissionSpent(HexbookError):
    """An admission buys one hold: this one holds a place already, or is placing one."""

    code = "admission_spent"


class AlreadyQueued(HexbookError):
    """The room has a place for this visitor id, API key or address already."""

    code = "already_queued"


class RoomClosed(HexbookError):
    """The waiting room is closed: it queues nobody any more."""

    code = "room_closed"


class RoomExists(HexbookError):
    """A waiting room of that id exists already (close it, or choose another id)."""

    code = "room_exists"


class RoomNotFound(NotFound):
    """No waiting room of that id (or no such visitor in it)."""

    code = "room_not_found"


class EntryNotFound(NotFound):
    """No waitlist entry of that id, or not with that token."""

    code = "waitlist_entry_not_found"

    def __init__(self) -> None:
        super().__init__(
            "no waitlist entry of that id with that token (send the waitlist_token of "
            "the answer that created it in X-Waitlist-Token)"
        )


class NoOffer(HexbookError):
    """The waitlist entry holds no offer to accept: it is still waiting, or over.
    ``state`` says which."""

    code = "no_offer"

    def __init__(self, state: str) -> None:
        super().__init__(
            f"this waitlist entry has no offer to accept: it is {state}"
            + ("; an offer comes when a place frees up" if state == "waiting" else "")
        )
        self.state = state

    def __reduce__(self) -> tuple[type[NoOffer], tuple[str]]:
        return (NoOffer, (self.state,))


class AlreadyWaiting(HexbookError):
    """The patient waits for this service already (one entry per patient and service,
    so that one patient is never offered two places at once)."""

    code = "already_waiting"

    def __init__(self, entry_id: str) -> None:
        super().__init__(
            f"this patient is on the waitlist for this service already (entry {entry_id}); "
            "leave that entry first to wait differently"
        )
        self.entry_id = entry_id

    def __reduce__(self) -> tuple[type[AlreadyWaiting], tuple[str]]:
        return (AlreadyWaiting, (self.entry_id,))


class CodecError(HexbookError):
    """Bytes that are not a hexbook record."""

    code = "codec_error"


class UnsupportedVersion(CodecError):
    """A record written by a version of hexbook this one does not know."""

    code = "unsupported_version"


def _redact(secret: str) -> str:
    """Hold ids are bearer secrets: show only enough to correlate logs."""
    return f"{secret[:6]}…" if len(secret) > 8 else "…"


class KeyringError(HexbookError):
    """A sealed value does not open (its data key is not in this process's keyring, or
    it was altered), or a data key source is malformed (:mod:`actors.sealing`)."""

    code = "keyring_error"


class Unavailable(HexbookError):
    """The shard cannot serve right now (recovering, or its journal is unreachable).
    Nothing was acknowledged: retry with the same idempotency key after a short wait."""

    code = "unavailable"


class Moving(Unavailable):
    """The provider is being moved to another shard (an operator's move, or one that
    resumes): retry shortly; the caller may look in the directory again, where the
    provider is found on its new shard once the move has routed it there."""


# --- errors as plain data (a wire that carries no pickles) --------------------------


def error_parts(exc: HexbookError) -> tuple[str, list[Any] | None, str]:
    """An error of this module as (class name, constructor arguments, message): what a
    pickle of it would carry (its ``__reduce__``), as plain values. The arguments are
    ``None`` for an error rebuilt from its message alone."""
    rebuild, args = exc.__reduce__()[:2]
    if rebuild is type(exc):
        return type(exc).__name__, list(args), exc.message
    return type(exc).__name__, None, exc.message


def error_from_parts(name: str, args: list[Any] | None, message: str) -> HexbookError:
    """The error :func:`error_parts` described, equal to what unpickling it would give.
    A name this module does not define (another version's error, or none of hexbook's)
    is an :class:`Unavailable` with the message: the caller retries, nothing is lost."""
    cls = _ERRORS.get(name)
    if cls is None:
        return Unavailable(message)
    if args is None:
        return _rebuild_error(cls, message)
    try:
        make: Any = cls  # each class takes its own arguments (its __reduce__'s)
        return make(*(tuple(a) if isinstance(a, list) else a for a in args))  # type: ignore[no-any-return]
    except TypeError:
        return _rebuild_error(cls, message)


def _subclasses(cls: type[HexbookError]) -> list[type[HexbookError]]:
    return [cls] + [s for sub in cls.__subclasses__() for s in _subclasses(sub)]


_ERRORS: dict[str, type[HexbookError]] = {
    cls.__name__: cls for cls in _subclasses(HexbookError) if cls.__module__ == __name__
}
