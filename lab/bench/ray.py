"""`python -m lab.bench ray`: trials placed through Ray on this machine, against the same trials
placed locally, and a wide trial of 100 instances through Ray.

Method:
1. A Ray cluster of `--nodes` nodes on this host, on loopback (`ray.cluster_utils.Cluster`,
   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), every node with this machine's core count; the lab's
   embedded Redis. The mock gets a node of its own, the instances spread over the others.
2. same: one small trial (opensearch.index against a constant 50 ms OpenSearch of capacity
   64, 800 items, 4 instances x 4 slots: a bound of 320 items/s, far from this machine's CPU
   limit), placed locally and through Ray in turn, `--repeats`
   times each. Reported: the Ray / local ratio of the mean items/s and of the mean p50 and p99
   latency, and the overhead: the extra wall time of a Ray trial (actors to start and stop) and
   the CPU of the actors themselves during the measured part.
3. wide: 100 instances x 4 slots, http.call against an http_api mock that answers after exactly
   1 s (capacity 1,000, so it never queues), 4,000 items: throughput against the Little's-law
   bound of 400 items/s, and the start-up of the 100 instances (from creating their nodes'
   actors to every instance's heartbeat in Redis, the moment the clock may start).
   `wide-local` runs the same trial as local processes, the peer that tells Ray's cost from the
   machine's limit.

Each result is printed as one JSON line. Run it on a quiet machine; the wide trial starts about
105 Python processes (its 100 worker processes and a few Ray actors).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab.infra.broker import Broker, start_broker
from lab.scenario.spec import Scenario
from lab.sweep.trial import TrialOutcome, TrialPlan, run_trial

SMALL: dict[str, Any] = {
    "name": "bench-ray-small",
    "seed": 11,
    "services": {
        "search": {
            "kind": "opensearch",
            "capacity": 64,
            "queue": 200,
            "latency": {"dist": "constant", "ms": 50},
        }
    },
    "workload": {"job": "opensearch.index", "service": "search", "items": 800},
    "sweep": {"trial_timeout_s": 120},
}

WIDE: dict[str, Any] = {
    "name": "bench-ray-wide",
    "seed": 11,
    "services": {
        "api": {
            "kind": "http_api",
            "capacity": 1000,
            "queue": 0,
            "latency": {"dist": "constant", "ms": 1000},
        }
    },
    "workload": {"job": "http.call", "service": "api", "items": 4000},
    "sweep": {"trial_timeout_s": 300},
}


@contextlib.contextmanager
def loopback_cluster(nodes: int) -> Iterator[None]:
    """A Ray cluster of `nodes` nodes on this host, on 127.0.0.1 only, connected."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported
    import ray
    from ray.cluster_utils import Cluster

    cpus = os.cpu_count() or 1
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": cpus, "include_dashboard": False},
    )
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
        yield
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def _scenario(base: dict[str, Any], *, ray: bool) -> Scenario:
    data = dict(base)
    if ray:
        data["cluster"] = {"engine": "ray", "address": "auto"}
    return Scenario.model_validate(data)


def _trial(
    scenario: Scenario, plan: TrialPlan, broker: Broker, logs: Path
) -> tuple[TrialOutcome, float]:
    began = time.monotonic()
    outcome = run_trial(scenario, plan, broker=broker, logs=logs)
    return outcome, time.monotonic() - began


def same(broker: Broker, tmp: Path, repeats: int) -> dict[str, Any]:
    """The small trial, local and through Ray in turn."""
    figures: dict[str, dict[str, list[float]]] = {"local": {}, "ray": {}}
    for r in range(repeats):
        for where in ("local", "ray"):
            plan = TrialPlan(index=0, num_workers=4, instances=4, batch_size=1, repeat=r)
            outcome, total_s = _trial(
                _scenario(SMALL, ray=where == "ray"), plan, broker, tmp / f"same-{where}-{r}"
            )
            row = outcome.row
            actors_cores = sum(u.cores for u in outcome.usage.values() if u.role == "ray")
            for key, value in (
                ("items_per_s", row["items_per_s"]),
                ("latency_p50_ms", row["latency_p50_ms"]),
                ("latency_p99_ms", row["latency_p99_ms"]),
                ("trial_s", total_s),
                ("wall_s", row["wall_s"]),
                ("actors_cores", actors_cores),
                ("lost_items", row["lost_items"]),
            ):
                figures[where].setdefault(key, []).append(float(value))
    mean = {w: {k: statistics.fmean(v) for k, v in f.items()} for w, f in figures.items()}
    return {
        "bench": "same",
        "local": mean["local"],
        "ray": mean["ray"],
        "ray_over_local": {
            k: mean["ray"][k] / mean["local"][k]
            for k in ("items_per_s", "latency_p50_ms", "latency_p99_ms")
        },
        "ray_extra_trial_s": mean["ray"]["trial_s"] - mean["local"]["trial_s"],
        "repeats": repeats,
        "all": figures,
    }


def wide(broker: Broker, tmp: Path, instances: int, *, ray: bool = True) -> dict[str, Any]:
    """`instances` x 4 slots against a 1 s service, through Ray (or, as the peer, locally)."""
    plan = TrialPlan(index=0, num_workers=4, instances=instances, batch_size=1, repeat=0)
    where = "ray" if ray else "local"
    outcome, total_s = _trial(_scenario(WIDE, ray=ray), plan, broker, tmp / f"wide-{where}")
    row, record = outcome.row, outcome.placement or {}
    bound = 4 * instances / 1.0  # slots over the 1 s service
    nodes = record.get("nodes", {})
    return {
        "bench": f"wide-{where}",
        "instances": instances,
        "items_per_s": row["items_per_s"],
        "littles_bound_items_per_s": bound,
        "ratio_to_bound": row["items_per_s"] / bound,
        "bound_ratio_measured_service_time": row["bound_ratio"],
        "startup_s": record.get("startup_s"),
        "trial_s": total_s,
        "makespan_s": row["makespan_s"],
        "items_done": row["items_done"],
        "lost_items": row["lost_items"],
        "duplicate_items": row["duplicate_items"],
        "service_max_in_flight": row["service_max_in_flight"],
        "harness_saturated": row["harness_saturated"],
        "machine_saturated": row["machine_saturated"],
        "saturation_reason": row["saturation_reason"],
        "instances_per_node": {
            n["ip"] + " " + k[:8]: len(n["components"]) for k, n in nodes.items()
        },
        "clock_error_bound_ms": record.get("clock", {}).get("latency_error_bound_ms"),
        "workers_cores": row["workers_cores"],
        "mock_cores": row["mock_cores"],
        "redis_cores": row["redis_cores"],
        "actors_cores": sum(u.cores for u in outcome.usage.values() if u.role == "ray"),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.bench ray", description=__doc__.split("\n")[0])
    p.add_argument(
        "which", nargs="*", choices=["same", "wide", "wide-local"], default=["same", "wide"]
    )
    p.add_argument("--nodes", type=int, default=3, help="nodes of the loopback cluster (3)")
    p.add_argument("--repeats", type=int, default=5, help="runs of the small trial each way (5)")
    p.add_argument("--instances", type=int, default=100, help="instances of the wide trial (100)")
    ns = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lab-bench-ray-") as tmp, start_broker() as broker:
        began = time.monotonic()
        with loopback_cluster(ns.nodes):
            print(json.dumps({"cluster_up_s": time.monotonic() - began, "nodes": ns.nodes}))
            if "same" in ns.which:
                print(json.dumps(same(broker, Path(tmp), ns.repeats)), flush=True)
            if "wide" in ns.which:
                print(json.dumps(wide(broker, Path(tmp), ns.instances)), flush=True)
            if "wide-local" in ns.which:  # the peer: the same trial without Ray, same machine
                print(json.dumps(wide(broker, Path(tmp), ns.instances, ray=False)), flush=True)
    return 0
