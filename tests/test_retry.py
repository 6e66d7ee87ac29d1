"""A Retry-After is a floor, not a schedule: the policy's two modes, and a real worker against a
real rate-limited mock whose rejected jobs must come back spread over time."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lab.infra.procs import env_with_pythonpath, python_module_argv, spawn, wait_for
from lab.mocks import parse_spec, spec_to_json
from lab.runtime.queue import Queue
from lab.runtime.retry import RetryPolicy
from tests.conftest import StartWorker


def test_exact_waits_the_floor_itself_when_the_backoff_is_shorter() -> None:
    policy = RetryPolicy(backoff_ms=50, after_floor="exact")
    rng = random.Random(1)
    assert {policy.retry_delay_s(1, rng, 1.0) for _ in range(200)} == {1.0}
    # a backoff longer than the floor wins: it is a floor, not the wait
    long = RetryPolicy(backoff_ms=4000, jitter="none", after_floor="exact")
    assert long.retry_delay_s(1, rng, 1.0) == 4.0


def test_jittered_waits_the_floor_plus_a_draw_at_least_a_floor_wide() -> None:
    policy = RetryPolicy(backoff_ms=50, max_backoff_ms=30_000)
    assert policy.after_floor == "jittered"  # the default
    rng = random.Random(2)
    delays = [policy.retry_delay_s(1, rng, 1.0) for _ in range(2000)]
    assert all(1.0 <= d <= 2.0 for d in delays)  # never before the floor
    assert min(delays) < 1.05 and max(delays) > 1.95  # spread over the whole next second
    # a wider backoff (a later attempt) widens the window past the floor
    assert max(policy.retry_delay_s(8, rng, 1.0) for _ in range(2000)) > 5.0
    # capped at max_backoff_ms, even when the floor is longer than the cap
    capped = RetryPolicy(backoff_ms=50, max_backoff_ms=300)
    assert all(2.0 <= capped.retry_delay_s(1, rng, 2.0) <= 2.3 for _ in range(500))


def test_without_a_floor_both_modes_are_the_plain_backoff() -> None:
    for mode in ("exact", "jittered"):
        policy = RetryPolicy(backoff_ms=10, jitter="none", after_floor=mode)
        assert policy.retry_delay_s(3, random.Random(), None) == 0.04
    with pytest.raises(ValueError, match="after_floor must be 'jittered' or 'exact'"):
        RetryPolicy(after_floor="later")  # type: ignore[arg-type]  # what a CLI could pass


@pytest.fixture
def rate_limited_api(tmp_path: Path) -> Iterator[str]:
    """A real http_api mock with a token bucket of 1 request/s and no burst to speak of."""
    spec = parse_spec(
        {
            "kind": "http_api",
            "capacity": 64,
            "queue": 0,
            "latency": {"dist": "constant", "ms": 1},
            "rate_limit": {"per_s": 1, "burst": 1},
        }
    )
    ready = tmp_path / "api.ready.json"
    argv = python_module_argv(
        "lab.mocks", "http_api", "--port", "0", "--spec-json", spec_to_json(spec),
        "--ready-file", str(ready),
    )  # fmt: skip
    with spawn(argv, name="api", log_path=tmp_path / "api.log", env=env_with_pythonpath()) as child:
        wait_for(ready.exists, what="the api mock", timeout_s=30, children=[child])
        yield str(json.loads(ready.read_text())["url"])


def test_jobs_rejected_together_come_back_spread_over_time(
    queue: Queue, start_worker: StartWorker, rate_limited_api: str
) -> None:
    """20 jobs at once against 1 request/s: one passes, 19 get 429 + Retry-After: 1. Their
    retries must start at or after the floor and spread over about a second, not at one
    instant (with `exact` they would all start together, one floor after their rejection)."""
    queue.enqueue_many("http.call", ({"service": "api", "items": [i]} for i in range(20)))
    start_worker(
        "--service", f"api={rate_limited_api}", "--max-attempts", "2", "--backoff-ms", "50",
        num_workers=20,
    )  # fmt: skip
    wait_for(lambda: queue.outstanding() == 0, what="every job settled", timeout_s=60)

    events = queue.events()
    first = {e.job_id: e for e in events if e.attempt == 1}
    rejected = {j: e for j, e in first.items() if e.error and "HTTP 429" in e.error}
    retries = [e for e in events if e.attempt == 2]
    assert len(first) == 20 and len(rejected) >= 15
    assert {e.job_id for e in retries} == set(rejected)
    # a floor: no retry starts before its rejection's Retry-After of 1 s
    assert all(e.started_at >= rejected[e.job_id].finished_at + 1.0 for e in retries)
    # spread: the retries' start times span most of the jitter window (a second), far more
    # than the rejections themselves did (they all came within one burst)
    waits = np.array([e.started_at - rejected[e.job_id].finished_at for e in retries])
    assert waits.max() - waits.min() > 0.4
    assert len({round(float(w), 1) for w in waits}) >= 4  # not one instant, several tenths
