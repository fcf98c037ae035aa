"""``hexbook up --demo`` as a newcomer runs it (``make demo``): it starts, serves, stops
cleanly on Ctrl-C, and the next start finds the bookings in the data folder."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def start(data: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "up",
            "--demo",
            "--sites",
            "20",
            "--data-dir",
            str(data),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_ready(proc: subprocess.Popen[str], base: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("hexbook up did not become ready")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def redis_servers_of(data: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except OSError:
            continue  # the process ended meanwhile
        if "redis-server" in text and str(data) in text:
            found.append(text)
    return found


def test_demo_starts_serves_stops_and_keeps_bookings(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base, data = f"http://127.0.0.1:{port}", tmp_path / "data"
    proc = start(data, port)
    try:
        wait_ready(proc, base)
        grid = httpx.get(
            f"{base}/v1/providers/chi-0000/slots", params={"service": "covid-vaccine"}
        ).json()["slots"]
        hold = httpx.post(
            f"{base}/v1/holds",
            json={"provider_id": "chi-0000", "service": "covid-vaccine", "start": grid[3]["start"]},
        ).json()
        booking = httpx.post(
            f"{base}/v1/bookings",
            json={"hold_id": hold["hold_id"], "patient": {"reference": "ref"}},
        ).json()
    finally:
        out = stop(proc)
    assert "provisioning" in out
    assert f"serving {base}" in out
    assert f"{base}/docs" in out
    assert "stopped cleanly" in out
    assert redis_servers_of(data) == [], "a redis-server of this data folder is still running"

    proc = start(data, port)
    try:
        wait_ready(proc, base)
        again = httpx.get(
            f"{base}/v1/bookings/{booking['booking_id']}",
            headers={"X-Booking-Token": booking["booking_token"]},
        )
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "active"
    finally:
        out = stop(proc)
    assert "already there (20 providers)" in out


def test_help_explains_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "up", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in (
        "--demo",
        "--port",
        "--data-dir",
        "--ray-address",
        "--redis-url",
        "--shards",
        "--fsync",
        "--sites",
        "--host",
    ):
        assert option in out
