"""Trials placed on a Ray cluster (scenario field `cluster`, docs/ray.md).

Each mock service and each worker instance runs as a process of its own, owned by the Ray
actor of its node and role (`lab.sweep.ray_actor.ComponentActor`, which says why one actor per
node rather than per instance), pinned by the driver to that node: each mock service gets a
node of its own where the cluster has room, so it never shares cores with workers by accident;
the instances go round-robin over the other nodes (the driver's node last; the choice is
`lab.sweep.ray_cluster`'s). The producer, the clock, the embedded Redis, the web app and Locust
stay on the driver. Pinning (node affinity) rather than a SPREAD placement group: the spread is
exact and recorded, and actors reserve no CPU, which a placement group's bundles would have to.

The trial's job events are moved onto the broker's clock (`lab.sweep.clocks`); the record of a
trial (`RunFolder.add_trial` writes it to `placement/<trial>.json`) says which node ran what,
each node's clock offset and CPU, and the bound on the latency error.

A node lost mid-trial (its actors die): if other instances remain, the trial drains with them
(the lost instances' jobs come back to the queue: at-least-once, duplicates counted) and then
fails with the reason; a lost mock, or no instance left, fails it at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lab.errors import BrokerError, ConfigError, ServiceError
from lab.infra.broker import Broker
from lab.infra.procs import Child, terminate_all
from lab.mocks.control import TOKEN_ENV
from lab.mocks.spec import ServiceSpec, spec_to_json
from lab.runtime.queue import JobEvent
from lab.scenario.spec import Cluster
from lab.sweep.clocks import (
    ClockOffset,
    latency_error_bound_s,
    measure_offset,
    on_reference_clock,
    over_the_trial,
)
from lab.sweep.faults import ProcessLike, ServiceHandle
from lab.sweep.placement import Processes
from lab.sweep.ray_actor import ComponentActor
from lab.sweep.ray_cluster import (
    Node,
    alive_nodes,
    check_broker,
    ensure_connected,
    service_nodes,
    worker_nodes,
)
from lab.sweep.resources import ResourceSampler, Usage, harness_busy, machine_busy

log = logging.getLogger(__name__)

#: Format of placement/<trial>.json. History: 1 = the first (nodes, components, clock, lost).
RECORD_VERSION = 1

#: Starting actors fails when none of them came up for this long (a node starts them a few at
#: a time, each a Python process importing Ray: 100 of them take minutes on 2 busy cores).
START_STALL_S = 90.0

#: How long a service may take to announce it is up once its actor runs.
READY_TIMEOUT_S = 60.0

#: The drain checks the actors at most this often.
CHECK_EVERY_S = 0.2

_Remote = ray.remote(ComponentActor)


@dataclass
class _Component:
    """One process, and the actor (of its node and role) that owns it."""

    name: str
    role: str  # "mock" or "worker"
    node: Node
    actor: Any
    actor_label: str  # "workers@<node>" or "mocks@<node>", the actor's name in the figures
    instance: str | None = None
    watch: Any = None  # the ObjectRef of its wait_exit call
    lost: str | None = None  # why, when its actor (or node) died
    ended: str | None = None  # how its process ended ("exited with code 1"), when it did
    last_words: str = ""
    stopped: bool = False
    facts: dict[str, Any] = field(default_factory=dict)  # its node's, and the pids


@dataclass
class _Clocks:
    producer: ClockOffset | None = None
    nodes: dict[str, ClockOffset] = field(default_factory=dict)


class RayPlacement:
    """A trial's mocks and instances in Ray actors; see the module docstring."""

    def __init__(self, cluster: Cluster, broker: Broker, logs: Path) -> None:
        self.cluster, self.broker, self.logs = cluster, broker, logs
        self._stack = contextlib.ExitStack()
        self._components: dict[str, _Component] = {}
        self._actors_by_label: dict[str, tuple[Any, Node]] = {}  # label -> (actor, its node)
        self._warnings: list[str] = []
        self._before, self._after = _Clocks(), _Clocks()
        self._facts: dict[str, dict[str, Any]] = {}  # node id -> hostname, cpu_count
        self._timings: dict[str, float] = {}
        self._node_usage: dict[str, dict[str, Any]] = {}  # per node: cores, RSS, saturation
        self._last_check = 0.0
        self._workers_started_at = 0.0
        self._ready: list[Any] = []  # the services' wait_ready calls
        self._niceness = os.getpriority(os.PRIO_PROCESS, 0)  # what local processes would inherit

    # -- lifetime ---------------------------------------------------------------------------------

    def __enter__(self) -> RayPlacement:
        ensure_connected(self.cluster)
        self.nodes = alive_nodes()
        check_broker(self.broker, self.nodes)
        self._driver_node: str | None = ray.get_runtime_context().get_node_id()
        if self._driver_node not in {n.node_id for n in self.nodes}:
            self._driver_node = None  # a Ray Client driver is no node of the cluster
        self._stack.callback(self._teardown)
        self.driver = Processes(self._stack.enter_context(contextlib.ExitStack()), self.logs)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()

    def _teardown(self) -> None:
        """Stop every process (workers first), bring its log home, then end every actor (even
        when a second Ctrl-C cuts the stops short)."""
        try:
            for role in ("worker", "mock"):
                self._stop(c for c in self._components.values() if c.role == role)
        finally:
            for actor, _ in self._actors_by_label.values():
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)

    def _stop(self, components: Iterable[_Component]) -> None:
        """Stop `components` (one call per actor: its stops overlap) and bring their logs home."""
        todo = {
            actor.stop.remote([c.name for c in mine]): mine
            for actor, mine in self._owners(components)
        }
        if not todo:
            return
        ready, _ = ray.wait(list(todo), num_returns=len(todo), timeout=60)
        for ref in ready:
            try:
                tails = ray.get(ref)
            except ray.exceptions.RayError as exc:  # its actor, or its node, is gone
                for c in todo[ref]:
                    c.lost = c.lost or _first_line(exc)
                continue
            for c in todo[ref]:
                c.stopped = True
                (self.logs / f"{c.name}.log").write_text(tails.get(c.name, ""))

    # -- starting ---------------------------------------------------------------------------------

    def _actors(self, wanted: Mapping[str, tuple[str, Node, str | None]]) -> list[_Component]:
        """A component for each of `wanted` (name -> role, node, instance), each owned by the
        actor of its node and role, made when the first of them needs it."""
        made = []
        for name, (role, node, instance) in wanted.items():
            label = f"{role}s@{node.node_id[:12]}"
            if label not in self._actors_by_label:
                actor = _Remote.options(
                    num_cpus=0,
                    max_restarts=0,
                    max_task_retries=0,
                    max_concurrency=10_000,  # a wait_exit call waits per process it owns
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
                ).remote(label)
                self._actors_by_label[label] = (actor, node)
            actor = self._actors_by_label[label][0]
            self._components[name] = c = _Component(name, role, node, actor, label, instance)
            made.append(c)
        return made

    def _started(self, refs: list[Any], what: str) -> list[Any]:
        """The results of `refs`, waiting as long as they keep coming: ServiceError when none
        came for START_STALL_S."""
        pending, last = list(refs), time.monotonic()
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            if done:
                last = time.monotonic()
            elif time.monotonic() - last > START_STALL_S:
                started = len(refs) - len(pending)
                raise ServiceError(
                    f"{what}: {started} of {len(refs)} up, none more for {START_STALL_S:.0f}s"
                )
        return self._get(refs, what, START_STALL_S)

    def _get(self, refs: list[Any], what: str, timeout_s: float) -> list[Any]:
        try:
            return list(ray.get(refs, timeout=timeout_s))
        except ray.exceptions.GetTimeoutError:
            raise ServiceError(f"{what}: not done after {timeout_s:.0f}s") from None
        except ray.exceptions.RayTaskError as exc:
            raise ServiceError(f"{what}: {exc.cause if exc.cause else _first_line(exc)}") from None
        except ray.exceptions.RayError as exc:
            raise ServiceError(f"{what}: {_first_line(exc)}") from None

    def start_services(
        self, specs: Mapping[str, ServiceSpec], *, token: str, restartable: Collection[str]
    ) -> dict[str, str]:
        # restartable services are refused with a cluster when the scenario is loaded
        began = time.monotonic()
        chosen, warnings = service_nodes(self.nodes, list(specs), self.cluster, self._driver_node)
        self._warnings += warnings
        made = self._actors({f"mock-{n}": ("mock", chosen[n], None) for n in specs})
        env = {TOKEN_ENV: token}
        urls = self._started(
            [c.actor.start_mock.remote(c.name, s.kind, spec_to_json(s), env, self._niceness) for c, s in zip(made, specs.values(), strict=True)],
            "starting the mock services' actors",
        )  # fmt: skip
        self._ready = [c.actor.wait_ready.remote(c.name, READY_TIMEOUT_S) for c in made]
        self._watch(made)
        self._timings["services_started_s"] = time.monotonic() - began
        return dict(zip(specs, urls, strict=True))

    def start_workers(
        self, args: Mapping[str, Sequence[str]], *, grace_s: float, env: Mapping[str, str]
    ) -> None:
        self._workers_started_at = began = time.monotonic()
        services = {c.name: c.node for c in self._components.values() if c.role == "mock"}
        chosen, warnings = worker_nodes(
            self.nodes, list(args), self.cluster, services, self._driver_node
        )
        self._warnings += warnings
        made = self._actors(
            {f"worker-{i}": ("worker", chosen[inst], inst) for i, inst in enumerate(args)}
        )
        self._started(
            [
                c.actor.start_worker.remote(
                    c.name, list(args[c.instance or ""]), grace_s, dict(env), self._niceness
                )
                for c in made
            ],
            f"starting {len(made)} worker instances' actors",
        )
        self._watch(made)
        self._timings["workers_spawned_s"] = time.monotonic() - began

    def _watch(self, components: list[_Component]) -> None:
        for c in components:
            c.watch = c.actor.wait_exit.remote(c.name)

    # -- while it runs ----------------------------------------------------------------------------

    def started(self) -> bool:
        self.check()
        if self._ready:
            done, _ = ray.wait(self._ready, num_returns=len(self._ready), timeout=0)
            if len(done) < len(self._ready):
                return False
            self._get(done, "waiting for the mock services", 10)
            self._ready = []
        return self.driver.started()

    def watched(self) -> list[Child]:
        return self.driver.of_role("worker", "web")

    def check(self) -> None:
        """Before the clock: ServiceError if any process exited or any actor was lost."""
        self.refresh(force=True)
        for c in self._components.values():
            if c.lost:
                raise ServiceError(
                    f"{c.name} on Ray node {c.node.label} was lost before the trial started: "
                    f"{c.lost}"
                )
            if c.ended:
                raise ServiceError(
                    f"{c.name} on Ray node {c.node.label} {c.ended} before the trial started: "
                    f"{c.last_words}"
                )

    def refresh(self, *, force: bool = False) -> None:
        """Notice the processes that ended and the actors lost since the last look (one
        non-blocking `ray.wait` over every watch, at most every CHECK_EVERY_S)."""
        now = time.monotonic()
        if not force and now - self._last_check < CHECK_EVERY_S:
            return
        self._last_check = now
        watched = {c.watch: c for c in self._components.values() if c.watch is not None}
        if not watched:
            return
        ended, _ = ray.wait(list(watched), num_returns=len(watched), timeout=0)
        for ref in ended:
            c = watched[ref]
            c.watch = None
            try:
                c.ended, c.last_words = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the actor is gone: its node, or itself
                c.lost = _first_line(exc)

    def fault_targets(
        self, sampler: ResourceSampler
    ) -> tuple[list[ProcessLike], dict[str, ServiceHandle]]:
        workers = sorted(
            (c for c in self._components.values() if c.role == "worker"),
            key=lambda c: int(c.name.rsplit("-", 1)[1]),
        )
        services = {
            c.name.removeprefix("mock-"): ServiceHandle(
                child=_RemoteProcess(self, c), start_again=_no_restart, ready=lambda: True
            )
            for c in self._components.values()
            if c.role == "mock"
        }
        return [_RemoteProcess(self, c) for c in workers], services

    def _losses(self, components: Sequence[_Component]) -> str:
        """Which nodes lost which components, and whether Ray already counts the node dead."""
        alive = {n.node_id for n in alive_nodes()}
        by_node: dict[str, list[_Component]] = defaultdict(list)
        for c in components:
            if c.lost:
                by_node[c.node.node_id].append(c)
        parts = []
        for lost in by_node.values():
            node = lost[0].node
            state = "was lost" if node.node_id not in alive else "lost its actors"
            names = ", ".join(c.name for c in lost)
            parts.append(
                f"Ray node {node.label} {state} mid-trial ({names} ran there: {lost[0].lost})"
            )
        return "; ".join(parts)

    def stop_workers(self) -> None:
        terminate_all(self.driver.of_role("worker", "web"))
        self._stop(c for c in self._components.values() if c.role == "worker")
        self.driver.stack.close()

    # -- measuring --------------------------------------------------------------------------------

    def local_pids(self) -> dict[str, tuple[str, int]]:
        return self.driver.pids()

    def _live(self) -> list[_Component]:
        return [c for c in self._components.values() if not (c.lost or c.stopped)]

    def _owners(
        self, components: Iterable[_Component] | None = None
    ) -> list[tuple[Any, list[_Component]]]:
        """Each actor owning a live one of `components` (all of them by default), and those."""
        mine: dict[str, list[_Component]] = defaultdict(list)
        for c in self._components.values() if components is None else components:
            if not (c.lost or c.stopped):
                mine[c.actor_label].append(c)
        return [(self._actors_by_label[label][0], cs) for label, cs in mine.items()]

    def _measure_clocks(self, into: _Clocks) -> None:
        """The producer's clock and one actor's per node, against the broker's."""
        with self.broker.client() as client:
            into.producer = measure_offset(client)
        one_per_node = {c.node.node_id: c for c in self._live()}
        refs = {node: c.actor.clock.remote(self.broker.url) for node, c in one_per_node.items()}
        for node, ref in refs.items():
            try:
                into.nodes[node] = ray.get(ref, timeout=30)
            except ray.exceptions.RayTaskError as exc:
                label = one_per_node[node].node.label
                raise BrokerError(
                    f"node {label} cannot reach the broker at {self.broker.url}: {exc.cause}"
                ) from None
            except ray.exceptions.RayError as exc:
                one_per_node[node].lost = _first_line(exc)

    @contextlib.contextmanager
    def sampling(self) -> Iterator[dict[str, Usage]]:
        """Clocks measured before and after, CPU and RSS sampled inside every actor."""
        self._timings["ready_s"] = time.monotonic() - self._workers_started_at
        self._measure_clocks(self._before)
        owners = self._owners()
        self._get(
            [actor.start_sampling.remote({c.name: c.role for c in mine}) for actor, mine in owners],
            "starting the samplers",
            30,
        )
        described = self._get([a.describe.remote() for a, _ in owners], "describing nodes", 30)
        for (_, mine), facts in zip(owners, described, strict=True):
            self._facts[mine[0].node.node_id] = facts  # an actor's processes share its node
            for c in mine:
                niceness = facts["niceness"].get(c.name)
                c.facts = {**facts, "pid": facts["pids"].get(c.name), "niceness": niceness}
            started = {n for n in facts["niceness"].values() if n is not None}
            if off := sorted(started - {self._niceness}):
                self._warnings.append(
                    f"the {mine[0].actor_label} processes started at niceness {off}, not the "
                    f"driver's {self._niceness} (a local trial's): that node may not raise a "
                    "priority (root or CAP_SYS_NICE can), and Ray starts its processes at its "
                    "worker_niceness, 15; they yield the cores to the rest of their host. "
                    "Start that node's raylet with RAY_worker_niceness=0 in its environment"
                )
        usage: dict[str, Usage] = {}
        yield usage
        refs = [actor.stop_sampling.remote() for actor, _ in self._owners()]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=30)
        for ref in ready:
            with contextlib.suppress(ray.exceptions.RayError):  # lost since: check() says so
                usage |= ray.get(ref)
        self._measure_clocks(self._after)

    def _offsets(self) -> dict[str, ClockOffset]:
        return {
            node: over_the_trial(before, self._after.nodes.get(node, before))
            for node, before in self._before.nodes.items()
        }

    def on_one_clock(
        self, events: list[JobEvent], clock_start: float
    ) -> tuple[list[JobEvent], float]:
        assert self._before.producer is not None, "sampling() measures the clocks first"
        offsets = self._offsets()
        instance_offsets = {
            c.instance: offsets[c.node.node_id].offset_s
            for c in self._components.values()
            if c.instance is not None and c.node.node_id in offsets
        }
        producer = self._before.producer.offset_s
        corrected = on_reference_clock(
            events, instance_offsets=instance_offsets, producer_offset_s=producer
        )
        return corrected, clock_start - producer

    def _node_of(self, name: str) -> str:
        if (owner := self._actors_by_label.get(name.removeprefix("ray-"))) is not None:
            return owner[1].node_id  # an actor itself
        c = self._components.get(name)
        return c.node.node_id if c else "driver"

    def _host_of(self, node: str) -> str:
        return str(self._facts.get(node, {}).get("hostname", socket.gethostname()))

    def saturation(self, usage: Mapping[str, Usage]) -> dict[str, Any]:
        """Harness saturation per node (a mock, Redis or the producer near a full core there),
        machine saturation per host (nodes on one host share its cores)."""
        by_node: dict[str, dict[str, Usage]] = defaultdict(dict)
        for name, u in usage.items():
            by_node[self._node_of(name)][name] = u
        by_host: dict[str, dict[str, Usage]] = defaultdict(dict)
        reasons: list[str] = []
        for node, part in sorted(by_node.items()):
            by_host[self._host_of(node)] |= part
            busy = harness_busy(part)
            reasons += [f"node {node[:12]}: {why}" for why in busy]
            self._node_usage[node] = {
                "cores": _by_role(part, lambda us: sum(u.cores for u in us)),
                "rss_max_mb": _by_role(part, lambda us: max(u.rss_max_mb for u in us)),
                "harness_saturated": bool(busy),
            }
        machine = False
        for host, part in sorted(by_host.items()):
            cpus = max((self._cpus(n) for n in by_node if self._host_of(n) == host), default=1)
            if busy_host := machine_busy(part, cpu_count=cpus):
                machine = True
                reasons.append(f"host {host}: {busy_host}")
        return {
            "harness_saturated": any(n["harness_saturated"] for n in self._node_usage.values()),
            "machine_saturated": machine,
            "saturation_reason": "; ".join(reasons),
        }

    def _cpus(self, node: str) -> int:
        if node == "driver":
            return os.cpu_count() or 1
        return int(self._facts.get(node, {}).get("cpu_count", 1))

    def failure(self) -> str | None:
        lost = [c for c in self._components.values() if c.lost]
        if not lost:
            return None
        return f"{self._losses(lost)}; the other instances drained the queue"

    def record(self) -> dict[str, Any]:
        offsets = self._offsets()
        producer = over_the_trial(
            self._before.producer or ClockOffset(0.0, 0.0),
            self._after.producer or self._before.producer or ClockOffset(0.0, 0.0),
        )
        worker_nodes_used = {
            c.node.node_id for c in self._components.values() if c.role == "worker"
        }
        nodes: dict[str, Any] = {}
        for node in self.nodes:
            mine = sorted(
                c.name for c in self._components.values() if c.node.node_id == node.node_id
            )
            if not mine:
                continue
            nodes[node.node_id] = {
                "ip": node.ip,
                **{k: v for k, v in self._facts.get(node.node_id, {}).items() if k in ("hostname", "cpu_count")},
                "resources": {k: v for k, v in node.resources.items() if not k.startswith("node:")},
                "components": mine,
                "clock": offsets[node.node_id].to_json() if node.node_id in offsets else None,
                **self._node_usage.get(node.node_id, {}),
                "driver": node.node_id == self._driver_node,
            }  # fmt: skip
        return {
            "schema_version": RECORD_VERSION,
            "engine": "ray",
            "address": self.cluster.address,
            "driver": {
                "hostname": socket.gethostname(),
                "node_id": self._driver_node,
                "niceness": self._niceness,  # what its processes here, and local trials', run at
                **self._node_usage.get("driver", {}),
            },
            "nodes": nodes,
            "components": {
                c.name: {
                    "role": c.role,
                    "node_id": c.node.node_id,
                    "instance": c.instance,
                    "pid": c.facts.get("pid"),
                    "actor": c.actor_label,
                    "niceness": c.facts.get("niceness"),
                    "actor_pid": c.facts.get("actor_pid"),
                    "lost": c.lost,
                }
                for c in self._components.values()
            },
            "clock": {
                "reference": "the broker's clock (Redis TIME); every time in jobs.parquet is on it",
                "producer": producer.to_json(),
                "latency_error_bound_ms": 1000
                * latency_error_bound_s(
                    producer, [offsets[n] for n in worker_nodes_used if n in offsets]
                ),
            },
            "startup_s": dict(self._timings),
            "warnings": list(self._warnings),
        }


class _RemoteProcess:
    """A component's process as `lab.sweep.faults` watches and hurts a local `Child`."""

    def __init__(self, placement: RayPlacement, component: _Component) -> None:
        self._placement, self._c = placement, component
        self.name = component.name

    def alive(self) -> bool:
        self._placement.refresh()
        return not (self._c.lost or self._c.ended)

    def signal(self, signum: int) -> None:
        if not (self._c.lost or self._c.ended):
            self._c.actor.signal.remote(self.name, int(signum))  # fire and forget, like os.kill

    def exit_description(self) -> str:
        if self._c.lost:
            return f"was lost with its actor on Ray node {self._c.node.label}"
        return self._c.ended or "is still running"

    def last_words(self, lines: int = 12) -> str:
        return self._c.lost or self._c.last_words


def _no_restart() -> ProcessLike:
    raise ConfigError("restarting a mock service is for this host only, not with a cluster")


def _by_role(
    usage: Mapping[str, Usage], figure: Callable[[list[Usage]], float]
) -> dict[str, float]:
    roles: dict[str, list[Usage]] = defaultdict(list)
    for u in usage.values():
        roles[u.role].append(u)
    return {role: round(figure(us), 3) for role, us in sorted(roles.items())}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
