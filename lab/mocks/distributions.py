"""Seeded service-time samplers, and the exact CDF, quantiles and mean of each distribution.

Samplers are closures over one `random.Random`, so a seed repeats a trial's draws and a draw
costs one or two C calls on the hot path. The closed forms let tests compare recorded samples
with the requested shape, and let analysis compute a service's capacity bound
(`capacity / mean service time`) without sampling.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from statistics import NormalDist

from lab.mocks.spec import (
    Z_P99,
    BimodalLatency,
    ConstantLatency,
    ExponentialLatency,
    Latency,
    LognormalLatency,
    ParetoLatency,
)

Sampler = Callable[[], float]
"""Returns one service time in milliseconds."""

_STD_NORMAL = NormalDist()


def lognormal_params(latency: LognormalLatency) -> tuple[float, float]:
    """(mu, sigma) of the underlying normal, from the median and p99 the user gave."""
    return math.log(latency.median_ms), math.log(latency.p99_ms / latency.median_ms) / Z_P99


def make_sampler(latency: Latency, rng: random.Random) -> Sampler:
    """A function drawing service times (ms) from `latency`, using `rng` only."""
    if isinstance(latency, ConstantLatency):
        value_ms = latency.ms
        return lambda: value_ms
    if isinstance(latency, ExponentialLatency):
        rate = 1.0 / latency.mean_ms
        expo = rng.expovariate
        return lambda: expo(rate)
    if isinstance(latency, LognormalLatency):
        mu, sigma = lognormal_params(latency)
        lognorm = rng.lognormvariate
        return lambda: lognorm(mu, sigma)
    if isinstance(latency, ParetoLatency):
        return _pareto_sampler(latency, rng)
    return _bimodal_sampler(latency, rng)


def _pareto_sampler(latency: ParetoLatency, rng: random.Random) -> Sampler:
    min_ms, alpha, max_ms = latency.min_ms, latency.alpha, latency.max_ms
    pareto = rng.paretovariate
    if max_ms is None:
        return lambda: min_ms * pareto(alpha)
    return lambda: min(max_ms, min_ms * pareto(alpha))


def _bimodal_sampler(latency: BimodalLatency, rng: random.Random) -> Sampler:
    hit, miss = _branches(latency)
    hit_draw, miss_draw = make_sampler(hit, rng), make_sampler(miss, rng)
    ratio = latency.hit_ratio
    uniform = rng.random
    return lambda: hit_draw() if uniform() < ratio else miss_draw()


def _branches(latency: BimodalLatency) -> tuple[Latency, Latency]:
    hit = latency.hit if latency.hit is not None else ConstantLatency(ms=latency.hit_ms or 0.0)
    miss = latency.miss if latency.miss is not None else ConstantLatency(ms=latency.miss_ms or 0.0)
    return hit, miss


def cdf(latency: Latency, x_ms: float) -> float:
    """P(service time <= x_ms)."""
    if isinstance(latency, ConstantLatency):
        return 1.0 if x_ms >= latency.ms else 0.0
    if x_ms <= 0:
        return 0.0
    if isinstance(latency, ExponentialLatency):
        return 1.0 - math.exp(-x_ms / latency.mean_ms)
    if isinstance(latency, LognormalLatency):
        mu, sigma = lognormal_params(latency)
        if sigma == 0:
            return 1.0 if x_ms >= latency.median_ms else 0.0
        return _STD_NORMAL.cdf((math.log(x_ms) - mu) / sigma)
    if isinstance(latency, ParetoLatency):
        if latency.max_ms is not None and x_ms >= latency.max_ms:
            return 1.0
        return 0.0 if x_ms < latency.min_ms else 1.0 - (latency.min_ms / x_ms) ** latency.alpha
    hit, miss = _branches(latency)
    return latency.hit_ratio * cdf(hit, x_ms) + (1 - latency.hit_ratio) * cdf(miss, x_ms)


def quantile(latency: Latency, q: float) -> float:
    """The service time (ms) below which a fraction `q` of draws fall (0 < q < 1)."""
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if isinstance(latency, ConstantLatency):
        return latency.ms
    if isinstance(latency, ExponentialLatency):
        return -latency.mean_ms * math.log1p(-q)
    if isinstance(latency, LognormalLatency):
        mu, sigma = lognormal_params(latency)
        return math.exp(mu + sigma * _STD_NORMAL.inv_cdf(q))
    if isinstance(latency, ParetoLatency):
        value = latency.min_ms * (1 - q) ** (-1 / latency.alpha)
        return value if latency.max_ms is None else min(value, latency.max_ms)
    # A mixture has no closed form: bisect its CDF (monotone) to a relative 1e-9.
    lo, hi = 0.0, 1.0
    while cdf(latency, hi) < q:
        hi *= 2
    while hi - lo > 1e-9 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(latency, mid) < q else (lo, mid)
    return hi


def mean_ms(latency: Latency) -> float:
    """Expected service time in ms (inf for an uncapped Pareto with alpha <= 1)."""
    if isinstance(latency, ConstantLatency):
        return latency.ms
    if isinstance(latency, ExponentialLatency):
        return latency.mean_ms
    if isinstance(latency, LognormalLatency):
        mu, sigma = lognormal_params(latency)
        return math.exp(mu + sigma * sigma / 2)
    if isinstance(latency, ParetoLatency):
        return _pareto_mean(latency)
    hit, miss = _branches(latency)
    return latency.hit_ratio * mean_ms(hit) + (1 - latency.hit_ratio) * mean_ms(miss)


def _pareto_mean(latency: ParetoLatency) -> float:
    x_m, alpha, cap = latency.min_ms, latency.alpha, latency.max_ms
    if cap is None:
        return alpha * x_m / (alpha - 1) if alpha > 1 else math.inf
    if cap <= x_m:
        return cap
    # E[min(X, cap)] = x_m + integral from x_m to cap of (x_m / x)^alpha dx
    if alpha == 1:
        return x_m + x_m * math.log(cap / x_m)
    return x_m + x_m**alpha * (cap ** (1 - alpha) - x_m ** (1 - alpha)) / (1 - alpha)
