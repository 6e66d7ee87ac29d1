"""The database mock: a hard connection limit (refuse or wait) and per-query latency."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from lab.mocks import parse_spec, run_mock
from lab.mocks.control import control_headers

TOKEN = "test-token"


def one_connection() -> aiohttp.ClientSession:
    """A client holding exactly one keep-alive connection, like one pooled DB connection."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))


async def query(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{url}/query", json={"sql": "select 1"}) as response:
        return response.status, await response.json()


async def now(url: str) -> dict[str, Any]:
    """Stats on a connection of its own: control calls never take a connection slot."""
    async with (
        one_connection() as s,
        s.get(f"{url}/_lab/stats", headers=control_headers(TOKEN)) as response,
    ):
        data: dict[str, Any] = await response.json()
        return data


async def until(url: str, key: str, value: int) -> None:
    """Poll the mock's own gauges until `now[key] == value`: a readiness poll, bounded."""
    for _ in range(2000):
        if (await now(url))["now"][key] == value:
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"now.{key} never reached {value}")


@pytest.mark.asyncio
async def test_connections_past_the_limit_are_refused_like_postgres() -> None:
    spec = parse_spec(
        {"kind": "database", "connection_limit": 2, "latency": {"dist": "constant", "ms": 0}}
    )
    async with run_mock(spec, token=TOKEN) as url:
        a, b, c = one_connection(), one_connection(), one_connection()
        try:
            assert (await query(a, url))[0] == 200 and (await query(b, url))[0] == 200
            status, body = await query(c, url)
            assert status == 503
            assert body["error"] == {
                "severity": "FATAL",
                "code": "53300",
                "message": "sorry, too many clients already",
            }
            assert (await query(a, url)) == (200, {"command": "OK", "rowcount": 1})  # still held
            await a.close()
            await until(url, "connections_held", 1)
            assert (await query(c, url))[0] == 200  # a fresh connection takes the freed slot
        finally:
            for s in (a, b, c):
                await s.close()
        data = await now(url)
    assert data["rejections"] == {"connection_limit": 1}
    assert data["max"]["connections"] >= 3


@pytest.mark.asyncio
async def test_connections_past_the_limit_wait_for_a_slot_in_order() -> None:
    spec = parse_spec(
        {
            "kind": "database",
            "connection_limit": 1,
            "connection_overflow": "wait",
            "latency": {"dist": "constant", "ms": 0},
        }
    )
    async with run_mock(spec, token=TOKEN) as url:
        a, b = one_connection(), one_connection()
        try:
            assert (await query(a, url))[0] == 200
            waiting = asyncio.create_task(query(b, url))
            await until(url, "connections_waiting", 1)
            assert not waiting.done()
            await a.close()
            assert (await waiting)[0] == 200
        finally:
            await a.close()
            await b.close()


@pytest.mark.asyncio
async def test_a_waiting_connection_gives_up_after_its_timeout() -> None:
    spec = parse_spec(
        {
            "kind": "database",
            "connection_limit": 1,
            "connection_overflow": "wait",
            "connection_wait_timeout_ms": 20,
            "latency": {"dist": "constant", "ms": 0},
        }
    )
    async with run_mock(spec, token=TOKEN) as url:
        a, b = one_connection(), one_connection()
        try:
            assert (await query(a, url))[0] == 200
            status, body = await query(b, url)
        finally:
            await a.close()
            await b.close()
        data = await now(url)
    assert status == 503 and body["error"]["code"] == "08P01"
    assert data["rejections"] == {"connection_wait_timeout": 1}


@pytest.mark.asyncio
async def test_database_routes_and_batches() -> None:
    spec = parse_spec(
        {"kind": "database", "latency": {"dist": "constant", "ms": 1}, "per_item_ms": 1}
    )
    async with run_mock(spec, token=TOKEN) as url, aiohttp.ClientSession() as s:
        async with s.post(f"{url}/query", json={"items": [1, 2, 3]}) as response:
            assert (response.status, await response.json()) == (
                200,
                {"command": "OK", "rowcount": 3},
            )
        async with s.get(f"{url}/tables") as response:
            assert response.status == 404
        async with s.post(f"{url}/query", data=b"not json") as response:
            assert response.status == 400
        data = await now(url)
    assert data["samples"]["service_ms"] == [4.0]
