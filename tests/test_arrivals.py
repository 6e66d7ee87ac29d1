"""Arrival schedules and open-loop production, against the real embedded Redis."""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest

from lab.producers.arrivals import arrival_offsets, group_into_jobs, produce
from lab.runtime.queue import Queue, decode_job
from lab.scenario.spec import Backlog, Poisson, Ramp


def test_backlog_arrives_at_once() -> None:
    assert arrival_offsets(Backlog(), items=3, rng=random.Random(0)) == [0.0, 0.0, 0.0]


def test_poisson_has_the_requested_rate_and_is_seeded() -> None:
    spec = Poisson(rate_per_s=200.0, duration_s=50.0)
    offsets = arrival_offsets(spec, items=None, rng=random.Random(1))
    assert offsets == arrival_offsets(spec, items=None, rng=random.Random(1))
    assert offsets == sorted(offsets) and offsets[0] >= 0 and offsets[-1] < 50
    assert len(offsets) == pytest.approx(10_000, rel=0.03)  # sd of a Poisson(10k) count: 1%
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 200, rel=0.03)


def test_ramp_rate_grows_linearly() -> None:
    offsets = arrival_offsets(
        Ramp(from_per_s=0.0, to_per_s=400.0, duration_s=40.0), items=None, rng=random.Random(2)
    )
    halves = [sum(1 for t in offsets if t < 20), sum(1 for t in offsets if t >= 20)]
    # expected counts: 2,000 in the first half, 6,000 in the second
    assert halves[0] == pytest.approx(2000, rel=0.06) and halves[1] == pytest.approx(6000, rel=0.04)


def test_jobs_group_consecutive_arrivals_and_date_from_the_first() -> None:
    jobs = group_into_jobs([0.1, 0.2, 0.3, 0.4, 0.5], batch_size=2)
    assert [j.items for j in jobs] == [[0, 1], [2, 3], [4]]
    assert [(j.arrive_s, j.send_s) for j in jobs] == [(0.1, 0.2), (0.3, 0.4), (0.5, 0.5)]


def test_open_loop_stamps_each_job_with_its_scheduled_arrival(queue: Queue) -> None:
    jobs = group_into_jobs([0.05 * i for i in range(10)], batch_size=2)
    clock_start = time.time()
    report = produce(
        queue, "noop", jobs, base_args={"x": 1}, clock_start=clock_start, stop=threading.Event()
    )
    assert (report.jobs_sent, report.items_sent) == (5, 10)
    messages = [
        decode_job(p.decode() if isinstance(p, bytes) else p)[1]
        for p in reversed(queue.client.lrange(queue.keys.pending, 0, -1))
    ]
    assert [m["enq"] for m in messages] == pytest.approx(
        [clock_start + 0.1 * i for i in range(5)], abs=1e-6
    )
    assert messages[0]["args"] == {"x": 1, "items": [0, 1]}
