"""More than one gateway process (issue 19): ``hexbook up --gateways 2`` serves one port
from two processes; one of them killed under a load of holds and bookings, every
request is still answered (201, 409 or 503; a request cut by the kill is repeated with
its Idempotency-Key), the process is started again, and the audit finds every
acknowledged booking and no slot over capacity. ``hexbook gateway`` refuses to start
without a deployment to join, saying why. Real processes, real Ray, real redis-server."""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.gateway.test_cli import cli
from tests.polling import until

pytestmark = pytest.mark.integration
SITES = [f"chi-{i:04d}" for i in range(20)]


class Output:
    """The lines a process prints, read as they come (a pipe nobody reads would fill)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    def join(self) -> None:
        """Read to the end (the process has exited) and close the pipe."""
        self._thread.join(timeout=30)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    @property
    def text(self) -> str:
        return "".join(self.lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving_pids(proc: subprocess.Popen[str], port: int) -> set[int]:
    """The processes of this stack listening on ``port``."""
    pids = set()
    for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
        try:
            conns = p.net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
            pids.add(p.pid)
    return pids


def answering_pids(pids: set[int], port: int, n: int = 24) -> set[int]:
    """Which of ``pids`` hold one of ``n`` fresh connections to ``port``."""
    clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}") for _ in range(n)]
    try:
        for c in clients:
            assert c.get("/readyz").status_code == 200
        held = set()
        for pid in pids:
            conns = psutil.Process(pid).net_connections(kind="tcp")
            if any(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port for c in conns):
                held.add(pid)
        return held
    finally:
        for c in clients:
            c.close()


async def load(
    base: str, key: str, grids: dict[str, list[str]], seconds: float, acks: Path
) -> tuple[dict[int, int], int]:
    """32 clients holding then booking random demo slots for ``seconds``: the answers by
    status, and how many requests a dropped connection made them repeat. Each booking
    acknowledged is written to ``acks`` (one JSON line, as the load tests write them)."""
    codes: dict[int, int] = {}
    repeated = 0
    ends = time.monotonic() + seconds
    out = acks.open("a")

    async def send(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
        nonlocal repeated
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        for attempt in range(20):
            try:
                r = await http.post(path, json=body, headers=headers)
            except httpx.TransportError:  # the gateway holding the connection was killed
                repeated += 1
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            return r
        raise AssertionError(f"{path}: no answer after 20 tries")

    async def client() -> None:
        rng = random.Random()
        limits = httpx.Limits(max_connections=1)
        auth = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(
            base_url=base, headers=auth, limits=limits, timeout=30
        ) as http:
            while time.monotonic() < ends:
                pid = rng.choice(SITES)
                body = {"provider_id": pid, "service": "covid-vaccine",
                        "start": rng.choice(grids[pid])}  # fmt: skip
                hold = await send(http, "/v1/holds", body)
                if hold.status_code != 201:
                    continue
                patient = {"hold_id": hold.json()["hold_id"], "patient": {"reference": "p"}}
                booked = await send(http, "/v1/bookings", patient)
                if booked.status_code == 201:
                    b = booked.json()
                    out.write(json.dumps({"op": "booked", "booking_id": b["booking_id"]}) + "\n")
                    out.flush()

    try:
        await asyncio.gather(*(client() for _ in range(32)))
    finally:
        out.close()
    return codes, repeated


def test_two_gateways_on_one_port_serve_through_one_killed_under_load(tmp_path: Path) -> None:
    port, data = free_port(), tmp_path / "data"
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "up", "--demo", "--sites", "20", "--shards", "1",
         "--gateways", "2", "--data-dir", str(data), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out = Output(proc)
    try:
        until(lambda: re.search(r"gateway \(pid (\d+)\) serving", out.text), 180)
        key = re.search(r"booking-client: (hbk_\S+)", out.text)
        assert key, out.text
        pids = until(lambda: len(p := serving_pids(proc, port)) == 2 and p, 60)
        child = next(p for p in pids if p != proc.pid)
        # Both processes take connections of the one port.
        assert answering_pids(pids, port) == pids
        soon = datetime.now(UTC) + timedelta(hours=1)
        grids = {
            pid: [
                g["start"]
                for g in httpx.get(
                    f"{base}/v1/providers/{pid}/slots", params={"service": "covid-vaccine"}
                ).json()["slots"]
                if datetime.fromisoformat(g["start"]) > soon
            ][:6]  # few slots: clients race for the same places
            for pid in SITES
        }
        acks = tmp_path / "acks.jsonl"

        def kill_soon() -> None:  # once the load is booking
            until(lambda: acks.exists() and len(acks.read_text().splitlines()) >= 30, 60)
            psutil.Process(child).send_signal(signal.SIGKILL)

        killer = threading.Thread(target=kill_soon)
        killer.start()
        codes, repeated = asyncio.run(load(base, key.group(1), grids, 8.0, acks))
        killer.join()
        assert set(codes) <= {201, 409, 503}, codes
        assert codes.get(201, 0) > 50, codes
        # Started again by `hexbook up`, and serving the port with the first.
        until(lambda: "exited (-9); starting it again" in out.text, 30)
        again = until(lambda: len(p := serving_pids(proc, port)) == 2 and p, 120)
        assert child not in again
        until(lambda: answering_pids(again, port) == again, 60)
        booked = len(acks.read_text().splitlines())
        audit = cli("audit", "--data-dir", str(data), "--acks", str(acks))
        assert audit.returncode == 0, audit.stdout + audit.stderr
        checked = re.search(r"acknowledged +([\d,]+) client-acknowledged", audit.stdout)
        assert checked and int(checked.group(1).replace(",", "")) == booked, audit.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
        out.join()
    assert proc.returncode == 0, out.text
    assert "stopped cleanly" in out.text
    left = [p for p in psutil.process_iter(["cmdline"])
            if f"--port {port}" in " ".join(p.info["cmdline"] or [])]  # fmt: skip
    assert left == [], "a gateway process outlived hexbook up"
    print(f"answers {codes}, {repeated} requests repeated after the kill")


def test_a_gateway_without_a_deployment_to_join_says_why(tmp_path: Path) -> None:
    alone = cli("gateway", "--port", str(free_port()))
    assert (
        alone.returncode == 2 and "--redis-url" in alone.stderr and "--ray-address" in alone.stderr
    )
    from actors.embedded_redis import EmbeddedRedis

    with EmbeddedRedis(tmp_path / "r") as server:  # a Redis with no hexbook in it
        empty = cli("gateway", "--redis-url", server.url, "--ray-address", "127.0.0.1:1")
    assert empty.returncode == 2 and "no hexbook deployment" in empty.stderr, empty.stderr
    password = server.url.split("@")[0].rsplit(":", 1)[1]
    assert password not in empty.stderr  # the URL is said redacted
    assert "--reuse-port" in cli("gateway", "--help").stdout
    assert "--gateways" in cli("up", "--help").stdout
