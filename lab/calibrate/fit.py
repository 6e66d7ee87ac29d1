"""From the probe's steps to the load model's parameters, each with the evidence behind it.

- capacity: the knee. Below it, a closed loop of c clients gets X(c) = c / S; past it, the
  throughput stays at K / S however many clients wait. So K = X_plateau x S, with S the fitted
  mean service time (Little's law on the requests in service). From outside, S includes the
  client's and the network's own time per request, so K comes out K x (1 + that / S).
- the queue: past the knee latency grows by about S / K per extra client; a full waiting room
  answers 429 from c = K + queue + 1 on, found by bisection.
- the rate limit: the accepted rate once 429s start, from a paced phase above it; the burst is
  what passed before the first 429 beyond the refill; and whether 429s carry Retry-After.
- the connection limit: how many of n connections opened at once are served, twice.
- per_item_ms: the slope of the median latency against the items per request.
- the latency distribution: the families of `lab.mocks.spec` fitted to the low-load samples.
A value the probe could not reach (a knee above the caps) is reported as a bound, not a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lab.calibrate.probe import Step
from lab.calibrate.target import Caps, Target
from lab.external import ExternalService
from lab.mocks.distributions import mean_ms
from lab.mocks.spec import RateLimit, ServiceSpec

if TYPE_CHECKING:  # scipy loads with the fit, not while the probe runs
    from lab.calibrate.latency import FamilyFit

PLATEAU_SHARE = 0.85
"""A step past the busiest one is on the plateau when it keeps this share of its throughput."""

LOW_LOAD_SLACK = 1.15
"""A low-load step's mean latency is within this factor of the lightest step's."""

GROWTH = 0.5
"""More clients must add at least this share of linear growth, else the knee is past: below the
knee, a client's own overhead growing with the load costs less than that; past it, throughput
grows only by that overhead."""

CLEAN_FAILURES = 0.01
"""A step with at most this share of failed requests still measures the service (rare 5xx)."""

MIN_R_SQUARED = 0.8
"""Below this R², latency does not follow the items per request: per_item_ms is 0."""

CLOSED_PHASES = ("ladder", "queue")

Verdict = Literal["rate", "concurrency", "queue"]
"""What 429s were: a rate limit; a concurrency limit without a waiting room; a full one."""


def clean(step: Step) -> bool:
    return bool(step.samples) and step.failures <= CLEAN_FAILURES * len(step.samples)


def steady_throughput(step: Step) -> float:
    """2xx per second from the step's first answer until it stopped sending (pipeline filled)."""
    done = sorted(s.done_s for s in step.samples if s.ok and s.done_s <= step.issue_end_s)
    if len(done) < 2:
        return math.nan
    return (len(done) - 1) / max(done[-1] - done[0], 1e-9)


def grew(prev: Step, step: Step) -> bool:
    """Did throughput grow from `prev` to `step` by at least GROWTH of linear growth?"""
    ratio = step.concurrency / prev.concurrency
    return steady_throughput(step) >= steady_throughput(prev) * (1 + GROWTH * (ratio - 1))


def _pooled(steps: list[Step]) -> np.ndarray:
    return np.concatenate([s.ok_latencies_ms() for s in steps]) if steps else np.array([])


@dataclass
class Knee:
    """Where throughput stopped growing with concurrency, or the bound when it never did."""

    capacity: int | None  # None: not reached
    estimate: float
    at_least: int
    throughput_per_s: float  # at the plateau, or the most measured
    service_mean_ms: float
    low_load: list[Step]
    plateau: list[Step]

    def low_load_ms(self) -> np.ndarray:
        return _pooled(self.low_load)

    def in_service(self, service_mean_ms: float) -> tuple[float, float]:
        """(requests in service at the plateau, its standard error): X_plateau x S by Little's
        law. The error combines the plateau's completions and the low-load mean's spread."""
        low = _pooled(self.low_load)
        estimate = self.throughput_per_s * service_mean_ms / 1000
        if len(low) < 2 or not self.plateau:
            return estimate, math.nan
        cv = float(low.std(ddof=1) / low.mean())
        done = sum(len(s.ok_latencies_ms()) for s in self.plateau)
        return estimate, estimate * cv * math.sqrt(1 / len(low) + 1 / max(done, 1))


def find_knee(steps: list[Step]) -> Knee | None:
    """The knee of the closed-loop, one-item steps without rejections; None without any.

    The plateau starts at the first step whose throughput did not grow with its clients (by
    at least GROWTH of linear growth; `grew`), and holds it and the later steps that kept
    PLATEAU_SHARE of its best; without such a step the knee was not reached. The low-load steps
    are those below the knee whose mean latency stays within LOW_LOAD_SLACK of the lightest
    step's: the client's own overhead grows with its rate, and must not pass for service time.
    """
    closed = sorted(
        (s for s in steps if s.phase in CLOSED_PHASES and s.items == 1 and clean(s)),
        key=lambda s: s.concurrency,
    )
    closed = [s for s in closed if len(s.ok_latencies_ms()) >= 5]
    if not closed:
        return None
    rates = [steady_throughput(s) for s in closed]
    first = next((i for i in range(1, len(closed)) if not grew(closed[i - 1], closed[i])), None)
    best = max(rates[first:]) if first is not None else max(rates)
    past = (
        []
        if first is None
        else [
            s
            for s, x in zip(closed[first:], rates[first:], strict=True)
            if x >= PLATEAU_SHARE * best
        ]
    )
    d1 = float(closed[0].ok_latencies_ms().mean())
    if not past:
        low = [s for s in closed if s.ok_latencies_ms().mean() <= LOW_LOAD_SLACK * d1]
        service_ms = float(_pooled(low).mean())
        return Knee(None, math.nan, closed[-1].concurrency, best, service_ms, low, [])
    plateau = past
    weights = np.array([s.issue_end_s - s.started_s for s in plateau])
    x_plateau = float(np.average([steady_throughput(s) for s in plateau], weights=weights))
    estimate = x_plateau * d1 / 1000
    low = closed[:1]
    for _ in range(3):  # the low-load steps are those at or below the knee: refine both
        low = [
            s
            for s in closed
            if s not in plateau
            and s.concurrency <= estimate + 0.5
            and s.ok_latencies_ms().mean() <= LOW_LOAD_SLACK * d1
        ] or low
        service_ms = float(_pooled(low).mean())
        estimate = x_plateau * service_ms / 1000
    return Knee(
        max(1, round(estimate)),
        estimate,
        plateau[0].concurrency,
        x_plateau,
        service_ms,
        low,
        plateau,
    )


@dataclass
class Fit:
    """Every fitted parameter, the twin `ServiceSpec`, and one sentence of evidence for each."""

    spec: ServiceSpec
    latency_fits: list[FamilyFit]
    findings: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # numbers for the report and JSON
    low_load_ms: np.ndarray = field(default_factory=lambda: np.array([]))  # what was fitted

    @property
    def latency(self) -> FamilyFit:
        return self.latency_fits[0]


def queue_depth(steps: list[Step], capacity: int) -> tuple[int, bool, str]:
    """(queue places, whether the rejecting depth was seen, why): from the closed-loop steps."""
    closed = [s for s in steps if s.phase in CLOSED_PHASES and s.items == 1]
    clean_c = [s.concurrency for s in closed if s.count(429) == 0 and clean(s)]
    rejecting = [s.concurrency for s in closed if s.count(429) > 0]
    top = max(clean_c, default=capacity)
    depth = max(0, top - capacity)
    if not rejecting:
        return (
            depth,
            False,
            (
                f"no 429 up to {top} clients in flight: the waiting room holds at least {depth} "
                "(a bound: the caps kept the probe from filling it)"
            ),
        )
    above = [c for c in rejecting if c > top]
    first = min(above) if above else min(rejecting)
    exact = first == top + 1
    how = f"{top} clients never got a 429, {first} did" + ("" if exact else " (not bisected)")
    return depth, exact, f"rejects past {capacity} served + {depth} waiting: {how}"


def latency_growth(knee: Knee, capacity: int, service_ms: float) -> tuple[float, float] | None:
    """(measured, expected) ms of latency per extra client past the knee, or None.

    Past the knee a closed loop of c clients waits c x S / K in all (Little's law), so the
    mean latency grows by S / K per client, from S at c = K."""
    if not knee.plateau:
        return None
    cs = [capacity] + [s.concurrency for s in knee.plateau]
    ms = [service_ms] + [float(s.ok_latencies_ms().mean()) for s in knee.plateau]
    slope = float(np.polyfit(cs, ms, 1)[0])
    return slope, service_ms / capacity


@dataclass
class RateFit:
    per_s: float
    burst: int
    retry_after_share: float
    retry_after_s: float | None
    rejected: int
    window_s: float
    accepted_p50_ms: float  # of the requests accepted once 429s started: queued, or not


def fit_rate(step: Step) -> RateFit | None:
    """The accepted rate once 429s start (by send time), the burst before them, Retry-After."""
    samples = sorted(step.samples, key=lambda s: s.sent_s)
    first = next((s.sent_s for s in samples if s.status == 429), None)
    if first is None:
        return None
    end = step.issue_end_s
    window = end - first
    if window <= 0:
        return None
    per_s = sum(s.ok for s in samples if first <= s.sent_s < end) / window
    before = sum(s.ok for s in samples if s.sent_s < first)
    burst = max(1, round(before - per_s * (first - step.started_s)))
    rejected = [s for s in samples if s.status == 429]
    accepted = [s.latency_ms for s in samples if s.ok and first <= s.sent_s < end]
    with_header = [s.retry_after_s for s in rejected if s.retry_after_s is not None]
    return RateFit(
        per_s=per_s,
        burst=burst,
        retry_after_share=len(with_header) / len(rejected),
        retry_after_s=float(np.median(with_header)) if with_header else None,
        rejected=len(rejected),
        window_s=window,
        accepted_p50_ms=float(np.median(accepted)) if accepted else math.nan,
    )


def connection_limit(steps: list[Step]) -> tuple[int | None, str]:
    """Served connections out of n opened at once, when some were refused (503 or no answer)."""
    served: list[int] = []
    for s in (s for s in steps if s.phase == "connections"):
        n = s.concurrency
        for part in (s.samples[:n], s.samples[n:]):
            if any(x.status in (0, 503) for x in part):
                served.append(sum(x.ok for x in part))
    if not served:
        return None, ""
    if len(set(served)) == 1:
        why = f"{served[0]} connections served, the rest refused, in {len(served)} tries"
        return served[0], why
    return None, f"refusals did not follow the connection count (served {served})"


def per_item(steps: list[Step]) -> tuple[float, str, list[tuple[int, float]]]:
    """(per_item_ms, why, [(items, median ms)]) from the batch phase."""
    points = [
        (s.items, float(np.median(s.ok_latencies_ms())))
        for s in steps
        if s.phase == "batch" and len(s.ok_latencies_ms()) >= 3
    ]
    if len({n for n, _ in points}) < 2:
        return 0.0, "fewer than two batch sizes measured: per_item_ms left at 0", points
    x = np.array([n for n, _ in points], dtype=float)
    y = np.array([m for _, m in points])
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    r2 = 1 - float((residual**2).sum()) / max(float(((y - y.mean()) ** 2).sum()), 1e-12)
    why = (
        f"median latency = {intercept:.3g} ms + {slope:.3g} ms x items over batch sizes "
        f"{sorted({n for n, _ in points})} (R² {r2:.2f})"
    )
    if slope <= 0 or r2 < MIN_R_SQUARED:
        return 0.0, why + ": no per-item cost shows above the noise", points
    return float(f"{slope:.3g}"), why, points


def _errors(steps: list[Step]) -> tuple[float, int]:
    """(share, most common status) of 5xx other than refusals in clean low-load steps."""
    pool = [x for s in steps if clean(s) and s.phase in CLOSED_PHASES for x in s.samples]
    errors = [x.status for x in pool if 500 <= x.status < 600 and x.status != 503]
    if not pool or not errors:
        return 0.0, 500
    return round(len(errors) / len(pool), 4), max(set(errors), key=errors.count)


def _rate_limit(
    steps: list[Step], verdict: Verdict | None
) -> tuple[RateFit | None, RateLimit | None, str]:
    """(what the rate phase measured, the twin's rate limit or None, the evidence)."""
    rate = next((fit_rate(s) for s in steps if s.phase == "rate"), None)
    if rate is None or verdict == "queue":
        return None, None, ""  # a full waiting room: the queue's finding says so
    with_header = rate.retry_after_share >= 0.5
    if not with_header and verdict == "concurrency":
        return (
            rate,
            None,
            (
                f"429s without Retry-After kept coming below the accepted rate ({rate.per_s:.1f}/s): "
                "a limit on requests at once, not on their rate"
            ),
        )
    header = (
        f"Retry-After {rate.retry_after_s:g} s on {rate.retry_after_share:.0%} of them"
        if rate.retry_after_s is not None
        else "no Retry-After"
    )
    limit = RateLimit(per_s=float(f"{rate.per_s:.3g}"), burst=rate.burst, retry_after=with_header)
    return (
        rate,
        limit,
        (
            f"{rate.per_s:.1f} requests/s accepted over {rate.window_s:.1f} s once 429s started "
            f"({rate.rejected} rejected, {header}); about {rate.burst} passed first (the burst)"
        ),
    )


@dataclass
class _Capacity:
    capacity: int
    queue: int | None  # None: not observed (the model's default)
    capacity_why: str
    queue_why: str
    figures: dict[str, Any]


def _capacity(
    knee: Knee, steps: list[Step], service_ms: float, rate: RateFit | None, limited_by: str
) -> _Capacity | None:
    """Capacity and queue from the knee; or, past a concurrency limit with no waiting room,
    from the accepted rate; None when neither was reached (`limited_by` stopped the probe)."""
    if knee.capacity is not None:
        estimate, error = knee.in_service(service_ms)
        capacity = max(1, round(estimate))
        depth, seen, queue_why = queue_depth(steps, capacity)
        figures = {
            "capacity_estimate": estimate,
            "capacity_standard_error": error,
            "queue_seen": seen,
        }
        growth = latency_growth(knee, capacity, knee.service_mean_ms)
        if growth is not None:
            figures["latency_growth_ms_per_client"] = growth[0]
            queue_why += (
                f"; past the knee latency grows {growth[0]:.3g} ms per extra client "
                f"(a FIFO queue of {capacity} servers: {growth[1]:.3g})"
            )
        capacity_why = (
            f"throughput stopped growing at {knee.throughput_per_s:.1f} requests/s from "
            f"{knee.at_least} clients; x the fitted mean service time {service_ms:.3g} ms = "
            f"{estimate:.2f} ± {error:.2f} requests in service (Little's law; ± one standard error)"
        )
        return _Capacity(capacity, depth, capacity_why, queue_why, figures)
    if rate is not None and limited_by == "a concurrency limit":
        capacity = max(1, round(rate.per_s * service_ms / 1000))
        why = (
            f"{rate.per_s:.1f} accepted/s x the fitted mean service time {service_ms:.3g} ms = "
            f"{capacity} requests at once; busy means 429 at once (no waiting room)"
        )
        return _Capacity(capacity, 0, why, "0: 429 as soon as every slot is busy", {})
    return None


def fit(
    steps: list[Step], target: Target, caps: Caps, *, fitted_at: str, verdict: Verdict | None
) -> Fit:
    """The twin of the probed service, with the evidence for each parameter; `verdict` is what
    the probe concluded its 429s were (None: no rate phase)."""
    from lab.calibrate.latency import fit_latency, quality  # scipy: only now

    findings: dict[str, str] = {}
    knee = find_knee(steps)
    if knee is None:
        raise ValueError("no load level answered cleanly: nothing to fit")
    per_item_ms, findings["per_item_ms"], batch_medians = per_item(steps)
    samples = _pooled(knee.low_load) - per_item_ms
    fits = fit_latency(samples[samples > 0])
    best = fits[0]
    findings["latency"] = (
        f"{best.dist} fits {len(samples)} low-load latencies best: KS distance {best.ks:.3f} "
        f"({quality(best.ks)}); measured median {np.median(samples):.3g} ms, p99 "
        f"{np.percentile(samples, 99):.3g} ms; fitted median {best.median_ms:.3g} ms, p99 "
        f"{best.p99_ms:.3g} ms"
    )
    rate, limit, findings["rate_limit"] = _rate_limit(steps, verdict)
    conn_limit, findings["connection_limit"] = connection_limit(steps)
    service_ms = mean_ms(best.latency) + per_item_ms  # what the twin will take, on average
    if not math.isfinite(service_ms):
        service_ms = knee.service_mean_ms
    limited_by = (
        "the connection limit" if conn_limit is not None
        else "the rate limit" if limit is not None
        else "a concurrency limit" if rate is not None
        else "the caps"
    )  # fmt: skip
    found = _capacity(knee, steps, service_ms, rate, limited_by)
    if found is None:
        found = _Capacity(
            max(caps.max_in_flight, conn_limit or 0), None,
            f"not reached: throughput still grew at {knee.at_least} clients in flight "
            f"({knee.throughput_per_s:.1f}/s) when {limited_by} stopped the ladder; set to "
            f"max_in_flight ({caps.max_in_flight}), the most the lab will send",
            "not observed (capacity not reached): the model's default", {"queue_seen": False},
        )  # fmt: skip
    findings["capacity"], findings["queue"] = found.capacity_why, found.queue_why
    error_rate, error_status = _errors(steps)
    if error_rate:
        findings["errors"] = f"{error_rate:.2%} of low-load requests failed with {error_status}"
    real = ExternalService(
        kind="external", url=target.url, protocol=target.protocol,
        max_in_flight=caps.max_in_flight, max_requests_per_s=caps.max_requests_per_s,
    )  # fmt: skip
    spec = ServiceSpec(
        kind=target.protocol,
        capacity=found.capacity,
        latency=best.latency,
        per_item_ms=per_item_ms,
        rate_limit=limit,
        connection_limit=conn_limit,
        error_rate=error_rate,
        error_status=error_status,
        calibrated_from=real,
    )
    if found.queue is not None:
        spec = spec.model_copy(update={"queue": found.queue})
    figures = {
        **found.figures,
        "batch_medians": batch_medians,
        "capacity_reached": knee.capacity is not None,
        "plateau_per_s": knee.throughput_per_s,
        "service_mean_ms": knee.service_mean_ms,
        "low_load_samples": len(samples),
        "fitted_at": fitted_at,
    }
    return Fit(spec, fits, findings, figures, samples)
