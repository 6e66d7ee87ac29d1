"""A bare loopback HTTP server that answers `GET /sleep?ms=N` after N ms: the IO benchmarks' peer.

It has no load model on purpose (no capacity, no queue): it measures the runtime, not a service.
It runs on the default asyncio loop, so every runtime is measured against the same server
(uvloop's 1 ms timer granularity would add about a millisecond to every 50 ms answer).
`GET /stats` returns `{"total", "in_flight", "max_in_flight"}` (the concurrency a runtime really
reached); `POST /reset` zeroes `total` and `max_in_flight`.
`python -m lab.bench.sleep_server --ready-file PATH` writes its URL to PATH once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

from aiohttp import web

from lab.infra.aio import run_main, write_ready_file


class _Counters:
    def __init__(self) -> None:
        self.total = self.in_flight = self.max_in_flight = 0


def make_app() -> web.Application:
    counters = _Counters()

    async def sleep(request: web.Request) -> web.Response:
        counters.in_flight += 1
        counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
        try:
            await asyncio.sleep(float(request.query.get("ms", "0")) / 1000)
        finally:
            counters.in_flight -= 1
            counters.total += 1
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "total": counters.total,
                "in_flight": counters.in_flight,
                "max_in_flight": counters.max_in_flight,
            }
        )

    async def reset(request: web.Request) -> web.Response:
        counters.total, counters.max_in_flight = 0, counters.in_flight
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/sleep", sleep)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    return app


async def _serve(ready_file: Path) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    write_ready_file(ready_file, {"url": f"http://127.0.0.1:{port}", "pid": os.getpid()})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ready-file", type=Path, required=True)
    ns = parser.parse_args()
    run_main(_serve(ns.ready_file), use_uvloop=False)


if __name__ == "__main__":
    main()
