"""What the runtime benchmarks (`runtime`, `peers`) share: the sleep server, CPU time of a process."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import psutil

from lab.infra.procs import env_with_pythonpath, python_module_argv, spawn, wait_for


@contextlib.contextmanager
def sleep_server(workdir: Path) -> Iterator[tuple[str, int]]:
    """`lab.bench.sleep_server` as a child of ours; yields its URL and pid once it listens."""
    ready = workdir / "sleep-server.json"
    argv = python_module_argv("lab.bench.sleep_server", "--ready-file", str(ready))
    log_path = workdir / "sleep-server.log"
    with spawn(argv, name="sleep-server", log_path=log_path, env=env_with_pythonpath()) as child:
        wait_for(ready.exists, what="the sleep server", timeout_s=30, children=[child])
        yield str(json.loads(ready.read_text())["url"]), child.pid


def cpu_seconds(pid: int, *, tree: bool = False) -> float:
    """User + system CPU seconds of a process (NaN once it is gone); with `tree`, its live
    descendants and its reaped children too."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)] if tree else [root]
    except psutil.NoSuchProcess:
        return math.nan
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
            if tree:
                total += t.children_user + t.children_system
    return total
