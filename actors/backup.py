"""Backups: a consistent copy of a deployment's Redis data in one file, and its restore
into an empty data folder (``hexbook backup``, ``hexbook restore``; docs/security.md).

The copy is what a Redis replica receives: the server forks and writes its whole dataset
as of one instant (an RDB file) down the connection (``SYNC``), while it goes on
serving. So the copy is consistent (no journal without its snapshot, nothing half
written), it works on a running stack and on an external Redis that allows ``SYNC``,
and every booking acknowledged before the backup began is in it (acknowledged means
fsynced to the append-only file, so it is in the dataset the fork sees).

Restoring loads the RDB file into a redis-server of the new data folder and has that
server write its append-only file from it, which ``hexbook up`` then starts on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

import redis

from actors.embedded_redis import (
    RedisStartError,
    _free_port,
    find_redis_server,
    holds_data,
    redis_password,
)
from actors.sealed_data import census

__all__ = ["BackupError", "backup", "restore"]

RDB_MAGIC = b"REDIS"


class BackupError(RuntimeError):
    """A backup or restore that cannot be done; the message says why."""


def _read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise BackupError("Redis closed the connection before sending its data")
        line += chunk
    return line[:-2]


def backup(url: str, out: Path, progress: Callable[[int, int], None] | None = None) -> int:
    """Write the dataset of the Redis at ``url`` to ``out`` (mode 0600: it holds patient
    data) as of one instant; the bytes written. ``progress(done, total)`` as it goes."""
    u = urlparse(url)
    if u.scheme not in ("redis", "rediss"):
        raise BackupError(f"not a Redis URL: {u.scheme}://...")
    if u.scheme == "rediss":
        raise BackupError("a backup over TLS (rediss://) is not supported yet; run it on the host")
    host, port = u.hostname or "127.0.0.1", u.port or 6379
    user, password = unquote(u.username or ""), unquote(u.password or "")
    part = out.with_name(out.name + ".part")
    try:
        sock = socket.create_connection((host, port), timeout=30)
    except OSError as exc:
        raise BackupError(f"cannot reach Redis at {host}:{port}: {exc}") from None
    with sock:
        if password:
            auth = [b"AUTH", *([user.encode()] if user else []), password.encode()]
            sock.sendall(_command(auth))
            if not _read_line(sock).startswith(b"+OK"):
                raise BackupError("Redis refused the password")
        sock.sendall(_command([b"SYNC"]))
        sock.settimeout(600)  # the fork's save may take a while on a large dataset
        header = b""
        while not header:  # newlines keep the link alive while the server saves
            header = _read_line(sock).lstrip(b"\n")
        if header.startswith(b"-"):
            raise BackupError(f"Redis refused SYNC: {header[1:].decode(errors='replace')}")
        if not header.startswith(b"$") or header.startswith(b"$EOF:"):
            raise BackupError(f"unexpected answer to SYNC: {header[:40]!r}")
        total = int(header[1:])
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        done = 0
        with os.fdopen(fd, "wb") as f:
            while done < total:
                chunk = sock.recv(min(1 << 20, total - done))
                if not chunk:
                    raise BackupError(f"the copy was cut short at {done:,} of {total:,} bytes")
                if done == 0 and not chunk.startswith(RDB_MAGIC):
                    raise BackupError("what Redis sent is not an RDB file")
                f.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            f.flush()
            os.fsync(f.fileno())
    part.replace(out)
    return total


def _command(parts: list[bytes]) -> bytes:
    out = b"*%d\r\n" % len(parts)
    for p in parts:
        out += b"$%d\r\n%s\r\n" % (len(p), p)
    return out


def restore(backup_file: Path, data_dir: Path, timeout: float = 600) -> tuple[int, Counter[str]]:
    """Bring ``backup_file`` into the empty ``data_dir``: a redis-server loads it and
    writes the append-only file ``hexbook up`` starts on. Returns the keys restored and
    how many sealed values each data key id seals (:func:`actors.sealed_data.census`):
    the data keys must come with the backup, apart from it."""
    with open(backup_file, "rb") as f:
        if f.read(5) != RDB_MAGIC:
            raise BackupError(f"{backup_file} is not a hexbook backup (an RDB file)")
    if holds_data(data_dir):
        raise BackupError(f"{data_dir} already holds data: restore into an empty folder")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    loaded = data_dir / "restore.rdb"
    loaded.write_bytes(backup_file.read_bytes())
    os.chmod(loaded, 0o600)
    password = redis_password(data_dir, create=True)
    assert password is not None
    conf = data_dir / "restore.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"requirepass {password}\n")
    port = _free_port()
    proc = subprocess.Popen(
        [find_redis_server(), str(conf), "--bind", "127.0.0.1", "--port", str(port),
         "--dir", str(data_dir), "--dbfilename", "restore.rdb", "--appendonly", "no",
         "--appendfilename", "hexbook.aof", "--appendfsync", "always", "--save", "",
         "--logfile", str(data_dir / "restore.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, password=password, socket_timeout=30)
    keys, sealed = 0, Counter[str]()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RedisStartError(
                        f"redis-server did not load the backup; see {data_dir / 'restore.log'}"
                    ) from None
                time.sleep(0.05)
        keys = int(client.dbsize())
        sealed = census(client)
        client.config_set("appendonly", "yes")  # writes hexbook.aof from the loaded data
        while True:
            info = client.info("persistence")
            if (
                info.get("aof_enabled") == 1
                and not info.get("aof_rewrite_in_progress")
                and not info.get("aof_rewrite_scheduled")
            ):
                break
            if time.monotonic() > deadline:
                raise BackupError("redis-server did not write the append-only file in time")
            time.sleep(0.05)
        client.shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # shutdown closes the connection under us
    finally:
        client.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for leftover in (loaded, conf):
            leftover.unlink(missing_ok=True)
    if not holds_data(data_dir):
        raise BackupError(f"the restore wrote no append-only file; see {data_dir / 'restore.log'}")
    return keys, sealed
