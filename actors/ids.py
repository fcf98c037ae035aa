"""Ids hexbook issues: unguessable, and (holds, bookings) routable to their calendar
(docs/adr/0006-routable-ids.md)."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import threading
from binascii import b2a_base64

from engine.errors import InvalidRequest

__all__ = ["calendar_of", "new_secret", "routable_id", "token_digest"]


class _RandomBytes:
    """The kernel's CSPRNG (``os.urandom``) read 4 KiB at a time: one system call per
    256 ids instead of one each, which was 2-3% of the gateway's event loop under holds
    (py-spy). A forked child starts empty, so it never hands out its parent's bytes."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._buf, self._pos, self._lock = b"", 0, threading.Lock()

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._pos + n > len(self._buf):
                self._buf, self._pos = os.urandom(max(self._size, n)), 0
            out = self._buf[self._pos : self._pos + n]
            self._pos += n
            return out


_random = _RandomBytes()


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def new_secret() -> str:
    """An unguessable id (128 random bits, URL-safe; as ``secrets.token_urlsafe(16)``:
    base64url of 16 bytes is 22 characters and two of padding, cut here)."""
    return b2a_base64(_random.take(16), newline=False).translate(_URLSAFE)[:22].decode("ascii")


@functools.lru_cache(maxsize=65_536)
def _prefix(provider_id: str, service: str) -> str:
    """base64url of ``provider_id/service``, unpadded (a calendar's ids all share it)."""
    return base64.urlsafe_b64encode(f"{provider_id}/{service}".encode()).rstrip(b"=").decode()


def routable_id(provider_id: str, service: str) -> str:
    """An unguessable id that also says which calendar it belongs to:
    ``<base64url(provider_id/service)>.<128 random bits>``, so a hold or booking id
    alone routes a request to its shard (docs/adr/0006-routable-ids.md)."""
    return f"{_prefix(provider_id, service)}.{new_secret()}"


@functools.lru_cache(maxsize=65_536)
def _calendar(prefix: str) -> tuple[str, str] | None:
    """What :func:`_prefix` made ``prefix`` of; ``None`` when it made no such thing."""
    try:
        raw = base64.urlsafe_b64decode(prefix + "=" * (-len(prefix) % 4)).decode()
    except ValueError:  # not base64, or not UTF-8 (UnicodeDecodeError is a ValueError)
        return None
    provider_id, slash, service = raw.partition("/")
    if not slash or not provider_id or not service:
        return None
    return provider_id, service


def calendar_of(routable: str) -> tuple[str, str]:
    """The (provider_id, service) of an id made by :func:`routable_id`."""
    prefix, dot, secret = routable.partition(".")
    calendar = _calendar(prefix) if dot and len(secret) >= 22 else None
    if calendar is None:
        raise InvalidRequest("malformed id: it was not issued by hexbook")
    return calendar


def token_digest(token: str) -> bytes:
    """What is stored of a booking token: its SHA-256."""
    return hashlib.sha256(token.encode()).digest()
