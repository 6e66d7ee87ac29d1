"""Dramatiq as an optional peer of `python -m lab.bench peers` (`--peers dramatiq`).

Not imported by the lab: the harness copies this file into a temporary venv that has Dramatiq
(`pip install 'dramatiq[redis]'`) and runs `dramatiq rt_dramatiq --processes 1 --threads C`
there. Dramatiq runs a thread per slot, so its job bodies are the synchronous twins of
`lab.bench.peer_jobs`: redis-py's INCR and one keep-alive `http.client` connection per thread.
`python rt_dramatiq.py enqueue KIND N MS` enqueues the jobs.
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
import urllib.parse

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

COUNTER_KEY = "peers:done"
REDIS_URL = os.environ["LAB_PEERS_REDIS_URL"]
MOCK = urllib.parse.urlsplit(os.environ.get("LAB_PEERS_MOCK_URL", "http://127.0.0.1:1"))

broker = RedisBroker(url=REDIS_URL)
dramatiq.set_broker(broker)
_redis = redis.Redis.from_url(REDIS_URL)
_local = threading.local()


def _connection() -> http.client.HTTPConnection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = http.client.HTTPConnection(MOCK.hostname or "", MOCK.port, timeout=30)
    return conn


def _get(ms: float) -> None:
    for attempt in (0, 1):  # a keep-alive connection the server closed: reconnect once
        conn = _connection()
        try:
            conn.request("GET", f"/sleep?ms={ms}")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"mock answered {resp.status}")
            return
        except (http.client.HTTPException, OSError):
            conn.close()
            _local.conn = None
            if attempt:
                raise


@dramatiq.actor(max_retries=0)
def noop() -> None:
    _redis.incr(COUNTER_KEY)


@dramatiq.actor(max_retries=0)
def io(ms: float) -> None:
    _get(ms)
    _redis.incr(COUNTER_KEY)


def enqueue(kind: str, n: int, ms: float) -> None:
    for _ in range(n):
        if kind == "noop":
            noop.send()
        else:
            io.send(ms)


if __name__ == "__main__" and sys.argv[1:2] == ["enqueue"]:
    enqueue(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
