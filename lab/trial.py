"""One trial: one point of the grid, measured once, from fresh state to collected figures.

1. fresh queue state; the scenario's mock services started, each in its own process;
2. `instances` worker processes started, ALL ready before the clock starts;
3. the work produced (a backlog, or open-loop arrivals) while CPU and RSS are sampled;
4. wait until drained (or the trial's timeout); stop the workers, then read the job events and
   the services' statistics; stop the services.
Every child process lives in a context manager: any exit from here stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.broker import Broker
from lab.errors import ServiceError
from lab.load.arrivals import ProducerReport, arrival_offsets, group_into_jobs, produce
from lab.metrics import bounds, job_figures
from lab.mocks.spec import spec_to_json
from lab.procs import Child, check_stop, python_module_argv, spawn, terminate_all, wait_for
from lab.resources import ResourceSampler, Usage, saturation
from lab.runtime.queue import JobEvent, Queue
from lab.scenario import Scenario

Progress = Callable[[int, int, float], None]  # (items done, items expected, seconds elapsed)


@dataclass(frozen=True)
class TrialPlan:
    """A grid point and a repeat; `index` is its place in the run's (shuffled) order."""

    index: int
    num_workers: int
    instances: int
    batch_size: int
    repeat: int

    @property
    def trial_id(self) -> str:
        return f"nw{self.num_workers}-in{self.instances}-bs{self.batch_size}-r{self.repeat}"

    @property
    def concurrency(self) -> int:
        return self.num_workers * self.instances


@dataclass(frozen=True)
class TrialOptions:
    """Harness settings that are not part of the scenario."""

    heartbeat_ttl_s: float = 3.0  # a killed instance's jobs return after this
    grace_s: float = 5.0
    kill_instance_after_s: float | None = None  # failure injection: SIGKILL instance 0
    on_progress: Progress | None = None


@dataclass
class TrialOutcome:
    row: dict[str, Any]  # one row of trials.csv
    events: list[JobEvent]
    services: dict[str, dict[str, Any]] = field(default_factory=dict)  # mock stats by name
    usage: dict[str, Usage] = field(default_factory=dict)


def _http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _start_mock(
    name: str, spec_json: str, logs: Path, stack: contextlib.ExitStack
) -> tuple[Child, str, Path]:
    """Spawn a mock on a listening socket bound here: its URL is known before it is up, so the
    workers can start at the same time (the kernel queues their first connections)."""
    ready = logs / f"mock-{name}.ready.json"
    ready.unlink(missing_ok=True)  # a resumed trial must not trust the last attempt's file
    kind = json.loads(spec_json)["kind"]
    with socket.create_server(("127.0.0.1", 0), backlog=1024) as sock:
        sock.set_inheritable(True)
        argv = python_module_argv(
            "lab.mocks", kind, "--spec-json", spec_json, "--ready-file", str(ready),
            "--listen-fd", str(sock.fileno()),
        )  # fmt: skip
        child = stack.enter_context(
            spawn(
                argv,
                name=f"mock {name}",
                log_path=logs / f"mock-{name}.log",
                pass_fds=[sock.fileno()],
            )
        )
        port = sock.getsockname()[1]
    return child, f"http://127.0.0.1:{port}", ready


def _prepare_services(scenario: Scenario, urls: dict[str, str], items: int) -> None:
    """Before the clock: documents in place for a delete workload, every counter at zero."""
    w = scenario.workload
    if w.job == "opensearch.delete":  # deletes act on documents that exist
        _http_json(
            f"{urls[w.service]}/_lab/seed",
            {"index": w.index, "ids": [str(i) for i in range(items)]},
        )
    for url in urls.values():
        _http_json(f"{url}/_lab/reset", {})


def _worker_argv(
    scenario: Scenario,
    plan: TrialPlan,
    broker: Broker,
    queue: str,
    urls: dict[str, str],
    i: int,
    options: TrialOptions,
) -> list[str]:
    w = scenario.workload
    argv = [
        "--broker", broker.url, "--queue", queue, "--num-workers", str(plan.num_workers),
        "--instance-id", f"{plan.trial_id}-i{i}", "--job", w.job,
        "--max-attempts", str(w.retry.max_attempts), "--backoff-ms", str(w.retry.backoff_ms),
        "--max-backoff-ms", str(w.retry.max_backoff_ms), "--jitter", w.retry.jitter,
        "--job-timeout-s", str(w.job_timeout_s), "--heartbeat-ttl-s", str(options.heartbeat_ttl_s),
        "--grace-s", str(options.grace_s), "--seed", str(scenario.seed * 1000 + plan.repeat * 10 + i),
    ]  # fmt: skip
    for name, url in urls.items():
        argv += ["--service", f"{name}={url}"]
    return python_module_argv("lab.runtime.worker", *argv)


def run_trial(
    scenario: Scenario,
    plan: TrialPlan,
    *,
    broker: Broker,
    workdir: Path,
    options: TrialOptions | None = None,
) -> TrialOutcome:
    """Run one trial and return its row, events and service statistics."""
    options = options or TrialOptions()
    w = scenario.workload
    logs = workdir / "logs" / plan.trial_id
    logs.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{scenario.seed}:{plan.repeat}")
    jobs = group_into_jobs(arrival_offsets(w.arrival, items=w.items, rng=rng), plan.batch_size)
    items_planned = sum(len(j.items) for j in jobs)
    with broker.client() as client, contextlib.ExitStack() as services:
        queue = Queue(client, f"trial-{plan.trial_id}-{secrets.token_hex(3)}")
        queue.purge()
        children: dict[str, tuple[str, Child]] = {}
        urls: dict[str, str] = {}
        mock_ready: list[Path] = []
        for name, spec in scenario.services.items():
            seeded = spec.model_copy(
                update={"seed": spec.seed + scenario.seed * 1000 + plan.repeat}
            )
            child, urls[name], ready = _start_mock(name, spec_to_json(seeded), logs, services)
            children[f"mock:{name}"] = ("mock", child)
            mock_ready.append(ready)
        with contextlib.ExitStack() as workers:
            for i in range(plan.instances):
                argv = _worker_argv(scenario, plan, broker, queue.name, urls, i, options)
                child = workers.enter_context(
                    spawn(
                        argv,
                        name=f"worker {i}",
                        log_path=logs / f"worker-{i}.log",
                        grace_s=options.grace_s + 5,
                    )
                )
                children[f"worker-{i}"] = ("worker", child)
            everyone = [c for _, c in children.values()]
            wait_for(
                lambda: all(p.exists() for p in mock_ready),
                what="the mock services",
                timeout_s=60,
                children=everyone,
            )
            _prepare_services(scenario, urls, items_planned)
            worker_children = [c for role, c in children.values() if role == "worker"]
            expected = {f"{plan.trial_id}-i{i}" for i in range(plan.instances)}
            wait_for(
                lambda: queue.live_instances() >= expected,
                what=f"{plan.instances} workers to be ready",
                timeout_s=60,
                children=everyone,
            )
            pids = {name: (role, c.pid) for name, (role, c) in children.items()}
            pids["producer"] = ("producer", os.getpid())
            if broker.child is not None:
                pids["redis"] = ("redis", broker.child.pid)
            base_args: dict[str, Any] = {"service": w.service, "index": w.index}
            if w.cpu_ms_per_item:
                base_args["cpu_ms_per_item"] = w.cpu_ms_per_item
            sampler = ResourceSampler(pids)
            with sampler.running():
                clock_start = time.time()
                report, timed_out = _produce_and_drain(
                    queue,
                    w.job,
                    jobs,
                    base_args,
                    clock_start,
                    scenario.sweep.trial_timeout_s,
                    worker_children,
                    options,
                    items_planned,
                )
                wall_s = time.time() - clock_start
            terminate_all(worker_children)  # graceful stops overlap; the stack reaps them
        # workers are stopped: every ack is written; the services are still up
        service_stats = {name: _http_json(f"{url}/_lab/stats") for name, url in urls.items()}
    events = queue.events()
    queue_stats = queue.stats()
    with broker.client() as client:
        Queue(client, queue.name).purge()
    row = _row(
        scenario,
        plan,
        events,
        service_stats,
        sampler.usage,
        report,
        clock_start=clock_start,
        wall_s=wall_s,
        timed_out=timed_out,
        recovered=queue_stats.get("recovered", 0),
    )
    return TrialOutcome(row=row, events=events, services=service_stats, usage=sampler.usage)


def _produce_and_drain(
    queue: Queue, job: str, jobs: list[Any], base_args: dict[str, Any], clock_start: float,
    timeout_s: float, workers: list[Child], options: TrialOptions, items_planned: int,
) -> tuple[ProducerReport, bool]:  # fmt: skip
    """Send the work in a thread, poll until drained or timed out; (producer report, timed out)."""
    stop = threading.Event()
    result: list[ProducerReport] = []
    producer = threading.Thread(
        target=lambda: result.append(
            produce(queue, job, jobs, base_args=base_args, clock_start=clock_start, stop=stop)
        ),
        name="producer",
        daemon=True,
    )
    producer.start()
    killed = False
    timed_out = False
    try:
        while True:
            elapsed = time.time() - clock_start
            if (
                options.kill_instance_after_s is not None
                and not killed
                and elapsed >= options.kill_instance_after_s
            ):
                workers[0].signal(signal.SIGKILL)
                killed = True
            stats = queue.stats()
            settled = stats.get("done", 0) + stats.get("dead", 0)
            if options.on_progress is not None:
                per_job = items_planned / max(1, len(jobs))
                options.on_progress(int(stats.get("done", 0) * per_job), items_planned, elapsed)
            if not producer.is_alive() and settled >= len(jobs) and queue.outstanding() == 0:
                break
            if elapsed > timeout_s:
                timed_out = True
                break
            for child in workers[1 if killed else 0 :]:
                if not child.alive():
                    raise ServiceError(f"{child.name} exited during the trial: {child.log_tail()}")
            check_stop()
            time.sleep(0.02)
    finally:
        stop.set()
        producer.join()
    return (result[0] if result else ProducerReport()), timed_out


def _service_accounting(job: str, stats: dict[str, Any], items: int) -> dict[str, Any]:
    """Lost and duplicated items as the target service saw them, where it can tell (by id)."""
    totals = stats.get("opensearch", {}).get("totals")
    if totals is None:
        return {"lost_items": None, "duplicate_items": None}
    if job == "opensearch.delete":
        # every id was seeded: a delete that ran twice finds nothing the second time
        return {"lost_items": items - totals["deletes"], "duplicate_items": totals["not_found"]}
    return {
        "lost_items": items - totals["unique_ids_written"],
        "duplicate_items": totals["duplicate_writes"],
    }


def _row(
    scenario: Scenario, plan: TrialPlan, events: list[JobEvent], services: dict[str, dict[str, Any]],
    usage: dict[str, Usage], report: ProducerReport, *, clock_start: float, wall_s: float,
    timed_out: bool, recovered: int,
) -> dict[str, Any]:  # fmt: skip
    w = scenario.workload
    target_spec = scenario.services[w.service]
    target = services[w.service]
    figures = job_figures(
        events,
        clock_start=clock_start,
        jobs_enqueued=report.jobs_sent,
        items_enqueued=report.items_sent,
    )
    rate_limit = target_spec.rate_limit.per_s if target_spec.rate_limit else None
    harness, machine, why = saturation(usage, cpu_count=os.cpu_count() or 1)
    by_role = {
        role: [u for u in usage.values() if u.role == role]
        for role in ("worker", "mock", "redis", "producer")
    }
    row: dict[str, Any] = {
        "trial_id": plan.trial_id,
        "order": plan.index,
        "num_workers": plan.num_workers,
        "instances": plan.instances,
        "batch_size": plan.batch_size,
        "repeat": plan.repeat,
        "concurrency": plan.concurrency,
        "started_at": clock_start,
        "wall_s": wall_s,
        "timed_out": timed_out,
        **figures,
        **bounds(
            figures,
            concurrency=plan.concurrency,
            capacity=target_spec.capacity,
            service_stats=target,
            rate_limit_per_s=rate_limit,
        ),
        **_service_accounting(w.job, target, report.items_sent),
        "recovered_jobs": recovered,
        "service_requests": target.get("requests", 0),
        "service_rejected": target.get("rejected", 0),
        "service_errors": target.get("errors", 0),
        "service_max_in_flight": target.get("max", {}).get("in_flight", 0),
        "service_max_queue_depth": target.get("max", {}).get("queue_depth", 0),
        "producer_max_lag_s": report.max_lag_s,
        "workers_cores": sum(u.cores for u in by_role["worker"]),
        "worker_peak_cores": max((u.peak_cores for u in by_role["worker"]), default=0.0),
        "worker_rss_max_mb": max((u.rss_max_mb for u in by_role["worker"]), default=0.0),
        "mock_cores": max((u.cores for u in by_role["mock"]), default=0.0),
        "redis_cores": sum(u.cores for u in by_role["redis"]),
        "producer_cores": sum(u.cores for u in by_role["producer"]),
        "harness_saturated": harness,
        "machine_saturated": machine,
        "saturation_reason": why,
    }
    return row
