"""Where the waitlist lives in Redis, and the claim that keeps one offer per entry.

Every shard holds every waiting entry (journaled with its calendars, see
:mod:`engine.waitlist`), so a place freed anywhere can go to a patient in the same
writer step. What keeps a patient from being offered two places at once, by two shards,
is the entry's *claim*, one Redis string per entry:

- absent: the entry waits;
- ``offered:{json}``: a shard placed an offer hold for it (shard, hold id, provider,
  service, slot start, expiry); set with compare-and-set (:data:`CLAIM`) before the
  offer is journaled, so of two shards racing for one entry exactly one offers;
- ``done:{reason}`` or ``done:{reason}:{json}`` (with the offer it had): the entry is
  over (``booked``, ``declined``, ``lapsed``, ``cancelled``): the shard whose offer
  ended writes it right after the commit that ended it (:data:`FINISH`, only if its own
  offer is still the claim; its recovery finishes an end a crash cut off, ADR 0025),
  the gateway when its owner leaves (:data:`LEAVE`). A shard that
  finds ``done`` takes the entry off its list.

A claim a shard made for an offer it never committed (its commit failed: fail stop) is
taken back when that shard recovers (:data:`UNCLAIM`).

Keys: ``hexbook:waitlist:{entry}:claim`` and ``hexbook:waitlist:{entry}:entry`` (the
entry as its owner reads it, sealed like every value with patient data).
"""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec

from actors.sealing import Keyring
from engine.waitlist import WaitEntry

__all__ = [
    "CLAIM",
    "DONE_TTL_SECONDS",
    "FINISH",
    "LEAVE",
    "PATIENT",
    "UNCLAIM",
    "Claim",
    "claim_key",
    "done_value",
    "entry_key",
    "offered_value",
    "open_entry",
    "parse_claim",
    "patient_key",
    "seal_entry",
]

# A finished claim is kept this long (a late shard still learns the entry is over).
DONE_TTL_SECONDS = 60 * 86_400

# KEYS[1] claim; ARGV[1] the offered value. Returns nil when claimed, else what is there.
CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1])
return false
"""
# KEYS[1] claim; ARGV[1] the offer's hold id, ARGV[2] done value, ARGV[3] ttl.
FINISH = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 8) == 'offered:'
   and string.find(v, '"hold_id":"' .. ARGV[1] .. '"', 1, true) then
  redis.call('SET', KEYS[1], ARGV[2] .. ':' .. string.sub(v, 9), 'EX', ARGV[3])
  return 1
end
return 0
"""
# KEYS[1] claim; ARGV[1] the offer's hold id: the claim is deleted if it is still that.
UNCLAIM = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 8) == 'offered:'
   and string.find(v, '"hold_id":"' .. ARGV[1] .. '"', 1, true) then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# KEYS[1] claim; ARGV[1] done value, ARGV[2] ttl. Ends a waiting or offered entry; an
# entry over already stays as it ended. Returns what was there (nil: it was waiting).
LEAVE = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 5) == 'done:' then return v end
local ended = ARGV[1]
if v then ended = ended .. ':' .. string.sub(v, 9) end
redis.call('SET', KEYS[1], ended, 'EX', ARGV[2])
return v or false
"""


# KEYS[1] the patient's key; ARGV[1] the new entry, ARGV[2] ttl, ARGV[3] the entry it may
# replace (one that is over) or "". Returns nil when the patient's key names the new
# entry now, else the live entry it names.
PATIENT = """
local v = redis.call('GET', KEYS[1])
if not v or v == ARGV[1] or v == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return false
end
return v
"""


def patient_key(service: str, patient_ref: str) -> str:
    """Which entry a patient waits with for ``service`` (a digest: no reference in key
    names)."""
    digest = hashlib.sha256(f"{service}\x1f{patient_ref}".encode()).hexdigest()[:32]
    return f"hexbook:waitlist:patient:{digest}"


def claim_key(entry_id: str) -> str:
    return f"hexbook:waitlist:{entry_id}:claim"


def entry_key(entry_id: str) -> str:
    return f"hexbook:waitlist:{entry_id}:entry"


class Claim(msgspec.Struct, frozen=True):
    """What an entry's claim says: ``waiting``, ``offered`` (with the offer) or over
    (``booked``, ``declined``, ``lapsed``, ``cancelled``, ``expired``)."""

    state: str
    shard: str | None = None
    hold_id: str | None = None
    provider_id: str | None = None
    service: str | None = None
    start: int | None = None
    expires_at: int | None = None


def offered_value(
    shard: str, hold_id: str, provider_id: str, service: str, start: int, expires_at: int
) -> bytes:
    offer = Claim("offered", shard, hold_id, provider_id, service, start, expires_at)
    return b"offered:" + msgspec.json.encode(offer)


def done_value(reason: Literal["booked", "declined", "lapsed", "cancelled", "expired"]) -> bytes:
    return f"done:{reason}".encode()


def parse_claim(raw: bytes | str | None) -> Claim:
    """The claim as stored (``None``: the entry is waiting); an entry that is over keeps
    the offer it had, if it had one, under its end's name."""
    if raw is None:
        return Claim("waiting")
    if isinstance(raw, str):
        raw = raw.encode()
    if raw.startswith(b"offered:"):
        return msgspec.json.decode(raw[8:], type=Claim)
    reason, _, offer = raw.removeprefix(b"done:").partition(b":")
    if not offer:
        return Claim(reason.decode())
    had = msgspec.json.decode(offer, type=Claim)
    return msgspec.structs.replace(had, state=reason.decode())


_entry = msgspec.msgpack.Decoder(WaitEntry)
_NO_KEYS = Keyring()


def seal_entry(ring: Keyring | None, entry: WaitEntry) -> bytes:
    return (ring or _NO_KEYS).seal(
        msgspec.msgpack.encode(entry), entry_key(entry.entry_id).encode()
    )


def open_entry(ring: Keyring | None, entry_id: str, raw: bytes | str) -> WaitEntry:
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    return _entry.decode((ring or _NO_KEYS).open(data, entry_key(entry_id).encode()))
