"""Adaptive `num_workers`: each instance sets its own slot limit from what its jobs see.

`num_workers: auto` replaces a fixed slot count by a limit between `min` and `max` that moves
with the service, the way TCP moves its congestion window. Jobs are grouped into sampling
windows (about two round trips, between `min_window_s` and `max_window_s`); at the end of each
window the limit is updated once:

- **gradient** (the default; latency-based, like Netflix concurrency-limits' Gradient/Vegas
  limits, brpc's auto limiter and Envoy's adaptive concurrency filter): the window's median job
  time is compared with the no-load latency (the lowest median of the last few windows pooled,
  re-learnt every `probe_every_s`). gradient = clamp(tolerance x no-load / median, 0.5, 1);
  new limit = limit x gradient + sqrt(limit) (+ 1 within CALM_AFTER windows of a drop, to
  probe a limit that rejects gently). While jobs wait nowhere the limit grows by sqrt(limit) a
  window; when they queue at the service it shrinks, to keep about sqrt(limit) jobs waiting
  there. When jobs stay over twice the tolerated latency for REPROBE_AFTER windows
  however far the limit falls, the service itself is slower (a brown-out): the no-load latency
  is re-learnt at the slower level, and the old one restored once jobs are fast again.
- **aimd** (loss-based, like Netflix's AIMDLimit): +1 a window while no job is rejected.

Both start in slow start (the limit doubles each window until the first sign of congestion),
and neither grows while fewer than half the slots are busy (nothing was learnt about more). On
a window with a drop (a 429, a 503 or a timeout: the service said it is overloaded) both
multiply the limit by `backoff`, and cap it at `tolerance` x the concurrency the service let
through in that window (Little's law: successes per second x their mean time): a rate limit
admits a fixed number of jobs at once, and the limit drops to it in one window. A rejection
comes back in a millisecond, so its slot would be turned away again and again; each drop holds
its slot for a typical job time (`limit` counts it out), and the limit does not grow before
the server's Retry-After, if it gave one. Other errors are ignored: a bug is not congestion.

A drop also teaches a **ceiling** (TCP CUBIC's W_max): the concurrency the service let through
when it turned jobs away (Little's law, the median over the last POOLED_DROPS drop windows).
Neither algorithm grows past it; a rate limit gives no latency signal, and every step past it
is a burst of 429s whose jobs wait out the Retry-After (the last of a backlog's jobs to finish).
The limit is let one step past the ceiling only after PROBE_GAP calm windows (a probe); a probe
that meets a drop doubles the gap (up to MAX_PROBE_GAP, about a minute), one that does not
doubles the next step, so a service that got more room is found in a few probes. When the
gradient sees the service's latency change (a brown-out begins or ends), the ceiling scales
with it: at a fixed rate, k times the latency lets k times as many jobs through at once.

Each window is recorded (`LimitEvent`) and written to the queue's `limits` list by
`record_limits`, so the trial can keep the limit of every instance over time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import aiohttp
import orjson
import redis
import redis.asyncio as aioredis

from lab.errors import ConfigError
from lab.runtime.queue import key_prefix

Algorithm = Literal["gradient", "aimd"]
ALGORITHMS: tuple[Algorithm, ...] = ("gradient", "aimd")

#: HTTP statuses that mean "too much load": the limit backs off.
OVERLOAD_STATUSES = frozenset({429, 503})

#: How often an instance writes its recorded windows to the broker.
RECORD_EVERY_S = 0.25


@dataclass(frozen=True)
class LimitSettings:
    """The bounds and the algorithm of one instance's slot limit (`num_workers: auto`)."""

    min: int = 1
    max: int = 256
    initial: int = 4
    algorithm: Algorithm = "gradient"
    backoff: float = 0.9  # the limit is multiplied by this on a window with a drop
    tolerance: float = 1.25  # gradient: a median up to this x the no-load latency is no queueing
    min_window_s: float = 0.1
    max_window_s: float = 1.0
    probe_every_s: float = 60.0  # gradient: re-learn the no-load latency this often

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.initial <= self.max:
            raise ConfigError(
                f"auto limits need 1 <= min <= initial <= max, got min {self.min}, "
                f"initial {self.initial}, max {self.max}"
            )
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"auto algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if not 0.5 <= self.backoff < 1:
            raise ConfigError(f"auto backoff must be in [0.5, 1), got {self.backoff}")
        if self.tolerance < 1 or not 0 < self.min_window_s <= self.max_window_s:
            raise ConfigError("auto tolerance must be >= 1 and 0 < min_window_s <= max_window_s")


class LimitEvent(NamedTuple):
    """One closed sampling window of one instance: the limit it left, and why."""

    instance: str
    t: float  # epoch seconds
    limit: int
    reason: str  # start, slow_start, gradient, increase, drop, hold, ceiling, probe, stop
    rtt_ms: float  # the window's median job time (NaN without a successful job)
    noload_ms: float  # the gradient's no-load latency (NaN for aimd)
    jobs: int
    drops: int


@dataclass
class _Window:
    started: float
    rtts: list[float] = field(default_factory=list)  # successful jobs only
    drops: int = 0
    max_in_flight: int = 0
    fastest: float = 0.0  # the shortest of `rtts`, kept as they come (checked every job)

    @property
    def jobs(self) -> int:
        return len(self.rtts) + self.drops


class Limiter:
    """A slot limit that moves with what the jobs see. Not thread-safe: one event loop's.

    Call `on_sample` once per finished attempt; read `limit` before claiming.
    """

    #: Drop windows whose admitted concurrency is pooled (median) into the ceiling.
    POOLED_DROPS = 5

    #: Calm windows (no drop) after a drop before the first probe past the learnt ceiling
    #: (about 100 round trips, 5 s at the shortest windows); doubled by every probe that
    #: meets a drop, up to MAX_PROBE_GAP (about a minute).
    PROBE_GAP = 50
    MAX_PROBE_GAP = 640

    #: Calm windows the limit must spend past the old ceiling before a probe counts as a
    #: success (the service had more room): one window past it proves nothing.
    PROBE_PROOF = 10

    def __init__(
        self,
        settings: LimitSettings,
        *,
        instance: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.instance = instance
        self._clock, self._wall = clock, wall
        self._limit = float(settings.initial)
        self.slow_start = True
        self.noload_s: float | None = None
        self._probe_at = clock() + settings.probe_every_s
        self._window = _Window(clock())
        self._typical_s = 0.0  # the last window's median job time
        self.windows_since_drop = 1_000_000
        self._grow_after = -math.inf  # a server's Retry-After: no growth before it
        self._penalty: deque[float] = deque()  # when each recent drop gives its slot back
        # the ceiling learnt from drops (see _learn_ceiling) and how it is probed past
        self.ceiling: float | None = None
        self._admitted: deque[float] = deque(maxlen=self.POOLED_DROPS)
        self._probe_gap = self.PROBE_GAP
        self._probe_step = 1.0
        self._calm = 0  # windows without a drop (after any Retry-After) since the last change
        self._probed_from: float | None = None  # the ceiling before a probe not yet settled
        self._beyond = 0  # calm windows since that probe with the limit past the old ceiling
        self.probes = 0  # times the limit was let past a learnt ceiling
        self.events: list[LimitEvent] = []
        self.mark("start")

    @property
    def limit(self) -> int:
        """The slots this instance may fill now: the limit, less the slots of recent drops."""
        penalty, now = self._penalty, self._clock()
        while penalty and penalty[0] <= now:
            penalty.popleft()
        return max(self.settings.min, int(self._limit) - len(penalty))

    def on_sample(
        self, rtt_s: float, in_flight: int, *, dropped: bool, retry_after_s: float | None = None
    ) -> None:
        """One finished attempt: its duration, the jobs in flight when it ended (itself
        included), and whether the service turned it away (429, 503, timeout), with the
        Retry-After it asked for: the limit does not grow until then."""
        now = self._clock()
        w = self._window
        if dropped:
            w.drops += 1
            self._grow_after = max(self._grow_after, now + (retry_after_s or 0.0))
            # A rejection comes back at once; its slot would ask again at once and be turned
            # away again, hundreds of times a second. It holds the slot for a typical job time.
            self._penalty.append(now + self._typical_s)
        else:
            w.fastest = min(w.fastest, rtt_s) if w.rtts else rtt_s
            w.rtts.append(rtt_s)
        if in_flight > w.max_in_flight:
            w.max_in_flight = in_flight
        if not self._window_closed(w, now):
            return
        self._window = _Window(now)
        rtt = statistics.median(w.rtts) if w.rtts else math.nan
        if w.rtts:
            self._typical_s = rtt
        if w.drops:
            self._limit *= self.settings.backoff
            if w.rtts:  # Little's law: the jobs the service let through were this many at once
                admitted = sum(w.rtts) / (now - w.started)
                self._limit = min(self._limit, self.settings.tolerance * admitted)
                self._admitted.append(admitted)
            self._learn_ceiling()
            self.slow_start = False
            self.windows_since_drop = 0
            reason = "drop"
        elif now < self._grow_after:  # the server asked for time: nothing grows meanwhile
            before = self._limit
            reason = self._update(w, rtt, now)
            if self._limit > before:
                self._limit, reason = before, "hold"
        else:
            self.windows_since_drop += 1
            self._calm += 1
            before = self._limit
            reason = self._update(w, rtt, now)
            if self._limit > before:
                reason = self._below_ceiling(before, reason)
            if self._probed_from is not None and self._limit > self._probed_from:
                self._beyond += 1
        self._limit = min(float(self.settings.max), max(float(self.settings.min), self._limit))
        self._record(reason, w, rtt)

    def _learn_ceiling(self) -> None:
        """A drop: the ceiling is what the service let through at once when it turned jobs
        away (the median over the last POOLED_DROPS drop windows: one 0.1-s window is noisy).
        A drop after a probe says the old ceiling was right: probe half as often from now."""
        if self._admitted:
            self.ceiling = statistics.median(self._admitted)
        if self._probed_from is not None:
            self._probe_gap = min(2 * self._probe_gap, self.MAX_PROBE_GAP)
            self._probe_step, self._probed_from = 1.0, None
        self._calm = 0

    def _below_ceiling(self, before: float, reason: str) -> str:
        """Growth stops at the learnt ceiling (CUBIC's W_max): every step past it is a burst
        of rejections whose jobs wait out the server's Retry-After. Once `_probe_gap` calm
        windows passed, the next window that presses on it raises it by a step (a probe). A
        probe whose limit then spent PROBE_PROOF windows past the old ceiling without a drop
        doubles the next step, and from the second such probe in a row halves the gap, so a
        ceiling that was learnt too low (the service got more room) is left in a few probes;
        a ceiling a little low (one step passes, the next is rejected) still doubles the gap
        at every rejected probe."""
        if self.ceiling is None or self._limit <= self.ceiling:
            return reason
        if self._calm >= self._probe_gap:
            if self._probed_from is not None and self._beyond >= self.PROBE_PROOF:
                self._probe_step *= 2  # the last probe met no drop: the service has more room
                if self._probe_step >= 4:  # twice in a row: it changed; find out sooner
                    self._probe_gap = max(self.PROBE_GAP, self._probe_gap // 2)
                self._admitted.clear()  # what it let through before is stale
            self._probed_from = self.ceiling
            self.ceiling += self._probe_step
            self._calm = self._beyond = 0
            self.probes += 1
            reason = "probe"
        self._limit = max(before, min(self._limit, self.ceiling))
        return reason if reason == "probe" else "ceiling"

    def rescale_ceiling(self, factor: float) -> None:
        """The service's latency changed by `factor` (a brown-out began or ended): a rate
        limit then lets `factor` times as many jobs through at once (Little's law); a limit on
        connections does not, and its next drop brings the ceiling back down."""
        if self.ceiling is not None:
            self.ceiling *= factor
        for i, admitted in enumerate(self._admitted):
            self._admitted[i] = admitted * factor

    def _window_closed(self, w: _Window, now: float) -> bool:
        s = self.settings
        elapsed = now - w.started
        if elapsed < min(s.max_window_s, max(s.min_window_s, 2 * w.fastest)):
            return False
        return w.jobs >= min(10, max(1, int(self._limit) // 2)) or elapsed >= s.max_window_s

    def _update(self, w: _Window, rtt: float, now: float) -> str:
        """The new `_limit` after a window without drops; returns the reason."""
        raise NotImplementedError

    def _app_limited(self, w: _Window) -> bool:
        """Fewer than half the slots were busy: the window says nothing about more."""
        return w.max_in_flight * 2 < self._limit

    def _record(self, reason: str, w: _Window, rtt_s: float) -> None:
        noload = math.nan if self.noload_s is None else self.noload_s * 1000
        self.events.append(
            LimitEvent(
                self.instance, self._wall(), int(self._limit), reason, rtt_s * 1000, noload,
                w.jobs, w.drops,
            )
        )  # fmt: skip

    def mark(self, reason: str) -> None:
        """Record the limit as it is now (at the start and the stop of the instance)."""
        self._record(reason, _Window(self._clock()), math.nan)

    def take_events(self) -> list[LimitEvent]:
        """The windows recorded since the last call."""
        events, self.events = self.events, []
        return events


class GradientLimiter(Limiter):
    """Latency against the no-load latency; see the module docstring."""

    #: Windows pooled for the no-load estimate: the lowest median of small windows is biased
    #: low by their noise (a lucky window), and would shrink the limit with no queueing at all.
    POOLED_WINDOWS = 4

    #: Windows in a row with the job time over twice the tolerated latency, however far the
    #: limit fell, before the no-load latency is re-learnt: shedding did not bring it down, so
    #: the service itself is slower (a brown-out), not queueing behind our own jobs.
    REPROBE_AFTER = 5

    #: Windows without a drop (after any Retry-After) before the limit grows by sqrt(limit)
    #: again rather than by 1.
    CALM_AFTER = 10

    def __init__(self, settings: LimitSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._recent: deque[list[float]] = deque(maxlen=self.POOLED_WINDOWS)
        self._slow_windows = 0
        self._baseline_s: float | None = None  # the no-load latency before a re-learn...
        self._relearnt_s = math.inf  # ...and the one re-learnt

    def _update(self, w: _Window, rtt: float, now: float) -> str:
        if math.isnan(rtt):
            return "hold"
        self._recent.append(w.rtts)
        pooled = statistics.median(x for rtts in self._recent for x in rtts)
        reprobe = self._slow_windows >= self.REPROBE_AFTER
        if self.noload_s is None or now >= self._probe_at or reprobe:
            if reprobe and self._baseline_s is None:
                self._baseline_s = self.noload_s
            if reprobe and self.noload_s:
                self.rescale_ceiling(pooled / self.noload_s)
            self.noload_s = self._relearnt_s = pooled
            self._probe_at = now + self.settings.probe_every_s
            self._slow_windows = 0
        elif self._baseline_s is not None and rtt < self._relearnt_s / 2:
            # jobs got much faster than the re-learnt latency: the brown-out is over
            self.rescale_ceiling(min(self._baseline_s, rtt) / self.noload_s)
            self.noload_s, self._baseline_s = min(self._baseline_s, rtt), None
        else:
            self.noload_s = min(self.noload_s, pooled)
        if self._app_limited(w):
            return "hold"
        gradient = min(1.0, self.settings.tolerance * self.noload_s / rtt)
        self._slow_windows = self._slow_windows + 1 if gradient < 0.5 else 0
        if self.slow_start:
            if gradient >= 1.0:
                self._limit *= 2
                return "slow_start"
            self.slow_start = False
        # near a limit that rejects, probe gently (+1); far from one, by sqrt(limit)
        headroom = math.sqrt(self._limit) if self.windows_since_drop > self.CALM_AFTER else 1.0
        self._limit = self._limit * max(0.5, gradient) + headroom
        return "gradient"


class AimdLimiter(Limiter):
    """Additive increase while nothing is rejected, multiplicative decrease when it is."""

    def _update(self, w: _Window, rtt: float, now: float) -> str:
        if self._app_limited(w):
            return "hold"
        if self.slow_start:
            self._limit *= 2
            return "slow_start"
        self._limit += 1
        return "increase"


def make_limiter(
    settings: LimitSettings,
    *,
    instance: str = "",
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> Limiter:
    """The limiter of `settings.algorithm`; `clock` times the windows, `wall` stamps events."""
    kind = GradientLimiter if settings.algorithm == "gradient" else AimdLimiter
    return kind(settings, instance=instance, clock=clock, wall=wall)


def is_overload(exc: BaseException) -> bool:
    """True when a failed attempt means the service is overloaded: a timeout, a 429 or a 503
    (from a `JobError` or aiohttp), or a connection the service dropped or refused."""
    if isinstance(exc, TimeoutError):
        return True
    if getattr(exc, "status", None) in OVERLOAD_STATUSES:
        return True
    return isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectorError)


# -- recording ----------------------------------------------------------------------------------


def limits_key(queue: str) -> str:
    """The Redis list that holds every instance's limit events (removed with the queue)."""
    return key_prefix(queue) + "limits"


async def record_limits(
    limiter: Limiter, client: aioredis.Redis, queue: str, stop: asyncio.Event
) -> None:
    """Write the limiter's windows to the broker every RECORD_EVERY_S until `stop`, then the
    last ones and a `stop` record. A broker hiccup keeps the events for the next try."""
    key = limits_key(queue)
    pending: list[LimitEvent] = []
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RECORD_EVERY_S)
        pending += limiter.take_events()
        if stop.is_set():
            limiter.mark("stop")
            pending += limiter.take_events()
        if pending:
            try:
                await client.rpush(key, *(orjson.dumps(list(e)) for e in pending))
                pending = []
            except (redis.ConnectionError, redis.TimeoutError):
                pass
        if stop.is_set():
            return


def read_limit_events(client: redis.Redis, queue: str) -> list[LimitEvent]:
    """Every limit event the instances of `queue` wrote, in the order they arrived (JSON has
    no NaN: a missing figure comes back as NaN)."""
    out = []
    for record in client.lrange(limits_key(queue), 0, -1):
        values: list[Any] = [math.nan if v is None else v for v in orjson.loads(record)]
        out.append(LimitEvent(*values))
    return out
