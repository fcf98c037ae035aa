"""Several Ray nodes on this machine (ray.cluster_utils.Cluster): shards spread over
nodes; a node that hosts a shard is removed; the shard comes back on a remaining node
with its state, and no acknowledged booking is lost."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.api import Hexbook
from actors.embedded_redis import EmbeddedRedis
from tests.actors.test_shard_faults import (
    SERVICE,
    TEMPLATE,
    active_bookings,
    check_no_overbooking,
    committed,
    providers,
)
from tests.dates import ahead
from tests.raycluster import three_nodes


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with three_nodes() as c:
        ray.init(address=c.address, namespace="hexbook-multinode", log_to_driver=False)
        yield c
        ray.shutdown()


def test_shards_survive_the_loss_of_their_node(cluster: Cluster, tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        workers = [n.node_id for n in cluster.worker_nodes]

        def on_its_own_node(shard: str) -> dict[str, object]:
            # Soft affinity: shard-i starts on worker i, and may go elsewhere if it dies.
            node = workers[int(shard.rsplit("-", 1)[1]) % len(workers)]
            return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}

        hb = Hexbook.connect(
            server.url,
            shards=2,
            namespace=f"mn-{uuid.uuid4().hex[:6]}",
            actor_options=on_its_own_node,
            retry_seconds=120.0,
        )
        acked = []
        for p in providers():
            hb.provision(p, TEMPLATE, ahead(), days=1)
            g = hb.slots(p.provider_id, SERVICE)
            start = next(
                g["start"] + i * g["slot_seconds"] for i, c in enumerate(g["capacity"]) if c
            )
            hold = hb.hold(p.provider_id, SERVICE, start)
            acked.append(hb.confirm(hold.hold_id, p.provider_id, SERVICE, "r")[0].booking_id)
        nodes = {s: hb._call(s, "info")["node_id"] for s in hb.directory.shards}
        assert len(set(nodes.values())) == 2, f"shards did not spread: {nodes}"

        victim_shard = "shard-0"
        victim = next(n for n in cluster.worker_nodes if n.node_id == nodes[victim_shard])
        cluster.remove_node(victim, allow_graceful=False)

        deadline = time.monotonic() + 120
        while True:
            info = hb._call(victim_shard, "info")  # retried until Ray restarts it
            if info["node_id"] != nodes[victim_shard] or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert info["node_id"] != nodes[victim_shard]
        assert info["recovery"]["calendars"] == info["calendars"] > 0
        states = committed(hb)
        check_no_overbooking(states)
        assert set(acked) <= set(active_bookings(states)), "a booking was lost with its node"
        # And it serves new bookings.
        pid = info["providers"][0]
        g = hb.slots(pid, SERVICE)
        free = next(
            g["start"] + i * g["slot_seconds"]
            for i, c in enumerate(g["capacity"])
            if c - g["booked"][i] - g["held"][i] > 0
        )
        assert hb.hold(pid, SERVICE, free).start == free
        hb.close()
