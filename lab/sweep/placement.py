"""Where a trial's processes run: this host (`LocalPlacement`) or a Ray cluster (`RayPlacement`,
in `lab.sweep.ray_placement`, imported only when a scenario names a cluster).

A trial asks its placement for the mock services and the worker instances, then, while it runs,
whether everything is still up, for the CPU and RSS of what runs elsewhere, and at the end for
the job events on one clock and a record of what ran where. The producer, the clock, the
embedded Redis, the web app and Locust always run on this host (the driver): `driver` holds the
processes the trial starts there itself.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import os
import signal
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from lab.errors import ConfigError
from lab.infra.broker import Broker
from lab.infra.files import atomic_write
from lab.infra.procs import Child, python_module_argv, spawn, terminate_all
from lab.infra.sockets import listening_socket, served_argv, url_of
from lab.mocks.control import TOKEN_ENV
from lab.mocks.spec import ServiceSpec, spec_to_json
from lab.runtime.queue import JobEvent
from lab.scenario.spec import Cluster, Scenario
from lab.sweep.faults import ProcessLike, ServiceHandle
from lab.sweep.resources import ResourceSampler, Usage

if TYPE_CHECKING:
    from lab.sweep.harness import Harness


class Processes:
    """Child processes on this host by name, with their role for CPU accounting."""

    def __init__(self, stack: contextlib.ExitStack, logs: Path) -> None:
        self.stack, self.logs = stack, logs
        self.children: dict[str, tuple[str, Child]] = {}
        self.ready_files: list[Path] = []

    def start(
        self,
        name: str,
        role: str,
        argv: list[str],
        *,
        ready: Path | None = None,
        pass_fds: tuple[int, ...] = (),
        grace_s: float = 5.0,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        if ready is not None:
            ready.unlink(missing_ok=True)  # a resumed trial must not trust the last attempt's file
            self.ready_files.append(ready)
        child = self.stack.enter_context(
            spawn(
                argv,
                name=name,
                log_path=self.logs / f"{name}.log",
                pass_fds=pass_fds,
                grace_s=grace_s,
                env=env,
            )
        )
        self.children[name] = (role, child)
        return child

    def of_role(self, *roles: str) -> list[Child]:
        return [c for role, c in self.children.values() if role in roles]

    def pids(self) -> dict[str, tuple[str, int]]:
        """name -> (role, pid), for the resource sampler."""
        return {name: (role, c.pid) for name, (role, c) in self.children.items()}

    def started(self) -> bool:
        """Every child that writes a ready file wrote it."""
        return all(p.exists() for p in self.ready_files)


class TrialPlacement(Protocol):
    """Where one trial's mock services and worker instances run. A context manager: leaving it
    stops every process and actor it started, on every exit path."""

    driver: Processes  # processes on this host that the trial starts itself (web app, Locust)

    def __enter__(self) -> TrialPlacement: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def start_services(
        self, specs: Mapping[str, ServiceSpec], *, token: str, restartable: Collection[str]
    ) -> dict[str, str]:
        """Start each mock service (its /_lab/ routes answer `token`; those in `restartable`
        keep their state across a restart); returns their URLs at once (maybe not up yet)."""
        ...

    def start_workers(
        self, args: Mapping[str, Sequence[str]], *, grace_s: float, env: Mapping[str, str]
    ) -> None:
        """Start one `python -m lab.runtime.worker ARGS` per instance id, with `env` added to
        its environment (the broker's URL)."""
        ...

    def watched(self) -> list[Child]:
        """The trial's processes on this host, watched until the clock starts (one that exits
        then fails the trial with its own last words)."""
        ...

    def started(self) -> bool:
        """Every service and driver process announced it is up (ServiceError if one elsewhere
        died)."""
        ...

    def check(self) -> None:
        """ServiceError if a process elsewhere died before the clock started (the ones here are
        `watched`)."""
        ...

    def fault_targets(
        self, sampler: ResourceSampler
    ) -> tuple[list[ProcessLike], dict[str, ServiceHandle]]:
        """The instances in order and the mock services, as `lab.sweep.faults` watches and
        hurts them (a restarted mock is added to `sampler`)."""
        ...

    def stop_workers(self) -> None:
        """Stop every worker instance (and the web app) gracefully, all at once, and reap them."""
        ...

    def sampling(self) -> contextlib.AbstractContextManager[dict[str, Usage]]:
        """CPU and RSS of the processes `local_pids` does not cover, filled in when the block
        ends (sampled where they run)."""
        ...

    def local_pids(self) -> dict[str, tuple[str, int]]:
        """name -> (role, pid) of the trial's processes on this host, for the driver's sampler."""
        ...

    def on_one_clock(
        self, events: list[JobEvent], clock_start: float
    ) -> tuple[list[JobEvent], float]:
        """The events and the clock's start, every time on one clock."""
        ...

    def saturation(self, usage: Mapping[str, Usage]) -> dict[str, Any]:
        """harness_saturated, machine_saturated and saturation_reason when they must be judged
        per node rather than for this host ({} to keep the trial row's own)."""
        ...

    def failure(self) -> str | None:
        """Why the trial fails although it may have drained (a node was lost), else None."""
        ...

    def record(self) -> dict[str, Any] | None:
        """What ran where (nodes, clocks, per-node resources), for the run folder; None here."""
        ...


class LocalPlacement:
    """Everything on this host, each mock and each worker instance a child process.

    With a sweep's `harness` (`lab.sweep.harness`), the mocks are the sweep's, reset for this
    trial (unless one may be restarted mid-trial: a restart needs a process of the trial's own),
    and the instances are forked from the sweep's fork server."""

    def __init__(self, logs: Path, harness: Harness | None = None) -> None:
        self.logs, self.harness = logs, harness
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> LocalPlacement:
        self.services = Processes(self._stack, self.logs)
        # the slots stop before the services (their stack closes first): every ack is written
        # while the services can still be asked for their statistics
        self._slots_stack = self._stack.enter_context(contextlib.ExitStack())
        self.driver = Processes(self._slots_stack, self.logs)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        terminate_all(self.driver.of_role("worker", "web"))  # on any exit: stops overlap
        self._stack.close()

    def start_services(
        self, specs: Mapping[str, ServiceSpec], *, token: str, restartable: Collection[str]
    ) -> dict[str, str]:
        """Each mock service in its own process, on a socket bound here.

        The spec goes through a file (a command line has a length limit, a spec with many
        brown-outs does not), the control token through the environment (argv is public). The
        socket stays open here for the whole trial, so a restarted mock serves the same address
        (connections made meanwhile wait in its backlog). With the harness's mocks, `token` is
        theirs (`ServicePool.token`)."""
        self._service_starts: dict[str, Callable[[], Child]] = {}
        self._mock_names = list(specs)
        if self.harness is not None and not restartable:
            pool = self.harness.services
            assert token == pool.token, "a shared mock answers only the sweep's token"
            urls = pool.checkout(dict(specs))
            # watched and sampled as the trial's own, but stopped by the sweep, not here
            self.services.children |= {n: ("mock", c) for n, c in pool.children.items()}
            self.services.ready_files += pool.starting
            return urls
        urls = {}
        env = {**os.environ, TOKEN_ENV: token}
        for name, spec in specs.items():
            spec_file = self.logs / f"mock-{name}.spec.json"
            atomic_write(spec_file, spec_to_json(spec))
            ready = self.logs / f"mock-{name}.ready.json"
            sock = self.services.stack.enter_context(listening_socket())
            argv = served_argv("lab.mocks", mock_args(spec.kind, spec_file), sock, ready)
            if name in restartable:  # a restart keeps the trial's figures and documents
                state = self.logs / f"mock-{name}.state.json"
                state.unlink(missing_ok=True)  # never an earlier attempt's
                argv += ["--state-file", str(state)]
            self._service_starts[name] = functools.partial(
                self.services.start, f"mock-{name}", "mock", argv, ready=ready,
                pass_fds=(sock.fileno(),), env=env,
            )  # fmt: skip
            self._service_starts[name]()
            urls[name] = url_of(sock)
        return urls

    def start_workers(
        self, args: Mapping[str, Sequence[str]], *, grace_s: float, env: Mapping[str, str]
    ) -> None:
        for i, worker_args in enumerate(args.values()):
            self.start_worker(i, worker_args, grace_s=grace_s, env=env)

    def start_worker(
        self, i: int, args: Sequence[str], *, grace_s: float, env: Mapping[str, str]
    ) -> Child:
        """Worker instance `i`: one of the first ones, or one the autoscaler adds mid-trial."""
        name, full_env = f"worker-{i}", {**os.environ, **env}
        if self.harness is None:
            argv = python_module_argv("lab.runtime.worker", *args)
            return self.driver.start(name, "worker", argv, grace_s=grace_s, env=full_env)
        child = self.driver.stack.enter_context(
            self.harness.launcher.spawn(  # forked: the environment replaces the server's
                "lab.runtime.worker", list(args), name=name,
                log_path=self.logs / f"{name}.log", grace_s=grace_s, env=full_env,
            )
        )  # fmt: skip
        self.driver.children[name] = ("worker", child)
        return child

    def stop_worker(self, child: Child) -> None:
        """Ask one worker instance to stop (SIGTERM: it finishes its jobs, puts back the rest);
        it is reaped with the others by `stop_workers`."""
        child.signal(signal.SIGTERM)

    def watched(self) -> list[Child]:
        return self.services.of_role("mock") + self.driver.of_role("worker", "web")

    def started(self) -> bool:
        return self.services.started() and self.driver.started()

    def check(self) -> None:
        pass  # every process is here, and watched

    def fault_targets(
        self, sampler: ResourceSampler
    ) -> tuple[list[ProcessLike], dict[str, ServiceHandle]]:
        restarts = itertools.count(1)

        def start_again(name: str) -> Child:
            child = self._service_starts[name]()
            sampler.add(f"mock-{name}-restart{next(restarts)}", "mock", child.pid)
            return child

        services = {
            name: ServiceHandle(
                child=self.services.children[f"mock-{name}"][1],
                start_again=functools.partial(start_again, name),
                ready=(self.logs / f"mock-{name}.ready.json").exists,
            )  # a shared mock is never restarted mid-trial (start_services): watched only
            for name in self._mock_names
        }
        return list(self.driver.of_role("worker")), services

    def stop_workers(self) -> None:
        terminate_all(self.driver.of_role("worker", "web"))  # graceful stops overlap
        self._slots_stack.close()  # then each is reaped

    @contextlib.contextmanager
    def sampling(self) -> Iterator[dict[str, Usage]]:
        yield {}  # every process is here: the driver's sampler sees them all

    def local_pids(self) -> dict[str, tuple[str, int]]:
        return self.services.pids() | self.driver.pids()

    def on_one_clock(
        self, events: list[JobEvent], clock_start: float
    ) -> tuple[list[JobEvent], float]:
        return events, clock_start  # one host, one clock

    def saturation(self, usage: Mapping[str, Usage]) -> dict[str, Any]:
        return {}

    def failure(self) -> str | None:
        return None

    def record(self) -> dict[str, Any] | None:
        return None


@contextlib.contextmanager
def connect_cluster(cluster: Cluster | None) -> Iterator[None]:
    """This process connected to the scenario's cluster for the block (a sweep); nothing
    without one. ConfigError when the cluster needs the `ray` package and it is missing."""
    if cluster is None:
        yield
        return
    if cluster.address == "local":  # read when ray is imported: a local Ray stays on loopback
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with _ray_module("ray_cluster").connected(cluster):
        yield


def _ray_module(name: str) -> ModuleType:
    """lab.sweep.NAME, a module that imports Ray, or a ConfigError saying how to install Ray
    (an optional extra)."""
    try:
        return importlib.import_module(f"lab.sweep.{name}")
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] != "ray":
            raise
        raise ConfigError(
            "cluster: engine ray needs the ray package: pip install 'lab[ray]'"
        ) from None


def with_cluster(scenario: Scenario, flag: str) -> Scenario:
    """The scenario with `--cluster FLAG` as its cluster's address (its other cluster fields
    kept): auto, local, ray://host:port, or none (this host only). ConfigError otherwise."""
    if flag == "none":
        return scenario.model_copy(update={"cluster": None})
    fields = scenario.cluster.model_dump() if scenario.cluster else {"engine": "ray"}
    try:
        cluster = Cluster.model_validate(fields | {"address": flag})
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"--cluster: {problem}, or none") from None
    if "colocated" in scenario.workers.placements:
        raise ConfigError(
            "--cluster: the scenario's workers.placement colocated runs the slots in the web app "
            "on this host; use separate with a cluster"
        )
    if any(not isinstance(v, int) for v in scenario.sweep.instances):
        raise ConfigError(
            "--cluster: the scenario's sweep.instances autoscale starts and stops worker "
            "processes on this host; list instance counts with a cluster"
        )
    return scenario.model_copy(update={"cluster": cluster})


def mock_args(kind: str, spec_file: Path) -> list[str]:
    """The arguments of `python -m lab.mocks` that serve the spec in `spec_file` (the socket
    and the ready file come with `served_argv`)."""
    return [kind, "--spec-file", str(spec_file)]


def open_placement(
    cluster: Cluster | None, broker: Broker, logs: Path, harness: Harness | None = None
) -> TrialPlacement:
    """The placement a scenario asks for: this host, or its Ray cluster (which
    `connect_cluster` connects once for a sweep). The `harness` (mocks and a fork server shared
    across trials) serves this host only: on a cluster each trial starts its own on the nodes,
    where a mock process here and a fork server here could not be placed."""
    if cluster is None:
        return LocalPlacement(logs, harness)
    placement: TrialPlacement = _ray_module("ray_placement").RayPlacement(cluster, broker, logs)
    return placement
