"""A mock reused across trials (`POST /_lab/reset {"seed": N}`) is indistinguishable from a fresh
one started with seed N: same draws, same ids, a full token bucket, no documents, zeroed figures;
and it refuses while a trial's requests are still inside it."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from lab.mocks import parse_spec, run_mock
from lab.mocks.control import control_headers

TOKEN = "test-token"

SPEC: dict[str, Any] = {
    "kind": "opensearch",
    "capacity": 2,
    "queue": 4,
    "latency": {"dist": "lognormal", "median_ms": 1, "p99_ms": 4},
    "per_item_ms": 0.05,
    "error_rate": 0.3,
    "rate_limit": {"per_s": 0.5, "burst": 6},
}

#: Figures that depend on wall-clock timing or on the control connections, not on the service.
TIMING = {"elapsed_s", "series", "connections_total", "now"}


async def workload(session: aiohttp.ClientSession, url: str, n: int) -> list[Any]:
    """One request at a time (so the draws meet the requests in a fixed order): what each got."""
    seen = []
    for i in range(n):
        if i % 2:
            body = f'{{"index": {{"_index": "e"}}}}\n{{"n": {i}}}\n'
            headers = {"Content-Type": "application/x-ndjson"}
            async with session.post(f"{url}/_bulk", data=body, headers=headers) as r:
                data = await r.json()
                seen.append((r.status, [it["index"].get("_id") for it in data.get("items", [])]))
        else:
            async with session.post(f"{url}/e/_doc", json={"n": i}) as r:
                seen.append((r.status, (await r.json()).get("_id")))
    return seen


async def stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/_lab/stats", headers=control_headers(TOKEN)) as r:
        data = await r.json()
    data["samples"].pop("wait_ms")
    return {k: v for k, v in data.items() if k not in TIMING}


async def reset(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with session.post(f"{url}/_lab/reset", json=body, headers=control_headers(TOKEN)) as r:
        return r.status, await r.json()


@pytest.mark.asyncio
async def test_a_reset_with_a_seed_leaves_nothing_of_the_last_trial() -> None:
    async with aiohttp.ClientSession() as session:
        async with run_mock(parse_spec({**SPEC, "seed": 1}), token=TOKEN) as url:
            first = await workload(session, url, 9)  # uses up the bucket, writes documents
            assert any(status == 429 for status, _ in first)
            assert await reset(session, url, {"seed": 42}) == (
                200, {"reset": True, "seed": 42, "clear_docs": True},
            )  # fmt: skip
            reused = await workload(session, url, 6)
            reused_stats = await stats(session, url)
        async with run_mock(parse_spec({**SPEC, "seed": 42}), token=TOKEN) as url:
            fresh = await workload(session, url, 6)
            fresh_stats = await stats(session, url)
    assert reused == fresh  # same statuses (errors, 429s) and the same generated ids
    assert reused_stats == fresh_stats  # counters, samples, ledger, documents, the spec's seed
    assert fresh_stats["spec"]["seed"] == 42 and fresh_stats["opensearch"]["totals"]["docs"] > 0


@pytest.mark.asyncio
async def test_a_fresh_reset_refuses_while_requests_are_inside() -> None:
    spec = parse_spec(
        {"kind": "http_api", "capacity": 1, "latency": {"dist": "constant", "ms": 300}}
    )
    async with aiohttp.ClientSession() as session, run_mock(spec, token=TOKEN) as url:
        slow = asyncio.ensure_future(session.post(f"{url}/call", json={}))
        for _ in range(200):  # until the request holds the service's one slot
            async with session.get(f"{url}/_lab/stats", headers=control_headers(TOKEN)) as r:
                if (await r.json())["now"]["in_flight"]:
                    break
            await asyncio.sleep(0.005)
        status, body = await reset(session, url, {"seed": 3})
        assert status == 409 and body["busy"] == {"in_flight": 1}
        assert (await reset(session, url, {}))[0] == 200  # a plain reset only zeroes figures
        (await slow).release()
        assert (await reset(session, url, {"seed": 3}))[0] == 200
        assert (await reset(session, url, {"seed": "x"}))[0] == 400
        assert (await reset(session, url, {"clear_docs": True}))[0] == 400  # opensearch only
