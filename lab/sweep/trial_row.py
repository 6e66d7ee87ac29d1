"""A trial's figures, computed from its job events and its services' statistics.

One percentile function and one list of percentiles for the whole package. Throughput is in
ITEMS per second (entities, so batch sizes compare fairly), with jobs/s beside it. Latency is per
job, from its enqueue time (for open-loop arrivals: the scheduled arrival of its first item) to
the end of its successful attempt, so retries and queueing both count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lab.analysis.attribution import (
    Context,
    service_columns,
    steady_items_per_s,
    too_short,
    trial_bottleneck,
)
from lab.mocks.spec import ServiceSpec
from lab.producers.arrivals import ProducerReport
from lab.runtime.jobs import job_type
from lab.runtime.queue import DEAD, OK, RETRY, JobEvent
from lab.runtime.telemetry import runtime_figures
from lab.runtime.worker import TIMEOUT_ERROR
from lab.scenario.spec import Scenario
from lab.sweep import external
from lab.sweep.resources import Usage, saturation

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (linear interpolation), NaN for no values."""
    if len(values) == 0:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=float), q))


def summary_ms(name: str, seconds: Iterable[float]) -> dict[str, float]:
    """`{name}_p50_ms, ..._p90_ms, ..._p99_ms, ..._max_ms, ..._mean_ms` from durations in seconds."""
    values = np.fromiter(seconds, dtype=float) * 1000
    out = {f"{name}_p{q}_ms": percentile(values, q) for q in PERCENTILES}
    out[f"{name}_max_ms"] = float(values.max()) if len(values) else math.nan
    out[f"{name}_mean_ms"] = float(values.mean()) if len(values) else math.nan
    return out


def job_figures(
    events: Sequence[JobEvent], *, clock_start: float, jobs_enqueued: int, items_enqueued: int
) -> dict[str, Any]:
    """Throughput, latency, errors and delivery accounting of one trial, from its job events."""
    first_ok: dict[str, JobEvent] = {}
    first_start: dict[str, float] = {}
    ok_events = retries = 0
    dead_ids: set[str] = set()
    for e in events:
        first_start[e.job_id] = min(first_start.get(e.job_id, e.started_at), e.started_at)
        if e.outcome == OK:
            ok_events += 1
            if e.job_id not in first_ok or e.finished_at < first_ok[e.job_id].finished_at:
                first_ok[e.job_id] = e
        elif e.outcome == RETRY:
            retries += 1
        elif e.outcome == DEAD:
            dead_ids.add(e.job_id)
    done = list(first_ok.values())
    finished = [e.finished_at for e in events if e.outcome in (OK, DEAD)]
    makespan_s = (max(finished) - clock_start) if finished else math.nan
    items_done = sum(e.items for e in done)
    dead_only = dead_ids - set(first_ok)
    settled = len(first_ok) + len(dead_only)
    figures: dict[str, Any] = {
        "jobs_enqueued": jobs_enqueued,
        "items_enqueued": items_enqueued,
        "jobs_done": len(done),
        "items_done": items_done,
        "makespan_s": makespan_s,
        "items_per_s": items_done / makespan_s if makespan_s > 0 else math.nan,
        "jobs_per_s": len(done) / makespan_s if makespan_s > 0 else math.nan,
        "steady_items_per_s": steady_items_per_s(
            [e.finished_at for e in done], [e.items for e in done]
        ),
        "too_short": too_short([e.finished_at for e in done], [e.items for e in done]),
        "attempts": len(events),
        "retries": retries,
        "timeouts": sum(1 for e in events if (e.error or "").startswith(TIMEOUT_ERROR)),
        "dead_letters": len(dead_only),
        "duplicate_jobs": ok_events - len(first_ok),
        "unfinished_jobs": jobs_enqueued - settled,
        "error_rate": (len(dead_only) + max(0, jobs_enqueued - settled)) / jobs_enqueued
        if jobs_enqueued
        else 0.0,
        "retry_rate": retries / len(events) if events else 0.0,
        "not_found": sum(
            int((e.extra or {}).get("not_found", 0)) for e in events if e.outcome == OK
        ),
    }
    figures |= summary_ms("latency", (e.finished_at - e.enqueued_at for e in done))
    figures |= summary_ms("queue_wait", (first_start[e.job_id] - e.enqueued_at for e in done))
    figures |= summary_ms("service", (e.finished_at - e.started_at for e in done))
    return figures


def bounds(
    figures: Mapping[str, Any],
    *,
    concurrency: float,
    capacity: int | None,
    service_stats: Mapping[str, Any] | None,
    rate_limit_per_s: float | None,
) -> dict[str, float]:
    """The ceilings this trial ran under, in items/s, and how close it came to the tighter one.

    - Little's law: `concurrency` jobs in flight, each taking the mean measured service time.
    - The service's capacity: `capacity` requests at once, each taking the mock's mean service
      time (its own work, not its queue), times the items a request carried; and its rate limit.
    """
    items_per_job = (
        figures["items_done"] / figures["jobs_done"] if figures["jobs_done"] else math.nan
    )
    mean_service_s = figures["service_mean_ms"] / 1000
    littles = concurrency * items_per_job / mean_service_s if mean_service_s > 0 else math.nan
    capacity_bound = math.nan
    if service_stats and capacity:
        samples = service_stats.get("samples", {}).get("service_ms", [])
        served = service_stats.get("served", 0)
        mean_s = float(np.mean(samples)) / 1000 if samples else 0.0
        if mean_s > 0 and served:  # a service of constant 0 ms has no capacity bound
            items_per_request = service_stats.get("served_items", served) / served
            capacity_bound = capacity * items_per_request / mean_s
            if rate_limit_per_s:
                capacity_bound = min(capacity_bound, rate_limit_per_s * items_per_request)
    candidates = [b for b in (littles, capacity_bound) if not math.isnan(b)]
    tighter = min(candidates) if candidates else math.nan
    achieved = figures["items_per_s"]
    return {
        "littles_bound_items_per_s": littles,
        "capacity_bound_items_per_s": capacity_bound,
        "bound_items_per_s": tighter,
        "bound_ratio": achieved / tighter if tighter and not math.isnan(tighter) else math.nan,
    }


def _service_accounting(job: str, stats: Mapping[str, Any], items: int) -> dict[str, Any]:
    """Lost and duplicated items as the target service saw them, where it can tell (by id)."""
    totals = stats.get("opensearch", {}).get("totals")
    ledger = job_type(job).ledger
    if totals is None or ledger is None:
        return {"lost_items": None, "duplicate_items": None}
    if ledger == "deletes":
        # every id was seeded: a delete that ran twice finds nothing the second time
        return {"lost_items": items - totals["deletes"], "duplicate_items": totals["not_found"]}
    return {
        "lost_items": items - totals["unique_ids_written"],
        "duplicate_items": totals["duplicate_writes"],
    }


def trial_row(
    config: Mapping[str, Any], scenario: Scenario, events: Sequence[JobEvent],
    services: Mapping[str, Mapping[str, Any]], usage: Mapping[str, Usage], report: ProducerReport,
    *, clock_start: float, wall_s: float, timed_out: bool, failure: str | None, recovered: int,
    faults: Mapping[str, Any], web: Mapping[str, float], cost: Mapping[str, float],
    runtime: Sequence[Mapping[str, Any]] = (), stop_reason: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One row of trials.csv (lab.results.TRIAL_COLUMNS, in that order).

    `config` holds the trial's identity (trial_id, order, num_workers, instances, batch_size,
    placement, repeat, concurrency, length_x); `failure` why the work could not finish (None
    when it did); `faults` the fault columns (lab.sweep.faults); `web` the Locust figures (NaN
    without web traffic); `runtime` the worker instances' records of their own cost
    (`lab.runtime.telemetry`); `cost` the dynamic configuration's columns
    (`lab.sweep.dynamics.record`); `stop_reason` why a stop rule ended the trial early (its
    unfinished jobs are then not errors: they were cut, not failed).
    """
    w = scenario.workload
    target_spec = scenario.services[w.service]
    target = services[w.service]
    mock = target_spec if isinstance(target_spec, ServiceSpec) else None  # None: a real service
    figures = job_figures(
        events,
        clock_start=clock_start,
        jobs_enqueued=report.jobs_sent,
        items_enqueued=report.items_sent,
    )
    rate_limit = mock.rate_limit.per_s if mock and mock.rate_limit else None
    harness, machine, why = saturation(usage, cpu_count=os.cpu_count() or 1)
    by_role = {
        role: [u for u in usage.values() if u.role == role]
        for role in ("worker", "mock", "redis", "producer", "web", "locust")
    }
    row: dict[str, Any] = {
        **config,
        "started_at": clock_start,
        "wall_s": wall_s,
        "timed_out": timed_out,
        "failed": failure is not None,
        "failure_reason": failure or "",
        "stopped_early": stop_reason is not None,
        "stop_reason": stop_reason or "",
        **figures,
        **bounds(
            figures,
            concurrency=config["concurrency"] or cost["slots_mean"],  # dynamic: the mean slots
            capacity=mock.capacity if mock else None,
            service_stats=target,
            rate_limit_per_s=rate_limit,
        ),
        **_service_accounting(w.job, target, report.items_sent),
        "recovered_jobs": recovered,
        **faults,
        "service_requests": target.get("requests", 0),
        "service_rejected": target.get("rejected", 0),
        "service_errors": target.get("errors", 0),
        "service_max_in_flight": target.get("max", {}).get("in_flight", 0),
        "service_max_queue_depth": target.get("max", {}).get("queue_depth", 0),
        **service_columns(target, mock, figures["makespan_s"]),
        "producer_max_lag_s": report.max_lag_s,
        **cost,
        "workers_cores": sum(u.cores for u in by_role["worker"]),
        "worker_peak_cores": max((u.peak_cores for u in by_role["worker"]), default=0.0),
        "worker_steady_cores": max((u.steady_cores for u in by_role["worker"]), default=0.0),
        "worker_cpu_demand": max((u.steady_demand for u in by_role["worker"]), default=0.0),
        "worker_rss_max_mb": max((u.rss_max_mb for u in by_role["worker"]), default=0.0),
        **runtime_figures(runtime),
        "mock_cores": max((u.cores for u in by_role["mock"]), default=0.0),
        "redis_cores": sum(u.cores for u in by_role["redis"]),
        "producer_cores": sum(u.cores for u in by_role["producer"]),
        "web_cores": sum(u.cores for u in by_role["web"]),
        "locust_cores": sum(u.cores for u in by_role["locust"]),
        **web,
        "harness_saturated": harness,
        "machine_saturated": machine,
        "saturation_reason": why,
    }
    if stop_reason is not None and report.jobs_sent:
        row["error_rate"] = figures["dead_letters"] / report.jobs_sent
    if mock is None:
        row.update(external.row_columns(w.job, target, report.items_sent))
    row["bottleneck"] = trial_bottleneck(row, Context.of(scenario, os.cpu_count()), events)
    return row
