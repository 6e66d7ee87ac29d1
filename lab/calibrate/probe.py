"""The probe's client: every request passes the owner's caps, and every response is recorded.

`Probe.send` is the only way out: a semaphore of `max_in_flight` permits is held from before the
rate cap (`lab.infra.pacing.Pacer`) until the response is read, so neither cap can be exceeded
whatever a phase asks for. Three ways of loading the service sit on it:
- `closed_loop`: `concurrency` clients, each sending its next request when the last returns;
- `paced`: open-loop starts at a fixed rate (the rate-limit phase);
- `connections`: `n` connections opened at once, one request each, twice (the connection limit).
A step ends at its time or request budget, or early once `stop_after` requests have failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import numpy as np

from lab.calibrate.target import Caps, Request, Target
from lab.infra.pacing import Pacer

TIMEOUT_S = 10.0
"""Time limit of one probe request; past it the request counts as failed (status 0)."""

STOP_AFTER_FAILURES = 5
"""A step ends early once this many of its requests failed: the service has said enough."""


@dataclass(slots=True)
class Sample:
    """One request: when it was sent (s since the probe began), how long it took, its answer."""

    sent_s: float
    latency_ms: float
    status: int  # HTTP status; 0: no answer (refused, reset, timed out)
    retry_after_s: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def done_s(self) -> float:
        return self.sent_s + self.latency_ms / 1000


@dataclass
class Step:
    """One load level of one phase, and its samples."""

    phase: str
    index: int
    concurrency: int
    items: int = 1
    paced_per_s: float | None = None
    started_s: float = 0.0
    issue_end_s: float = 0.0  # when the step stopped sending (throughput is counted until then)
    stopped_early: bool = False
    samples: list[Sample] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return sum(not s.ok for s in self.samples)

    def ok_latencies_ms(self) -> np.ndarray:
        return np.array([s.latency_ms for s in self.samples if s.ok], dtype=float)

    def count(self, status: int) -> int:
        return sum(s.status == status for s in self.samples)

    def summary(self) -> dict[str, Any]:
        """The step's figures: counts by outcome, rates, latency percentiles of the 2xx."""
        window = max(self.issue_end_s - self.started_s, 1e-9)
        in_window = [s for s in self.samples if s.done_s <= self.issue_end_s]
        ok = self.ok_latencies_ms()
        retry = [s.retry_after_s for s in self.samples if s.retry_after_s is not None]
        status_5xx = sum(500 <= s.status < 600 for s in self.samples)

        def pct(q: float) -> float:
            return float(np.percentile(ok, q)) if len(ok) else math.nan

        return {
            "phase": self.phase,
            "step": self.index,
            "concurrency": self.concurrency,
            "items": self.items,
            "paced_per_s": self.paced_per_s,
            "started_s": round(self.started_s, 4),
            "duration_s": round(window, 4),
            "stopped_early": self.stopped_early,
            "requests": len(self.samples),
            "ok": len(ok),
            "rejected_429": self.count(429),
            "with_retry_after": len(retry),
            "retry_after_s": float(np.median(retry)) if retry else math.nan,
            "status_503": self.count(503),
            "errors_5xx": status_5xx,
            "no_answer": self.count(0),
            "other_4xx": sum(400 <= s.status < 500 and s.status != 429 for s in self.samples),
            "ok_per_s": sum(s.ok for s in in_window) / window,
            "offered_per_s": sum(1 for s in self.samples if s.sent_s < self.issue_end_s) / window,
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "mean_ms": float(ok.mean()) if len(ok) else math.nan,
        }


def retry_after_s(value: str | None) -> float | None:
    """A Retry-After header in seconds: delay-seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def bulk_status(body: bytes) -> int:
    """An OpenSearch `_bulk` answer's worst item: 429 when any item was rejected, else 200 or
    the first item error's status (a rejected bulk still answers HTTP 200)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return 200
    if not isinstance(data, dict) or not data.get("errors"):
        return 200
    statuses = [
        int(next(iter(item.values())).get("status", 200))
        for item in data.get("items", [])
        if isinstance(item, dict) and item
    ]
    failed = [s for s in statuses if s >= 300]
    return 429 if 429 in failed else (failed[0] if failed else 200)


class Probe:
    """The capped client of one service; every phase sends through `send`."""

    def __init__(
        self,
        target: Target,
        caps: Caps,
        *,
        timeout_s: float = TIMEOUT_S,
        stop_after: int = STOP_AFTER_FAILURES,
    ) -> None:
        self.target, self.caps = target, caps
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.stop_after = stop_after
        self._in_flight_permits = asyncio.Semaphore(caps.max_in_flight)
        self._pacer = Pacer(caps.max_requests_per_s)
        self._t0 = asyncio.get_running_loop().time()
        self._ids = itertools.count()
        self._run = secrets.token_hex(3)
        self.in_flight = 0
        self.max_in_flight = 0
        self.send_times_s: list[float] = []
        self.steps: list[Step] = []

    # -- one request -------------------------------------------------------------------------------

    def now_s(self) -> float:
        return asyncio.get_running_loop().time() - self._t0

    def next_request(self, items: int = 1) -> Request:
        return self.target.request(f"cal-{self._run}-{next(self._ids)}", items)

    async def send(self, session: aiohttp.ClientSession, request: Request) -> Sample:
        """Send one request within both caps and record its answer (never raises on a failure)."""
        async with self._in_flight_permits:
            await self._pacer.wait()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            sent = self.now_s()
            self.send_times_s.append(sent)
            status, retry, error = 0, None, ""
            try:
                async with session.request(
                    request.method, request.url, data=request.body, headers=request.headers,
                    timeout=self.timeout,
                ) as resp:  # fmt: skip
                    body = await resp.read()
                    status = resp.status
                    retry = retry_after_s(resp.headers.get("Retry-After"))
                    if request.bulk and status == 200:
                        status = bulk_status(body)
            except TimeoutError:
                error = "timeout"
            except aiohttp.ClientError as exc:
                error = type(exc).__name__
            finally:
                self.in_flight -= 1
            return Sample(sent, (self.now_s() - sent) * 1000, status, retry, error)

    @contextlib.asynccontextmanager
    async def _session(self, limit: int) -> AsyncIterator[aiohttp.ClientSession]:
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
        async with aiohttp.ClientSession(connector=connector) as session:
            yield session

    def _step(self, phase: str, concurrency: int, items: int, per_s: float | None) -> Step:
        step = Step(phase, len(self.steps), concurrency, items, per_s, self.now_s())
        self.steps.append(step)
        return step

    # -- ways of loading the service -----------------------------------------------------------------

    async def closed_loop(
        self,
        phase: str,
        concurrency: int,
        *,
        duration_s: float,
        max_requests: int,
        items: int = 1,
        per_s: float | None = None,
        stop_on_failure: bool = True,
    ) -> Step:
        """`concurrency` clients back to back (all together at most `per_s` requests/s, when
        given), until `duration_s` or `max_requests` are used."""
        concurrency = min(concurrency, self.caps.max_in_flight)
        step = self._step(phase, concurrency, items, per_s)
        pacer = Pacer(per_s)
        deadline = step.started_s + duration_s
        sent = 0

        def more() -> bool:
            if step.issue_end_s:
                return False
            failed = stop_on_failure and step.failures >= self.stop_after
            if failed or sent >= max_requests or self.now_s() >= deadline:
                step.stopped_early = failed
                step.issue_end_s = self.now_s()
                return False
            return True

        async def client(session: aiohttp.ClientSession) -> None:
            nonlocal sent
            while more():
                sent += 1
                await pacer.wait()
                step.samples.append(await self.send(session, self.next_request(items)))

        async with self._session(concurrency) as session:
            await asyncio.gather(*(client(session) for _ in range(concurrency)))
        return step

    async def paced(
        self, phase: str, per_s: float, *, duration_s: float, concurrency: int, items: int = 1
    ) -> Step:
        """Open-loop: a request every 1/per_s s for `duration_s`, at most `concurrency` at once."""
        concurrency = min(concurrency, self.caps.max_in_flight)
        step = self._step(phase, concurrency, items, per_s)
        pacer, slots = Pacer(per_s), asyncio.Semaphore(concurrency)
        deadline = step.started_s + duration_s
        tasks: set[asyncio.Task[None]] = set()

        async def one(session: aiohttp.ClientSession) -> None:
            try:
                step.samples.append(await self.send(session, self.next_request(items)))
            finally:
                slots.release()

        async with self._session(concurrency) as session:
            try:
                while self.now_s() < deadline:
                    await slots.acquire()
                    await pacer.wait()
                    task = asyncio.create_task(one(session))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                step.issue_end_s = self.now_s()
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
        return step

    async def connections(self, phase: str, n: int) -> Step:
        """`n` connections at once, each sending one request, then one more on the same
        connection while all are still open: a connection limit refuses the same number twice."""
        n = min(n, self.caps.max_in_flight)
        step = self._step(phase, n, 1, None)
        async with contextlib.AsyncExitStack() as stack:
            sessions = [await stack.enter_async_context(self._session(1)) for _ in range(n)]
            for _ in range(2):
                step.samples += await asyncio.gather(
                    *(self.send(s, self.next_request()) for s in sessions)
                )
        step.issue_end_s = self.now_s()
        return step

    def max_per_second(self) -> int:
        """The most requests sent in any one-second window (what the rate cap bounds)."""
        times, best, lo = self.send_times_s, 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= 1.0:
                lo += 1
            best = max(best, hi - lo + 1)
        return best
