"""Ids hexbook issues: unguessable, and (holds, bookings) routable to their calendar
(docs/adr/0006-routable-ids.md)."""

from __future__ import annotations

import base64
import hashlib
import os
import threading

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


def new_secret() -> str:
    """An unguessable id (128 random bits, URL-safe; as ``secrets.token_urlsafe(16)``)."""
    return base64.urlsafe_b64encode(_random.take(16)).rstrip(b"=").decode("ascii")


def routable_id(provider_id: str, service: str) -> str:
    """An unguessable id that also says which calendar it belongs to:
    ``<base64url(provider_id/service)>.<128 random bits>``, so a hold or booking id
    alone routes a request to its shard (docs/adr/0006-routable-ids.md)."""
    prefix = base64.urlsafe_b64encode(f"{provider_id}/{service}".encode()).rstrip(b"=")
    return f"{prefix.decode()}.{new_secret()}"


def calendar_of(routable: str) -> tuple[str, str]:
    """The (provider_id, service) of an id made by :func:`routable_id`."""
    prefix, dot, secret = routable.partition(".")
    try:
        if not dot or len(secret) < 22:
            raise ValueError
        raw = base64.urlsafe_b64decode(prefix + "=" * (-len(prefix) % 4)).decode()
        provider_id, slash, service = raw.partition("/")
        if not slash or not provider_id or not service:
            raise ValueError
    except ValueError as exc:
        raise InvalidRequest("malformed id: it was not issued by hexbook") from exc
    return provider_id, service


def token_digest(token: str) -> bytes:
    """What is stored of a booking token: its SHA-256."""
    return hashlib.sha256(token.encode()).digest()
