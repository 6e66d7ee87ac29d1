"""`python -m lab.bench runtime`: how fast one worker instance drains a queue, and at what CPU cost.

Method (the same as `python -m lab.bench peers`, which sets the lab beside a bare event loop;
this one uses the lab's own job handlers and counts finished jobs by the queue's `done`):
1. A private redis-server (loopback TCP by default, like the peers'), the queue purged.
2. The whole backlog enqueued BEFORE the worker starts (not timed).
3. One worker process started; the harness polls the queue's `done` counter every 5 ms and
   samples the worker's CPU time at 10 % and 90 % of the jobs.
4. steady jobs/s = jobs done between the 10 % and 90 % samples / the time between them;
   CPU µs per job over the same window. Start-up and the tail are left out.

Scenarios:
- noop: 20,000 no-op jobs at num_workers 1, 10, 100.
- io: each job makes one GET to a bare loopback server that answers after 50 ms, at num_workers
  10, 50, 200; efficiency = steady jobs/s / (num_workers / 0.050 s), the Little's-law bound.
- wide: total concurrency 1,000 as 10 instances x 100 slots, 1 s responses (bound 1,000 jobs/s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from lab.bench.harness import cpu_seconds, sleep_server
from lab.infra.broker import BROKER_URL_ENV, start_broker
from lab.infra.procs import Child, python_module_argv, spawn
from lab.runtime.queue import Queue


@dataclass
class Measurement:
    scenario: str
    prefetch: int
    instances: int
    num_workers: int
    jobs: int
    steady_jobs_per_s: float
    total_s: float
    worker_cpu_us_per_job: float
    bound_jobs_per_s: float | None
    efficiency: float | None


def measure(
    broker_url: str,
    *,
    scenario: str,
    jobs: int,
    num_workers: int,
    instances: int = 1,
    job: str = "noop",
    args: Mapping[str, object] | None = None,
    service_s: float | None = None,
    loop: str = "uvloop",
    prefetch: int = 0,
    services: Mapping[str, str] | None = None,
) -> Measurement:
    """Enqueue `jobs`, start the instances, return the steady rate and CPU cost."""
    client = redis.Redis.from_url(broker_url)
    queue = Queue(client, "bench")
    queue.purge()
    queue.enqueue_many(job, (dict(args or {}) for _ in range(jobs)))
    argv = [
        "--queue",
        "bench",
        "--num-workers",
        str(num_workers),
        "--job",
        job,
        "--loop",
        loop,
        "--prefetch",
        str(prefetch),
    ]
    for name, url in (services or {}).items():
        argv += ["--service", f"{name}={url}"]
    env = {**os.environ, BROKER_URL_ENV: broker_url}  # a password never goes on argv
    with contextlib.ExitStack() as stack:
        t_start = time.monotonic()
        children: list[Child] = [
            stack.enter_context(
                spawn(
                    python_module_argv("lab.runtime.worker", *argv, "--instance-id", f"bench-{i}"),
                    name=f"worker-{i}",
                    env=env,
                )
            )
            for i in range(instances)
        ]
        pids = [c.pid for c in children]
        marks: dict[float, tuple[float, float, int]] = {}
        deadline = t_start + 300
        while True:
            done = queue.stats().get("done", 0)
            now = time.monotonic()
            for frac in (0.1, 0.9):
                if frac not in marks and done >= frac * jobs:
                    marks[frac] = (now, sum(cpu_seconds(pid) for pid in pids), done)
            if done >= jobs or now > deadline:
                break
            for c in children:
                if not c.alive():
                    raise RuntimeError(f"{c.name} died: {c.log_tail()}")
            time.sleep(0.005)
        total_s = time.monotonic() - t_start
    client.close()
    (t10, cpu10, n10), (t90, cpu90, n90) = marks[0.1], marks[0.9]
    rate = (n90 - n10) / (t90 - t10)
    bound = instances * num_workers / service_s if service_s else None
    return Measurement(
        scenario=scenario,
        prefetch=prefetch,
        instances=instances,
        num_workers=num_workers,
        jobs=jobs,
        steady_jobs_per_s=round(rate, 1),
        total_s=round(total_s, 3),
        worker_cpu_us_per_job=round((cpu90 - cpu10) / (n90 - n10) * 1e6, 1),
        bound_jobs_per_s=bound,
        efficiency=round(rate / bound, 3) if bound else None,
    )


def run_benchmark(
    *, scenarios: list[str], transport: str, repeats: int, loop: str, prefetch: int = 0
) -> list[Measurement]:
    out: list[Measurement] = []
    with start_broker(transport=transport) as broker, tempfile.TemporaryDirectory() as tmp:
        url: str | None = None
        with contextlib.ExitStack() as stack:
            if {"io", "wide"} & set(scenarios):
                url, _ = stack.enter_context(sleep_server(Path(tmp)))
            for _ in range(repeats):
                if "noop" in scenarios:
                    for c in (1, 10, 100):
                        out.append(
                            measure(
                                broker.url,
                                scenario="noop",
                                jobs=20_000,
                                num_workers=c,
                                loop=loop,
                                prefetch=prefetch,
                            )
                        )
                        _print(out[-1])
                sleep = {"sleep": url} if url else {}
                if "io" in scenarios:
                    args = {"service": "sleep", "path": "/sleep?ms=50", "method": "GET"}
                    for c in (10, 50, 200):
                        m = measure(
                            broker.url, scenario="io-50ms", jobs=max(1000, 40 * c), num_workers=c,
                            job="http.call", args=args, service_s=0.050, loop=loop, prefetch=prefetch,
                            services=sleep,
                        )  # fmt: skip
                        out.append(m)
                        _print(m)
                if "wide" in scenarios:
                    args = {"service": "sleep", "path": "/sleep?ms=1000", "method": "GET"}
                    m = measure(
                        broker.url, scenario="io-1s", jobs=8000, num_workers=100, instances=10,
                        job="http.call", args=args, service_s=1.0, loop=loop, prefetch=prefetch,
                        services=sleep,
                    )  # fmt: skip
                    out.append(m)
                    _print(m)
    return out


def _print(m: Measurement) -> None:
    eff = f"{m.efficiency:5.2f}" if m.efficiency is not None else "    -"
    print(
        f"{m.scenario:8s} pf{m.prefetch} {m.instances:3d} x {m.num_workers:4d} slots  {m.steady_jobs_per_s:9.0f} jobs/s  "
        f"eff {eff}  cpu {m.worker_cpu_us_per_job:6.0f} µs/job  ({m.jobs} jobs, {m.total_s:.2f}s)",
        flush=True,
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lab.bench runtime", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--scenario", action="append", choices=["noop", "io", "wide"], help="default: all"
    )
    p.add_argument(
        "--transport", choices=["tcp", "unix"], default="tcp", help="broker socket (peers used tcp)"
    )
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--prefetch", type=int, default=0, help="the worker's --prefetch")
    p.add_argument("--json", type=Path, help="also write the measurements here")
    ns = p.parse_args(argv)
    results = run_benchmark(
        scenarios=ns.scenario or ["noop", "io", "wide"],
        transport=ns.transport,
        repeats=ns.repeats,
        loop=ns.loop,
        prefetch=ns.prefetch,
    )
    if ns.json:
        ns.json.write_text(json.dumps([asdict(m) for m in results], indent=2, sort_keys=True))
    return 0
