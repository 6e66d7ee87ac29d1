"""Backlog and open-loop arrivals: when each item arrives, how items group into jobs, and sending.

Open loop: arrivals follow the schedule whatever the workers do, and each job is stamped with the
SCHEDULED arrival of its first item. A slow system (or a late producer) therefore shows its
queueing in the latency instead of slowing the arrivals down (no coordinated omission). A
backlog is scheduled at the clock start, so its latency includes the time to enqueue it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lab.runtime.queue import Queue
from lab.scenario.spec import Backlog, Bursts, LocustArrival, Poisson, Ramp, Step

ArrivalSpec = Backlog | Poisson | Ramp | Step | Bursts | LocustArrival


@dataclass(frozen=True)
class Job:
    """One job to send: its items, and the offsets (seconds after the clock starts) of its first
    item's arrival (its latency counts from there) and of its last (when it can be sent)."""

    items: list[int]
    arrive_s: float
    send_s: float


def arrival_offsets(arrival: ArrivalSpec, *, items: int | None, rng: random.Random) -> list[float]:
    """Arrival time of every item, in seconds after the clock starts."""
    if isinstance(arrival, Backlog):
        if items is None:
            raise ValueError("a backlog needs a number of items")
        return [0.0] * items
    if isinstance(arrival, LocustArrival):
        raise ValueError("Locust arrivals follow its users, not a schedule")
    return _poisson(
        lambda t: rate_at(arrival, t), _max_rate(arrival), expected_duration_s(arrival), rng
    )


def rate_at(arrival: ArrivalSpec, t_s: float) -> float:
    """The planned mean arrival rate at `t_s` seconds after the clock start, in items/s."""
    if isinstance(arrival, Poisson):
        return arrival.rate_per_s
    if isinstance(arrival, Ramp):
        lo, hi = arrival.from_per_s, arrival.to_per_s
        return lo + (hi - lo) * t_s / arrival.duration_s
    if isinstance(arrival, Step):
        end = 0.0
        for phase in arrival.steps:
            end += phase.duration_s
            if t_s < end:
                return phase.rate_per_s
        return arrival.steps[-1].rate_per_s
    if isinstance(arrival, Bursts):
        return arrival.burst_per_s if arrival.in_burst(t_s) else arrival.base_per_s
    raise ValueError(f"arrival kind {arrival.kind} has no planned rate")


def _max_rate(arrival: ArrivalSpec) -> float:
    if isinstance(arrival, Poisson):
        return arrival.rate_per_s
    if isinstance(arrival, Ramp):
        return max(arrival.from_per_s, arrival.to_per_s)
    if isinstance(arrival, Step):
        return max(p.rate_per_s for p in arrival.steps)
    assert isinstance(arrival, Bursts)
    return max(arrival.base_per_s, arrival.burst_per_s)


def _poisson(
    rate_at: Callable[[float], float], max_rate: float, duration_s: float, rng: random.Random
) -> list[float]:
    """A Poisson process of rate `rate_at(t)` on [0, duration_s), by thinning (Lewis-Shedler)."""
    out: list[float] = []
    if max_rate <= 0:
        return out
    t = 0.0
    while True:
        t += rng.expovariate(max_rate)
        if t >= duration_s:
            return out
        if rng.random() * max_rate <= rate_at(t):
            out.append(t)


def group_into_jobs(offsets: list[float], batch_size: int) -> list[Job]:
    """Consecutive arrivals grouped `batch_size` at a time; item ids are their arrival order."""
    jobs = []
    for start in range(0, len(offsets), batch_size):
        chunk = offsets[start : start + batch_size]
        jobs.append(Job(list(range(start, start + len(chunk))), chunk[0], chunk[-1]))
    return jobs


@dataclass
class ProducerReport:
    jobs_sent: int = 0
    items_sent: int = 0
    max_lag_s: float = 0.0  # how late the producer sent a job, at worst


def produce(
    queue: Queue,
    job: str,
    jobs: list[Job],
    *,
    base_args: Mapping[str, Any],
    clock_start: float,
    stop: threading.Event,
) -> ProducerReport:
    """Send `jobs` on schedule (all at once for a backlog); returns what was sent.

    Jobs that fall due together are sent in one pipelined round trip, so a producer that fell
    behind catches up instead of drifting further.
    """
    report = ProducerReport()
    i = 0
    while i < len(jobs) and not stop.is_set():
        now = time.time()
        due_until = i
        while due_until < len(jobs) and clock_start + jobs[due_until].send_s <= now:
            due_until += 1
        if due_until == i:
            stop.wait(min(0.05, clock_start + jobs[i].send_s - now))
            continue
        batch = jobs[i:due_until]
        queue.enqueue_many(
            job,
            ({**base_args, "items": j.items} for j in batch),
            enqueued_at=[clock_start + j.arrive_s for j in batch],
        )
        report.max_lag_s = max(report.max_lag_s, now - (clock_start + batch[-1].send_s))
        report.jobs_sent += len(batch)
        report.items_sent += sum(len(j.items) for j in batch)
        i = due_until
    return report


def expected_duration_s(arrival: ArrivalSpec) -> float:
    """How long the arrivals last (0 for a backlog)."""
    return 0.0 if isinstance(arrival, Backlog) else arrival.duration_s
