"""The probe's plan: which load levels to try, in which order, and when to stop.

1. warm-up: a few requests at one client; an answer the protocol does not explain (404, 400...)
   stops here with a clear error, before any load.
2. ladder: closed loops of 1, 2, 4, ... clients up to `max_in_flight`. It stops when a step's
   throughput stops growing (past the knee), when 429s, 5xx or refusals appear, when the rate
   cap bounds the step, at the cap, or when the budget is used.
3. then, by what stopped it:
   - past the knee: one step at `max_in_flight` (the service's rate cannot grow in a closed
     loop past its knee, only its waiting room fills); if that gets 429s, bisect for the
     depth at which the waiting room rejects;
   - 429s on queued requests: bisect for that depth;
   - 429s while latency was still flat (or with Retry-After): a rate limit. Idle so its bucket
     refills, pace above it, fit the accepted rate; without Retry-After, check below it that
     the 429s stop (else it limits concurrency, not rate);
   - refusals (503, no answer): open n connections at once, twice (the connection limit).
4. batches: each `--batch-sizes` value at a concurrency below the knee, paced below any rate
   limit, for `per_item_ms`.
Every step goes through `Probe.send`, so the caps hold whatever a phase asks for.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lab.calibrate.fit import Verdict, clean, find_knee, fit_rate, grew, steady_throughput
from lab.calibrate.probe import Probe, Step
from lab.calibrate.target import Caps, Target
from lab.errors import ConfigError, ServiceError

MAX_STEP_REQUESTS = 1000
"""A load level ends after this many requests (or its time share): enough for a stable p99."""

WARM_UP_REQUESTS = 5
RATE_CAP_SHARE = 0.9
"""A step sending at this share of max_requests_per_s measures the cap, not the service."""
REFILL_IDLE_S = 1.5
"""Idle before the rate phase, so a token bucket starts full (the burst can then be seen)."""
RATE_MARGIN = 1.25
"""The rate phase paces this much above what the rejecting rung asked for."""
QUEUED = 1.3
"""Median latency this many times the low-load median: the requests waited in a queue."""
RATE_CHECK_SHARE = 0.02
"""Paced at 80 % of the accepted rate, a token bucket rejects (almost) nothing; a concurrency
limit without a waiting room still rejects whenever its slots happen to be full."""


@dataclass
class Budget:
    """The probe's time: `total_s` for everything; a load level gets `step_s` at most."""

    total_s: float
    started_s: float = 0.0
    step_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.total_s > 0 and math.isfinite(self.total_s)):
            raise ConfigError(f"--budget-s must be a number of seconds > 0, got {self.total_s}")
        # about 14 steps' worth: the ladder (the lone client twice), the rate phase and its
        # check, the batches; the idle before the rate phase comes off the top
        self.step_s = min(10.0, max(0.4, (self.total_s - REFILL_IDLE_S) / 14))
        self.started_s = asyncio.get_running_loop().time()

    def remaining_s(self) -> float:
        return self.total_s - (asyncio.get_running_loop().time() - self.started_s)

    def share(self, wanted_s: float) -> float:
        return max(0.0, min(wanted_s, self.remaining_s()))


@dataclass
class Measured:
    """Everything the probe did: its steps, what it concluded on the way, its own cap check."""

    steps: list[Step]
    notes: list[str] = field(default_factory=list)
    verdict: Verdict | None = None
    max_in_flight_seen: int = 0
    max_requests_in_1s: int = 0
    requests: int = 0
    duration_s: float = 0.0


def rungs(cap: int) -> list[int]:
    """1, 2, 4, ... below the cap, then the cap."""
    out, c = [], 1
    while c < cap:
        out.append(c)
        c *= 2
    return [*out, cap]


async def _warm_up(probe: Probe) -> None:
    step = await probe.closed_loop(
        "warmup", 1, duration_s=30.0, max_requests=WARM_UP_REQUESTS, stop_on_failure=False
    )
    answered = [s for s in step.samples if s.status]
    if not answered:
        errors = sorted({s.error for s in step.samples})
        raise ServiceError(
            f"{probe.target.url}: no answer to {len(step.samples)} requests ({', '.join(errors)})"
        )
    odd = [s.status for s in answered if 400 <= s.status < 500 and s.status != 429]
    if odd:
        req = probe.next_request()
        raise ConfigError(
            f"{probe.target.url} answered HTTP {odd[0]} to {req.method} {req.url}: "
            f"is --protocol {probe.target.protocol} right for this service?"
        )


class Plan:
    """Runs the phases in order against one probe; `notes` says what each found or skipped."""

    def __init__(
        self,
        probe: Probe,
        budget: Budget,
        progress: Callable[[Step], None],
        batch_sizes: Sequence[int],
    ) -> None:
        self.probe, self.budget, self.progress = probe, budget, progress
        self.batch_sizes = batch_sizes
        self.caps: Caps = probe.caps
        self.notes: list[str] = []
        self.verdict: Verdict | None = None  # what the 429s were, once the rate phase ran
        self.rate_per_s: float | None = None

    async def step(
        self,
        phase: str,
        concurrency: int,
        *,
        share: float = 1.0,
        items: int = 1,
        per_s: float | None = None,
    ) -> Step | None:
        """One closed-loop level with its time share, or None when the budget is used up."""
        duration = self.budget.share(self.budget.step_s * share)
        if duration < 0.1:
            self.notes.append(f"budget used up before {phase} at {concurrency} clients")
            return None
        step = await self.probe.closed_loop(
            phase, concurrency, duration_s=duration, max_requests=MAX_STEP_REQUESTS,
            items=items, per_s=per_s,
        )  # fmt: skip
        self.progress(step)
        return step

    async def run(self) -> None:
        await _warm_up(self.probe)
        last, prev = await self.ladder()
        if last is not None and not clean(last):
            await self.after_failures(last, prev)
        await self.batches()

    async def ladder(self) -> tuple[Step | None, Step | None]:
        """(the step that stopped the ladder, the last clean one before it)."""
        prev: Step | None = None
        for c in rungs(self.caps.max_in_flight):
            # one client alone gives the latency least disturbed by load: measure it longest
            step = await self.step("ladder", c, share=2.0 if c == 1 else 1.0)
            if step is None:
                return prev, prev
            if not clean(step):
                self.notes.append(f"ladder stopped at {c} clients: {_failures(step)}")
                return step, prev
            if step.summary()["offered_per_s"] >= RATE_CAP_SHARE * self.caps.max_requests_per_s:
                self.notes.append(
                    f"ladder stopped at {c} clients: the rate cap ({self.caps.max_requests_per_s:g}/s) bounds it"
                )
                return step, prev
            if prev is not None and not grew(prev, step):
                self.notes.append(
                    f"ladder stopped at {c} clients: throughput {steady_throughput(step):.1f}/s, "
                    f"{steady_throughput(prev):.1f}/s at {prev.concurrency} (past the knee)"
                )
                await self.fill_queue(step)
                return step, prev
            prev = step
        self.notes.append(
            f"ladder reached max_in_flight ({self.caps.max_in_flight}) without a knee"
        )
        return prev, prev

    async def fill_queue(self, past_knee: Step) -> None:
        """Past the knee: clients only wait, so go to the cap; bisect if the room overflows."""
        if past_knee.concurrency >= self.caps.max_in_flight:
            return
        top = await self.step("queue", self.caps.max_in_flight)
        if top is not None and top.count(429):
            await self.bisect(past_knee.concurrency, top.concurrency)

    async def bisect(self, lo: int, hi: int) -> None:
        """The smallest concurrency with a 429 between a clean `lo` and a rejecting `hi`."""
        while hi - lo > 1:
            mid = (lo + hi) // 2
            step = await self.step("queue", mid, share=0.5)
            if step is None:
                return
            lo, hi = (lo, mid) if step.count(429) else (mid, hi)
        self.notes.append(f"the waiting room overflows from {hi} clients in flight")

    async def after_failures(self, last: Step, prev: Step | None) -> None:
        refused = last.count(503) + last.count(0)
        rejected = last.count(429)
        if refused and refused >= rejected:
            await self.connections(last.concurrency)
            return
        if not rejected:
            return  # 5xx without refusals: counted as the error rate
        low = find_knee(self.probe.steps)
        summary = last.summary()
        queued = low is not None and (
            low.capacity is not None or summary["p50_ms"] > QUEUED * low.service_mean_ms
        )
        lo = prev.concurrency if prev is not None else 0
        if summary["with_retry_after"] * 2 >= rejected or not queued:
            # the rejecting rung asked for about c/lo times the last clean rung's rate: go past it
            clean_per_s = steady_throughput(prev) * last.concurrency / lo if prev else math.nan
            wanted = clean_per_s if math.isfinite(clean_per_s) else 2 * summary["ok_per_s"]
            await self.rate(RATE_MARGIN * wanted, lo, last.concurrency)
        elif lo:
            await self.bisect(lo, last.concurrency)

    async def rate(self, wanted_per_s: float, lo: int, hi: int) -> None:
        """Pace above the limit and tell what the 429s are (`self.verdict`): a rate limit, a
        full waiting room (the accepted requests waited: then bisect its depth between `lo` and
        `hi` clients), or a concurrency limit without one (429s even below the rate)."""
        per_s = min(self.caps.max_requests_per_s, max(1.0, wanted_per_s))
        idle = self.budget.share(REFILL_IDLE_S)
        await asyncio.sleep(idle)
        duration = self.budget.share(max(1.0, 2 * self.budget.step_s))
        if duration < 0.5:
            self.notes.append("budget used up before the rate phase")
            return
        step = await self.probe.paced(
            "rate", per_s, duration_s=duration, concurrency=self.caps.max_in_flight
        )
        self.progress(step)
        found = fit_rate(step)
        if found is None:
            self.notes.append(
                f"no 429 at {per_s:.0f} requests/s for {duration:.1f} s: the earlier ones were a "
                "burst, or the limit is above the caps"
            )
            return
        if found.retry_after_share >= 0.5:
            self.verdict, self.rate_per_s = "rate", found.per_s
            return
        knee = find_knee(self.probe.steps)
        if knee is not None and found.accepted_p50_ms > QUEUED * float(
            np.median(knee.low_load_ms())
        ):
            self.verdict = "queue"
            self.notes.append(
                f"paced above it, the accepted requests waited (median {found.accepted_p50_ms:.0f} "
                "ms): the 429s come from a full waiting room, not a rate limit"
            )
            if lo:
                await self.bisect(lo, hi)
            return
        check = await self.probe.paced(
            "rate_check", 0.8 * found.per_s, duration_s=self.budget.share(self.budget.step_s),
            concurrency=self.caps.max_in_flight,
        )  # fmt: skip
        self.progress(check)
        share = check.count(429) / max(1, len(check.samples))
        self.verdict = "rate" if share <= RATE_CHECK_SHARE else "concurrency"
        if self.verdict == "rate":
            self.rate_per_s = found.per_s
        self.notes.append(
            f"at 80% of the accepted rate, {share:.1%} got 429: "
            + (
                "a rate limit"
                if self.verdict == "rate"
                else "a limit on requests at once, not on rate"
            )
        )

    async def connections(self, n: int) -> None:
        for size in sorted({n, min(self.caps.max_in_flight, n + max(2, n // 2))}):
            if self.budget.remaining_s() < 0.2:
                self.notes.append("budget used up before the connection phase")
                return
            step = await self.probe.connections("connections", size)
            self.progress(step)
            await asyncio.sleep(0.05)  # let the service see the connections close

    async def batches(self) -> None:
        knee = find_knee(self.probe.steps)
        top = (knee.capacity or knee.at_least) if knee is not None else 1
        clients = max(1, min(4, top // 2))
        per_s = 0.7 * self.rate_per_s if self.rate_per_s else None
        for items in self.batch_sizes:
            step = await self.step("batch", clients, items=items, per_s=per_s)
            if step is None:
                return
            if not clean(step):
                self.notes.append(f"batch of {items}: {_failures(step)}; larger batches skipped")
                return


def _failures(step: Step) -> str:
    s = step.summary()
    parts = [
        f"{s['rejected_429']} x 429" if s["rejected_429"] else "",
        f"{s['status_503']} x 503" if s["status_503"] else "",
        f"{s['errors_5xx'] - s['status_503']} other 5xx"
        if s["errors_5xx"] > s["status_503"]
        else "",
        f"{s['no_answer']} unanswered" if s["no_answer"] else "",
    ]
    return ", ".join(p for p in parts if p) + f" of {s['requests']} requests"


async def measure(
    target: Target,
    caps: Caps,
    *,
    budget_s: float,
    batch_sizes: Sequence[int],
    progress: Callable[[Step], None] = lambda step: None,
) -> Measured:
    """Probe `target` within `caps` and `budget_s`; the steps and what was concluded."""
    probe = Probe(target, caps)
    budget = Budget(budget_s)
    plan = Plan(probe, budget, progress, batch_sizes)
    await plan.run()
    return Measured(
        steps=[s for s in probe.steps if s.phase != "warmup"],
        notes=plan.notes,
        verdict=plan.verdict,
        max_in_flight_seen=probe.max_in_flight,
        max_requests_in_1s=probe.max_per_second(),
        requests=len(probe.send_times_s),
        duration_s=budget.total_s - budget.remaining_s(),
    )
