"""Job handlers, the retry policy and the CPU burn, in-process against real loopback servers."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from lab.errors import ConfigError
from lab.runtime import jobs
from lab.runtime.jobs import JobContext, JobError, burn_cpu, execute, item_count, resolve
from lab.runtime.retry import RetryPolicy


def test_builtins_resolve_and_user_handlers_load() -> None:
    assert resolve("opensearch.bulk") is jobs.opensearch_bulk
    from tests import handlers

    assert resolve("tests.handlers:sleep") is handlers.sleep
    with pytest.raises(ConfigError, match=r"unknown job 'http\.cal'"):
        resolve("http.cal")


@pytest.mark.parametrize("attempt", [1, 2, 3, 10])
def test_full_jitter_stays_under_the_exponential_ceiling(attempt: int) -> None:
    policy = RetryPolicy(max_attempts=20, backoff_ms=50, max_backoff_ms=1000)
    rng = random.Random(1)
    ceiling_s = min(1.0, 0.050 * 2 ** (attempt - 1))
    delays = [policy.delay_s(attempt, rng) for _ in range(2000)]
    assert all(0 <= d <= ceiling_s for d in delays)
    assert max(delays) > 0.9 * ceiling_s and min(delays) < 0.1 * ceiling_s  # really spread


def test_no_jitter_is_the_exponential_ceiling_and_attempts_run_out() -> None:
    policy = RetryPolicy(max_attempts=3, backoff_ms=10, jitter="none")
    assert [policy.delay_s(n, random.Random()) for n in (1, 2, 3)] == [0.01, 0.02, 0.04]
    assert [policy.should_retry(n) for n in (1, 2, 3)] == [True, True, False]
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        RetryPolicy(max_attempts=0)


def test_cpu_burn_really_spends_cpu_not_wall_time() -> None:
    before = time.process_time()
    burn_cpu(60)
    assert time.process_time() - before >= 0.055


def test_item_count() -> None:
    assert item_count({"items": [1, 2, 3]}) == 3
    assert item_count({}) == 1


# -- http.call against a real loopback server ----------------------------------------------------


@pytest_asyncio.fixture
async def api() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback JSON API: /ok records bodies, /busy answers 429 + Retry-After, /boom 500."""
    seen: list[dict[str, Any]] = []

    async def ok(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({"ok": True})

    async def busy(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": "rate limited"}, status=429, headers={"Retry-After": "2"}
        )

    async def boom(request: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=500)

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/busy", busy)
    app.router.add_post("/boom", boom)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


@pytest.mark.asyncio
async def test_http_call_sends_one_request_per_item(api: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = api
    async with aiohttp.ClientSession() as session:
        ctx = JobContext(instance="t", session=session, services={"api": url})
        await execute(jobs.http_call, ctx, {"service": "api", "path": "/ok", "items": [1, 2, 3]})
    assert [body["id"] for body in seen] == [1, 2, 3]


@pytest.mark.asyncio
async def test_http_errors_fail_the_attempt_and_carry_retry_after(
    api: tuple[str, list[dict[str, Any]]],
) -> None:
    url, _ = api
    async with aiohttp.ClientSession() as session:
        ctx = JobContext(instance="t", session=session, services={"api": url})
        with pytest.raises(JobError, match="HTTP 429") as busy:
            await jobs.http_call(ctx, {"service": "api", "path": "/busy"})
        assert busy.value.retry_after_s == 2.0
        with pytest.raises(JobError, match="HTTP 500"):
            await jobs.http_call(ctx, {"service": "api", "path": "/boom"})
        with pytest.raises(JobError, match="this worker knows: api"):
            await jobs.http_call(ctx, {"service": "nope"})
