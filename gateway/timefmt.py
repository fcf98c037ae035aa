"""RFC 3339 in and out: the API takes timestamps with an offset and answers in the
provider's time zone with its offset; the engine works in UTC seconds."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from engine.errors import InvalidRequest

__all__ = ["RFC3339", "format_local", "parse_instant", "rfc3339_seconds"]

# RFC 3339 section 5.6 date-time, ASCII digits only; T and Z in either case.
RFC3339 = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_RFC3339 = re.compile(RFC3339.removeprefix("^").removesuffix("$"))


@lru_cache(maxsize=1 << 16)  # slot starts repeat across requests
def rfc3339_seconds(text: str) -> int:
    """UTC seconds of an RFC 3339 timestamp with an offset; ``ValueError`` saying why
    otherwise (no offset, a week date, a fraction of a second, a day that does not
    exist...)."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(
            f"{text[:40]!r} is not an RFC 3339 timestamp with an offset, "
            "e.g. 2026-03-08T09:15:00-06:00"
        )
    fraction = m.group(1)
    if fraction and fraction.strip(".0"):
        raise ValueError(f"{text!r} has a fraction of a second; give whole seconds")
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
        return int(moment.timestamp())
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{text!r} is not a real instant: {exc}") from None


def parse_instant(text: str, field: str = "start") -> int:
    """:func:`rfc3339_seconds` for non-API callers: an :class:`InvalidRequest` naming
    ``field`` instead of a ``ValueError``."""
    try:
        return rfc3339_seconds(text)
    except ValueError as exc:
        raise InvalidRequest(f"{field}: {exc}") from None


@lru_cache(maxsize=1 << 16)  # slot starts repeat across requests; 4% of a booking's CPU
def format_local(ts: int, tz_name: str) -> str:
    """``ts`` (UTC seconds) in the provider's zone, with its offset."""
    return datetime.fromtimestamp(ts, UTC).astimezone(ZoneInfo(tz_name)).isoformat()
