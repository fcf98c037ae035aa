"""A local stack in a child process (``hexbook up``), for the tools that start one of
their own: ``hexbook-load --stack`` and ``hexbook-sim live --stack``."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

__all__ = ["free_port", "stop_stack", "wait_ready"]


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[str], log: Path, seconds: float = 120) -> None:
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
    """Ctrl-C the stack (it shuts down cleanly), or kill it after a minute."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
