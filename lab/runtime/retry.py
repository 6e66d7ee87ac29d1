"""Retry policy: exponential backoff with full jitter, then the dead-letter list."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed attempt is retried.

    The delay before attempt n+1 is drawn uniformly from [0, min(max_backoff_ms,
    backoff_ms * 2**(n-1))] ("full jitter", which spreads retries of jobs that failed together
    so they do not hit a recovering service in one wave). After `max_attempts` attempts the job
    goes to the dead-letter list.
    """

    max_attempts: int = 5
    backoff_ms: float = 50.0
    max_backoff_ms: float = 30_000.0
    jitter: Literal["full", "none"] = "full"

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_ms < 0 or self.max_backoff_ms < 0:
            raise ValueError("backoff_ms and max_backoff_ms must be >= 0")
        if self.jitter not in ("full", "none"):
            raise ValueError(f"jitter must be 'full' or 'none', got {self.jitter!r}")

    def should_retry(self, attempt: int) -> bool:
        """True if a job whose `attempt` just failed gets another one."""
        return attempt < self.max_attempts

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based) before the next one."""
        ceiling_ms = min(self.max_backoff_ms, self.backoff_ms * 2 ** (attempt - 1))
        if self.jitter == "full":
            return rng.uniform(0, ceiling_ms) / 1000
        return ceiling_ms / 1000


#: The defaults every entry point uses (scenario files, the worker's flags).
DEFAULT_RETRY = RetryPolicy()

#: Time limit of one attempt, in seconds, unless a scenario or `--job-timeout-s` says otherwise.
DEFAULT_JOB_TIMEOUT_S = 30.0
