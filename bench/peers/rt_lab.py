"""lab runtime (run: python -m lab.runtime.worker --broker URL --queue peers --num-workers C
--job rt_lab:noop --job rt_lab:io [--prefetch K]) + enqueue.

Handlers use the lab signature `async def h(ctx, args)` and the shared job bodies in common.py
(redis.asyncio INCR + one aiohttp session with limit=0), exactly like the async peers; the lab's own
ctx.session (connector limit=num_workers) is NOT used, so the job body is identical to the peers'.
"""
import redis

import common
from lab.runtime.queue import Queue

QUEUE = "peers"


async def noop(ctx, args):
    await common.anoop()


async def io(ctx, args):
    await common.aio_get(args["ms"])


def enqueue(kind, n, ms):
    q = Queue(redis.Redis.from_url(common.REDIS_URL), QUEUE)
    if kind == "noop":
        q.enqueue_many("rt_lab:noop", ({} for _ in range(n)))
    else:
        q.enqueue_many("rt_lab:io", ({"ms": ms} for _ in range(n)))
