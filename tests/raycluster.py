"""A local 3-node Ray cluster (``ray.cluster_utils.Cluster``), as the multi-node tests and
the bench use it: a head with no CPU for shards (as `ray start --head --num-cpus=0` on a
real cluster) and two worker nodes of one CPU each, sized for this 2-core machine."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import ray
from ray.cluster_utils import Cluster


@contextlib.contextmanager
def three_nodes() -> Iterator[Cluster]:
    """The cluster, its nodes up; shut down after (the driver, if any, joins it itself)."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def start_local_ray(namespace: str) -> None:
    """A local Ray of this process's own, sized for 2 cores: ``address="local"``, never a
    cluster found running on the machine (ray.init without an address would join it)."""
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        namespace=namespace,
    )
