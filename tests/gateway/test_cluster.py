"""A deployment on a local 3-node Ray cluster (``ray.cluster_utils.Cluster``: a head
with no CPU for shards, two worker nodes), started as on real front nodes: ``hexbook up
--ray-address --redis-url`` on the first (it makes the shards, detached: the
cluster's), ``hexbook gateway`` joining on the second, each under a supervisor, and two
supervised redis-servers (shard-0 journals to the deployment's, shard-1 to the other:
``--journal-redis``). Under 32 clients holding and booking through both gateways: the
node hosting a shard is removed, the first gateway (``up``) is killed, the journal Redis
is killed, then the deployment's Redis. Every request is answered 201, 409 or 503 (none
500, none hangs; a request cut by a kill is repeated, with its Idempotency-Key, at the
other gateway), the service comes back without a person, and the audit finds every
acknowledged booking, none over capacity. With shards owned by ``up``, its death took
them: every answer 503 after."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from actors.api import NAMESPACE, Hexbook
from actors.audit import audit
from actors.embedded_redis import EmbeddedRedis
from actors.sealing import Keyring
from engine.provider import Provider
from engine.schedule import WEEKDAYS, WeeklyTemplate
from gateway.cli_gateway import GatewayProcesses
from gateway.keys import KeyStore
from tests.dates import ahead
from tests.gateway.test_gateways import free_port
from tests.polling import until
from tests.raycluster import three_nodes

pytestmark = pytest.mark.integration
SERVICE = "vaccine"
SITES = [f"site-{i}" for i in range(8)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with three_nodes() as c:
        ray.init(address=c.address, namespace=NAMESPACE, log_to_driver=False)
        yield c
        ray.shutdown()


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


class Load:
    """32 clients, half on each gateway, holding then booking for ``seconds``; a
    request cut by a kill goes to the other gateway with the same Idempotency-Key."""

    def __init__(self, bases: list[str], key: str, grids: dict[str, list[int]]) -> None:
        self.bases, self.key, self.grids = bases, key, grids
        self.codes: Counter[int] = Counter()
        self.booked: list[str] = []
        self.moved_over = 0
        self.stop = threading.Event()

    async def send(self, clients: list[httpx.AsyncClient], i: int, path: str, body: Any) -> Any:
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        for attempt in range(60):
            http = clients[(i + attempt) % 2] if attempt else clients[i % 2]
            try:
                r = await http.post(path, json=body, headers=headers)
            except httpx.TimeoutException as exc:
                raise AssertionError(f"{path} hung: {exc!r}") from exc
            except httpx.TransportError:  # its gateway was killed: the other one
                self.moved_over += 1
                await asyncio.sleep(0.05)
                continue
            self.codes[r.status_code] += 1
            if r.status_code == 503:
                await asyncio.sleep(0.2)
                continue
            return r
        raise AssertionError(f"{path}: no answer after 60 tries")

    async def client(self, i: int) -> None:
        rng = random.Random(i)
        auth = {"Authorization": f"Bearer {self.key}"}
        limits = httpx.Limits(max_connections=1)
        clients = [
            httpx.AsyncClient(base_url=b, headers=auth, limits=limits, timeout=30)
            for b in self.bases
        ]
        try:
            while not self.stop.is_set():
                pid = rng.choice(SITES)
                body = {
                    "provider_id": pid,
                    "service": SERVICE,
                    "start": rng.choice(self.grids[pid]),
                }
                hold = await self.send(clients, i, "/v1/holds", body)
                if hold.status_code != 201:
                    continue
                booking = {"hold_id": hold.json()["hold_id"], "patient": {"reference": f"p{i}"}}
                b = await self.send(clients, i, "/v1/bookings", booking)
                if b.status_code == 201:
                    self.booked.append(b.json()["booking_id"])
        finally:
            for c in clients:
                await c.aclose()

    def run(self) -> None:
        async def everyone() -> None:
            await asyncio.gather(*(self.client(i) for i in range(32)))

        asyncio.run(everyone())


def test_a_cluster_serves_through_a_lost_node_a_killed_gateway_and_killed_redis_servers(
    cluster: Cluster, tmp_path: Path
) -> None:
    ring = Keyring.generate()
    server = EmbeddedRedis(tmp_path / "redis").start()
    server.supervise()
    other = EmbeddedRedis(tmp_path / "redis-2").start()  # where shard-1 journals
    other.supervise()
    env = {**os.environ, "HEXBOOK_DATA_KEYS": ring.as_env()}
    ports = [free_port(), free_port()]
    hexbook = [sys.executable, "-m", "gateway.cli"]
    joined = ["--redis-url", server.url, "--ray-address", cluster.address]
    # The first front node starts the deployment (its shards, detached: the cluster's),
    # the second joins it; each under a supervisor that starts it again if it dies.
    gateways = [
        GatewayProcesses([*hexbook, "up", *joined, "--shards", "2", "--journal-redis",
                          other.url, "--data-dir", str(tmp_path / "front-1"),
                          "--port", str(ports[0])], env, 1),
        GatewayProcesses([*hexbook, "gateway", *joined, "--port", str(ports[1])], env, 1),
    ]  # fmt: skip
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        gateways[0].start()
        until(lambda: ready(bases[0]), 180)
        gateways[1].start()
        until(lambda: ready(bases[1]), 180)
        hb = Hexbook.connect(server.url, keyring=ring, retry_seconds=120)
        assert hb.directory.shards == ["shard-0", "shard-1"]
        assert hb.directory.journals() == {"shard-1": other.url}
        template = WeeklyTemplate.uniform(WEEKDAYS, "08:00", "20:00", 2)
        grids = {}
        for i, pid in enumerate(SITES):
            site = Provider(provider_id=pid, name=f"Site {i}", lat=41.7 + 0.04 * i,
                            lng=-87.6 - 0.03 * i, timezone="America/Chicago",
                            services=(SERVICE,))  # fmt: skip
            hb.provision(site, template, ahead(), days=2)
            g = hb.slots(pid, SERVICE)
            open_ = [g["start"] + j * g["slot_seconds"] for j, c in enumerate(g["capacity"]) if c]
            grids[pid] = [_iso(t) for t in open_[-16:]]  # few slots: clients race for them
        nodes = {s: hb._call(s, "info")["node_id"] for s in hb.directory.shards}
        key = KeyStore(hb.redis).create("booking-client", "cluster")[0]
        load = Load(bases, key, grids)
        runner = threading.Thread(target=load.run)
        runner.start()
        try:

            def after(n: int) -> None:
                target = len(load.booked) + n
                until(lambda: len(load.booked) >= target, 120)

            after(20)
            victim = next(n for n in cluster.worker_nodes if n.node_id == nodes["shard-0"])
            cluster.remove_node(victim, allow_graceful=False)
            after(20)
            killed = gateways[0].processes[0].pid  # `hexbook up`, the shards' starter
            psutil.Process(killed).send_signal(signal.SIGKILL)
            after(20)
            for redis_server in (other, server):  # the journal server, then the deployment's
                restarts = redis_server.restarts
                redis_server.kill()  # SIGKILL; its supervisor starts it again
                until(lambda s=redis_server, r=restarts: s.restarts > r, 60)
                after(20)
        finally:
            load.stop.set()
            runner.join(timeout=120)
        assert set(load.codes) <= {201, 409, 503}, load.codes
        # Back without a person: shard-0 on a remaining node, the first gateway again.
        info = hb._call("shard-0", "info")
        assert info["node_id"] != nodes["shard-0"] and info["calendars"] > 0
        assert gateways[0].restarts >= 1 and gateways[0].processes[0].pid != killed
        until(lambda: all(ready(b) for b in bases), 120)
        report = audit(hb.redis, [{"op": "booked", "booking_id": b} for b in load.booked], ring)
        assert report.ok, report.violations[:5]
        assert report.shards == 2  # one journal on each server, both read
        assert report.acknowledged == len(load.booked) > 100
        print(
            f"answers {dict(load.codes)}, {len(load.booked)} booked, "
            f"{load.moved_over} requests moved to the other gateway"
        )
        hb.close()
    finally:
        for g in gateways:
            g.stop()
        server.stop()
        other.stop()


def _iso(start: int) -> str:
    return datetime.fromtimestamp(start, UTC).isoformat()


def test_hexbook_up_without_a_ray_address_starts_its_own_ray_beside_a_cluster(
    cluster: Cluster, tmp_path: Path
) -> None:
    """With a cluster running on the machine, `hexbook up` (no --ray-address) joined it
    (ray.init without an address finds one) and took its shards' names."""
    from simulators.toolkit import start_stack

    with start_stack(tmp_path / "alone") as stack:
        r = httpx.get(f"{stack.url}/readyz", timeout=10)
        assert r.status_code == 200, r.text
        own = (stack.data_dir / "ray.address").read_text().strip()
        assert own and own != cluster.address, "hexbook up joined the cluster"
