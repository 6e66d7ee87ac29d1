"""The app under test: a small aiohttp web app whose endpoint enqueues jobs, as a controller
calls `perform_later`. Locust drives it; the trial measures the web's own response times.

    POST /items    enqueue `jobs_per_request` jobs of `batch_size` new items each; 202
    GET  /health   200 once serving

Co-located mode (`--colocated`, Loco's same-process workers): the `num_workers` job slots run
inside this process, on the same event loop as the web handlers, so the jobs' CPU shows up in
the web's latency. Every web process then is one worker instance. Several web processes can
serve one listening socket handed over by the parent (`--listen-fd`): the kernel spreads the
connections, as a pre-forking app server does.

`python -m lab.producers.webapp --broker URL --queue Q --job NAME --listen-fd FD --ready-file PATH
[--batch-size B] [--jobs-per-request J] [--colocated WORKER FLAGS...]`; in co-located mode the
flags it does not know go to the worker (see `python -m lab.runtime.worker --help`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from lab.errors import ConfigError, exit_status
from lab.infra.aio import run_main, write_ready_file
from lab.infra.broker import BROKER_URL_ENV
from lab.infra.sockets import LISTEN_BACKLOG
from lab.runtime.queue import QueueKeys, encode_job
from lab.runtime.worker import Worker, WorkerSettings, build_parser, settings_from_args


class JobProducer:
    """Enqueues from a request handler: one pipelined round trip per request."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        queue: str,
        job: str,
        base_args: dict[str, Any],
        batch_size: int,
        jobs_per_request: int,
        prefix: str,
    ) -> None:
        self.client, self.keys, self.job = client, QueueKeys(queue), job
        self.base_args, self.batch_size, self.jobs_per_request = (
            base_args,
            batch_size,
            jobs_per_request,
        )
        self.prefix = prefix  # unique per web process, so item ids never collide
        self._ids = itertools.count()

    async def enqueue(self) -> int:
        """Enqueue this request's jobs, stamped now (the request's arrival); returns them."""
        now = time.time()
        payloads = []
        for _ in range(self.jobs_per_request):
            job_id = f"{self.prefix}{next(self._ids)}"
            items = [f"{job_id}-{k}" for k in range(self.batch_size)]
            payloads.append(encode_job(job_id, self.job, {**self.base_args, "items": items}, now))
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.lpush(self.keys.pending, *payloads)
            pipe.hincrby(self.keys.stats, "enqueued", len(payloads))
            await pipe.execute()
        return len(payloads)


def make_app(producer: JobProducer) -> web.Application:
    async def items(request: web.Request) -> web.Response:
        await request.read()
        jobs = await producer.enqueue()
        return web.json_response({"enqueued": jobs}, status=202)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/items", items)
    app.router.add_get("/health", health)
    return app


async def serve(ns: argparse.Namespace, worker_settings: WorkerSettings | None) -> None:
    """Serve until SIGTERM/SIGINT; with co-located slots, stop them gracefully too."""
    client = aioredis.from_url(ns.broker)
    base_args = json.loads(ns.base_args)
    prefix = f"w{ns.index}-"
    producer = JobProducer(
        client,
        queue=ns.queue,
        job=ns.job,
        base_args=base_args,
        batch_size=ns.batch_size,
        jobs_per_request=ns.jobs_per_request,
        prefix=prefix,
    )
    runner = web.AppRunner(make_app(producer), access_log=None)
    await runner.setup()
    sock = socket.socket(fileno=ns.listen_fd)
    await web.SockSite(runner, sock, backlog=LISTEN_BACKLOG).start()
    worker = Worker(worker_settings) if worker_settings is not None else None
    worker_task = asyncio.create_task(worker.run()) if worker is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    write_ready_file(ns.ready_file, {"pid": os.getpid(), "colocated": worker is not None})
    waiters = {asyncio.create_task(stop.wait())} | ({worker_task} if worker_task else set())
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    await runner.cleanup()  # stop taking requests first, then let the slots finish
    if worker is not None and worker_task is not None:
        worker.stop()
        await worker_task
    await client.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lab.producers.webapp", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--broker", default=os.environ.get(BROKER_URL_ENV), help=f"default: ${BROKER_URL_ENV}"
    )
    p.add_argument("--queue", required=True)
    p.add_argument("--job", required=True)
    p.add_argument(
        "--base-args", default="{}", help="JSON: the args every job carries (service, index...)"
    )
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--jobs-per-request", type=int, default=1)
    p.add_argument("--index", type=int, default=0, help="this web process's number (item ids)")
    p.add_argument("--listen-fd", type=int, required=True, help="an inherited listening socket")
    p.add_argument("--ready-file", type=Path, required=True)
    p.add_argument("--colocated", action="store_true", help="run the job slots in this process")
    ns, rest = p.parse_known_args(argv)
    if rest and not ns.colocated:
        p.error(f"unrecognized arguments: {' '.join(rest)} (worker flags need --colocated)")

    def serve_app() -> None:
        if not ns.broker:
            raise ConfigError(f"give --broker URL, or set {BROKER_URL_ENV}")
        worker_settings = None
        if ns.colocated:
            worker_args = ["--broker", ns.broker, "--queue", ns.queue, "--job", ns.job, *rest]
            worker_settings = settings_from_args(build_parser().parse_args(worker_args))
        run_main(serve(ns, worker_settings))

    return exit_status("lab.producers.webapp", serve_app)


if __name__ == "__main__":
    sys.exit(main())
