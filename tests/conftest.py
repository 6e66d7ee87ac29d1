"""Shared fixtures: the lab's own embedded Redis, a fresh queue per test, real worker processes."""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from lab.infra.broker import Broker, start_broker
from lab.infra.procs import Child, env_with_pythonpath, python_module_argv, spawn, wait_for
from lab.runtime.queue import Queue


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """One private redis-server for the whole session; checked gone at the end."""
    with start_broker() as b:
        assert b.child is not None
        pid = b.child.pid
        yield b
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.fixture
def queue(broker: Broker) -> Iterator[Queue]:
    """A queue with a name of its own, so tests never see each other's jobs."""
    client = broker.client()
    q = Queue(client, f"t-{uuid.uuid4().hex[:8]}")
    yield q
    q.purge()
    client.close()


StartWorker = Callable[..., Child]


@pytest.fixture
def start_worker(broker: Broker, queue: Queue, tmp_path: Path) -> Iterator[StartWorker]:
    """Start real worker processes on `queue`; each is ready (heartbeat seen) when returned."""
    numbers = itertools.count(1)
    with contextlib.ExitStack() as stack:

        def _start(
            *args: str,
            num_workers: int = 4,
            instance_id: str | None = None,
            env: dict[str, str] | None = None,
        ) -> Child:
            iid = instance_id or f"w{next(numbers)}"
            argv = python_module_argv(
                "lab.runtime.worker", "--queue", queue.name,
                "--num-workers", str(num_workers), "--instance-id", iid, *args,
            )  # fmt: skip
            # the URL holds the broker's password: the environment, never argv
            full_env = broker.child_env(env_with_pythonpath() | (env or {}))
            child = stack.enter_context(
                spawn(argv, name=iid, log_path=tmp_path / f"{iid}.log", env=full_env)
            )
            wait_for(
                lambda: iid in queue.live_instances(),
                what=f"worker {iid} to be ready",
                timeout_s=30,
                children=[child],
            )
            return child

        yield _start


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
