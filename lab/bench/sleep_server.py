"""A bare loopback HTTP server that answers `GET /sleep?ms=N` after N ms: the IO benchmark's peer.

It has no load model on purpose (no capacity, no stats): it measures the runtime, not a service.
It runs on the default asyncio loop, like `../shared/peers/mock_server.py`, so that the runtime's
efficiency is measured against the same server the peers were (uvloop's 1 ms timer granularity
would add about a millisecond to every 50 ms answer).
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


async def _sleep(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("ms", "0")) / 1000)
    return web.Response(text="ok")


async def _serve(ready_file: Path) -> None:
    app = web.Application()
    app.router.add_route("*", "/sleep", _sleep)
    runner = web.AppRunner(app, access_log=None)
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
