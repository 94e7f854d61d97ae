"""A real two-node Ray cluster on this machine for tests (Ray's own cluster_utils), started
once per test process on first use.

FIG_TEST_EXECUTOR=ray runs every cold engine and every Fig the fixtures start on it
(see tests/conftest.py and tests/cold/conftest.py).
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

RAY_MODE = os.environ.get("FIG_TEST_EXECUTOR") == "ray"
NODES = 2
# Logical CPUs per node: each actor holds one, and one test process may run several engines
# (a session's fixtures, a Fig) at once, so more actors than cores must fit.
CPUS_PER_NODE = 4

_lock = threading.Lock()
_cluster: Any = None


def address() -> str:
    """host:port of the cluster's GCS, started on first use: NODES nodes."""
    global _cluster
    with _lock:
        if _cluster is None:
            from ray.cluster_utils import Cluster

            cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": CPUS_PER_NODE, "include_dashboard": False})
            for _ in range(NODES - 1):
                cluster.add_node(num_cpus=CPUS_PER_NODE)
            cluster.wait_for_nodes()
            atexit.register(cluster.shutdown)
            _cluster = cluster
    return str(_cluster.address)


def env() -> dict[str, str]:
    return {"FIG__COLD__EXECUTOR": "ray", "FIG__COLD__RAY_ADDRESS": address(),
            "FIG__COLD__WORKERS": str(NODES)}
