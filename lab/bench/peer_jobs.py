"""The job bodies of `python -m lab.bench peers`: the same code for every asyncio runtime it compares.

  noop: INCR the counter key (the harness polls it).
  io:   one `GET {mock}/sleep?ms=N`, read the body, then the INCR.

The body brings its own clients, as a user's job would: one `redis.asyncio` client and one
`aiohttp.ClientSession` per process (connector `limit=0`, so the client never caps the
concurrency). So the lab's worker is measured with exactly the body the bare loop runs, not
with its own session. Settings come from the environment the harness sets:
`LAB_PEERS_REDIS_URL`, `LAB_PEERS_MOCK_URL`.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import redis.asyncio as aioredis

#: The key every job INCRs as its last action; the harness counts finished jobs by it.
COUNTER_KEY = "peers:done"


class _Clients:
    """Created on first use, inside the running loop (aiohttp binds a session to its loop)."""

    def __init__(self) -> None:
        # redis-py >= 6 caps a pool at 100 connections by default; C=200 bodies need more
        url = os.environ["LAB_PEERS_REDIS_URL"]
        self.redis = aioredis.Redis.from_url(url, max_connections=100_000)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.mock_url = os.environ.get("LAB_PEERS_MOCK_URL", "http://127.0.0.1:1")


_clients: _Clients | None = None


def _get() -> _Clients:
    global _clients
    if _clients is None:
        _clients = _Clients()
    return _clients


async def anoop() -> None:
    await _get().redis.incr(COUNTER_KEY)


async def aio_get(ms: float) -> None:
    c = _get()
    async with c.session.get(f"{c.mock_url}/sleep?ms={ms}") as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"mock answered {resp.status}")
    await c.redis.incr(COUNTER_KEY)


# -- the same bodies as lab job handlers (`--job lab.bench.peer_jobs:noop`) ----------------------


async def noop(ctx: Any, args: dict[str, Any]) -> None:
    await anoop()


async def io(ctx: Any, args: dict[str, Any]) -> None:
    await aio_get(float(args["ms"]))
