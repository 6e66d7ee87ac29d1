"""What runs on a cluster node: a Ray actor that owns ONE lab process, a worker instance or a
mock service, and starts, watches, samples and stops it for the driver.

Why an actor owns a worker process instead of running the worker loop itself: the process is
then exactly the one a local trial runs (same module, flags, uvloop and GIL to itself), so the
figures of the two placements compare; a Ray worker process carries Ray's own threads (gRPC,
the object store client, the actor's event loop), which would share the GIL and the loop with
the job slots and show up as the runtime's overhead; the runtime never imports Ray; and the
process asks the kernel to stop it when its actor dies (`lab.infra.procs`), so a lost actor or
node takes its worker along. The cost is one more process per instance (its Ray worker, about
80 MB of private memory).

The actor is asynchronous: its methods run on one event loop thread for its whole life, which
is the thread that forks the child (the parent-death signal follows the forking thread), and a
watch call (`wait_exit`) can wait while other calls come in.
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
from pathlib import Path
from typing import Any

import ray
import redis

from lab.errors import ServiceError
from lab.infra.files import atomic_write
from lab.infra.procs import Child, env_with_pythonpath, python_module_argv, spawn
from lab.infra.sockets import listening_socket, served_argv, url_of
from lab.sweep.clocks import ClockOffset, measure_offset
from lab.sweep.resources import ResourceSampler, Usage

#: The most of a component's log the driver brings home (its tail).
LOG_BYTES = 256 * 1024

#: How often a watch looks at its process.
WATCH_S = 0.1


def node_facts() -> dict[str, Any]:
    """This node as the driver records it."""
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count() or 1,
    }


class ComponentActor:
    """One lab process on this node. Made remote by `lab.sweep.ray_placement`."""

    def __init__(self, name: str, role: str) -> None:
        self.name, self.role = name, role
        self._dir = Path(tempfile.mkdtemp(prefix=f"lab-{name}-"))
        self._log = self._dir / f"{name}.log"
        self._stack = contextlib.ExitStack()
        self._child: Child | None = None
        self._ready: Path | None = None
        self._sampling = contextlib.ExitStack()
        self._sampler: ResourceSampler | None = None

    async def describe(self) -> dict[str, Any]:
        """Its node, and the pids of the actor and of its process."""
        pid = self._child.pid if self._child else None
        return {**node_facts(), "actor_pid": os.getpid(), "pid": pid}

    async def start_mock(self, kind: str, spec_json: str, env: Mapping[str, str]) -> str:
        """Start the mock serving `spec_json` on a socket bound to this node's address, with
        `env` (its control token) added to its environment; returns its URL at once."""
        from lab.sweep.placement import mock_args  # heavy (the mocks' spec): mocks only

        ip = ray.util.get_node_ip_address()
        self._ready = self._dir / "ready.json"
        spec_file = self._dir / "spec.json"
        atomic_write(spec_file, spec_json)
        with listening_socket(ip) as sock:
            argv = served_argv("lab.mocks", mock_args(kind, spec_file), sock, self._ready)
            if not ipaddress.ip_address(ip).is_loopback:
                argv.append("--allow-network")  # workers on other nodes must reach it
            self._spawn(argv, env, pass_fds=(sock.fileno(),), grace_s=5.0)
            return url_of(sock)

    async def start_worker(
        self, args: Sequence[str], grace_s: float, env: Mapping[str, str]
    ) -> int:
        """Start `python -m lab.runtime.worker ARGS` with `env` (the broker's URL) added to its
        environment; returns its pid."""
        return self._spawn(python_module_argv("lab.runtime.worker", *args), env, grace_s=grace_s)

    def _spawn(
        self,
        argv: list[str],
        env: Mapping[str, str],
        *,
        pass_fds: tuple[int, ...] = (),
        grace_s: float,
    ) -> int:
        self._child = self._stack.enter_context(
            spawn(
                argv,
                name=self.name,
                log_path=self._log,
                env={**env_with_pythonpath(), **env},
                pass_fds=pass_fds,
                grace_s=grace_s,
            )
        )
        return self._child.pid

    def _check(self) -> Child:
        if self._child is None:
            raise ServiceError(f"{self.name}: nothing started")
        if not self._child.alive():
            raise ServiceError(
                f"{self.name} on {socket.gethostname()} {self._child.exit_description()}: "
                f"{self._child.last_words()}"
            )
        return self._child

    async def wait_ready(self, timeout_s: float) -> None:
        """Until the mock wrote its ready file (ServiceError if it died or took too long)."""
        deadline = time.monotonic() + timeout_s
        while self._ready is not None and not self._ready.exists():
            self._check()
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name} was not up after {timeout_s:.0f}s")
            await asyncio.sleep(0.01)

    async def wait_exit(self) -> tuple[str, str]:
        """Until the process exits: how it ended and its last words (the driver's watch)."""
        child = self._child
        # polled, not waited on in a thread: `stop` must stay the only one to reap the child
        while child is not None and child.alive():  # noqa: ASYNC110
            await asyncio.sleep(WATCH_S)
        if child is None:
            return "was never started", ""
        return child.exit_description(), child.last_words()

    async def clock(self, broker_url: str) -> ClockOffset:
        """This node's clock against the broker's (the trial's reference clock)."""
        with redis.Redis.from_url(broker_url, socket_connect_timeout=5, socket_timeout=5) as c:
            return measure_offset(c)

    async def start_sampling(self) -> None:
        """CPU and RSS of the process and of this actor itself (role "ray"), sampled here."""
        child = self._check()
        self._sampler = ResourceSampler(
            {self.name: (self.role, child.pid), f"ray-{self.name}": ("ray", os.getpid())}
        )
        self._sampling.enter_context(self._sampler.running())

    async def stop_sampling(self) -> dict[str, Usage]:
        self._sampling.close()
        return dict(self._sampler.usage) if self._sampler else {}

    async def signal(self, signum: int) -> None:
        """Send the process a signal (faults: kill, stall, resume); the actor stays."""
        if self._child is not None:
            self._child.signal(signum)

    async def stop(self) -> str:
        """Stop the process gracefully (SIGTERM, its grace, then SIGKILL) and hand back the tail
        of its log; the actor's own files go."""
        self._sampling.close()
        await asyncio.to_thread(self._stack.close)
        text = ""
        if self._log.exists():
            with self._log.open("rb") as f:
                f.seek(max(0, self._log.stat().st_size - LOG_BYTES))
                text = f.read().decode(errors="replace")
        shutil.rmtree(self._dir, ignore_errors=True)
        return text
