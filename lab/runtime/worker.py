"""One worker instance: one OS process running up to `num_workers` jobs at once on one event loop.

This is the knob of Loco's BackgroundQueue worker: `num_workers` async slots per process, and
`instances` processes side by side.

How a job flows through an instance (one Redis round trip per batch, not per job):
- `num_workers` long-lived consumer tasks take claimed payloads from a local queue.
- One exchange task owns the Redis round trips: each call of the exchange script acks the jobs
  finished since the last call, records their events, schedules retries and dead letters, and
  claims as many new jobs as there are free slots, atomically. Under load, many jobs finish per
  round trip, so acks and claims batch themselves; with one slot it is one round trip per job.
- When the queue is empty, a waiter blocks on BLMOVE (no polling delay) and wakes the exchanger
  as soon as a job arrives.
- A heartbeat task refreshes this instance's heartbeat and reaps instances whose heartbeat
  expired (crash recovery, see `lab.runtime.queue`).

Stop (SIGTERM or SIGINT): stop claiming, let in-flight jobs finish within `grace_s`, cancel the
rest, flush acks, and put every unfinished job back at the head of the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis
import redis.asyncio as aioredis

from lab.errors import BrokerError, ConfigError, exit_status
from lab.infra.aio import run_main
from lab.infra.broker import BROKER_URL_ENV, redact_url
from lab.infra.pacing import pacing_trace
from lab.runtime.jobs import BUILTINS, Handler, JobContext, JobError, execute, item_count, resolve
from lab.runtime.queue import (
    DEAD,
    EXCHANGE_LUA,
    OK,
    RELEASE_LUA,
    RETRY,
    JobEvent,
    QueueKeys,
    decode_job,
    encode_job,
)
from lab.runtime.retry import AFTER_FLOOR, DEFAULT_JOB_TIMEOUT_S, DEFAULT_RETRY, RetryPolicy
from lab.runtime.wire import WireConnection

log = logging.getLogger(__name__)

#: A worker that cannot reach its broker for this long exits (status 1).
BROKER_LOST_S = 30.0

#: Longest single BLMOVE wait: bounds how long a stop waits for the waiter to come back.
_BLOCK_S = 0.5


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class WorkerSettings:
    """Everything one instance needs; the CLI flags map one to one onto these fields."""

    broker_url: str
    queue: str = "default"
    num_workers: int = 1
    # Jobs claimed ahead of free slots and held locally (still recoverable). 0 is Loco's
    # behaviour: a slot claims its next job only once it is free, one round trip later.
    prefetch: int = 0
    instance_id: str = field(default_factory=default_instance_id)
    services: Mapping[str, str] = field(default_factory=dict)
    # requests/s this instance may send to a service, by name: its share of a real service's cap
    max_requests_per_s: Mapping[str, float] = field(default_factory=dict)
    jobs: Sequence[str] = ()  # resolved at start, so an unknown name fails before any job runs
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    job_timeout_s: float | None = 300.0
    grace_s: float = 10.0
    heartbeat_ttl_s: float = 10.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.prefetch < 0:
            raise ConfigError(f"prefetch must be an integer >= 0, got {self.prefetch}")
        if self.num_workers < 1:
            raise ConfigError(f"num_workers must be an integer >= 1, got {self.num_workers}")
        if unknown := sorted(set(self.max_requests_per_s) - set(self.services)):
            raise ConfigError(f"--max-requests-per-s names unknown service(s) {unknown}")
        if self.heartbeat_ttl_s <= 0 or self.grace_s < 0:
            raise ConfigError("heartbeat_ttl_s must be > 0 and grace_s >= 0")
        if self.job_timeout_s is not None and self.job_timeout_s <= 0:
            raise ConfigError(f"job_timeout_s must be > 0 or unset, got {self.job_timeout_s}")


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, JobError) else str(exc)
    return text[:300]


class Worker:
    """One instance. `await run()` until `stop()`; `main()` wires it to signals."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.keys = QueueKeys(settings.queue)
        self._handlers: dict[str, Handler] = {name: resolve(name) for name in settings.jobs}
        self._rng = random.Random(settings.seed)
        self._stop_requested = asyncio.Event()
        self._accepting = True
        self._in_flight = 0
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._wake = asyncio.Event()  # something to ack, or a slot to fill
        self._idle = asyncio.Event()  # no job in flight
        self._queue_empty = asyncio.Event()  # the last claim came back short: block on BLMOVE
        self._exchange_lock = asyncio.Lock()
        self._next_due: float | None = None
        # Outcomes waiting for the next exchange round trip.
        self._acks: list[str] = []
        self._events: list[bytes] = []
        self._retries: list[str] = []  # flat (id, due, payload) triples
        self._dead: list[str] = []  # flat (id, payload) pairs

    @property
    def instance_id(self) -> str:
        return self.settings.instance_id

    def stop(self) -> None:
        """Ask for a graceful stop (safe to call from a signal handler on the loop)."""
        self._stop_requested.set()

    async def run(self) -> None:
        s = self.settings
        self._redis = aioredis.from_url(s.broker_url, decode_responses=True)
        # The waiter's own single connection: its BLMOVE must not hold up the exchanges.
        self._blocking = aioredis.from_url(s.broker_url, decode_responses=True, max_connections=1)
        self._blocking_client_id: int | None = None
        self._wire = WireConnection(s.broker_url)  # the exchange's own connection (hot path)
        self._exchange_sha = self._wire.script(EXCHANGE_LUA)
        self._release_script = self._redis.register_script(RELEASE_LUA)
        self._exchange_keys = [
            self.keys.pending, self.keys.processing(self.instance_id), self.keys.inbox(self.instance_id),
            self.keys.scheduled, self.keys.dead, self.keys.events, self.keys.stats,
        ]  # fmt: skip
        connector = aiohttp.TCPConnector(limit=s.num_workers)  # the pool follows num_workers
        try:
            paced = {s.services[name]: r for name, r in s.max_requests_per_s.items()}
            traces = [pacing_trace(paced)] if paced else None
            async with aiohttp.ClientSession(connector=connector, trace_configs=traces) as session:
                self._ctx = JobContext(
                    instance=self.instance_id, session=session, services=s.services
                )
                await self._beat()
                await self._reap()
                await self._serve()
        finally:
            self._wire.close()
            await self._redis.aclose()
            await self._blocking.aclose()

    async def _serve(self) -> None:
        slots = {
            asyncio.create_task(self._consume(), name=f"slot-{i}")
            for i in range(self.settings.num_workers)
        }
        exchanger = asyncio.create_task(self._exchange_loop(), name="exchange")
        # These two stop by themselves once stop is requested: cancelling a Redis command in
        # flight (above all a blocking one) can wedge redis-py's connection (redis-py #2579).
        self_stopping = {
            asyncio.create_task(self._wait_for_work(), name="waiter"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        }
        stop = asyncio.create_task(self._stop_requested.wait(), name="stop")
        self._idle.set()
        self._wake.set()
        log.info(
            "%s ready: %d slots on queue %r", self.instance_id, len(slots), self.settings.queue
        )
        everything = slots | self_stopping | {exchanger, stop}
        done, _ = await asyncio.wait(everything, return_when=asyncio.FIRST_COMPLETED)
        self.stop()
        await self._shutdown(slots, exchanger, self_stopping)
        for task in done - {stop}:
            task.result()  # a runtime task must never end by itself: re-raise what ended it

    async def _shutdown(
        self,
        slots: set[asyncio.Task[None]],
        exchanger: asyncio.Task[None],
        self_stopping: set[asyncio.Task[None]],
    ) -> None:
        self._accepting = False
        self._queue_empty.set()  # let the waiter see the stop...
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            if self._blocking_client_id is not None:  # ...now, not when its BLMOVE times out
                await self._redis.client_unblock(self._blocking_client_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.settings.grace_s)
        for task in slots:
            task.cancel()
        await asyncio.gather(*slots, return_exceptions=True)
        async with self._exchange_lock:  # never cut an exchange round trip in half
            exchanger.cancel()
            await asyncio.gather(exchanger, return_exceptions=True)
            await self._exchange_once()  # the last acks and events
        _, late = await asyncio.wait(self_stopping, timeout=_BLOCK_S + 5)
        for task in late:  # last resort; should not happen
            task.cancel()
        keys = [self.keys.instances, self.keys.pending, self.keys.stats]
        try:
            put_back = await self._release_script(
                keys=keys, args=[self.keys.prefix, self.instance_id, "released"]
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.error(
                "%s could not put its jobs back (%s); they return when its heartbeat expires",
                self.instance_id,
                exc,
            )
        else:
            log.info("%s stopped; %d unfinished jobs put back", self.instance_id, put_back)

    # -- the job slots --------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            payload = await self._ready.get()
            try:
                await self._run_one(payload)
            finally:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.set()
                self._wake.set()

    async def _run_one(self, payload: str) -> None:
        job_id, msg = decode_job(payload)
        name, args, attempt = msg["job"], msg["args"], msg["att"]
        started = time.time()
        error: str | None
        extra: Any = None
        retry_after_s: float | None = None
        retryable = True
        try:
            handler = self._handlers.get(name) or self._resolve_late(name)
        except ConfigError as exc:  # unknown job name: retrying cannot help
            error, retryable = str(exc), False
        else:
            error, retry_after_s, extra = await self._attempt(handler, args)
        finished = time.time()
        if error is None:
            outcome = OK
            self._acks.append(job_id)
        elif retryable and self.settings.retry.should_retry(attempt):
            outcome = RETRY
            delay_s = self.settings.retry.retry_delay_s(attempt, self._rng, retry_after_s)
            retry = encode_job(job_id, name, args, msg["enq"], attempt + 1)
            self._retries += [job_id, repr(finished + delay_s), retry]
        else:
            outcome = DEAD
            self._dead += [
                job_id,
                encode_job(job_id, name, {**args, "_error": error}, msg["enq"], attempt),
            ]
        self._events.append(
            JobEvent(
                job_id, name, self.instance_id, msg["enq"], started, finished, attempt, outcome,
                item_count(args), error, dict(extra) if extra else None,
            ).encode()
        )  # fmt: skip

    async def _attempt(
        self, handler: Handler, args: dict[str, Any]
    ) -> tuple[str | None, float | None, Any]:
        """Run the handler under the job timeout: (error or None, Retry-After floor, extra)."""
        deadline = asyncio.timeout(self.settings.job_timeout_s)
        try:
            async with deadline:
                return None, None, await execute(handler, self._ctx, args)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                return f"timeout after {self.settings.job_timeout_s:g}s", None, None
            return _describe(exc), getattr(exc, "retry_after_s", None), None

    def _resolve_late(self, name: str) -> Handler:
        """A built-in named by a job; anything else must have been given at start (`--job`):
        a payload in Redis never makes this process import a module of its choosing."""
        if name not in BUILTINS:
            raise ConfigError(
                f"job {name[:100]!r} is not a built-in nor one this worker was started with "
                f"(--job: {', '.join(self.settings.jobs) or 'none'})"
            )
        handler = self._handlers[name] = resolve(name)
        return handler

    # -- the Redis side -------------------------------------------------------------------------

    async def _exchange_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            async with self._exchange_lock:
                await self._exchange_once()

    async def _exchange_once(self) -> None:
        """One round trip: write outcomes, claim up to the free slots, learn the next retry due."""
        limit = self.settings.num_workers + self.settings.prefetch
        want = limit - self._in_flight if self._accepting else 0
        if want <= 0 and not (self._acks or self._events or self._retries or self._dead):
            return
        acks, events, retries, dead = self._acks, self._events, self._retries, self._dead
        self._acks, self._events, self._retries, self._dead = [], [], [], []
        args: list[Any] = [
            time.time(),
            want,
            len(acks),
            len(events),
            len(retries) // 3,
            len(dead) // 2,
        ]
        try:
            claimed, next_due = await self._wire.evalsha(
                self._exchange_sha, self._exchange_keys, args + acks + events + retries + dead
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Keep the outcomes for the next try; jobs stay claimed meanwhile. Acks are idempotent,
            # but if the script ran and only its reply was lost, these events are written twice
            # and the jobs it claimed wait in our processing hash until we stop (then go back).
            log.warning("exchange with the broker failed (%s); retrying", exc)
            self._acks, self._events = acks + self._acks, events + self._events
            self._retries, self._dead = retries + self._retries, dead + self._dead
            await asyncio.sleep(0.2)
            self._wake.set()
            return
        if claimed:
            self._in_flight += len(claimed)
            self._idle.clear()
            for payload in claimed:
                self._ready.put_nowait(payload)
        self._next_due = float(next_due) if next_due else None
        if self._accepting and len(claimed) < want:
            self._queue_empty.set()

    async def _wait_for_work(self) -> None:
        """Block on the broker while the queue is empty, so a new job starts without a poll delay."""
        while True:
            await self._queue_empty.wait()
            self._queue_empty.clear()
            if not self._accepting:
                return
            timeout_s = _BLOCK_S
            if self._next_due is not None:  # wake in time to promote a retry that falls due
                timeout_s = min(timeout_s, max(0.01, self._next_due - time.time()))
            try:
                if self._blocking_client_id is None:
                    self._blocking_client_id = int(await self._blocking.client_id())
                await self._blocking.blmove(
                    self.keys.pending,
                    self.keys.inbox(self.instance_id),
                    timeout_s,  # type: ignore[arg-type]  # Redis >= 6 takes fractional seconds
                    "RIGHT",
                    "LEFT",
                )
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("waiting on the broker failed (%s); retrying", exc)
                self._blocking_client_id = None
                await asyncio.sleep(0.2)
            self._wake.set()

    async def _beat(self) -> None:
        ttl_ms = int(self.settings.heartbeat_ttl_s * 1000)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.heartbeat(self.instance_id), os.getpid(), px=ttl_ms)
            pipe.sadd(self.keys.instances, self.instance_id)
            await pipe.execute()

    async def _reap(self) -> None:
        keys = [self.keys.instances, self.keys.pending, self.keys.stats]
        moved = await self._release_script(keys=keys, args=[self.keys.prefix, "", "recovered"])
        if moved:
            log.warning(
                "%s recovered %d jobs of instances whose heartbeat expired", self.instance_id, moved
            )

    async def _heartbeat_loop(self) -> None:
        """Beat every TTL/3, reap every TTL; give up when the broker has been gone too long."""
        period_s = self.settings.heartbeat_ttl_s / 3
        beats = 0
        last_ok = time.monotonic()
        while not self._stop_requested.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), period_s)
                return
            try:
                await self._beat()
                last_ok = time.monotonic()
                beats += 1
                if beats % 3 == 0:
                    await self._reap()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                gone_s = time.monotonic() - last_ok
                log.warning("heartbeat failed for %.0fs (%s)", gone_s, exc)
                if gone_s > max(BROKER_LOST_S, self.settings.heartbeat_ttl_s):
                    # Our jobs were put back by now anyway; an orphan must not spin forever.
                    raise BrokerError(
                        f"broker {redact_url(self.settings.broker_url)} lost for {gone_s:.0f}s"
                    ) from exc


# -- command line -------------------------------------------------------------------------------


def _parse_service(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected NAME=http://host:port, got {text!r}")
    return name, url


def _parse_rate(text: str) -> tuple[str, float]:
    name, sep, rate = text.partition("=")
    try:
        per_s = float(rate)
    except ValueError:
        per_s = 0.0
    if not sep or not name or not per_s > 0:
        raise argparse.ArgumentTypeError(f"expected NAME=R with R > 0, got {text!r}")
    return name, per_s


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lab.runtime.worker", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--broker",
        default=os.environ.get(BROKER_URL_ENV),
        help=f"Redis URL, e.g. redis://127.0.0.1:6379/0 or unix:///path (default: ${BROKER_URL_ENV},"
        " which keeps a password off the command line)",
    )
    p.add_argument("--queue", default="default")
    p.add_argument("--num-workers", type=int, default=1, help="jobs this instance runs at once")
    p.add_argument(
        "--prefetch",
        type=int,
        default=0,
        help="jobs claimed ahead of free slots (0: claim when a slot frees, like Loco)",
    )
    p.add_argument("--instance-id", default=None)
    p.add_argument(
        "--service", type=_parse_service, action="append", default=[], metavar="NAME=URL"
    )
    p.add_argument(
        "--max-requests-per-s", type=_parse_rate, action="append", default=[],
        metavar="NAME=R", help="pace requests to service NAME at R per second at most",
    )  # fmt: skip
    p.add_argument(
        "--job",
        action="append",
        default=[],
        help=f"job names to load at start ({', '.join(BUILTINS)} or pkg.mod:fn)",
    )
    p.add_argument("--max-attempts", type=int, default=DEFAULT_RETRY.max_attempts)
    p.add_argument("--backoff-ms", type=float, default=DEFAULT_RETRY.backoff_ms)
    p.add_argument("--max-backoff-ms", type=float, default=DEFAULT_RETRY.max_backoff_ms)
    p.add_argument("--jitter", choices=["full", "none"], default=DEFAULT_RETRY.jitter)
    p.add_argument(
        "--after-floor",
        choices=AFTER_FLOOR,
        default=DEFAULT_RETRY.after_floor,
        help="a Retry-After floor: jittered (floor + backoff draw) or exact (the floor itself)",
    )
    p.add_argument("--job-timeout-s", type=float, default=DEFAULT_JOB_TIMEOUT_S, help="0 for none")
    p.add_argument(
        "--grace-s", type=float, default=10.0, help="on SIGTERM, how long in-flight jobs may finish"
    )
    p.add_argument(
        "--heartbeat-ttl-s",
        type=float,
        default=10.0,
        help="a crashed instance's jobs return after this",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--log-level", default="WARNING")
    return p


def settings_from_args(ns: argparse.Namespace) -> WorkerSettings:
    if not ns.broker:
        raise ConfigError(f"give --broker URL, or set {BROKER_URL_ENV}")
    try:
        retry = RetryPolicy(
            ns.max_attempts, ns.backoff_ms, ns.max_backoff_ms, ns.jitter, ns.after_floor
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return WorkerSettings(
        broker_url=ns.broker,
        queue=ns.queue,
        num_workers=ns.num_workers,
        prefetch=ns.prefetch,
        instance_id=ns.instance_id or default_instance_id(),
        services=dict(ns.service),
        max_requests_per_s=dict(ns.max_requests_per_s),
        jobs=tuple(ns.job),
        retry=retry,
        job_timeout_s=ns.job_timeout_s or None,
        grace_s=ns.grace_s,
        heartbeat_ttl_s=ns.heartbeat_ttl_s,
        seed=ns.seed,
    )


async def serve(settings: WorkerSettings) -> None:
    """Run one instance until SIGTERM or SIGINT, then stop gracefully."""
    worker = Worker(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    await worker.run()


def run(settings: WorkerSettings, *, use_uvloop: bool = True) -> None:
    run_main(serve(settings), use_uvloop=use_uvloop)


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(
        level=ns.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    return exit_status(
        "lab.runtime.worker", lambda: run(settings_from_args(ns), use_uvloop=ns.loop == "uvloop")
    )


if __name__ == "__main__":
    sys.exit(main())
