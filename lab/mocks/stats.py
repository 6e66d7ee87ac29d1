"""What a mock saw during a trial: counters, a bounded sample of service times, a time series.

Everything here is bounded in memory whatever the trial length: service and wait times are kept
in a uniform reservoir (`samples_cap`), the time series in a ring (`SERIES_CAP` points).

`GET /_lab/stats` (all since the mock's start or last reset; JSON with sorted keys):
  schema_version, kind, spec (the ServiceSpec), elapsed_s
  requests, items          HTTP requests to the service / items they carried (bulk documents)
  served, served_items     units of work that got a slot (a request, or one shard part of a
                           bulk), including those that then failed with an injected error
  rejected, rejected_items, rejections {queue_full, rate_limit, connection_limit,
                           connection_wait_timeout}  (429 / 503, no service time spent)
  errors, failed_items, errors_by_cause {injected, brownout}  (5xx)
  max {in_flight, queue_depth, connections}, now {in_flight, queue_depth, connections,
      connections_held, connections_waiting}, connections_total
  series {interval_ms, t_s[], in_flight[], queue_depth[], connections[], requests[]}
      (`requests` is cumulative, so rates can be derived)
  samples {cap, seen, service_ms[], wait_ms[]}  (pairs: one served unit each)
  opensearch only: opensearch {indices {NAME: {docs, writes, unique_ids_written,
      duplicate_writes, duplicate_ids_sample[], deletes, not_found, conflicts}}, totals {...}}
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from typing import Any

# Format history of the `GET /_lab/stats` document:
#   1 - first version (counters, rejections, errors, maxima, series, samples, service).
STATS_SCHEMA_VERSION = 1

SERIES_CAP = 36_000
"""Time-series points kept: one hour at the default 100 ms interval."""


class Stats:
    """Counters and samples of one mock since its start or its last reset."""

    def __init__(self, *, samples_cap: int, interval_ms: float, seed: int) -> None:
        self.samples_cap = samples_cap
        self.interval_ms = interval_ms
        self._seed = seed
        self.reset()

    def reseed(self, seed: int) -> None:
        """Draw the reservoir's samples from `seed` from now on (applied by the next reset)."""
        self._seed = seed

    def reset(self) -> None:
        """Zero everything and restart the clock (the trial's epoch)."""
        self.epoch = time.monotonic()
        self.requests = 0
        self.items = 0
        self.served = 0
        self.served_items = 0
        self.rejected_items = 0
        self.failed_items = 0
        self.rejections: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.max_in_flight = 0
        self.max_queue_depth = 0
        self.seen = 0
        self.service_ms: list[float] = []
        self.wait_ms: list[float] = []
        self._rng = random.Random(f"{self._seed}:samples")
        self.series: deque[tuple[float, int, int, int, int]] = deque(maxlen=SERIES_CAP)

    #: What a restarted mock carries over from the process before it (see `state`).
    _CARRIED = (
        "epoch", "requests", "items", "served", "served_items", "rejected_items",
        "failed_items", "max_in_flight", "max_queue_depth", "seen", "service_ms", "wait_ms",
    )  # fmt: skip

    def state(self) -> dict[str, Any]:
        """Everything counted so far, for the process that replaces this one after a restart.

        The epoch is a `time.monotonic()` value: the system-wide clock on Linux, so the new
        process on the same host keeps the series' times and the brown-out schedule."""
        out = {name: getattr(self, name) for name in self._CARRIED}
        return out | {
            "rejections": dict(self.rejections),
            "errors": dict(self.errors),
            "series": list(self.series),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Go on counting from a previous process's `state()`: one trial across a restart."""
        for name in self._CARRIED:
            setattr(self, name, state[name])
        self.rejections = Counter(state["rejections"])
        self.errors = Counter(state["errors"])
        self.series = deque((tuple(p) for p in state["series"]), maxlen=SERIES_CAP)

    def record(self, wait_ms: float, service_ms: float) -> None:
        """Keep one served unit's times: algorithm R, so every unit is equally likely kept."""
        self.seen += 1
        if len(self.service_ms) < self.samples_cap:
            self.service_ms.append(service_ms)
            self.wait_ms.append(wait_ms)
            return
        j = int(self._rng.random() * self.seen)
        if j < self.samples_cap:
            self.service_ms[j] = service_ms
            self.wait_ms[j] = wait_ms

    def sample(self, in_flight: int, queue_depth: int, connections: int) -> None:
        """One time-series point; `requests` is cumulative so rates can be derived."""
        t_s = time.monotonic() - self.epoch
        self.series.append((round(t_s, 4), in_flight, queue_depth, connections, self.requests))

    def to_json(self) -> dict[str, Any]:
        """The load-model part of `GET /_lab/stats` (the service adds its own keys)."""
        columns = list(zip(*self.series, strict=True)) if self.series else [(), (), (), (), ()]
        return {
            "schema_version": STATS_SCHEMA_VERSION,
            "elapsed_s": round(time.monotonic() - self.epoch, 4),
            "requests": self.requests,
            "items": self.items,
            "served": self.served,
            "served_items": self.served_items,
            "rejected": sum(self.rejections.values()),
            "rejected_items": self.rejected_items,
            "rejections": dict(self.rejections),
            "errors": sum(self.errors.values()),
            "failed_items": self.failed_items,
            "errors_by_cause": dict(self.errors),
            "max": {
                "in_flight": self.max_in_flight,
                "queue_depth": self.max_queue_depth,
            },
            "series": {
                "interval_ms": self.interval_ms,
                "t_s": list(columns[0]),
                "in_flight": list(columns[1]),
                "queue_depth": list(columns[2]),
                "connections": list(columns[3]),
                "requests": list(columns[4]),
            },
            "samples": {
                "cap": self.samples_cap,
                "seen": self.seen,
                "service_ms": [round(v, 4) for v in self.service_ms],
                "wait_ms": [round(v, 4) for v in self.wait_ms],
            },
        }
