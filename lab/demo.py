"""`python -m lab.demo`: the Loco story in half a minute, on the real runtime and a mock OpenSearch.

The same 400 entities are indexed into a mock OpenSearch (8 write threads, lognormal latency,
median 15 ms) three ways: Loco's old default (one job at a time, one document per job), more
slots per instance, and bulk batches. Each run is a private Redis, one mock process and real
worker processes; the figures are measured, not computed. `python -m lab.sweep` (the lab's main
job, see the README) explores the whole grid and recommends a configuration.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from lab.broker import start_broker
from lab.errors import LabError
from lab.procs import Child, python_module_argv, spawn, stop_on_signals, wait_for
from lab.runtime.queue import OK, Queue

ENTITIES = 400
MOCK_FLAGS = [
    "--capacity",
    "8",
    "--queue",
    "200",
    "--latency",
    "lognormal:median_ms=15,p99_ms=60",
    "--per-item-ms",
    "0.3",
]


@dataclass(frozen=True)
class DemoRun:
    label: str
    instances: int
    num_workers: int
    batch_size: int
    job: str


RUNS = [
    DemoRun("Loco default: 1 slot, 1 doc per job", 1, 1, 1, "opensearch.index"),
    DemoRun("16 slots, 1 doc per job", 1, 16, 1, "opensearch.index"),
    DemoRun("2 instances x 4 slots, bulk of 50", 2, 4, 50, "opensearch.bulk"),
]


def _drain(broker_url: str, search_url: str, run: DemoRun, workdir: Path) -> str:
    with redis.Redis.from_url(broker_url) as client:
        queue = Queue(client, f"demo-{run.num_workers}-{run.batch_size}")
        return _drain_queue(queue, broker_url, search_url, run, workdir)


def _drain_queue(
    queue: Queue, broker_url: str, search_url: str, run: DemoRun, workdir: Path
) -> str:
    queue.purge()
    with contextlib.ExitStack() as stack:
        workers: list[Child] = []
        for i in range(run.instances):
            argv = python_module_argv(
                "lab.runtime.worker", "--broker", broker_url, "--queue", queue.name,
                "--num-workers", str(run.num_workers), "--service", f"search={search_url}",
                "--job", run.job, "--instance-id", f"demo-{i}",
            )  # fmt: skip
            workers.append(
                stack.enter_context(
                    spawn(argv, name=f"worker-{i}", log_path=workdir / f"worker-{i}.log")
                )
            )
        wait_for(
            lambda: len(queue.live_instances()) == run.instances,
            what="the workers",
            timeout_s=30,
            children=workers,
        )
        start = time.monotonic()
        ids = list(range(ENTITIES))
        batches = [ids[i : i + run.batch_size] for i in range(0, ENTITIES, run.batch_size)]
        queue.enqueue_many(
            run.job, ({"service": "search", "index": "entities", "items": b} for b in batches)
        )
        wait_for(
            lambda: queue.outstanding() == 0,
            what="the backlog to drain",
            timeout_s=300,
            children=workers,
        )
        makespan_s = time.monotonic() - start
    latencies = sorted(e.latency_s for e in queue.events() if e.outcome == OK)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    queue.purge()
    return (
        f"{run.label:40s} {ENTITIES / makespan_s:8.0f} items/s   makespan {makespan_s:6.2f} s   "
        f"job latency p50 {statistics.median(latencies) * 1000:6.0f} ms  p99 {p99 * 1000:6.0f} ms"
    )


def run_demo() -> list[str]:
    """Run the three configurations; returns one line of figures per configuration."""
    lines = []
    with tempfile.TemporaryDirectory(prefix="lab-demo-") as tmp, start_broker() as broker:
        workdir = Path(tmp)
        ready = workdir / "search.json"
        argv = python_module_argv(
            "lab.mocks", "opensearch", "--ready-file", str(ready), *MOCK_FLAGS
        )
        with spawn(argv, name="mock opensearch", log_path=workdir / "mock.log") as mock:
            wait_for(ready.exists, what="the mock OpenSearch", timeout_s=30, children=[mock])
            search_url = json.loads(ready.read_text())["url"]
            for run in RUNS:
                lines.append(_drain(broker.url, search_url, run, workdir))
                print(lines[-1], flush=True)
    return lines


def main() -> int:
    print(
        f"Indexing {ENTITIES} entities into a mock OpenSearch (8 write threads, median 15 ms):",
        flush=True,
    )
    try:
        with stop_on_signals():
            run_demo()
    except LabError as exc:
        print(f"lab.demo: {exc}", file=sys.stderr)
        return exc.exit_code
    print("\nNext: python -m lab.bench runtime   (how fast the runtime itself is)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
