"""The adaptive slot limit (`num_workers: auto`) on synthetic latency and rejection streams.

A small simulated service stands in for the real one here (the decision logic is under test;
the end-to-end trial with real processes is in test_dynamic.py): `capacity` jobs served at
once, each taking `service_s`; past capacity, jobs queue, so a job's time grows with the
number in flight. A virtual clock makes every run exact and instant.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable

import pytest

from lab.errors import ConfigError
from lab.runtime.jobs import JobError
from lab.runtime.limits import Limiter, LimitSettings, is_overload, make_limiter

# (now_s, in_flight) -> (job time s, dropped, completions per second)

#: The mean of lognormvariate(0, 0.8): Little's law takes the mean job time.
MEAN_LOGNORMAL_08 = math.exp(0.8**2 / 2)
Service = Callable[[float, int, random.Random], tuple[float, bool, float]]


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def queueing(capacity: int = 8, service_s: float = 0.02, slow: tuple[float, float] | None = None,
             slow_x: float = 5.0) -> Service:  # fmt: skip
    """A service with `capacity` servers and an unbounded queue, `slow_x` slower in `slow`."""

    def serve(now: float, in_flight: int, rng: random.Random) -> tuple[float, bool, float]:
        s = service_s * (slow_x if slow and slow[0] <= now < slow[1] else 1.0)
        job_s = s * max(1.0, in_flight / capacity) * rng.lognormvariate(0, 0.4)
        return job_s, False, min(in_flight, capacity) / s

    return serve


def rate_limited(per_s: float = 100, service_s: float = 0.15) -> Service:
    """Latency independent of load (median `service_s`, mean 1.38x that), but requests past
    `per_s` are rejected at once (429)."""

    def serve(now: float, in_flight: int, rng: random.Random) -> tuple[float, bool, float]:
        offered = in_flight / (service_s * MEAN_LOGNORMAL_08)
        if rng.random() < max(0.0, 1 - per_s / offered):
            return 0.002, True, offered
        return service_s * rng.lognormvariate(0, 0.8), False, offered

    return serve


def run(limiter: Limiter, clock: VirtualClock, service: Service, until_s: float,
        seed: int = 1) -> list[tuple[float, int]]:  # fmt: skip
    """Keep the limiter's slots full (a backlog) until `until_s`; the limit after each job."""
    rng = random.Random(seed)
    trace = []
    while clock.now < until_s:
        in_flight = limiter.limit
        job_s, dropped, rate = service(clock.now, in_flight, rng)
        clock.now += 1 / rate
        limiter.on_sample(job_s, in_flight, dropped=dropped)
        trace.append((clock.now, limiter.limit))
    return trace


def limiter(**settings: object) -> tuple[Limiter, VirtualClock]:
    clock = VirtualClock()
    return make_limiter(LimitSettings(**settings), clock=clock, wall=clock), clock  # type: ignore[arg-type]


def between(trace: list[tuple[float, int]], start_s: float, end_s: float) -> list[int]:
    return [limit for t, limit in trace if start_s <= t < end_s]


def test_gradient_converges_to_the_service_capacity_with_a_small_queue() -> None:
    lim, clock = limiter(initial=1, max=256)
    trace = run(lim, clock, queueing(capacity=8), until_s=20)
    settled = between(trace, 2, 20)
    # all 8 servers busy (no fewer slots than capacity), only a few jobs waiting...
    assert min(settled) >= 8 and max(settled) <= 24
    # ...and steady: within ±40 % of its median from 2 s on
    mid = statistics.median(settled)
    assert all(0.6 * mid <= x <= 1.4 * mid for x in settled)


def test_gradient_backs_off_in_a_brownout_then_relearns_and_recovers_after_it() -> None:
    lim, clock = limiter(initial=4)
    trace = run(lim, clock, queueing(capacity=8, slow=(10, 20)), until_s=30)
    before = statistics.median(between(trace, 5, 10))
    assert min(between(trace, 10, 11)) <= before / 2  # backs off at once...
    # ...then learns the service is slower, not queueing: back to its capacity, no more
    assert 8 <= statistics.median(between(trace, 13, 20)) <= 1.2 * before
    after = between(trace, 21, 30)  # and after it, back where it was (not above: re-learnt)
    assert 0.7 * before <= statistics.median(after) <= 1.3 * before


def test_gradient_does_not_collapse_when_the_service_stays_slower() -> None:
    lim, clock = limiter(initial=4)
    trace = run(lim, clock, queueing(capacity=8, slow=(10, 60)), until_s=30)
    assert min(between(trace, 15, 30)) >= 8  # the servers are still 8: keep them busy


@pytest.mark.parametrize("algorithm", ["gradient", "aimd"])
def test_a_rate_limit_is_found_from_the_rejections(algorithm: str) -> None:
    lim, clock = limiter(algorithm=algorithm, initial=2)
    trace = run(lim, clock, rate_limited(per_s=100, service_s=0.15), until_s=30)
    settled = between(trace, 5, 30)
    # Little's law: 100/s x 0.21 s (mean) = 21 in flight reach the limit; past it, only 429s
    assert 8 <= statistics.median(settled) <= 30
    assert max(settled) <= 60


@pytest.mark.parametrize("algorithm", ["gradient", "aimd"])
def test_every_window_with_a_drop_multiplies_the_limit_by_the_backoff(algorithm: str) -> None:
    lim, clock = limiter(algorithm=algorithm, initial=64, min=2, max=64)
    limits = [lim.limit]
    for _ in range(400):
        clock.now += 0.01
        lim.on_sample(0.005, lim.limit, dropped=True)
        if lim.limit != limits[-1]:
            limits.append(lim.limit)
    assert limits == sorted(limits, reverse=True)  # only ever down
    assert limits[1] == int(64 * 0.9)  # one backoff per window, not one per rejected job
    assert limits[-1] == 2  # down to min, never below


@pytest.mark.parametrize("algorithm", ["gradient", "aimd"])
def test_after_a_rejection_the_limit_falls_to_what_the_service_let_through(algorithm: str) -> None:
    lim, clock = limiter(algorithm=algorithm, initial=40, max=64)
    for _ in range(19):  # one window: 19 jobs of 50 ms, then a 429, in 0.1 s
        clock.now += 0.005
        lim.on_sample(0.05, 40, dropped=False)
    clock.now += 0.005
    lim.on_sample(0.002, 40, dropped=True)
    # 19 jobs / 0.1 s x 0.05 s = 9.5 at once got through; x1.25 tolerance: 11
    assert lim.take_events()[-1][2:4] == (11, "drop")


def test_a_rejected_job_holds_its_slot_for_a_typical_job_time() -> None:
    lim, clock = limiter(initial=16)
    for _ in range(20):  # jobs take 50 ms
        clock.now += 0.01
        lim.on_sample(0.05, 16, dropped=False)
    before = lim.limit
    for _ in range(3):  # three 429s in a row, within the same millisecond
        lim.on_sample(0.001, 16, dropped=True)
    assert lim.limit == before - 3  # their slots wait...
    clock.now += 0.051
    assert lim.limit == before  # ...one job time, then ask again


@pytest.mark.parametrize("algorithm", ["gradient", "aimd"])
def test_it_does_not_grow_before_the_servers_retry_after(algorithm: str) -> None:
    lim, clock = limiter(algorithm=algorithm, initial=8)
    lim.on_sample(0.001, 8, dropped=True, retry_after_s=1.0)
    while clock.now < 0.9:  # calm windows, every slot busy (8 jobs of 20 ms): it would grow...
        clock.now += 0.0025
        lim.on_sample(0.02, lim.limit, dropped=False)
    held = lim.limit
    assert held < 8  # ...but the server asked for a second
    while clock.now < 1.5:
        clock.now += 0.0025
        lim.on_sample(0.02, lim.limit, dropped=False)
    assert lim.limit > held


@pytest.mark.parametrize("algorithm", ["gradient", "aimd"])
def test_the_limit_stays_within_min_and_max_whatever_it_sees(algorithm: str) -> None:
    lim, clock = limiter(algorithm=algorithm, initial=5, min=3, max=20)
    rng = random.Random(7)
    seen = set()
    for phase in range(20):  # calm phases push it up, rejecting phases down
        drop_rate = 0.0 if phase % 2 == 0 else 0.3
        for _ in range(1000):
            clock.now += rng.expovariate(200)
            in_flight = lim.limit + rng.randint(-2, 2)
            rtt_s = rng.lognormvariate(-4, 1.5)
            lim.on_sample(rtt_s, in_flight, dropped=rng.random() < drop_rate)
            seen.add(lim.limit)
    assert min(seen) == 3 and max(seen) == 20  # pushed against both bounds, never past them


@pytest.mark.parametrize("algorithm", ["gradient", "aimd"])
def test_a_limit_that_is_not_used_does_not_grow(algorithm: str) -> None:
    lim, clock = limiter(algorithm=algorithm, initial=16)
    for _ in range(2000):  # only 2 jobs in flight at a time: nothing learnt about 16 or more
        clock.now += 0.005
        lim.on_sample(0.01, 2, dropped=False)
    assert lim.limit == 16


def test_aimd_grows_into_a_queue_until_it_is_rejected() -> None:
    lim, clock = limiter(algorithm="aimd", initial=4, max=256)
    trace = run(lim, clock, queueing(capacity=8), until_s=10)
    assert trace[-1][1] == 256  # loss-based: latency alone never stops it (the gradient's job)


def test_every_window_is_recorded_for_the_trial() -> None:
    lim, clock = limiter(initial=4)
    run(lim, clock, queueing(), until_s=3)
    events = lim.take_events()
    assert events[0].reason == "start" and events[0].limit == 4
    assert {e.reason for e in events[1:]} <= {"slow_start", "gradient", "hold", "drop"}
    assert [e.t for e in events] == sorted(e.t for e in events)
    assert lim.take_events() == []  # taken once


def test_overload_is_a_timeout_a_429_or_a_503_not_any_error() -> None:
    assert is_overload(TimeoutError())
    assert is_overload(JobError("HTTP 429", status=429))
    assert is_overload(JobError("HTTP 503", status=503))
    assert not is_overload(JobError("HTTP 500", status=500))
    assert not is_overload(ValueError("a bug in the handler"))


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"min": 0}, "1 <= min <= initial <= max"),
        ({"initial": 300}, "1 <= min <= initial <= max"),
        ({"algorithm": "vegas"}, "algorithm must be one of"),
        ({"backoff": 0.2}, "backoff must be in"),
    ],
)
def test_bad_settings_say_what_is_allowed(settings: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        LimitSettings(**settings)  # type: ignore[arg-type]


def drops_and_probes(lim: Limiter, clock: VirtualClock, service: Service, start_s: float,
                     until_s: float) -> tuple[int, int, list[int]]:  # fmt: skip
    """Run from `start_s` to `until_s`: the drop windows and probes in that span, and the limits."""
    run(lim, clock, service, until_s=start_s)
    lim.take_events()
    probes = lim.probes
    trace = run(lim, clock, service, until_s=until_s)
    drops = sum(e.reason == "drop" for e in lim.take_events())
    return drops, lim.probes - probes, [limit for _, limit in trace]


@pytest.mark.parametrize("algorithm", ["gradient", "aimd"])
def test_after_finding_a_rate_limit_it_probes_past_it_rarely(algorithm: str) -> None:
    lim, clock = limiter(algorithm=algorithm, initial=4)
    service = rate_limited(per_s=100, service_s=0.15)  # 21 at once reach the limit
    drops, probes, limits = drops_and_probes(lim, clock, service, 10, 130)
    assert lim.ceiling is not None and 10 <= lim.ceiling <= 26  # learnt near 21...
    assert 10 <= statistics.median(limits) <= 26 and max(limits) <= 30
    # ...then in 2 minutes (~1,000 windows) a few probes past it, and only a few windows with
    # a rejection: without the ceiling it grew back after every drop, into the next one
    # (22-37 drop windows for the gradient, ~240 for AIMD, on this stream)
    assert 1 <= probes <= 15
    assert drops <= 12


@pytest.mark.parametrize("algorithm", ["gradient", "aimd"])
def test_a_ceiling_learnt_too_low_is_left_in_a_few_probes(algorithm: str) -> None:
    lim, clock = limiter(algorithm=algorithm, initial=4)
    tight, loose = rate_limited(per_s=100, service_s=0.15), rate_limited(per_s=400, service_s=0.15)

    def raised(now: float, in_flight: int, rng: random.Random) -> tuple[float, bool, float]:
        return (tight if now < 20 else loose)(now, in_flight, rng)

    trace = run(lim, clock, raised, until_s=20)
    learnt = lim.ceiling
    assert learnt is not None and learnt <= 26
    trace = run(lim, clock, raised, until_s=140)  # the API now lets 83 through at once
    assert lim.ceiling is not None and lim.ceiling >= 60
    assert statistics.median(between(trace, 130, 140)) >= 60


def test_a_ceiling_follows_a_rate_limited_service_through_a_brownout() -> None:
    lim, clock = limiter(initial=4)
    fast, slow = rate_limited(per_s=100, service_s=0.05), rate_limited(per_s=100, service_s=0.25)

    def brownout(now: float, in_flight: int, rng: random.Random) -> tuple[float, bool, float]:
        return (slow if 30 <= now < 70 else fast)(now, in_flight, rng)

    trace = run(lim, clock, brownout, until_s=30)  # 100/s x 0.069 s: 7 at once
    learnt = lim.ceiling
    assert learnt is not None and learnt <= 12
    trace = run(lim, clock, brownout, until_s=100)  # 5x slower: 34 at once pass the limit
    # Little's law: the same rate at 5x the latency lets 5x as many through at once; the
    # ceiling follows the latency rather than pinning the limit at its old level...
    assert statistics.median(between(trace, 50, 70)) >= 2 * learnt
    # ...and comes back down after it
    assert statistics.median(between(trace, 85, 100)) <= 1.5 * learnt
