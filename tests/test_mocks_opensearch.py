"""The opensearch mock through the official async client: writes, bulk, rejections, the ledger."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from opensearchpy import AsyncOpenSearch, NotFoundError, TransportError
from opensearchpy.helpers import async_bulk

from lab.mocks import parse_spec, run_mock
from lab.mocks.control import control_headers

TOKEN = "test-token"


def spec(**fields: Any) -> Any:
    data: dict[str, Any] = {"kind": "opensearch", "latency": {"dist": "constant", "ms": 1}}
    return parse_spec({**data, **fields})


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def lab(session: aiohttp.ClientSession, url: str, name: str, body: Any = None) -> Any:
    method = "GET" if name.startswith(("stats", "docs")) else "POST"
    headers = control_headers(TOKEN)
    async with session.request(
        method, f"{url}/_lab/{name}", json=body, headers=headers
    ) as response:
        return response.status, await response.json()


async def stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    status, data = await lab(session, url, "stats")
    assert status == 200
    return dict(data)


def info_of(error: TransportError) -> dict[str, Any]:
    """The parsed response body the client attached to the error."""
    assert isinstance(error.info, dict)
    return error.info


def bulk_body(ids: range, index: str = "docs") -> str:
    lines = [json.dumps({"index": {"_index": index, "_id": str(i)}}) + "\n{}\n" for i in ids]
    return "".join(lines)


@pytest.mark.asyncio
async def test_index_count_delete_with_the_async_client(session: aiohttp.ClientSession) -> None:
    async with run_mock(spec(), token=TOKEN) as url:
        client = AsyncOpenSearch(hosts=[url])
        try:
            assert (await client.info())["version"]["distribution"] == "opensearch"
            assert await client.ping()
            first = await client.index(index="docs", id="a", body={"n": 1})
            again = await client.index(index="docs", id="a", body={"n": 2})
            auto = await client.index(index="docs", body={"n": 3})
            assert (first["result"], again["result"]) == ("created", "updated")
            assert again["_version"] == 2 and len(auto["_id"]) == 20
            assert (await client.count(index="docs"))["count"] == 2
            assert (await client.delete(index="docs", id="a"))["result"] == "deleted"
            with pytest.raises(NotFoundError) as missing:
                await client.delete(index="docs", id="a")
            assert info_of(missing.value)["result"] == "not_found"
            with pytest.raises(TransportError) as conflict:
                await client.create(index="docs", id=auto["_id"], body={})
            assert conflict.value.status_code == 409
        finally:
            await client.close()
        data = await stats(session, url)
    ledger = data["opensearch"]["indices"]["docs"]
    assert ledger["docs"] == 1 and ledger["writes"] == 3
    assert ledger["unique_ids_written"] == 2 and ledger["duplicate_writes"] == 1
    assert ledger["duplicate_ids_sample"] == ["a"]
    assert (ledger["deletes"], ledger["not_found"], ledger["conflicts"]) == (1, 1, 1)


@pytest.mark.asyncio
async def test_bulk_helper_indexes_everything(session: aiohttp.ClientSession) -> None:
    async with run_mock(spec(per_item_ms=0.01), token=TOKEN) as url:
        client = AsyncOpenSearch(hosts=[url])
        try:
            actions = ({"_index": "docs", "_id": str(i), "n": i} for i in range(250))
            ok, errors = await async_bulk(client, actions, chunk_size=100)
            body = bulk_body(range(3)) + '{"delete": {"_index": "docs", "_id": "nope"}}\n'
            raw = await client.bulk(body=body)
        finally:
            await client.close()
        data = await stats(session, url)
        status, docs = await lab(session, url, "docs?index=docs")
    assert ok == 250 and errors == []
    statuses = [next(iter(item.values()))["status"] for item in raw["items"]]
    assert statuses == [200, 200, 200, 404] and raw["errors"] is False  # not_found is no error
    assert status == 200 and docs["count"] == 250 and docs["ids"] == sorted(map(str, range(250)))
    assert data["requests"] == 4 and data["items"] == 254
    assert data["samples"]["service_ms"][0] == pytest.approx(1 + 0.01 * 100)


@pytest.mark.asyncio
async def test_partial_bulk_rejection_surfaces_as_on_a_real_cluster(
    session: aiohttp.ClientSession,
) -> None:
    """Four shards, one write slot, no queue: one shard part runs, three are rejected."""
    async with run_mock(spec(capacity=1, queue=0, shards=4), token=TOKEN) as url:
        client = AsyncOpenSearch(hosts=[url])
        try:
            raw = await client.bulk(body=bulk_body(range(40)))
            actions = ({"_index": "other", "_id": str(i)} for i in range(40))
            ok, errors_or_count = await async_bulk(client, actions, raise_on_error=False)
        finally:
            await client.close()
        data = await stats(session, url)
    assert raw["errors"] is True
    results = [item["index"] for item in raw["items"]]
    rejected = [r for r in results if r["status"] == 429]
    assert 0 < len(rejected) < 40 and all(r["status"] == 201 for r in results if "error" not in r)
    assert {r["error"]["type"] for r in rejected} == {"rejected_execution_exception"}
    assert "queue capacity = 0" in rejected[0]["error"]["reason"]
    errors = errors_or_count if isinstance(errors_or_count, list) else []
    assert ok == 40 - len(rejected) and len(errors) == len(rejected)
    assert {e["index"]["status"] for e in errors} == {429}
    assert data["rejections"] == {"queue_full": 6}
    assert data["opensearch"]["totals"]["docs"] == 2 * (40 - len(rejected))


@pytest.mark.asyncio
async def test_single_write_rejected_with_429_when_the_queue_is_full(
    session: aiohttp.ClientSession,
) -> None:
    slow = spec(capacity=1, queue=0, latency={"dist": "constant", "ms": 60000})
    async with run_mock(slow, shutdown_grace_s=0.01, token=TOKEN) as url:
        client = AsyncOpenSearch(hosts=[url], max_retries=0)
        try:
            holder = asyncio.create_task(client.index(index="docs", id="1", body={}))
            for _ in range(2000):  # a readiness poll of the mock's gauge, bounded
                if (await stats(session, url))["now"]["in_flight"] == 1:
                    break
                await asyncio.sleep(0.005)
            with pytest.raises(TransportError) as rejected:
                await client.index(index="docs", id="2", body={})
            holder.cancel()
        finally:
            await client.close()
    assert rejected.value.status_code == 429
    assert rejected.value.error == "rejected_execution_exception"
    root_cause = info_of(rejected.value)["error"]["root_cause"][0]
    assert root_cause["type"] == "rejected_execution_exception"


@pytest.mark.asyncio
async def test_injected_errors_fail_the_request_or_the_shard_part(
    session: aiohttp.ClientSession,
) -> None:
    async with run_mock(spec(error_rate=1.0, error_status=503), token=TOKEN) as url:
        client = AsyncOpenSearch(hosts=[url], max_retries=0)
        try:
            with pytest.raises(TransportError) as failed:
                await client.index(index="docs", id="1", body={})
            with pytest.raises(TransportError) as bulk_failed:
                await client.bulk(body=bulk_body(range(3)))
        finally:
            await client.close()
        data = await stats(session, url)
    assert failed.value.status_code == 503 == bulk_failed.value.status_code
    assert failed.value.error == "unavailable_shards_exception"
    assert data["opensearch"]["totals"]["docs"] == 0 and data["errors"] == 2


@pytest.mark.asyncio
async def test_rate_limited_writes_get_retry_after(session: aiohttp.ClientSession) -> None:
    async with run_mock(spec(rate_limit={"per_s": 0.01, "burst": 1}), token=TOKEN) as url:
        async with session.put(f"{url}/docs/_doc/1", json={}) as first:
            assert first.status == 201
        async with session.put(f"{url}/docs/_doc/2", json={}) as second:
            assert second.status == 429
            assert int(second.headers["Retry-After"]) >= 99
            assert (await second.json())["error"]["type"] == "too_many_requests"


@pytest.mark.asyncio
async def test_seed_reset_and_malformed_bulk(session: aiohttp.ClientSession) -> None:
    async with run_mock(spec(), token=TOKEN) as url:
        status, seeded = await lab(session, url, "seed", {"index": "old", "ids": ["1", "2", "3"]})
        assert status == 200 and seeded == {"index": "old", "seeded": 3, "docs": 3}
        async with session.delete(f"{url}/old/_doc/2") as response:
            assert response.status == 200
        assert (await stats(session, url))["opensearch"]["indices"]["old"]["deletes"] == 1
        assert await lab(session, url, "reset") == (200, {"reset": True, "clear_docs": False})
        kept = (await stats(session, url))["opensearch"]["indices"]["old"]
        assert kept["docs"] == 2 and kept["deletes"] == 0
        assert (await lab(session, url, "reset", {"clear_docs": True}))[0] == 200
        assert (await stats(session, url))["opensearch"]["totals"]["docs"] == 0
        assert (await lab(session, url, "reset", {"clear": True}))[0] == 400
        assert (await lab(session, url, "seed", {"index": "x"}))[0] == 400
        headers = {"Content-Type": "application/x-ndjson"}
        for body in ('{"index": {"_index": "x"}}\n{}', '{"index": {}}\n{}\n', '{"bad": {}}\n'):
            async with session.post(f"{url}/_bulk", data=body, headers=headers) as response:
                assert response.status == 400
                assert (await response.json())["status"] == 400
        async with session.get(f"{url}/_lab/nothing", headers=control_headers(TOKEN)) as response:
            assert response.status == 404
