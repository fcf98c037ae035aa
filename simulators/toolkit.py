"""What hexbook's three command-line tools share: a local stack in a child process,
durations, and progress.

``hexbook`` (the gateway's CLI), ``hexbook-sim`` and ``hexbook-load`` all take this
module, and it takes nothing from hexbook: standard library only (tqdm when it is there),
so the server never imports a tool and the tools never import each other's privates
(docs/adr/0017-one-toolkit-for-the-tools.md).

>>> parse_duration("1h30m"), parse_duration("90"), parse_duration("2d")
(5400.0, 90.0, 172800.0)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = [
    "LocalStack",
    "duration_type",
    "free_port",
    "make_key",
    "parse_duration",
    "progress",
    "start_stack",
    "stop_stack",
    "wait_ready",
]

# How `hexbook up --demo` prints the keys it made for the run, one line a role.
BANNER_KEY = re.compile(r"^\s+(booking-client|provider-admin|operator):\s+(hbk_\S+)\s*$")

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?")


def parse_duration(text: str, minimum: float = 1, maximum: float | None = None) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``1h30m`` or ``2d``; ValueError (with an
    example of what works) for anything else or outside ``minimum`` .. ``maximum``."""
    t = text.strip().lower()
    m = _DURATION.fullmatch(t)
    if not t or m is None or not any(m.groups()):
        raise ValueError(f"not a duration: {text!r} (e.g. 90, 30s, 15m, 1h30m, 2d)")
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    seconds = float(d * 86400 + h * 3600 + mi * 60 + s)
    if seconds < minimum or (maximum is not None and seconds > maximum):
        most = f" and at most {_say(maximum)}" if maximum is not None else ""
        raise ValueError(f"{text!r}: must be at least {_say(minimum)}{most}")
    return seconds


def _say(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit[:-1] if n == 1 else unit}"
    return f"{seconds:g} second{'' if seconds == 1 else 's'}"


def duration_type(minimum: float = 1, maximum: float | None = None) -> Callable[[str], float]:
    """An argparse ``type=`` for durations (its error is argparse's own usage message)."""

    def parse(text: str) -> float:
        try:
            return parse_duration(text, minimum, maximum)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "duration"  # argparse names the type in its message
    return parse


class _Lines:
    """Progress as plain lines (every tenth) when stderr is not a terminal."""

    def __init__(self, total: int, label: str, out: IO[str]) -> None:
        self.total, self.label, self.out, self.shown = max(total, 1), label, out, -1

    def update(self, done: int) -> None:
        tenth = min(10, done * 10 // self.total)
        if tenth > self.shown:
            self.shown = tenth
            print(f"{self.label}: {tenth * 10}%", file=self.out, flush=True)

    def close(self) -> None:
        self.update(self.total)


@contextmanager
def progress(
    total: int, label: str, enabled: bool = True, out: IO[str] | None = None
) -> Iterator[Callable[[int], None]]:
    """``with progress(n, "provisioning") as done: done(k)`` draws how far ``k`` of ``n``
    is: a bar on a terminal (tqdm), a line every 10% otherwise, nothing if not enabled."""
    stream = out or sys.stderr
    if not enabled:
        yield lambda _: None
        return
    if stream.isatty():
        try:
            from tqdm import tqdm
        except ImportError:  # a bare install without the tools' extras
            pass
        else:
            bar = tqdm(total=total, desc=label, file=stream, dynamic_ncols=True)

            def move(done: int) -> None:
                bar.update(max(0, min(done, total) - bar.n))

            try:
                yield move
            finally:
                bar.close()
            return
    lines = _Lines(total, label, stream)
    try:
        yield lines.update
    finally:
        lines.close()


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[str], log: Path, seconds: float = 180) -> None:
    """Until ``url/readyz`` answers 200; RuntimeError naming ``log`` if the process dies
    or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the stack did not become ready; see {log}")
        time.sleep(0.5)


def stop_stack(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C the stack (it shuts down cleanly), or kill it after a minute. Its output
    is left to whoever reads it (a :class:`LocalStack` drains it into its log)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_key(data_dir: Path, role: str, name: str) -> str:
    """A new API key of ``role`` made in the stack whose data folder is ``data_dir``."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", "create", "--role", role,
         "--name", name, "--data-dir", str(data_dir)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = re.search(r"hbk_[A-Za-z0-9_-]+", done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"could not make a {role} key: {done.stderr.strip()[-300:]}")
    return found.group(0)


@dataclass
class LocalStack:
    """``hexbook up`` running in a child process, in its own folder."""

    proc: subprocess.Popen[str]
    url: str
    folder: Path
    keys: dict[str, str] = field(default_factory=dict)  # role -> key
    drain: threading.Thread | None = None  # copies its output into its log

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "stack.log"

    def key(self, role: str, name: str) -> str:
        """A key of ``role`` for this stack (made once, then kept)."""
        if role not in self.keys:
            self.keys[role] = make_key(self.data_dir, role, name)
        return self.keys[role]

    def stop(self) -> None:
        stop_stack(self.proc)
        if self.drain is not None:
            self.drain.join(10)  # its output ends with it

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_stack(
    folder: Path,
    demo_sites: int | None = None,
    env: Mapping[str, str] | None = None,
    seconds: float = 180,
    echo: Callable[[str], None] | None = None,
    args: Sequence[str] = (),
) -> LocalStack:
    """Start ``hexbook up`` in ``folder`` (its data in ``folder/data``, its log in
    ``folder/stack.log``) on a free port, with a demo city of ``demo_sites`` sites if
    given, and wait until it is ready. ``echo`` sees each line it prints; ``args`` are
    more options of ``hexbook up`` (``--gateways 2``)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "gateway.cli", "up", "--data-dir", str(folder / "data"),
           "--port", str(port)]  # fmt: skip
    if demo_sites is not None:
        cmd += ["--demo", "--sites", str(demo_sites)]
    cmd += list(args)
    (folder / "stack.log").write_text("")
    # both the child's stderr and its printed lines append (O_APPEND): neither overwrites
    with open(folder / "stack.log", "a") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, **(env or {})}
        )
    stack = LocalStack(proc, f"http://127.0.0.1:{port}", folder)
    lines: queue.Queue[str | None] = queue.Queue()
    stack.drain = threading.Thread(target=_drain, args=(proc, stack.log, lines), daemon=True)
    stack.drain.start()
    try:
        deadline = time.monotonic() + seconds
        while True:  # the banner: it ends with the line on Ctrl-C
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise RuntimeError(f"the stack did not start; see {stack.log}")
            if echo is not None:
                echo(line)
            if got := BANNER_KEY.match(line):  # "    operator:       hbk_..." (one a role)
                stack.keys[got.group(1)] = got.group(2)
            if "Ctrl-C" in line:
                break
        wait_ready(stack.url, proc, stack.log, max(1.0, deadline - time.monotonic()))
    except BaseException:
        stack.stop()
        raise
    return stack


def _drain(proc: subprocess.Popen[str], log: Path, lines: queue.Queue[str | None]) -> None:
    """Copy the stack's printed lines into its log (so its pipe never fills) and hand
    them to whoever waits for the banner; ``None`` when it stops printing."""
    assert proc.stdout is not None
    try:
        with open(log, "a", buffering=1) as f, contextlib.suppress(ValueError, OSError):
            for line in proc.stdout:  # until the stack ends (or its pipe is closed)
                f.write(line)
                lines.put(line.rstrip())
    finally:
        proc.stdout.close()
        lines.put(None)
