"""Retry policy: exponential backoff with full jitter, a server's Retry-After as a floor, then the
dead-letter list."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

#: Doublings past this cannot matter (2**64 x any backoff exceeds any ceiling) and would only
#: overflow a float: attempt 1,100 of a job would raise instead of waiting.
_MAX_DOUBLINGS = 64

AfterFloor = Literal["jittered", "exact"]

#: How a server's Retry-After floor is honoured (workload.retry.after_floor).
AFTER_FLOOR: tuple[AfterFloor, ...] = ("jittered", "exact")


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed attempt is retried.

    The backoff before attempt n+1 is drawn uniformly from [0, min(max_backoff_ms,
    backoff_ms * 2**(n-1))] ("full jitter", which spreads retries of jobs that failed together
    so they do not hit a recovering service in one wave); `jitter="none"` takes the ceiling
    itself. After `max_attempts` attempts the job goes to the dead-letter list.

    A server's Retry-After is a floor, not a schedule (`after_floor`):
    - "jittered" (default): wait the floor PLUS a backoff draw whose window is at least the
      floor itself (capped at max_backoff_ms). Every job rejected in the same second gets the
      same whole-second floor; the draw spreads them over the next floor-long window (or the
      job's backoff, when that is wider), so they come back spread out, not at one instant.
      A window narrower than the floor would leave each wave's shape intact: a cohort rejected
      over 0.7 s would come back over 0.7 s plus a few ms, with an idle gap between waves.
    - "exact": wait max(floor, backoff draw), i.e. exactly the floor whenever the backoff is
      shorter. Jobs rejected together come back together, one wave per floor, and a rate limit
      answers most of each wave with 429 again (a retry storm: kept to show one).
    """

    max_attempts: int = 5
    backoff_ms: float = 50.0
    max_backoff_ms: float = 30_000.0
    jitter: Literal["full", "none"] = "full"
    after_floor: AfterFloor = "jittered"

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not (0 <= self.backoff_ms < math.inf and 0 <= self.max_backoff_ms < math.inf):
            raise ValueError("backoff_ms and max_backoff_ms must be finite numbers >= 0")
        if self.jitter not in ("full", "none"):
            raise ValueError(f"jitter must be 'full' or 'none', got {self.jitter!r}")
        if self.after_floor not in AFTER_FLOOR:
            raise ValueError(f"after_floor must be 'jittered' or 'exact', got {self.after_floor!r}")

    def should_retry(self, attempt: int) -> bool:
        """True if a job whose `attempt` just failed gets another one."""
        return attempt < self.max_attempts

    def delay_s(self, attempt: int, rng: random.Random, *, at_least_ms: float = 0.0) -> float:
        """The backoff draw after failed attempt `attempt` (1-based), in seconds; the window is
        the exponential ceiling, widened to `at_least_ms`, capped at max_backoff_ms."""
        doublings = min(max(attempt - 1, 0), _MAX_DOUBLINGS)
        ceiling_ms = min(self.max_backoff_ms, max(self.backoff_ms * 2.0**doublings, at_least_ms))
        if self.jitter == "full":
            return rng.uniform(0, ceiling_ms) / 1000
        return ceiling_ms / 1000

    def retry_delay_s(self, attempt: int, rng: random.Random, floor_s: float | None) -> float:
        """Seconds to wait before the next attempt, honouring a server's Retry-After `floor_s`."""
        if not floor_s:
            return self.delay_s(attempt, rng)
        if self.after_floor == "exact":
            return max(self.delay_s(attempt, rng), floor_s)
        return floor_s + self.delay_s(attempt, rng, at_least_ms=floor_s * 1000)


#: The defaults every entry point uses (scenario files, the worker's flags).
DEFAULT_RETRY = RetryPolicy()

#: Time limit of one attempt, in seconds, unless a scenario or `--job-timeout-s` says otherwise.
DEFAULT_JOB_TIMEOUT_S = 30.0
