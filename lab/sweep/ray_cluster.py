"""The Ray cluster a sweep runs on: connecting to it once, and which of its nodes host what.

`connected` joins the cluster for a sweep (`address: local` starts a one-node Ray on this
host; `auto` and `ray://` ship the lab's own code to the nodes, so they run the driver's
version). `service_nodes` gives each mock service a node of its own where the cluster has room;
`worker_nodes` deals the instances round-robin over the other nodes. `check_broker` refuses
the lab's private Redis when a node is another host.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import ray

import lab
from lab.errors import ConfigError, ServiceError
from lab.infra.broker import Broker
from lab.scenario.spec import Cluster

#: The dashboard stays off: nothing of the lab's listens beyond what the trial needs.
_INIT: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}


@contextlib.contextmanager
def connected(cluster: Cluster) -> Iterator[None]:
    """This process connected to `cluster` for the block (a sweep), then disconnected; a
    connection made before (a test, a notebook) is used as it is and left open."""
    if ray.is_initialized():
        yield
        return
    try:  # a failure or Ctrl-C half-way through connecting still shuts down what started
        _connect(cluster)
        yield
    finally:
        ray.shutdown()


def _connect(cluster: Cluster) -> None:
    try:
        if cluster.address == "local":  # a one-node Ray of our own, on loopback
            ray.init(include_dashboard=False, num_cpus=os.cpu_count(), **_INIT)
        else:  # ship this lab's code, so every node runs the driver's version
            code = {"py_modules": [str(Path(lab.__file__).parent)], "excludes": ["__pycache__"]}
            ray.init(address=cluster.address, runtime_env=code, **_INIT)
    except ConnectionError as exc:
        raise ServiceError(
            f"cluster.address {cluster.address}: no Ray cluster answered ({exc}). Start one "
            "(`ray start --head`), set RAY_ADDRESS, or use address: local"
        ) from None


def ensure_connected(cluster: Cluster) -> None:
    if not ray.is_initialized():
        _connect(cluster)  # a trial run on its own; Ray disconnects when the process exits


@dataclass(frozen=True)
class Node:
    """An alive node of the cluster, as the driver sees it."""

    node_id: str
    ip: str
    resources: Mapping[str, float]

    @property
    def label(self) -> str:
        return f"{self.ip} ({self.node_id[:12]})"


def alive_nodes() -> list[Node]:
    return sorted(
        (
            Node(n["NodeID"], n["NodeManagerAddress"], dict(n.get("Resources", {})))
            for n in ray.nodes()
            if n.get("Alive")
        ),
        key=lambda n: n.node_id,
    )


def _this_host_addresses() -> set[str]:
    addresses = {"127.0.0.1", "::1", "localhost", socket.gethostname()}
    for entries in psutil.net_if_addrs().values():
        addresses |= {a.address.split("%")[0] for a in entries}
    return addresses


def check_broker(broker: Broker, nodes: Sequence[Node]) -> None:
    """The embedded broker (a unix socket or loopback port here) serves nodes on this host only."""
    if not broker.embedded:
        return
    here = _this_host_addresses()
    elsewhere = sorted({n.ip for n in nodes if n.ip not in here})
    if elsewhere:
        raise ConfigError(
            f"cluster: nodes {', '.join(elsewhere)} are not this host and cannot reach the "
            "lab's private Redis; set broker.url to a Redis every node reaches "
            "(e.g. redis://<this host's address>:6379/0)"
        )


def _eligible(nodes: Sequence[Node], resource: str | None, field_name: str) -> list[Node]:
    chosen = [n for n in nodes if resource is None or n.resources.get(resource, 0) > 0]
    if not chosen:
        offered = sorted({r for n in nodes for r in n.resources if not r.startswith("node:")})
        raise ConfigError(
            f"cluster.{field_name}: no alive node offers resource {resource!r}; "
            f"the nodes offer: {', '.join(offered)}"
        )
    return chosen


def service_nodes(
    nodes: Sequence[Node], services: Sequence[str], cluster: Cluster, driver_node: str | None
) -> tuple[dict[str, Node], list[str]]:
    """A node of its own for each service, leaving at least one node for the workers; where the
    cluster has no room, the least busy one, with a warning."""
    eligible = _eligible(nodes, cluster.services_resource, "services_resource")
    for_workers = {
        n.node_id for n in _eligible(nodes, cluster.workers_resource, "workers_resource")
    }
    chosen: dict[str, Node] = {}
    warnings: list[str] = []
    for name in services:
        taken = {n.node_id for n in chosen.values()}

        def cost(n: Node, taken: set[str] = taken) -> tuple[int, int, bool, str]:
            shared = sum(c.node_id == n.node_id for c in chosen.values())
            starves = n.node_id in for_workers and not (for_workers - taken - {n.node_id})
            return shared, int(starves), n.node_id == driver_node, n.node_id

        best = min(eligible, key=cost)
        if best.node_id in taken:
            warnings.append(f"mock {name} shares node {best.label} with another mock: no room")
        chosen[name] = best
    return chosen, warnings


def worker_nodes(
    nodes: Sequence[Node],
    instances: Sequence[str],
    cluster: Cluster,
    services: Mapping[str, Node],
    driver_node: str | None,
) -> tuple[dict[str, Node], list[str]]:
    """Instances round-robin over the nodes no mock uses (this driver's node last); over every
    eligible node, with a warning, when the mocks use them all."""
    eligible = _eligible(nodes, cluster.workers_resource, "workers_resource")
    busy = {n.node_id for n in services.values()}
    free = [n for n in eligible if n.node_id not in busy]
    warnings = []
    if not free:
        free = list(eligible)
        names = ", ".join(sorted(services))
        warnings.append(f"{names} share(s) a node with worker instances: the cluster has no room")
    free.sort(key=lambda n: (n.node_id == driver_node, n.node_id))
    return {inst: free[i % len(free)] for i, inst in enumerate(instances)}, warnings
