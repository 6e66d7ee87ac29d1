"""Attribution on synthetic trials: for each bottleneck word, the evidence that must name it and
the near miss that must not; the retry-wave detector on known start times; the words in the
recommendation. (Pure decision logic, so synthetic rows stand in for trials here.)"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lab.analysis.attribution import (
    BOTTLENECKS,
    Context,
    decide,
    describe,
    evidence,
    steady_items_per_s,
)
from lab.analysis.configs import analyze_trials
from lab.analysis.waves import Waves, retry_waves
from lab.mocks.spec import ServiceSpec
from lab.results import TRIAL_COLUMNS
from lab.scenario.spec import Objective

NO_RETRIES = Waves(attempts=1000, retries=0, rejected_share=0.0, spacing_s=None, strength=None)


def spec(**fields: Any) -> ServiceSpec:
    return ServiceSpec.model_validate({"kind": "http_api", "capacity": 32, "queue": 100} | fields)


def row(**figures: Any) -> dict[str, Any]:
    """A healthy trials.csv row: 8 slots at 20 ms a job, 400 items/s = Little's law, a service
    of capacity 32 with room, nothing rejected, the workers and the lab far from a core."""
    base: dict[str, Any] = dict.fromkeys(TRIAL_COLUMNS, 0.0)
    base |= {
        "trial_id": "nw8-in1-bs1-r0", "num_workers": 8, "instances": 1, "batch_size": 1,
        "placement": "separate", "concurrency": 8, "jobs_enqueued": 1000, "items_enqueued": 1000,
        "jobs_done": 1000, "items_done": 1000, "makespan_s": 2.5, "items_per_s": 400.0,
        "steady_items_per_s": 400.0, "attempts": 1000, "service_mean_ms": 20.0,
        "service_p99_ms": 40.0, "littles_bound_items_per_s": 400.0,
        "capacity_bound_items_per_s": 1600.0, "service_requests": 1000,
        "service_max_in_flight": 8, "service_max_connections": 8, "service_utilization": 0.25,
        "workers_cores": 0.3, "worker_steady_cores": 0.3, "worker_cpu_demand": 0.35,
        "mock_cores": 0.2, "redis_cores": 0.05, "producer_cores": 0.05,
        "harness_saturated": False, "machine_saturated": False, "timed_out": False,
        "length_x": 1,  # a trial of the scenario's own length (not lengthened by the search)
    }  # fmt: skip
    return base | figures


def word(
    figures: dict[str, Any], service: ServiceSpec | None = None, waves: Waves = NO_RETRIES,
    **context: Any,
) -> str:  # fmt: skip
    ctx = Context(service=service or spec(), cpu_count=2, **context)
    return decide(evidence(row(**figures), ctx, waves))


def test_the_healthy_row_is_concurrency_bound_and_every_word_is_in_the_vocabulary() -> None:
    assert word({}) == "concurrency"
    ev = evidence(row(workers_cores=0.1), Context(service=spec()), NO_RETRIES)
    # more slots would help up to the service's capacity: 32 / 20 ms = 1,600/s at ~32 slots
    assert ev["next_bound"] == "the service's capacity"
    assert ev["slots_for_next_bound"] == pytest.approx(32)
    # ... unless the workers' CPU comes first: 400/s at 0.3 of a core is 1,333/s a core
    ev = evidence(row(workers_cores=0.3), Context(service=spec()), NO_RETRIES)
    assert ev["next_bound"] == "the workers' CPU"
    assert ev["next_bound_items_per_s"] == pytest.approx(1333, rel=0.01)
    assert len(set(BOTTLENECKS)) == 10


def test_service_capacity_needs_the_service_full_and_requests_waiting() -> None:
    at_capacity = {"concurrency": 16, "service_max_in_flight": 8, "service_max_queue_depth": 8,
                   "service_utilization": 0.9}  # fmt: skip
    assert word(at_capacity, spec(capacity=8)) == "service_capacity"
    # a waiting room of 0: requests turned away as queue full say the same
    full = at_capacity | {"service_max_queue_depth": 0, "service_queue_full": 300}
    assert word(full, spec(capacity=8, queue=0)) == "service_capacity"
    # as many slots as the capacity, nothing waiting: the slots, not the service, are the limit
    exact = at_capacity | {"concurrency": 8, "service_max_queue_depth": 0}
    assert word(exact, spec(capacity=8)) == "concurrency"
    # full at moments, but idle most of the run: something else held it (here the CPU)
    idle = at_capacity | {"service_utilization": 0.3, "worker_cpu_demand": 0.98}
    assert word(idle, spec(capacity=8)) == "worker_cpu"


def test_rate_limit_needs_rate_limit_429s_and_the_limit_reached_or_most_attempts_429s() -> None:
    limited = spec(rate_limit={"per_s": 200, "burst": 20})
    # 3,000 requests in 5 s, 2,000 of them 429: 200/s accepted, the limit itself
    reached = {"concurrency": 16, "service_requests": 3000, "service_rate_limited": 2000,
               "service_rejected": 2000, "makespan_s": 5.0, "items_per_s": 200.0,
               "steady_items_per_s": 200.0, "attempts": 3000, "retries": 2000}  # fmt: skip
    assert word(reached, limited) == "rate_limit"
    # a few 429s of the burst, 80/s accepted, few attempts rejected: not the limit
    incidental = {"service_requests": 403, "service_rate_limited": 3, "makespan_s": 5.0,
                  "items_per_s": 80.0, "steady_items_per_s": 80.0}  # fmt: skip
    few = Waves(1000, 3, 0.003, None, None)
    assert word(incidental, limited, few) == "concurrency"
    # a queue-full 429 is the capacity's, not the rate limit's
    assert word(reached | {"service_rate_limited": 0, "service_queue_full": 2000}, spec()) != (
        "rate_limit"
    )


def test_retry_waves_turn_a_rate_limit_into_retry_waste_and_spread_retries_do_not() -> None:
    limited = spec(rate_limit={"per_s": 200, "burst": 20})
    # 3,600 requests in 9 s, 2,600 of them 429: 111/s accepted, 56 % of the limit
    storm = {"concurrency": 16, "service_requests": 3600, "service_rate_limited": 2600,
             "makespan_s": 9.0, "items_per_s": 111.0, "steady_items_per_s": 111.0,
             "attempts": 3600, "retries": 2600}  # fmt: skip
    waves = Waves(3600, 2600, 0.72, 1.05, 0.55)
    spread = Waves(3600, 2600, 0.72, None, -0.01)
    assert word(storm, limited, waves) == "retry_waste"
    assert word(storm, limited, spread) == "rate_limit"
    ev = evidence(row(**storm), Context(service=limited), waves)
    assert "72% of all attempts were 429s" in describe("retry_waste", ev)
    assert "waves 1.1 s apart" in describe("retry_waste", ev)
    # retries without any rate limit: a quarter of attempts failed (timeouts, 5xx within the SLO)
    assert word({"attempts": 1400, "retries": 400}) == "retry_waste"
    assert word({"attempts": 1100, "retries": 100}) == "concurrency"


def test_connection_limit_needs_more_connections_wanted_than_held() -> None:
    db = spec(kind="database", connection_limit=6)
    refused = {"concurrency": 16, "service_connections_refused": 900, "service_max_connections": 16}
    assert word(refused, db) == "connection_limit"
    waiting = {"concurrency": 16, "service_max_connections": 16}  # wait mode: held 6, 10 waited
    assert word(waiting, spec(kind="database", connection_limit=6, connection_overflow="wait")) == (
        "connection_limit"
    )
    # 4 slots need 4 connections: the limit of 6 is not in play
    assert word({"concurrency": 4, "service_max_connections": 4}, db) == "concurrency"


def test_worker_cpu_at_085_of_a_core_used_or_wanted_and_not_below() -> None:
    assert word({"worker_steady_cores": 0.95, "worker_cpu_demand": 0.99}) == "worker_cpu"
    # a busy machine gave it 0.4 of a core, but it wanted one all the time
    assert word({"worker_steady_cores": 0.4, "worker_cpu_demand": 0.97}) == "worker_cpu"
    assert word({"worker_steady_cores": 0.6, "worker_cpu_demand": 0.7}) == "concurrency"
    # an old run without per-instance figures: the mean per instance stands in
    old = {"worker_steady_cores": math.nan, "worker_cpu_demand": math.nan, "workers_cores": 1.8,
           "instances": 2}  # fmt: skip
    assert word(old) == "worker_cpu"


def test_harness_and_broker_when_the_lab_used_a_core_and_not_before() -> None:
    mock = {"harness_saturated": True, "mock_cores": 0.95}
    assert word(mock) == "harness"
    assert word({"harness_saturated": True, "redis_cores": 0.93}) == "broker"
    assert word({"machine_saturated": True}) == "harness"
    assert word({"mock_cores": 0.5}) == "concurrency"
    # a limit that was reached explains the figure even when the lab was busy
    at_capacity = mock | {"concurrency": 16, "service_max_in_flight": 8,
                          "service_max_queue_depth": 8, "service_utilization": 0.9}  # fmt: skip
    assert word(at_capacity, spec(capacity=8)) == "service_capacity"


def test_arrivals_when_the_workers_kept_up_or_the_backlog_is_smaller_than_the_slots() -> None:
    # open loop, 5 s of arrivals at 200/s: the last job ended 0.1 s after the last arrival
    kept_up = {"makespan_s": 5.1, "items_per_s": 196.0, "items_enqueued": 1000}
    assert word(kept_up, open_loop_s=5.0) == "arrivals"
    # the same arrivals, a backlog that took 4 s more to drain: the workers fell behind
    assert word(kept_up | {"makespan_s": 9.0}, open_loop_s=5.0) == "concurrency"
    assert word({"jobs_enqueued": 8, "concurrency": 16}) == "arrivals"
    assert word({"jobs_enqueued": 17, "concurrency": 16}) == "concurrency"


def test_errors_when_5xx_exceed_the_slo() -> None:
    assert word({"service_errors": 50}) == "errors"  # 5 % of 1,000 requests > 1 %
    assert word({"service_errors": 5}) == "concurrency"  # 0.5 %
    assert word({"service_errors": 5}, max_error_rate=0.001) == "errors"


# -- the retry-wave detector --------------------------------------------------------------------


def starts_in_waves(
    rng: np.random.Generator, *, spacing_s: float, waves: int, width_s: float
) -> np.ndarray:
    return np.concatenate(
        [k * spacing_s + rng.uniform(0, width_s, 300) for k in range(1, waves + 1)]
    )


def test_the_detector_finds_waves_and_their_spacing() -> None:
    rng = np.random.default_rng(3)
    for spacing, width in ((1.05, 0.6), (2.0, 0.3)):
        retries = starts_in_waves(rng, spacing_s=spacing, waves=6, width_s=width)
        starts = np.concatenate([rng.uniform(0, 0.4, 1000), retries])
        attempts = np.concatenate([np.ones(1000, int), np.full(len(retries), 2)])
        errors = ["HTTP 429 from POST /"] * 1500 + [None] * (len(starts) - 1500)
        w = retry_waves(starts, attempts, errors)
        assert w.waves and w.spacing_s == pytest.approx(spacing, abs=0.06)
        assert w.rejected_share == pytest.approx(1500 / len(starts))


def test_spread_retries_are_not_waves_and_too_few_cannot_tell() -> None:
    rng = np.random.default_rng(5)
    spread = np.sort(rng.uniform(1.0, 6.0, 1800))  # a steady stream of retries
    w = retry_waves(spread, np.full(len(spread), 2), [None] * len(spread))
    assert not w.waves and w.strength is not None and w.strength < 0.3
    few = retry_waves([1.0, 1.0, 2.0], [2, 2, 3], ["HTTP 429 from GET /x", None, "boom"])
    assert not few.waves and few.strength is None
    assert few.rejected_share == pytest.approx(1 / 3)


def test_the_steady_rate_leaves_out_the_start_up_and_the_tail() -> None:
    finished = [*(1.0 + i / 100 for i in range(100)), 20.0]  # 100/s, then one straggler
    assert steady_items_per_s(finished, [1] * 101) == pytest.approx(100, rel=0.05)
    assert math.isnan(steady_items_per_s([1.0, 2.0], [1, 1]))


# -- in the recommendation ----------------------------------------------------------------------


def jobs_frame(trial_id: str, starts: np.ndarray, retried: int) -> pd.DataFrame:
    n = len(starts)
    return pd.DataFrame(
        {
            "trial_id": trial_id, "job_id": [f"j{i % 1000}" for i in range(n)],
            "started_at": starts, "finished_at": starts + 0.05,
            "attempt": [1] * (n - retried) + [2] * retried,
            "outcome": ["ok"] * (n - retried) + ["retry"] * retried,
            "items": 1, "error": [None] * (n - retried) + ["HTTP 429 from POST /"] * retried,
        }
    )  # fmt: skip


def test_the_recommendation_carries_every_configuration_with_its_word_and_evidence() -> None:
    limited = spec(rate_limit={"per_s": 200, "burst": 20})
    rng = np.random.default_rng(9)
    slow = row(trial_id="nw4-in1-bs1-r0", num_workers=4, concurrency=4, items_per_s=80.0,
               steady_items_per_s=80.0, littles_bound_items_per_s=80.0, makespan_s=12.5,
               service_mean_ms=50.0, service_max_in_flight=4)  # fmt: skip
    storm = row(trial_id="nw16-in1-bs1-r0", num_workers=16, concurrency=16, items_per_s=109.0,
                steady_items_per_s=111.0, makespan_s=9.2, service_requests=3600,
                service_rate_limited=2600, service_rejected=2600, attempts=3600, retries=2600,
                latency_p99_ms=8000.0)  # fmt: skip
    waves = starts_in_waves(rng, spacing_s=1.05, waves=8, width_s=0.6)[:2600]
    jobs = pd.concat(
        [
            jobs_frame("nw4-in1-bs1-r0", np.sort(rng.uniform(0, 12, 1000)), 0),
            jobs_frame("nw16-in1-bs1-r0", np.concatenate([rng.uniform(0, 9, 1000), waves]), 2600),
        ],
        ignore_index=True,
    )
    analysis = analyze_trials(
        pd.DataFrame([slow, storm]), Objective(), service=limited, jobs=jobs,
    )  # fmt: skip
    rec = json.loads(json.dumps(analysis.recommendation.to_json(), allow_nan=False))
    assert rec["config"] == {"num_workers": 16, "instances": 1, "batch_size": 1}
    words = {c["config"]["num_workers"]: c["bottleneck"] for c in rec["configs"]}
    assert words == {4: "concurrency", 16: "retry_waste"}
    [storm_entry] = [c for c in rec["configs"] if c["bottleneck"] == "retry_waste"]
    assert storm_entry["evidence"]["waves"] is True
    assert storm_entry["evidence"]["wave_spacing_s"] == pytest.approx(1.05, abs=0.06)
    assert {"figures", "config"} <= set(storm_entry) and rec["bottleneck"] == "retry_waste"
    reasons = " ".join(rec["reasons"])
    assert "nw16-in1-bs1: held by retries" in reasons and "waves 1.1 s apart" in reasons
    # 4 slots: concurrency, and how far more slots would go (the rate limit, at ~10 slots)
    assert "more slots would help, up to about 200/s (the rate limit" in describe_lever(analysis)


def describe_lever(analysis: Any) -> str:
    from lab.analysis.explain import bottleneck_reason

    return bottleneck_reason(analysis.config(num_workers=4, instances=1, batch_size=1))
