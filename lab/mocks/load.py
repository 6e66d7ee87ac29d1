"""The load model every mock shares: what a real service does when it is pushed.

A request passes, in order: the connection limit (decided once per TCP connection), the rate
limit (a token bucket shared by every client), then the capacity gate (`capacity` slots and a
bounded FIFO waiting room of `queue` places; past it, an immediate and cheap rejection). Once it
holds a slot it sleeps for its service time (one draw + `per_item_ms` x items, stretched by an
active brown-out), then may fail with an injected 5xx. Queue wait is part of what the client
sees, as on a real service; rejected requests cost no service time.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections import OrderedDict, deque
from typing import Any

from lab.mocks.distributions import make_sampler
from lab.mocks.spec import Brownout, ServiceSpec
from lab.mocks.stats import Stats


class Outcome(enum.IntEnum):
    """What happened to one unit of work (a request, or one shard part of a bulk)."""

    SERVED = 0
    REJECTED = 1  # the waiting room was full: 429
    FAILED = 2  # served, then an injected 5xx


class CapacityGate:
    """A semaphore with a bounded FIFO waiting room; a freed slot is handed to the oldest waiter."""

    def __init__(self, capacity: int, queue_places: int) -> None:
        self.capacity = capacity
        self.queue_places = queue_places
        self.in_flight = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def wait(self) -> None:
        """Wait in line; on return the caller holds a slot (handed over by `release`)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # a slot was handed to us as we were cancelled: pass it on
            else:
                self.waiters.remove(fut)
            raise

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot moves to the waiter: in_flight is unchanged
                return
        self.in_flight -= 1


class TokenBucket:
    """Steady refill of `per_s` tokens up to `burst`; starts full, like API gateways."""

    def __init__(self, per_s: float, burst: int) -> None:
        self.per_s = per_s
        self.burst = burst
        self.tokens = float(burst)
        self.last = time.monotonic()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until one will be available."""
        now = time.monotonic()
        tokens = min(self.burst, self.tokens + (now - self.last) * self.per_s)
        self.last = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.per_s


class ConnectionTracker:
    """Counts TCP connections and enforces `connection_limit`, once per connection.

    A connection takes a slot at its first service request (so control calls to `/_lab/` never
    take one) and holds it until it closes, as a Postgres backend does: idle keep-alive
    connections in a client pool keep their slot. Past the limit a connection is refused (its
    requests get 503, then it is closed) or waits, FIFO, until a held connection closes.
    """

    def __init__(self, spec: ServiceSpec) -> None:
        self.limit = spec.connection_limit
        self.refuse = spec.connection_overflow == "refuse"
        wait_ms = spec.connection_wait_timeout_ms
        self.wait_timeout_s = None if wait_ms is None else wait_ms / 1000
        self.open = 0
        self.max_open = 0
        self.total = 0
        self.held: set[object] = set()
        self._refused: set[object] = set()
        self.waiting: OrderedDict[object, asyncio.Future[bool]] = OrderedDict()

    def opened(self, conn: object) -> None:
        self.open += 1
        self.total += 1
        if self.open > self.max_open:
            self.max_open = self.open

    def closed(self, conn: object) -> None:
        self.open -= 1
        if self.limit is None:
            return
        self._refused.discard(conn)
        fut = self.waiting.pop(conn, None)
        if fut is not None and not fut.done():
            fut.set_result(False)
        if conn in self.held:
            self.held.remove(conn)
            while self.waiting and len(self.held) < self.limit:
                next_conn, next_fut = self.waiting.popitem(last=False)
                self.held.add(next_conn)
                if not next_fut.done():
                    next_fut.set_result(True)

    async def admit(self, conn: object) -> str | None:
        """None when `conn` may be served, else the rejection reason (its requests get 503)."""
        if self.limit is None or conn in self.held:
            return None
        if conn in self._refused:
            return "connection_limit"
        fut = self.waiting.get(conn)
        if fut is None:
            if len(self.held) < self.limit:
                self.held.add(conn)
                return None
            if self.refuse:
                self._refused.add(conn)
                return "connection_limit"
            fut = self.waiting[conn] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.wait_timeout_s):
                admitted = await asyncio.shield(fut)
        except TimeoutError:
            self.waiting.pop(conn, None)
            self._refused.add(conn)
            return "connection_wait_timeout"
        return None if admitted else "connection_limit"


def active_brownout(windows: list[Brownout], t_s: float) -> Brownout | None:
    """The first window covering `t_s` seconds after the epoch, if any."""
    for w in windows:
        if t_s < w.start_s:
            continue
        offset = t_s - w.start_s
        if w.every_s is not None:
            offset %= w.every_s
        if offset < w.duration_s:
            return w
    return None


class LoadModel:
    """One service's capacity, queue, limits, latency and failures, and its statistics."""

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.gate = CapacityGate(spec.capacity, spec.queue)
        limit = spec.rate_limit
        self.bucket = None if limit is None else TokenBucket(limit.per_s, limit.burst_requests)
        self.connections = ConnectionTracker(spec)
        self.stats = Stats(
            samples_cap=spec.samples_cap, interval_ms=spec.stats_interval_ms, seed=spec.seed
        )
        self._seed_draws(spec.seed)
        self._per_item_ms = spec.per_item_ms
        self._error_rate = spec.error_rate
        self._brownouts = spec.brownouts

    def take_token(self) -> float:
        """Rate limit: 0.0 when the request may go on, else seconds to wait (then 429)."""
        if self.bucket is None:
            return 0.0
        wait_s = self.bucket.take()
        if wait_s:
            self.stats.rejections["rate_limit"] += 1
        return wait_s

    async def serve(self, items: int) -> Outcome:
        """Pass the capacity gate, take the service time, maybe fail: one unit of work."""
        gate, stats = self.gate, self.stats
        if gate.in_flight < gate.capacity:
            gate.in_flight += 1
            if gate.in_flight > stats.max_in_flight:
                stats.max_in_flight = gate.in_flight
            wait_ms = 0.0
        elif len(gate.waiters) < gate.queue_places:
            if len(gate.waiters) >= stats.max_queue_depth:
                stats.max_queue_depth = len(gate.waiters) + 1
            started = time.monotonic()
            await gate.wait()
            wait_ms = (time.monotonic() - started) * 1000
        else:
            stats.rejections["queue_full"] += 1
            stats.rejected_items += items
            return Outcome.REJECTED
        error_rate, cause = self._error_rate, "injected"
        try:
            service_ms = self._draw() + self._per_item_ms * items
            if self._brownouts:
                window = active_brownout(self._brownouts, time.monotonic() - stats.epoch)
                if window is not None:
                    service_ms *= window.latency_x
                    if window.error_rate is not None:
                        error_rate, cause = window.error_rate, "brownout"
            if service_ms > 0:
                await asyncio.sleep(service_ms / 1000)
            stats.record(wait_ms, service_ms)
        finally:
            gate.release()
        stats.served += 1
        stats.served_items += items
        if error_rate and self._uniform() < error_rate:
            stats.errors[cause] += 1
            stats.failed_items += items
            return Outcome.FAILED
        return Outcome.SERVED

    def sample(self) -> None:
        """One point of the in-flight / queue-depth / connections time series."""
        self.stats.sample(self.gate.in_flight, len(self.gate.waiters), self.connections.open)

    def _seed_draws(self, seed: int) -> None:
        self._draw = make_sampler(self.spec.latency, random.Random(f"{seed}:latency"))
        self._uniform = random.Random(f"{seed}:errors").random

    def busy(self) -> dict[str, int]:
        """What a trial left behind that a fresh service would not hold: requests in flight or
        waiting, connections holding or awaiting a slot of the connection limit."""
        left = {
            "in_flight": self.gate.in_flight,
            "queue_depth": len(self.gate.waiters),
            "connections_held": len(self.connections.held),
            "connections_waiting": len(self.connections.waiting),
        }
        return {k: v for k, v in left.items() if v}

    def reseed(self, seed: int) -> None:
        """As if just started with `seed`: every random stream restarted, the token bucket full,
        the statistics zeroed. The caller checks `busy()` first: leftovers would leak."""
        self.spec = self.spec.model_copy(update={"seed": seed})
        self._seed_draws(seed)
        self.stats.reseed(seed)
        if self.bucket is not None:
            self.bucket.tokens, self.bucket.last = float(self.bucket.burst), time.monotonic()
        self.reset()

    def reset(self) -> None:
        """Zero the statistics and restart the epoch (brown-outs are timed from it)."""
        self.stats.reset()
        self.stats.max_in_flight = self.gate.in_flight
        self.stats.max_queue_depth = len(self.gate.waiters)
        self.connections.max_open = self.connections.open
        self.connections.total = 0

    def to_json(self) -> dict[str, Any]:
        out = self.stats.to_json()
        out["max"]["connections"] = self.connections.max_open
        out["now"] = {
            "in_flight": self.gate.in_flight,
            "queue_depth": len(self.gate.waiters),
            "connections": self.connections.open,
            "connections_held": len(self.connections.held),
            "connections_waiting": len(self.connections.waiting),
        }
        out["connections_total"] = self.connections.total
        out["kind"] = self.spec.kind
        out["spec"] = self.spec.model_dump(mode="json")
        return out
