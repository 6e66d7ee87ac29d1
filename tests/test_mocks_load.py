"""The load model: distributions, capacity gate, waiting room, rate limit, failures, statistics.

Shapes are checked on recorded service-time samples (never wall clocks); concurrency on the
recorded maxima; timing only ever appears as a loose upper bound.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

import aiohttp
import pytest

from lab.mocks import make_sampler, mean_ms, parse_spec, quantile, run_mock
from lab.mocks.control import control_headers
from lab.mocks.load import LoadModel, Outcome
from lab.mocks.spec import Latency, ServiceSpec

TOKEN = "test-token"

LATENCIES: list[dict[str, Any]] = [
    {"dist": "constant", "ms": 3},
    {"dist": "exponential", "mean_ms": 10},
    {"dist": "lognormal", "median_ms": 15, "p99_ms": 60},
    {"dist": "pareto", "min_ms": 2, "alpha": 1.5},
    {"dist": "pareto", "min_ms": 2, "alpha": 1.1, "max_ms": 50},
    {"dist": "bimodal", "hit_ratio": 0.9, "hit_ms": 1, "miss_ms": 40},
    {
        "dist": "bimodal",
        "hit_ratio": 0.8,
        "hit": {"dist": "lognormal", "median_ms": 2, "p99_ms": 8},
        "miss": {"dist": "exponential", "mean_ms": 50},
    },
]


def latency_of(data: dict[str, Any]) -> Latency:
    return parse_spec({"kind": "http_api", "latency": data}).latency


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.parametrize("data", LATENCIES, ids=lambda d: str(d["dist"]))
def test_samplers_match_the_requested_distribution(data: dict[str, Any]) -> None:
    latency = latency_of(data)
    draw = make_sampler(latency, random.Random(7))
    samples = [draw() for _ in range(40_000)]
    for q, tolerance in ((0.5, 0.05), (0.99, 0.12)):
        expected = quantile(latency, q)
        assert percentile(samples, q) == pytest.approx(expected, rel=tolerance), q
    if data["dist"] != "pareto" or "max_ms" in data:  # an uncapped tail's mean converges slowly
        assert statistics.fmean(samples) == pytest.approx(mean_ms(latency), rel=0.05)


def test_samplers_repeat_with_the_seed() -> None:
    latency = latency_of(LATENCIES[2])
    first = make_sampler(latency, random.Random("3:latency"))
    again = make_sampler(latency, random.Random("3:latency"))
    assert [first() for _ in range(50)] == [again() for _ in range(50)]


def test_lognormal_quantiles_are_the_given_percentiles() -> None:
    latency = latency_of({"dist": "lognormal", "median_ms": 15, "p99_ms": 60})
    assert quantile(latency, 0.5) == pytest.approx(15)
    assert quantile(latency, 0.99) == pytest.approx(60)


@pytest.mark.asyncio
async def test_gate_admits_capacity_queues_queue_and_rejects_the_rest() -> None:
    """Deterministic: every serve() passes admission before any service time can elapse."""
    spec = parse_spec(
        {
            "kind": "http_api",
            "capacity": 3,
            "queue": 4,
            "latency": {"dist": "constant", "ms": 60000},
        }
    )
    model = LoadModel(spec)
    tasks = [asyncio.create_task(model.serve(1)) for _ in range(10)]
    await asyncio.sleep(0)
    assert model.gate.in_flight == 3 and len(model.gate.waiters) == 4
    rejected = [t for t in tasks if t.done()]
    assert len(rejected) == 3 and all(t.result() is Outcome.REJECTED for t in rejected)
    assert model.stats.rejections["queue_full"] == 3
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert model.gate.in_flight == 0 and not model.gate.waiters
    assert (model.stats.max_in_flight, model.stats.max_queue_depth) == (3, 4)


@pytest.mark.asyncio
async def test_waiters_are_served_in_arrival_order() -> None:
    spec = parse_spec(
        {"kind": "http_api", "capacity": 1, "queue": 10, "latency": {"dist": "constant", "ms": 0.1}}
    )
    model = LoadModel(spec)
    order: list[int] = []

    async def one(i: int) -> None:
        assert await model.serve(1) is Outcome.SERVED
        order.append(i)

    await asyncio.gather(*(one(i) for i in range(8)))
    assert order == list(range(8))


async def get_stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/_lab/stats", headers=control_headers(TOKEN)) as response:
        assert response.status == 200
        data: dict[str, Any] = await response.json()
        return data


async def until_in_flight(session: aiohttp.ClientSession, url: str, n: int) -> None:
    """Poll the mock's gauge until `n` requests hold a slot: a readiness poll, bounded."""
    for _ in range(2000):
        if (await get_stats(session, url))["now"]["in_flight"] >= n:
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"in_flight never reached {n}")


async def call(session: aiohttp.ClientSession, url: str, body: Any = None) -> int:
    async with session.post(f"{url}/call", json=body) as response:
        await response.read()
        return response.status


@pytest.mark.asyncio
async def test_in_flight_never_exceeds_capacity_and_samples_follow_the_distribution() -> None:
    spec = parse_spec(
        {
            "kind": "http_api",
            "capacity": 8,
            "queue": 1000,
            "latency": {"dist": "lognormal", "median_ms": 1, "p99_ms": 4},
            "stats_interval_ms": 5,
            "seed": 11,
        }
    )
    async with run_mock(spec, token=TOKEN) as url, aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(call(session, url) for _ in range(1500)))
        stats = await get_stats(session, url)
    assert set(statuses) == {200}
    assert stats["max"]["in_flight"] == 8
    assert stats["max"]["queue_depth"] > 0
    assert max(stats["series"]["in_flight"]) <= 8
    assert stats["served"] == stats["requests"] == 1500
    samples = stats["samples"]["service_ms"]
    assert len(samples) == stats["samples"]["seen"] == 1500
    assert percentile(samples, 0.5) == pytest.approx(quantile(spec.latency, 0.5), rel=0.1)
    assert percentile(samples, 0.99) == pytest.approx(quantile(spec.latency, 0.99), rel=0.25)
    assert min(stats["samples"]["wait_ms"]) == 0 and max(stats["samples"]["wait_ms"]) > 0


@pytest.mark.asyncio
async def test_per_item_cost_adds_to_one_draw() -> None:
    spec = parse_spec(
        {"kind": "http_api", "latency": {"dist": "constant", "ms": 2}, "per_item_ms": 0.5}
    )
    async with run_mock(spec, token=TOKEN) as url, aiohttp.ClientSession() as session:
        assert await call(session, url, {"items": list(range(10))}) == 200
        stats = await get_stats(session, url)
    assert stats["samples"]["service_ms"] == [7.0]
    assert stats["items"] == stats["served_items"] == 10


@pytest.mark.asyncio
async def test_a_full_waiting_room_rejects_at_once() -> None:
    spec = parse_spec(
        {
            "kind": "http_api",
            "capacity": 1,
            "queue": 0,
            "latency": {"dist": "constant", "ms": 60000},
        }
    )
    async with (
        run_mock(spec, shutdown_grace_s=0.01, token=TOKEN) as url,
        aiohttp.ClientSession() as s,
    ):
        slow = asyncio.create_task(call(s, url))
        await until_in_flight(s, url, 1)
        async with s.post(f"{url}/call") as response:
            assert response.status == 429
            assert (await response.json())["error"]["type"] == "concurrency_limited"
            assert "Retry-After" not in response.headers
        stats = await get_stats(s, url)
        slow.cancel()
    assert stats["rejections"] == {"queue_full": 1}
    assert stats["samples"]["seen"] == 0  # a rejection costs no service time


@pytest.mark.asyncio
async def test_rate_limit_holds_over_a_window() -> None:
    per_s, burst = 20.0, 5
    spec = parse_spec(
        {
            "kind": "http_api",
            "capacity": 64,
            "latency": {"dist": "constant", "ms": 0},
            "rate_limit": {"per_s": per_s, "burst": burst},
        }
    )
    async with run_mock(spec, token=TOKEN) as url, aiohttp.ClientSession() as session:
        started = time.monotonic()
        ok = limited = 0
        retry_after: set[str] = set()
        while time.monotonic() - started < 0.5:
            async with session.post(f"{url}/call") as response:
                if response.status == 200:
                    ok += 1
                else:
                    assert response.status == 429
                    limited += 1
                    retry_after.add(response.headers["Retry-After"])
        elapsed_s = time.monotonic() - started
        stats = await get_stats(session, url)
    # The bucket starts full, then refills at per_s: never more than that got through.
    assert burst <= ok <= burst + per_s * elapsed_s + 1
    assert limited > 0 and retry_after == {"1"}
    assert stats["rejections"]["rate_limit"] == limited


@pytest.mark.asyncio
async def test_injected_errors_follow_the_rate_and_the_seed() -> None:
    spec = parse_spec(
        {
            "kind": "http_api",
            "capacity": 32,
            "latency": {"dist": "constant", "ms": 0},
            "error_rate": 0.3,
            "error_status": 503,
            "seed": 5,
        }
    )
    async with run_mock(spec, token=TOKEN) as url, aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(call(session, url) for _ in range(300)))
        stats = await get_stats(session, url)
    failed = statuses.count(503)
    assert failed + statuses.count(200) == 300
    assert 60 <= failed <= 120  # 300 x 0.3 = 90 expected, +-4.8 sd
    assert stats["errors_by_cause"] == {"injected": failed}
    uniform = random.Random("5:errors").random
    expected = sum(uniform() < 0.3 for _ in range(300))
    assert failed == expected  # one draw per served request: the count repeats with the seed


@pytest.mark.asyncio
async def test_brownout_window_slows_and_fails_only_inside_the_window() -> None:
    windows = [
        {"start_s": 0, "duration_s": 3600, "latency_x": 3, "error_rate": 1.0},
        {"start_s": 7200, "duration_s": 1, "latency_x": 100},
    ]
    spec = parse_spec(
        {"kind": "http_api", "latency": {"dist": "constant", "ms": 1}, "brownouts": windows}
    )
    async with run_mock(spec, token=TOKEN) as url, aiohttp.ClientSession() as session:
        statuses = [await call(session, url) for _ in range(5)]
        stats = await get_stats(session, url)
    assert statuses == [500] * 5
    assert stats["samples"]["service_ms"] == [3.0] * 5
    assert stats["errors_by_cause"] == {"brownout": 5}


def test_repeating_brownout_windows() -> None:
    from lab.mocks.load import active_brownout

    spec = ServiceSpec.model_validate(
        {"kind": "http_api", "brownouts": [{"start_s": 10, "duration_s": 2, "every_s": 30}]}
    )
    hits = [t for t in range(0, 100) if active_brownout(spec.brownouts, t) is not None]
    assert hits == [10, 11, 40, 41, 70, 71]


@pytest.mark.asyncio
async def test_stats_are_bounded_and_reset_zeroes_them() -> None:
    spec = parse_spec(
        {
            "kind": "http_api",
            "capacity": 16,
            "latency": {"dist": "exponential", "mean_ms": 0.2},
            "samples_cap": 50,
            "stats_interval_ms": 5,
        }
    )
    async with run_mock(spec, token=TOKEN) as url, aiohttp.ClientSession() as session:
        await asyncio.gather(*(call(session, url) for _ in range(300)))
        stats = await get_stats(session, url)
        async with session.post(f"{url}/_lab/reset", headers=control_headers(TOKEN)) as response:
            assert response.status == 200
        after = await get_stats(session, url)
    assert stats["samples"]["seen"] == 300 and len(stats["samples"]["service_ms"]) == 50
    series = stats["series"]
    assert len(series["t_s"]) == len(series["in_flight"]) == len(series["requests"]) > 0
    assert series["t_s"] == sorted(series["t_s"])
    assert after["requests"] == 0 and after["samples"]["seen"] == 0
    assert after["max"]["in_flight"] == 0 and after["rejections"] == {}
    assert after["schema_version"] == 1 and after["spec"]["samples_cap"] == 50
