"""The multi-node tier: a real Ray cluster of three nodes on this machine
(``ray.cluster_utils.Cluster``), started once for the package and stopped before the integration
tier starts its own one-node Ray (pytest runs ``tests/cluster`` first).

Each node has its own scratch folder (``SHOWRUNNER_SCRATCH`` in its raylet's environment, so its
workers' too) and custom resources that say what may run there, as a real cluster's node types
would: the provider actors on the head, the coordinator and a Serve replica on one worker,
compositions on the other (and a second replica on the head)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from pipelines.storage import SCRATCH_VARIABLE

NAMESPACE = "showrunner-cluster-tests"


@dataclass
class Nodes:
    """The cluster and its nodes by role; ``scratch`` is each node's own folder."""

    cluster: Cluster
    root: Path
    nodes: dict[str, Any] = field(default_factory=dict)

    def add(self, role: str, num_cpus: int, resources: dict[str, float]) -> Any:
        scratch = self.root / f"scratch-{role}"
        node = self.cluster.add_node(num_cpus=num_cpus, resources=resources,
                                     env_vars={SCRATCH_VARIABLE: str(scratch)})
        self.nodes[role] = node
        return node

    def scratch(self, role: str) -> Path:
        return self.root / f"scratch-{role}"

    def node_id(self, role: str) -> str:
        return self.nodes[role].node_id

    def remove(self, role: str) -> None:
        self.cluster.remove_node(self.nodes.pop(role), allow_graceful=False)


@pytest.fixture(scope="package")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    if ray.is_initialized():
        ray.shutdown()
    root = tmp_path_factory.mktemp("cluster")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {"providers": 1, "replica": 1},
        "include_dashboard": False, "env_vars": {SCRATCH_VARIABLE: str(root / "scratch-head")},
    })
    made = Nodes(cluster, root, {"head": cluster.head_node})
    made.add("coordinator", 0, {"coordinator": 1, "replica": 1})
    made.add("media", 2, {"media": 1})
    ray.init(address=cluster.address, namespace=NAMESPACE, logging_level="WARNING",
             log_to_driver=False)
    cluster.wait_for_nodes()
    try:
        yield made
    finally:
        ray.shutdown()
        cluster.shutdown()
