"""Trials placed on a Ray cluster: a local three-node cluster on loopback (ray.cluster_utils),
each node with a resource of its own, the lab's embedded Redis, real mock and worker processes.

The cluster tests skip, saying why, only where the `ray` package is missing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest

from lab.errors import ConfigError, LabError
from lab.infra.broker import Broker
from lab.infra.procs import stop_on_signals
from lab.report.placement import section as placement_section
from lab.results import RunFolder
from lab.runtime.queue import OK, JobEvent
from lab.scenario.spec import load_scenario
from lab.sweep.clocks import (
    ClockOffset,
    latency_error_bound_s,
    measure_offset,
    on_reference_clock,
)
from lab.sweep.placement import with_cluster
from lab.sweep.runner import main
from lab.sweep.trial import TrialOptions, TrialPlan, run_trial
from tests.conftest import process_alive

# Read when ray is imported: Ray then binds and connects on 127.0.0.1 only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
try:
    import ray
    from ray.cluster_utils import Cluster
except ImportError:  # pragma: no cover - the suite installs lab[ray]
    ray = None  # type: ignore[assignment]

needs_ray = pytest.mark.skipif(
    ray is None, reason="the ray package is not installed: pip install -e '.[dev,ray]'"
)

SCENARIO = """\
name: placed
seed: 5
cluster: {engine: ray, address: auto, services_resource: svc}
services:
  search:
    kind: opensearch
    capacity: 16
    queue: 100
    latency: {dist: constant, ms: 20}
workload:
  job: opensearch.index
  service: search
  items: 60
sweep:
  trial_timeout_s: 60
"""


#: Ray's GCS checks each node every `period` and declares it dead after `threshold` misses.
FAST_NODE_DEATH = {
    "health_check_period_ms": 250,
    "health_check_timeout_ms": 250,
    "health_check_failure_threshold": 3,
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "placed.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def leftovers() -> list[str]:
    """Our actors, workers and mocks still running below this process (the cluster's raylets
    are its children, their workers theirs)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            line = " ".join(proc.cmdline())
            if any(k in line for k in ("ComponentActor", "lab.runtime.worker", "lab.mocks")):
                found.append(f"{proc.pid}: {line[:120]}")
    return found


def assert_nothing_left() -> None:
    """Killing an actor is asynchronous: allow its process a few seconds to go."""
    deadline = time.monotonic() + 20
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers() == []


@pytest.fixture(scope="module")
def nodes() -> Iterator[dict[str, Any]]:
    """A three-node cluster: the head (the driver's), `svc` (for mocks), `spare`. Two CPUs a
    node, as this machine has: Ray then starts two actor processes at once per node. Ray's
    health check declares a lost node dead after about a second (its defaults take 15 s: longer
    than a test trial lasts)."""
    assert ray is not None
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "resources": {"head": 1},
            "include_dashboard": False,
            "_system_config": FAST_NODE_DEATH,
        },
    )
    try:
        cluster.add_node(num_cpus=2, resources={"svc": 1})
        cluster.add_node(num_cpus=2, resources={"spare": 1, "wrk": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
        by_label = {
            label: n["NodeID"]
            for n in ray.nodes()
            for label in ("head", "svc", "spare")
            if n["Alive"] and label in n["Resources"]
        }
        yield {"cluster": cluster, "ids": by_label}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def trial(nw: int = 2, instances: int = 2) -> TrialPlan:
    return TrialPlan(index=0, num_workers=nw, instances=instances, batch_size=1, repeat=0)


@needs_ray
def test_a_trial_spreads_instances_over_nodes_and_gives_the_mock_its_own(
    nodes: dict[str, Any], broker: Broker, tmp_path: Path
) -> None:
    scenario = load_scenario(write(tmp_path, SCENARIO))
    plan = trial(instances=4)
    logs = tmp_path / "logs"
    outcome = run_trial(scenario, plan, broker=broker, logs=logs)
    row, record = outcome.row, outcome.placement
    assert row["items_done"] == 60 and row["lost_items"] == 0 and row["duplicate_items"] == 0
    assert row["unfinished_jobs"] == 0 and row["items_per_s"] > 0
    assert not row["failed"] and outcome.faults == []

    assert record is not None
    ids = nodes["ids"]
    where = {name: c["node_id"] for name, c in record["components"].items()}
    assert where["mock-search"] == ids["svc"]
    workers = {where[f"worker-{i}"] for i in range(4)}
    assert workers == {ids["head"], ids["spare"]}  # spread; none beside the mock
    # one actor per node and role owns that node's processes, one process per instance
    components = record["components"]
    for node in workers:
        mine = [c for c in components.values() if c["node_id"] == node]
        assert len(mine) == 2 and len({c["actor_pid"] for c in mine}) == 1
        assert len({c["pid"] for c in mine}) == 2 and mine[0]["actor"].startswith("workers@")
    assert components["mock-search"]["actor"].startswith("mocks@")
    # each process starts at the driver's niceness, as a local trial's do, or the record says
    # why not (Ray starts its workers at 15, and raising a priority needs the privilege)
    driver_niceness = record["driver"]["niceness"]
    assert isinstance(driver_niceness, int)
    off = sorted(n for n, c in components.items() if c["niceness"] != driver_niceness)
    if off:
        assert record["warnings"] and all("niceness" in w for w in record["warnings"]), off
    else:
        assert record["warnings"] == []
    # the events name their instances, and every instance ran on the node it was placed on
    instances = {c["instance"]: c["node_id"] for c in record["components"].values()}
    assert {e.instance for e in outcome.events} <= set(instances)
    assert set(record["nodes"]) == {ids["head"], ids["svc"], ids["spare"]}
    # one clock: the bound is recorded; every node's offset is within it of the broker's
    # (they share this host's clock, so the true offsets are all zero)
    bound_ms = record["clock"]["latency_error_bound_ms"]
    for node in record["nodes"].values():
        assert abs(node["clock"]["offset_ms"]) <= node["clock"]["error_ms"] + 1.0
    assert 0 < bound_ms < 1000
    # CPU and RSS sampled inside the actors, per component
    assert {"mock-search", "worker-0", "worker-3", "producer"} <= set(outcome.usage)
    assert outcome.usage["worker-0"].rss_max_mb > 0
    assert "harness_saturated" in row and isinstance(row["saturation_reason"], str)
    assert {"mock", "ray"} <= set(record["nodes"][ids["svc"]]["cores"])  # judged per node
    assert "worker" in record["nodes"][ids["spare"]]["cores"]
    assert "producer" in record["driver"]["cores"]
    # the processes' logs came home
    assert (logs / "worker-0.log").exists() and (logs / "mock-search.log").exists()
    # a shared report says which node ran what
    run = RunFolder.create(tmp_path / "runs", "placed", SCENARIO, {})
    run.add_trial(row, outcome.events, outcome.services, placement=record)
    page = placement_section(run.path, pd.DataFrame({"trial_id": [row["trial_id"]]}))
    assert "Where it ran" in page and "mock-search" in page
    assert page.count("2 worker instances") == 2 and ids["svc"][:12] in page
    assert_nothing_left()
    assert not any(process_alive(c["pid"]) for c in record["components"].values())


@needs_ray
def test_ctrl_c_mid_trial_ends_every_actor_and_process(
    nodes: dict[str, Any], broker: Broker, tmp_path: Path
) -> None:
    scenario = load_scenario(write(tmp_path, SCENARIO.replace("items: 60", "items: 2000")))

    def interrupt(done: int, planned: int, elapsed_s: float) -> None:
        if done > 0:
            os.kill(os.getpid(), 2)  # SIGINT, as a Ctrl-C in the terminal

    options = TrialOptions(on_progress=interrupt)
    with stop_on_signals(), pytest.raises(KeyboardInterrupt):
        run_trial(
            scenario, trial(instances=1), broker=broker, logs=tmp_path / "logs", options=options
        )
    assert_nothing_left()


@needs_ray
def test_a_node_lost_mid_trial_fails_the_trial_and_loses_no_item(
    nodes: dict[str, Any], broker: Broker, tmp_path: Path
) -> None:
    cluster = nodes["cluster"]
    doomed = cluster.add_node(num_cpus=2, resources={"wrk": 1, "doomed": 1})
    cluster.wait_for_nodes()
    doomed_id = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "doomed" in n["Resources"])
    text = SCENARIO.replace(
        "services_resource: svc", "services_resource: svc, workers_resource: wrk"
    )
    text = text.replace("items: 60", "items: 600") + "workers: {heartbeat_ttl_s: 1.0}\n"
    scenario = load_scenario(write(tmp_path, text))
    killed = threading.Event()

    def kill_the_node(done: int, planned: int, elapsed_s: float) -> None:
        if done >= 30 and not killed.is_set():
            killed.set()
            cluster.remove_node(doomed, allow_graceful=False)

    options = TrialOptions(on_progress=kill_the_node)
    outcome = run_trial(
        scenario, trial(instances=2), broker=broker, logs=tmp_path / "logs", options=options
    )
    assert killed.is_set() and outcome.placement is not None
    row = outcome.row
    assert row["failed"] and "mid-trial" in row["failure_reason"]
    assert doomed_id[:12] in row["failure_reason"]
    lost = {n for n, c in outcome.placement["components"].items() if c["lost"]}
    on_doomed = {n for n, c in outcome.placement["components"].items() if c["node_id"] == doomed_id}
    assert lost == on_doomed and len(lost) == 1  # one of the two instances ran there
    # measured as a fault: the instance's exit, and how long its jobs took to come back (Ray
    # declares the node dead within about a second here, long before the survivor has drained)
    exits = [f for f in outcome.faults if f["action"] == "exit"]
    assert [f["target"] for f in exits] == sorted(lost) and row["instance_crashes"] == 1
    # at-least-once: the survivor finished every item; the service saw each one
    totals = outcome.services["search"]["opensearch"]["totals"]
    assert row["items_done"] == 600 and row["unfinished_jobs"] == 0
    assert row["lost_items"] == 0 and totals["unique_ids_written"] == 600
    assert row["duplicate_items"] == totals["writes"] - 600
    assert_nothing_left()


def test_clock_correction_on_injected_offsets(broker: Broker) -> None:
    """Clocks set 5 s ahead and 3 s behind the broker's: measured against the real Redis TIME,
    then the events stamped on them come back onto one clock."""
    with broker.client() as client:
        ahead = measure_offset(client, now=lambda: time.time() + 5.0)
        behind = measure_offset(client, now=lambda: time.time() - 3.0)
        producer = measure_offset(client, now=lambda: time.time() + 0.7)
    for measured, true in ((ahead, 5.0), (behind, -3.0), (producer, 0.7)):
        assert abs(measured.offset_s - true) <= measured.error_s + 1e-3

    def event(instance: str, enq: float, start: float, end: float) -> JobEvent:
        return JobEvent("j-" + instance, "noop", instance, enq, start, end, 1, OK, 1, None, None)

    # true times (the broker's clock): enqueued at 100, started at 100.2, finished at 100.5
    skewed = [
        event("a", 100.7, 105.2, 105.5),  # producer +0.7 s; instance a's host +5 s
        event("b", 100.7, 97.2, 97.5),  # instance b's host -3 s
    ]
    assert [round(e.latency_s, 3) for e in skewed] == [4.8, -3.2]  # mixed clocks: nonsense
    fixed = on_reference_clock(
        skewed,
        instance_offsets={"a": ahead.offset_s, "b": behind.offset_s},
        producer_offset_s=producer.offset_s,
    )
    bound = latency_error_bound_s(producer, [ahead, behind])
    for e in fixed:
        assert abs(e.latency_s - 0.5) <= bound + 2e-3
        assert abs(e.service_s - 0.3) <= 1e-9  # one host's clock: its own durations stand
        assert abs(e.enqueued_at - 100.0) <= producer.error_s + 1e-3
    with pytest.raises(LabError, match="no clock offset for instance"):
        on_reference_clock(skewed, instance_offsets={"a": 0.0}, producer_offset_s=0.0)
    assert latency_error_bound_s(ClockOffset(0, 0.001), []) == 0.001


@needs_ray
def test_node_assignment_leaves_room_and_says_when_there_is_none() -> None:
    from lab.scenario.spec import Cluster
    from lab.sweep.ray_cluster import Node, service_nodes, worker_nodes

    cluster = Cluster(engine="ray")
    three = [Node(i, "127.0.0.1", {"CPU": 1.0}) for i in ("a", "b", "c")]
    mocks, warned = service_nodes(three, ["search"], cluster, driver_node="a")
    assert mocks["search"].node_id != "a" and warned == []  # not beside the producer
    workers, warned = worker_nodes(three, ["i0", "i1", "i2"], cluster, mocks, driver_node="a")
    used = [n.node_id for n in workers.values()]
    assert mocks["search"].node_id not in used and len(set(used)) == 2 and warned == []
    assert used[-1] != "a" or used.count("a") == 1  # the driver's node fills last

    one = three[:1]
    mocks, _ = service_nodes(one, ["search"], cluster, driver_node="a")
    workers, warned = worker_nodes(one, ["i0"], cluster, mocks, driver_node="a")
    assert warned and "no room" in warned[0]

    with pytest.raises(ConfigError, match="workers_resource: no alive node offers resource 'gpu'"):
        worker_nodes(three, ["i0"], Cluster(engine="ray", workers_resource="gpu"), {}, None)


@needs_ray
def test_the_embedded_broker_serves_nodes_on_this_host_only(broker: Broker) -> None:
    from lab.sweep.ray_cluster import Node, check_broker

    check_broker(broker, [Node("a", "127.0.0.1", {})])
    with pytest.raises(ConfigError, match=r"set broker\.url to a Redis every node reaches"):
        check_broker(broker, [Node("a", "127.0.0.1", {}), Node("b", "203.0.113.9", {})])
    check_broker(Broker(url="redis://203.0.113.1:6379/0"), [Node("b", "203.0.113.9", {})])


def test_cluster_field_and_flag_errors_name_what_is_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, SCENARIO.replace("address: auto", "address: ray:/nowhere"))
    with pytest.raises(ConfigError, match=r"cluster\.address: must be auto, local or ray://"):
        load_scenario(bad)
    scenario = load_scenario(write(tmp_path, SCENARIO))
    assert with_cluster(scenario, "none").cluster is None
    overridden = with_cluster(scenario, "ray://head:10001").cluster
    assert overridden is not None and overridden.address == "ray://head:10001"
    assert overridden.services_resource == "svc"  # the scenario's other cluster fields stay
    restart = SCENARIO + "faults: [{at_s: 1, restart: service, name: search}]\n"
    with pytest.raises(ConfigError, match=r"faults\[0\]\.restart: restarting a mock service"):
        load_scenario(write(tmp_path, restart))
    colocated = SCENARIO + "workers: {placement: colocated}\n"
    with pytest.raises(
        ConfigError, match=r"workers\.placement: colocated slots run in the web app"
    ):
        load_scenario(write(tmp_path, colocated))
    assert main([str(write(tmp_path, SCENARIO)), "--cluster", "elsewhere", "--dry-run"]) == 2
    assert "--cluster: must be auto, local or ray://host:port, got 'elsewhere', or none" in (
        capsys.readouterr().err
    )
