"""What runs on a cluster node: a Ray actor that owns the lab processes of one role there (the
worker instances placed on that node, or its mock services), and starts, watches, samples and
stops each of them, by name, for the driver.

Why an actor owns worker processes instead of running the worker loop itself: each process is
then exactly the one a local trial runs (same module, flags, uvloop and GIL to itself), so the
figures of the two placements compare; a Ray worker process carries Ray's own threads (gRPC,
the object store client, the actor's event loop), which would share the GIL and the loop with
the job slots and show up as the runtime's overhead; the runtime never imports Ray; and each
process asks the kernel to stop it when its actor dies (`lab.infra.procs`), so a lost actor or
node takes its processes along.

Why one actor per node and role, not one per instance: a Ray worker process costs about 80 MB
and, idle, about 9 ms of CPU a second (its core worker wakes every 10 ms to check for signals;
gRPC reports to the raylet). 100 instances on this project's 2-core machine, one actor each,
took 0.8 of its cores and 90 s to start, and slowed the very trial they placed (0.80 to 0.85 of
the Little's-law bound against 0.91 for the same processes placed locally, `python -m lab.bench
ray wide wide-local`). The placement is the same: every process is pinned to its node.

The actor is asynchronous: its methods run on one event loop thread for its whole life, which
is the thread that forks the processes (the parent-death signal follows the forking thread),
and the watch calls (`wait_exit`, one per process) wait while other calls come in.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import redis

from lab.errors import ServiceError
from lab.infra.files import atomic_write
from lab.infra.procs import Child, env_with_pythonpath, python_module_argv, spawn, terminate_all
from lab.infra.sockets import listening_socket, served_argv, url_of
from lab.sweep.clocks import ClockOffset, measure_offset
from lab.sweep.resources import ResourceSampler, Usage

#: The most of a component's log the driver brings home (its tail).
LOG_BYTES = 256 * 1024


def node_facts() -> dict[str, Any]:
    """This node as the driver records it."""
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count() or 1,
    }


@dataclass
class _Owned:
    """One process of the actor: its folder (log, spec, ready file) and how to stop it."""

    child: Child
    folder: Path
    stack: contextlib.ExitStack
    niceness: int | None  # the one it started at (None: ended before it could be read)
    ready: Path | None = None  # a mock's ready file


class ComponentActor:
    """The lab processes of one role on this node. Made remote by `lab.sweep.ray_placement`."""

    def __init__(self, label: str) -> None:
        self.label = label  # how the driver names this actor ("workers@<node>")
        self._dir = Path(tempfile.mkdtemp(prefix=f"lab-{label.replace('@', '-')}-"))
        self._owned: dict[str, _Owned] = {}
        self._sampling = contextlib.ExitStack()
        self._sampler: ResourceSampler | None = None

    async def describe(self) -> dict[str, Any]:
        """Its node, the actor's pid, and the pid and starting niceness of each process."""
        return {
            **node_facts(),
            "actor_pid": os.getpid(),
            "pids": {name: o.child.pid for name, o in self._owned.items()},
            "niceness": {name: o.niceness for name, o in self._owned.items()},
        }

    async def start_mock(
        self, name: str, kind: str, spec_json: str, env: Mapping[str, str], niceness: int
    ) -> str:
        """Start mock `name` serving `spec_json` on a socket bound to this node's address, with
        `env` (its control token) added to its environment, at `niceness` where allowed (see
        `start_worker`); returns its URL at once."""
        from lab.sweep.placement import mock_args  # heavy (the mocks' spec): mocks only

        ip = ray.util.get_node_ip_address()
        folder = self._folder(name)
        spec_file = folder / "spec.json"
        atomic_write(spec_file, spec_json)
        ready = folder / "ready.json"
        with listening_socket(ip) as sock:
            argv = served_argv("lab.mocks", mock_args(kind, spec_file), sock, ready)
            if not ipaddress.ip_address(ip).is_loopback:
                argv.append("--allow-network")  # workers on other nodes must reach it
            owned = self._spawn(
                name, folder, argv, env, niceness, pass_fds=(sock.fileno(),), grace_s=5.0
            )
            owned.ready = ready
            return url_of(sock)

    async def start_worker(
        self,
        name: str,
        args: Sequence[str],
        grace_s: float,
        env: Mapping[str, str],
        niceness: int,
    ) -> int:
        """Start worker `name`, `python -m lab.runtime.worker ARGS`, with `env` (the broker's
        URL) added to its environment; returns its pid. `niceness`: the driver's, which a local
        trial's processes inherit; Ray runs its own workers, this actor too, at 15 (its
        `worker_niceness`), and a process left there would yield the cores to everything else
        on the host. Raising it back needs the privilege: `describe` tells what it started at."""
        argv = python_module_argv("lab.runtime.worker", *args)
        folder = self._folder(name)
        return self._spawn(name, folder, argv, env, niceness, grace_s=grace_s).child.pid

    def _folder(self, name: str) -> Path:
        """A new folder for process `name` (its log, spec and ready file)."""
        if name in self._owned:
            raise ServiceError(f"{name}: already started on {self.label}")
        folder = self._dir / name
        folder.mkdir()
        return folder

    def _spawn(
        self,
        name: str,
        folder: Path,
        argv: list[str],
        env: Mapping[str, str],
        niceness: int,
        *,
        pass_fds: tuple[int, ...] = (),
        grace_s: float,
    ) -> _Owned:
        stack = contextlib.ExitStack()
        child = stack.enter_context(
            spawn(
                argv,
                name=name,
                log_path=folder / f"{name}.log",
                env={**env_with_pythonpath(), **env},
                pass_fds=pass_fds,
                grace_s=grace_s,
                niceness=niceness,
            )
        )
        niceness_now: int | None = None
        with contextlib.suppress(OSError):  # read once exec'd: what it started with, not what
            niceness_now = os.getpriority(os.PRIO_PROCESS, child.pid)  # others make of it later
        self._owned[name] = owned = _Owned(child, folder, stack, niceness_now)
        return owned

    def _check(self, name: str) -> Child:
        owned = self._owned.get(name)
        if owned is None:
            raise ServiceError(f"{name}: nothing started on {self.label}")
        if not owned.child.alive():
            raise ServiceError(
                f"{name} on {socket.gethostname()} {owned.child.exit_description()}: "
                f"{owned.child.last_words()}"
            )
        return owned.child

    async def wait_ready(self, name: str, timeout_s: float) -> None:
        """Until mock `name` wrote its ready file (ServiceError if it died or took too long)."""
        deadline = time.monotonic() + timeout_s
        ready = self._owned[name].ready if name in self._owned else None
        while ready is not None and not ready.exists():
            self._check(name)
            if time.monotonic() > deadline:
                raise ServiceError(f"{name} was not up after {timeout_s:.0f}s")
            await asyncio.sleep(0.01)

    async def wait_exit(self, name: str) -> tuple[str, str]:
        """Until process `name` exits: how it ended and its last words (the driver's watch)."""
        owned = self._owned.get(name)
        if owned is None:
            return "was never started", ""
        await owned.child.exited()  # woken by the kernel, not polled
        return owned.child.exit_description(), owned.child.last_words()

    async def clock(self, broker_url: str) -> ClockOffset:
        """This node's clock against the broker's (the trial's reference clock)."""
        with redis.Redis.from_url(broker_url, socket_connect_timeout=5, socket_timeout=5) as c:
            return measure_offset(c)

    async def start_sampling(self, roles: Mapping[str, str]) -> None:
        """CPU and RSS of the processes named in `roles` (name -> role) and of this actor
        itself (role "ray", named `ray-<label>`), sampled here."""
        pids = {name: (role, self._check(name).pid) for name, role in roles.items()}
        self._sampler = ResourceSampler({**pids, f"ray-{self.label}": ("ray", os.getpid())})
        self._sampling.enter_context(self._sampler.running())

    async def stop_sampling(self) -> dict[str, Usage]:
        self._sampling.close()
        return dict(self._sampler.usage) if self._sampler else {}

    async def signal(self, name: str, signum: int) -> None:
        """Send process `name` a signal (faults: kill, stall, resume); the actor stays."""
        if name in self._owned:
            self._owned[name].child.signal(signum)

    async def stop(self, names: Sequence[str]) -> dict[str, str]:
        """Stop processes `names` gracefully, together (SIGTERM to all, each its grace, then
        SIGKILL) and hand back the tail of each one's log, by name; their files go."""
        self._sampling.close()
        owned = {name: self._owned.pop(name) for name in names if name in self._owned}
        terminate_all([o.child for o in owned.values()])  # their graces overlap
        return await asyncio.to_thread(self._reap, owned)

    def _reap(self, owned: Mapping[str, _Owned]) -> dict[str, str]:
        tails = {}
        for name, o in owned.items():
            o.stack.close()
            log, tails[name] = o.folder / f"{name}.log", ""
            if log.exists():
                with log.open("rb") as f:
                    f.seek(max(0, log.stat().st_size - LOG_BYTES))
                    tails[name] = f.read().decode(errors="replace")
            shutil.rmtree(o.folder, ignore_errors=True)
        if not self._owned:
            shutil.rmtree(self._dir, ignore_errors=True)
        return tails
