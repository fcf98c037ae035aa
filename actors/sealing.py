"""Patient data sealed before it reaches Redis: AES-256-GCM with a key id on each value.

Everything a shard writes that holds patient data (journal entries, snapshots, archived
bookings) is *sealed*: ``MAGIC | len(key id) | key id | nonce (12) | ciphertext+tag``,
with the value's Redis key (and field) as associated data, so a value copied to another
place does not open. A value that does not start with ``MAGIC`` is clear (written before
sealing, or by a stack that runs without keys) and reads as it is: clear msgpack records
start with an array header, never with ``H``.

A :class:`Keyring` holds every key still needed to read, and the *current* one, which
seals new values. Rotation adds a key and makes it current; old values stay readable as
long as their key is in the ring, and ``hexbook keyring reencrypt`` seals them all anew
(docs/security.md).

Keys come from (``gateway.settings.data_keyring`` decides): ``HEXBOOK_DATA_KEYS``
(``id:base64,id:base64``, the last is current), else a key file
(``HEXBOOK_DATA_KEYS_FILE``, or ``DATA/data.keys`` for the embedded Redis, made at the
first start with owner-only permissions): one ``id base64`` per line, the last current.

>>> ring = Keyring.generate()
>>> sealed = ring.seal(b"1950-06-01", b"hexbook:archive:x")
>>> MAGIC in sealed[:4] and b"1950" not in sealed
True
>>> ring.open(sealed, b"hexbook:archive:x")
b'1950-06-01'
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.errors import KeyringError

__all__ = [
    "KEYS_FILE",
    "MAGIC",
    "Keyring",
    "key_id_of",
    "write_key_file",
]

MAGIC = b"HXS1"
KEYS_FILE = "data.keys"
_KID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_NONCE = 12


def key_id_of(value: bytes) -> str | None:
    """The id of the key that sealed ``value``; ``None`` for a clear value."""
    if not value.startswith(MAGIC) or len(value) < len(MAGIC) + 1:
        return None
    n = value[len(MAGIC)]
    return value[len(MAGIC) + 1 : len(MAGIC) + 1 + n].decode("ascii", "replace")


def _decode_key(kid: str, text: str, where: str) -> bytes:
    if not _KID.match(kid):
        raise KeyringError(f"{where}: key id {kid!r} must be 1-32 letters, digits, '-' or '_'")
    try:
        key = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError):
        raise KeyringError(f"{where}: key {kid!r} is not base64") from None
    if len(key) != 32:
        raise KeyringError(f"{where}: key {kid!r} has {len(key)} bytes; AES-256 needs 32")
    return key


class Keyring:
    """The data keys of a deployment: ``keys`` by id, ``current`` seals new values.

    A ring without keys seals nothing (values stay clear); ``path``: the key file it was
    read from, read again by :meth:`reload` (a shard does at every recovery)."""

    def __init__(
        self,
        keys: Mapping[str, bytes] | None = None,
        current: str | None = None,
        *,
        path: Path | None = None,
        env: str | None = None,
    ) -> None:
        self.keys = dict(keys or {})
        if current is None and self.keys:
            current = next(reversed(self.keys))
        if current is not None and current not in self.keys:
            raise KeyringError(f"the current key {current!r} is not in the keyring")
        self.current = current
        self.path = path
        self.env = env
        self._ciphers = {kid: AESGCM(k) for kid, k in self.keys.items()}

    # Ray pickles a ring to hand it to a shard; the ciphers are made again there.
    def __getstate__(self) -> dict[str, object]:
        return {"keys": self.keys, "current": self.current, "path": self.path, "env": self.env}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(  # type: ignore[misc]
            state["keys"], state["current"], path=state["path"], env=state["env"]
        )

    def __repr__(self) -> str:  # never the keys themselves
        return f"Keyring(ids={list(self.keys)}, current={self.current!r})"

    @property
    def sealing(self) -> bool:
        return self.current is not None

    # --- sealing ---------------------------------------------------------------------

    def seal(self, plaintext: bytes, where: bytes) -> bytes:
        """``plaintext`` sealed with the current key, bound to ``where`` (its Redis key);
        clear when the ring has no key."""
        kid = self.current
        if kid is None:
            return plaintext
        nonce = os.urandom(_NONCE)
        head = MAGIC + bytes([len(kid)]) + kid.encode() + nonce
        return head + self._ciphers[kid].encrypt(nonce, plaintext, where)

    def open(self, value: bytes, where: bytes) -> bytes:
        """The plaintext of a sealed ``value`` (a clear one as it is)."""
        if not value.startswith(MAGIC):
            return value
        n = value[len(MAGIC)]
        at = len(MAGIC) + 1
        kid = value[at : at + n].decode("ascii", "replace")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise KeyringError(
                f"a value at {where.decode(errors='replace')!r} is sealed with key {kid!r}, "
                f"which this keyring ({', '.join(self.keys) or 'no keys'}) lacks: give this "
                "process the key file or HEXBOOK_DATA_KEYS that holds it"
            )
        nonce = value[at + n : at + n + _NONCE]
        try:
            return cipher.decrypt(nonce, value[at + n + _NONCE :], where)
        except InvalidTag:
            raise KeyringError(
                f"the value at {where.decode(errors='replace')!r} does not open with key "
                f"{kid!r}: it was altered or moved from another key"
            ) from None

    # --- where keys come from ----------------------------------------------------------

    @classmethod
    def generate(cls) -> Keyring:
        """A ring with one fresh key (tests, ``hexbook keyring new``)."""
        kid = secrets.token_hex(4)
        return cls({kid: AESGCM.generate_key(bit_length=256)}, kid)

    @classmethod
    def parse(cls, text: str, where: str = "HEXBOOK_DATA_KEYS") -> Keyring:
        """``id:base64,id:base64`` (the form of ``HEXBOOK_DATA_KEYS``); the last is current."""
        keys: dict[str, bytes] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            kid, sep, b64 = part.partition(":")
            if not sep:
                raise KeyringError(f"{where}: expected id:base64 pairs separated by commas")
            keys.pop(kid, None)
            keys[kid] = _decode_key(kid, b64, where)
        if not keys:
            raise KeyringError(f"{where} holds no key")
        return cls(keys, env=where)

    @classmethod
    def from_file(cls, path: Path) -> Keyring:
        """The ring kept in ``path``: ``id base64`` per line, ``#`` comments; the last
        key is current."""
        keys: dict[str, bytes] = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            kid, _, b64 = line.partition(" ")
            keys.pop(kid, None)
            keys[kid] = _decode_key(kid, b64, f"{path}:{n}")
        if not keys:
            raise KeyringError(f"{path} holds no key")
        return cls(keys, path=path)

    @classmethod
    def load(
        cls,
        *,
        keys: str | None = None,
        file: Path | None = None,
        data_dir: Path | None = None,
        create: bool = False,
    ) -> Keyring | None:
        """A deployment's ring: from ``keys`` (the ``HEXBOOK_DATA_KEYS`` form), else the
        key ``file``, else ``data_dir/data.keys`` (made there with one key when
        ``create``). ``None`` when none of them gives one."""
        if keys:
            return cls.parse(keys)
        if file is not None:
            if not file.exists():
                raise KeyringError(f"the data key file {file} does not exist")
            return cls.from_file(file)
        if data_dir is None:
            return None
        path = Path(data_dir) / KEYS_FILE
        if not path.exists():
            if not create:
                return None
            write_key_file(path, cls.generate(), exclusive=True)
        return cls.from_file(path)

    def reload(self) -> Keyring:
        """The ring as its key file holds it now (this ring if it has no file, or the
        file is not on this machine)."""
        if self.path is not None and self.path.exists():
            return Keyring.from_file(self.path)
        return self

    def rotated(self) -> Keyring:
        """This ring with one new key, current; the old keys stay for reading."""
        fresh = Keyring.generate()
        assert fresh.current is not None
        return Keyring({**self.keys, **fresh.keys}, fresh.current, path=self.path, env=self.env)

    def encoded(self) -> list[tuple[str, str]]:
        """(key id, base64 key) of every key, the current one last."""
        order = [k for k in self.keys if k != self.current] + [self.current or ""]
        return [(k, base64.urlsafe_b64encode(self.keys[k]).decode()) for k in order if k]

    def as_env(self) -> str:
        """The ring in the form of ``HEXBOOK_DATA_KEYS`` (current last)."""
        return ",".join(f"{k}:{b64}" for k, b64 in self.encoded())


def write_key_file(path: Path, ring: Keyring, *, exclusive: bool = False) -> None:
    """Write ``ring`` to ``path`` (mode 0600, current key last), atomically: a new file
    renamed over the old one. ``exclusive``: only if ``path`` does not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = [
        "# hexbook data keys: '<key id> <base64 AES-256 key>' per line; the last seals new",
        "# values, the others are kept to read older ones. Keep a copy apart from backups.",
        *(f"{kid} {b64}" for kid, b64 in ring.encoded()),
    ]
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if exclusive:
        try:
            os.link(tmp, path)  # fails if another process made it meanwhile: theirs holds
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    else:
        os.replace(tmp, path)
