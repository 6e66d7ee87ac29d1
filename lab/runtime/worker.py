"""One worker instance: one OS process running up to `num_workers` jobs at once on one event loop.

This is the knob of Loco's BackgroundQueue worker: `num_workers` async slots per process, and
`instances` processes side by side.

How a job flows through an instance (Loco's semantics: a job is claimed only for a free slot,
unless `prefetch` asks for more):
- Slots are long-lived tasks, made as needed up to `slot_limit` (the one place that says how
  many jobs may run at once); each runs one job after another.
- Exchanges with Redis go through one pipelined connection (`lab.runtime.wire`). One call of
  the exchange script acks the jobs finished since the last call, records their events,
  schedules retries and dead letters, and claims as many new jobs as there are free slots not
  yet asked for, atomically. The first slot to free in a turn of the event loop sends one at
  once, even while earlier ones are still on the wire; the others that free in the same turn
  go together at its end, unless the last exchange left `EXCHANGE_SPACING_S` ago or more (a
  turn lasts milliseconds when many jobs end together): then they ask at once too. A reply
  hands the claimed jobs to idle slots straight from the connection's callback. Under load
  many jobs finish per turn, so acks and claims batch.
- When a claim comes back short (the queue is empty), a waiter blocks on BLMOVE (no polling
  delay) and triggers an exchange as soon as a job arrives.
- A heartbeat task refreshes this instance's heartbeat and reaps instances whose heartbeat
  expired (crash recovery, see `lab.runtime.queue`). After a lost exchange connection, the
  instance reconnects and takes back the jobs an exchange claimed whose reply was lost.
- One timer enforces every attempt's timeout (attempts share it, so deadlines come in start
  order); every attempt's outcome passes through `_settle`.
- With `num_workers: auto` (`--num-workers auto`), `slot_limit` is an adaptive limit
  (`lab.runtime.limits`) that every finished attempt feeds (its time, or a 429/503/timeout).
- The instance measures its own cost (`lab.runtime.telemetry`): the slot gap, the exchange's
  round trip and batch; it writes one record at its stop.

Stop (SIGTERM or SIGINT): stop claiming, let running jobs finish within `grace_s`, cancel the
rest, flush acks, and put every unfinished job (and any claimed but not started) back at the
head of the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import logging
import math
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
import orjson
import redis
import redis.asyncio as aioredis

from lab.errors import BrokerError, ConfigError, exit_status
from lab.infra.aio import run_main
from lab.infra.broker import BROKER_URL_ENV, redact_url
from lab.infra.pacing import pacing_trace
from lab.runtime.jobs import BUILTINS, Handler, JobContext, JobError, execute, item_count, resolve
from lab.runtime.limits import ALGORITHMS, LimitSettings, is_overload, make_limiter, record_limits
from lab.runtime.queue import (
    DEAD,
    EXCHANGE_LUA,
    OK,
    RELEASE_LUA,
    RETRY,
    QueueKeys,
    encode_event,
    encode_job,
)
from lab.runtime.retry import AFTER_FLOOR, DEFAULT_JOB_TIMEOUT_S, DEFAULT_RETRY, RetryPolicy
from lab.runtime.telemetry import RuntimeStats
from lab.runtime.wire import WireConnection

log = logging.getLogger(__name__)

#: A worker that cannot reach its broker for this long exits (status 1).
BROKER_LOST_S = 30.0

#: Longest single BLMOVE wait: bounds how long a stop waits for the waiter to come back.
_BLOCK_S = 0.5

#: How the error of an attempt that hit the job timeout begins (trials count them).
TIMEOUT_ERROR = "timeout after"

#: Within one turn of the event loop, a freed slot asks at once only if the last exchange went
#: out this long ago; otherwise it joins the turn's next one. A turn can last milliseconds when
#: many jobs end together (each ending runs its body's code first), and a slot that waited for
#: the turn's end waited that long.
EXCHANGE_SPACING_S = 0.0005

#: Pause before an exchange is retried after the broker connection failed.
_RETRY_EXCHANGE_S = 0.2


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class WorkerSettings:
    """Everything one instance needs; the CLI flags map one to one onto these fields."""

    broker_url: str = field(repr=False)  # may hold a password: see lab.infra.broker.redact_url
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
    retry: RetryPolicy = DEFAULT_RETRY
    job_timeout_s: float | None = DEFAULT_JOB_TIMEOUT_S
    grace_s: float = 10.0
    heartbeat_ttl_s: float = 10.0
    seed: int | None = None
    # `num_workers: auto`: the slots filled follow this limit (num_workers is then its max).
    limit: LimitSettings | None = None

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
        self._limiter = (
            None
            if settings.limit is None
            else make_limiter(settings.limit, instance=self.instance_id)
        )
        self._stop_requested = asyncio.Event()
        self._accepting = True
        # The job slots: long-lived tasks, made as needed up to `slot_limit`, each running one
        # job after another (no task per job). Idle ones wait on a future for their next job.
        self._slots: set[asyncio.Task[None]] = set()
        self._idle_slots: collections.deque[asyncio.Future[tuple[str, float]]] = collections.deque()
        self._busy = 0  # slots given a job
        # Slots running a job, with its deadline (loop time; in start order, and so in deadline
        # order, since every attempt has the same timeout).
        self._running: dict[asyncio.Task[None], float] = {}
        self._job_ids: dict[asyncio.Task[None], str] = {}  # the job each busy slot runs
        self._expired: set[asyncio.Task[None]] = set()  # cancelled by their deadline
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._held: collections.deque[str] = collections.deque()  # claimed, waiting for a slot
        # When each free slot freed, oldest first (for the slot gap).
        self._free_since: collections.deque[float] = collections.deque()
        self._reserved = 0  # jobs asked for by exchanges still on the wire
        self._exchanges = 0  # exchanges still on the wire
        self._flush_handle: asyncio.Handle | None = None
        self._turn_sent = False  # an exchange went out in this turn of the loop
        self._last_sent = 0.0  # when the last exchange went out (perf_counter)
        self._idle = asyncio.Event()  # no job running
        self._wire_idle = asyncio.Event()  # no exchange on the wire
        self._queue_empty = asyncio.Event()  # the last claim came back short: block on BLMOVE
        self._recovering: asyncio.Task[None] | None = None
        self._resyncing = False  # reading back our processing hash after a reconnect
        self._next_due: float | None = None
        self.stats = RuntimeStats()
        # Outcomes waiting for the next exchange.
        self._acks: list[str] = []
        self._events: list[bytes] = []
        self._retries: list[str] = []  # flat (id, due, payload) triples
        self._dead: list[str] = []  # flat (id, payload) pairs

    @property
    def instance_id(self) -> str:
        return self.settings.instance_id

    @property
    def slot_limit(self) -> int:
        """How many jobs this instance may run at once, now. The one place a dynamic limit
        (for example an adaptive one) plugs in: claims and slot filling both read it."""
        return self.settings.num_workers if self._limiter is None else self._limiter.limit

    def stop(self) -> None:
        """Ask for a graceful stop (safe to call from a signal handler on the loop)."""
        self._stop_requested.set()

    async def run(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self._failure: asyncio.Future[None] = self._loop.create_future()
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
        # The attempt's own deadline bounds every request in it; a session-wide timeout on top
        # would only cost a timer per request (about 15 % of aiohttp's calls per request).
        timeout = aiohttp.ClientTimeout(total=None) if s.job_timeout_s else aiohttp.ClientTimeout()
        try:
            paced = {s.services[name]: r for name, r in s.max_requests_per_s.items()}
            traces = [pacing_trace(paced)] if paced else None
            async with aiohttp.ClientSession(
                connector=connector, timeout=timeout, trace_configs=traces
            ) as session:
                self._ctx = JobContext(
                    instance=self.instance_id, session=session, services=s.services
                )
                await self._wire.connect()
                await self._beat()
                await self._reap()
                await self._serve()
        finally:
            self._wire.close()
            await self._redis.aclose()
            await self._blocking.aclose()

    async def _serve(self) -> None:
        # These two stop by themselves once stop is requested: cancelling a Redis command in
        # flight (above all a blocking one) can wedge redis-py's connection (redis-py #2579).
        self_stopping = {
            asyncio.create_task(self._wait_for_work(), name="waiter"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        }
        if self._limiter is not None:
            recorder = record_limits(
                self._limiter, self._redis, self.settings.queue, self._stop_requested
            )
            self_stopping.add(asyncio.create_task(recorder, name="limits"))
        stop = asyncio.create_task(self._stop_requested.wait(), name="stop")
        now = time.time()
        self._free_since.extend(now for _ in range(self.slot_limit))
        self._idle.set()
        self._wire_idle.set()
        self._schedule_exchange()
        log.info(
            "%s ready: %d slots on queue %r", self.instance_id, self.slot_limit, self.settings.queue
        )
        everything: set[asyncio.Future[Any]] = {*self_stopping, stop, self._failure}
        done, _ = await asyncio.wait(everything, return_when=asyncio.FIRST_COMPLETED)
        self.stop()
        await self._shutdown(self_stopping)
        for task in done - {stop}:
            task.result()  # a runtime task must never end by itself: re-raise what ended it

    def _fail(self, exc: BaseException) -> None:
        """A bug or a broker refusal in a callback: end the instance with it (see `_serve`)."""
        if not self._failure.done():
            self._failure.set_exception(exc)

    async def _shutdown(self, self_stopping: set[asyncio.Task[None]]) -> None:
        self._accepting = False
        self._queue_empty.set()  # let the waiter see the stop...
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            if self._blocking_client_id is not None:  # ...now, not when its BLMOVE times out
                await self._redis.client_unblock(self._blocking_client_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.settings.grace_s)
        slots = list(self._slots)
        for task in slots:
            task.cancel()  # a running job's attempt is cut; it goes back to the queue below
        await asyncio.gather(*slots, return_exceptions=True)
        if self._recovering is not None:
            self._recovering.cancel()
        await self._flush_outcomes()
        _, late = await asyncio.wait(self_stopping, timeout=_BLOCK_S + 5)
        for task in late:  # last resort; should not happen
            task.cancel()
        keys = [self.keys.instances, self.keys.pending, self.keys.stats]
        try:
            record = self.stats.record(self.instance_id, self.slot_limit)
            await self._redis.rpush(self.keys.runtime, orjson.dumps(record))
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

    async def _flush_outcomes(self) -> None:
        """The last acks and events: wait for the exchanges on the wire, send what is left."""
        for attempt in range(4):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wire_idle.wait(), 10)
            if not self._has_outcomes():
                return
            if attempt == 3:
                break
            try:
                await self._wire.connect()
            except redis.ConnectionError:
                await asyncio.sleep(_RETRY_EXCHANGE_S)
            else:
                self._exchange()
                await asyncio.sleep(0)  # let an exchange that could not be sent report it
        log.error("%s could not write its last outcomes; its jobs may run again", self.instance_id)

    # -- the job slots --------------------------------------------------------------------------

    def _fill_slots(self) -> None:
        """Give held jobs to idle slots (or new ones) while fewer than `slot_limit` are busy."""
        if not self._accepting:
            return
        held, idle = self._held, self._idle_slots
        while held and self._busy < self.slot_limit:
            job = (held.popleft(), self._next_free_since())
            self._busy += 1
            while idle:
                waiter = idle.pop()
                if not waiter.done():
                    waiter.set_result(job)
                    break
            else:
                self._slots.add(self._loop.create_task(self._slot(job)))
        if self._busy:
            self._idle.clear()

    def _next_free_since(self) -> float:
        return self._free_since.popleft() if self._free_since else time.time()

    async def _slot(self, job: tuple[str, float]) -> None:
        """One job slot: runs its job, then the next one it is given, until the instance stops.

        The attempt is awaited right here, not in a coroutine of its own: every await inside a
        job resumes through each frame above it, so each level costs a little on every job.
        """
        task = asyncio.current_task()
        assert task is not None
        try:
            while True:
                try:  # from `_begin` on: whatever happens, the slot is freed
                    job_id, msg, started, handler, error = self._begin(job, task)
                    extra: Any = None
                    retry_after_s: float | None = None
                    if handler is not None:
                        try:
                            extra = await execute(handler, self._ctx, msg["args"])
                            self._observe(started, overload=False)
                        except asyncio.CancelledError:
                            if task not in self._expired:
                                raise  # a stop, not a timeout
                            self._expired.discard(task)
                            task.uncancel()
                            error = f"{TIMEOUT_ERROR} {self.settings.job_timeout_s:g}s"
                            self._observe(started, overload=True)
                        except Exception as exc:
                            error = _describe(exc)
                            retry_after_s = getattr(exc, "retry_after_s", None)
                            if is_overload(exc):  # other errors say nothing about load
                                self._observe(started, overload=True, retry_after_s=retry_after_s)
                    retryable = handler is not None  # an unknown job name: retrying cannot help
                    self._settle(job_id, msg, started, error, retry_after_s, retryable, extra)
                finally:
                    self._slot_freed(task)
                waiter: asyncio.Future[tuple[str, float]] = self._loop.create_future()
                self._idle_slots.append(waiter)
                if self._held:  # prefetched jobs: this slot (the last idle one) takes the first
                    self._fill_slots()
                job = await waiter  # a future already done: no turn of the loop is lost
        except Exception as exc:  # a bug of the runtime, not of a job: end the instance
            self._fail(exc)

    def _begin(
        self, job: tuple[str, float], task: asyncio.Task[None]
    ) -> tuple[str, dict[str, Any], float, Handler | None, str | None]:
        """Start an attempt in slot `task`: its deadline, its slot gap, its handler (None, with
        the error, for an unknown job name)."""
        started = time.time()
        timeout_s = self.settings.job_timeout_s
        if timeout_s is not None:
            self._running[task] = self._loop.time() + timeout_s
            if self._deadline_timer is None:
                self._arm_deadlines()
        else:
            self._running[task] = math.inf
        payload, free_since = job
        job_id, _, body = payload.partition(" ")
        self._job_ids[task] = job_id
        msg = orjson.loads(body)
        if msg["att"] == 1:  # the slot gap: a free slot and an available job, kept apart
            enqueued = msg["enq"]
            self.stats.slot_gap.add(started - (enqueued if enqueued > free_since else free_since))
        try:
            return (
                job_id,
                msg,
                started,
                self._handlers.get(msg["job"]) or self._resolve_late(msg["job"]),
                None,
            )
        except ConfigError as exc:
            return job_id, msg, started, None, str(exc)

    def _arm_deadlines(self) -> None:
        """One timer for every running job's timeout, at the earliest deadline (the oldest job)."""
        for deadline in self._running.values():
            self._deadline_timer = self._loop.call_at(deadline, self._expire)
            return
        self._deadline_timer = None

    def _expire(self) -> None:
        """Cancel the jobs past their deadline; `_slot` turns that into a timed-out attempt."""
        now = self._loop.time()
        late = []
        for task, deadline in self._running.items():
            if deadline > now:
                break
            late.append(task)
        for task in late:
            self._expired.add(task)
            task.cancel()
        self._arm_deadlines()

    def _observe(
        self, started: float, *, overload: bool, retry_after_s: float | None = None
    ) -> None:
        """Feed the `auto` limiter one finished attempt: its time, or an overload (with the
        server's Retry-After)."""
        if self._limiter is not None:
            rtt_s = time.time() - started
            self._limiter.on_sample(
                rtt_s, len(self._running), dropped=overload, retry_after_s=retry_after_s
            )

    def _settle(
        self, job_id: str, msg: dict[str, Any], started: float, error: str | None,
        retry_after_s: float | None, retryable: bool, extra: Any,
    ) -> None:  # fmt: skip
        """Record one finished attempt: the one place every job outcome passes (an adaptive
        limit observes latency and rejections here)."""
        finished = time.time()
        name, args, attempt, enqueued = msg["job"], msg["args"], msg["att"], msg["enq"]
        retry = self.settings.retry
        if error is None:
            outcome = OK
            self._acks.append(job_id)
        elif retryable and retry.should_retry(attempt):
            outcome = RETRY
            delay_s = retry.retry_delay_s(attempt, self._rng, retry_after_s)
            again = encode_job(job_id, name, args, enqueued, attempt + 1)
            self._retries += [job_id, repr(finished + delay_s), again]
        else:
            outcome = DEAD
            self._dead += [
                job_id,
                encode_job(job_id, name, {**args, "_error": error}, enqueued, attempt),
            ]
        self._events.append(
            encode_event(
                job_id, name, self.settings.instance_id, enqueued, started, finished, attempt, outcome,
                item_count(args), error, dict(extra) if extra else None,
            )
        )  # fmt: skip

    def _slot_freed(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)  # absent if `_begin` failed before recording the attempt
        self._job_ids.pop(task, None)
        if self._expired:  # a handler that turned its cancellation into another error
            self._expired.discard(task)
        self._busy -= 1
        self._free_since.append(time.time())
        if not self._busy:
            self._idle.set()
        if not self._turn_sent:  # the first slot to free in this turn of the loop asks at once
            self._turn_sent = True
            self._loop.call_soon(self._new_turn)
            self._exchange()
        elif time.perf_counter() - self._last_sent >= EXCHANGE_SPACING_S:
            self._exchange()  # a long turn (many jobs ending together): ask again, now
        else:
            self._schedule_exchange()  # the others that free in this turn go together

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

    def _has_outcomes(self) -> bool:
        return bool(self._acks or self._events or self._retries or self._dead)

    def _wanted(self) -> int:
        """Jobs to claim now: free places (slots, plus `prefetch`) no exchange has asked for yet."""
        if not self._accepting:
            return 0
        room = self.slot_limit + self.settings.prefetch
        return room - self._busy - len(self._held) - self._reserved

    def _new_turn(self) -> None:
        self._turn_sent = False

    def _schedule_exchange(self) -> None:
        """Exchange on the next turn of the loop: the jobs that finish in this turn go together."""
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._exchange)

    def _exchange(self) -> None:
        """Send one exchange: write outcomes, claim up to the free places; the reply comes to
        `_on_exchange`. Never waits: earlier exchanges may still be on the wire."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        want = max(0, self._wanted())
        if want == 0 and not self._has_outcomes():
            return
        if self._resyncing:
            return  # `_recover` exchanges when it is done
        if not self._wire.connected:
            self._broker_trouble(redis.ConnectionError("not connected"))
            return
        acks, events, retries, dead = self._acks, self._events, self._retries, self._dead
        self._acks, self._events, self._retries, self._dead = [], [], [], []
        head: list[Any] = [
            time.time(), want, len(acks), len(events), len(retries) // 3, len(dead) // 2,
        ]  # fmt: skip
        self._reserved += want
        self._exchanges += 1
        self._wire_idle.clear()
        self._last_sent = sent_at = time.perf_counter()
        callback = functools.partial(
            self._on_exchange, want, (acks, events, retries, dead), sent_at
        )
        self._wire.send_script(
            self._exchange_sha, self._exchange_keys, head + acks + events + retries + dead, callback
        )

    def _on_exchange(
        self, want: int, outcomes: tuple[list[Any], ...], sent_at: float, reply: Any
    ) -> None:
        try:
            self._reserved -= want
            self._exchanges -= 1
            if not self._exchanges:
                self._wire_idle.set()
            if isinstance(reply, redis.ConnectionError):
                # Keep the outcomes for the next try; jobs stay claimed meanwhile. Acks are
                # idempotent, but if the script ran and only its reply was lost, these events
                # are written twice and the jobs it claimed wait in our processing hash until
                # we stop (then go back).
                acks, events, retries, dead = outcomes
                self._acks, self._events = acks + self._acks, events + self._events
                self._retries, self._dead = retries + self._retries, dead + self._dead
                self._broker_trouble(reply)
                return
            if isinstance(reply, Exception):
                raise reply
            stats = self.stats
            stats.exchange_rtt.add(time.perf_counter() - sent_at)
            stats.exchanges += 1
            claimed, next_due = reply
            self._next_due = float(next_due) if next_due else None
            if want:
                stats.claims += 1
                stats.claimed += len(claimed)
                if claimed:
                    self._held.extend(claimed)
                    self._fill_slots()
                if self._accepting and len(claimed) < want:
                    self._queue_empty.set()
        except BaseException as exc:
            self._fail(exc)

    def _broker_trouble(self, exc: Exception) -> None:
        """The exchange connection failed: reconnect in the background, then exchange again."""
        if not self._accepting or (self._recovering is not None and not self._recovering.done()):
            return
        log.warning("exchange with the broker failed (%s); retrying", exc)
        self._recovering = self._loop.create_task(self._recover(), name="recover")

    async def _recover(self) -> None:
        """Reopen the exchange's connection, then take back the jobs our processing hash holds
        that this instance does not know of: those an exchange claimed whose reply was lost.
        Without this they would sit there, claimed and idle, until the instance stops."""
        while True:
            await asyncio.sleep(_RETRY_EXCHANGE_S)
            try:
                await self._wire.connect()
                self._resyncing = True  # no exchange until the hash is read
                known = self._known_job_ids()  # as of the HGETALL: it is sent right now
                held = await self._wire.call("HGETALL", self._exchange_keys[1])
            except redis.ConnectionError as exc:
                log.warning("reconnecting to the broker failed (%s); retrying", exc)
                continue
            finally:
                self._resyncing = False
            break
        lost = [held[i + 1] for i in range(0, len(held), 2) if held[i] not in known]
        if lost:
            log.warning(
                "%s took back %d jobs whose claim reply was lost", self.instance_id, len(lost)
            )
            self._held.extend(lost)
            self._fill_slots()
        self._schedule_exchange()

    def _known_job_ids(self) -> set[str]:
        """Jobs this instance holds: running, held for a slot, or waiting for their outcome's
        write."""
        known = set(self._job_ids.values())
        known.update(p.partition(" ")[0] for p in self._held)
        known.update(self._acks, self._retries[::3], self._dead[::2])
        return known

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
            self._schedule_exchange()

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


def _num_workers(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or auto, got {text!r}") from None


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
    p.add_argument(
        "--num-workers",
        type=_num_workers,
        default=1,
        help="jobs this instance runs at once, or `auto` (a limit that adapts: --auto-*)",
    )
    p.add_argument("--auto-min", type=int, default=LimitSettings.min, help="auto: fewest slots")
    p.add_argument("--auto-max", type=int, default=LimitSettings.max, help="auto: most slots")
    p.add_argument("--auto-initial", type=int, default=LimitSettings.initial, help="auto: first")
    p.add_argument("--auto-algorithm", choices=ALGORITHMS, default=LimitSettings.algorithm)
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
    limit = None
    if ns.num_workers == "auto":
        limit = LimitSettings(ns.auto_min, ns.auto_max, ns.auto_initial, ns.auto_algorithm)
    return WorkerSettings(
        broker_url=ns.broker,
        queue=ns.queue,
        num_workers=ns.num_workers if limit is None else limit.max,
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
        limit=limit,
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
