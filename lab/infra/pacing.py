"""A strict request-rate cap for clients of a real service: the calibrator and the workers.

A token bucket would allow a burst; a service's owner who says "at most R requests per second"
means it over any second. `Pacer` spaces request starts at least 1/R apart, so any half-open
window of one second holds at most ceil(R) starts, whatever the concurrency of its callers.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from types import SimpleNamespace

import aiohttp


class Pacer:
    """Starts spaced at least `1 / per_s` seconds apart (no burst); shared by concurrent tasks.

    Each caller reserves the next free start time, then sleeps until it: a cancelled caller
    leaves its slot unused, which only makes the rate lower.
    """

    def __init__(self, per_s: float | None) -> None:
        if per_s is not None and not (per_s > 0 and math.isfinite(per_s)):
            raise ValueError(f"per_s must be a positive number or None, got {per_s!r}")
        self.per_s = per_s
        self.interval_s = 0.0 if per_s is None else 1.0 / per_s
        self._next_at = -math.inf

    async def wait(self) -> None:
        """Return at this caller's start time (at once when there is no cap)."""
        if self.per_s is None:
            return
        loop = asyncio.get_running_loop()
        at = max(loop.time(), self._next_at)
        self._next_at = at + self.interval_s
        await asyncio.sleep(max(0.0, at - loop.time()))
        # loops with millisecond timers (uvloop) may wake a little early: sleep the rest
        if (remaining := at - loop.time()) > 0:
            await asyncio.sleep(remaining + 0.001)


def pacing_trace(per_s_by_url: Mapping[str, float]) -> aiohttp.TraceConfig:
    """An aiohttp trace config that holds every request to one of the base URLs (the keys)
    until its `Pacer` allows it; requests to other URLs pass at once."""
    pacers = [(url.rstrip("/"), Pacer(per_s)) for url, per_s in per_s_by_url.items()]

    async def on_request_start(
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        url = str(params.url)
        for base, pacer in pacers:
            if url == base or url.startswith(base + "/"):
                await pacer.wait()
                return

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    return trace
