"""Fit the lab's latency families (`lab.mocks.spec`) to measured service times; pick the best.

Each family is fitted by maximum likelihood (closed forms; a two-component mixture on the logs
by EM for `bimodal`) and scored by its Kolmogorov-Smirnov distance D: the largest gap between
the measured and the fitted CDF (0 = identical; below 0.05 is close, above 0.1 is visibly off).
The best is the smallest D, except that `bimodal`, with twice the parameters, must halve the
best one-part D to be chosen. D is a distance, not a test: its usual p-value does not hold
when the parameters come from the same samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from lab import limits as L
from lab.mocks.distributions import Z_P99, cdf, quantile
from lab.mocks.spec import (
    BimodalLatency,
    ConstantLatency,
    ExponentialLatency,
    Latency,
    LognormalLatency,
    ParetoLatency,
)

BIMODAL_MARGIN = 0.5
"""bimodal is chosen only when its D is below this fraction of the best one-part D."""

MIN_SAMPLES = 20

PARETO_ALPHA_MAX = 100.0
"""The spec's largest tail index: a tail that thin is a constant with a little noise."""


@dataclass(frozen=True)
class FamilyFit:
    """One family's fit: the spec to paste, its KS distance, and its median and p99 in ms."""

    dist: str
    latency: Latency
    ks: float
    median_ms: float
    p99_ms: float


def quality(ks: float) -> str:
    """A word for a KS distance."""
    return "close" if ks < 0.05 else "fair" if ks < 0.1 else "poor"


def _round(x: float) -> float:
    """Four significant figures: a fitted value is not known better than that."""
    return float(f"{x:.4g}") if x > 0 else 0.0


def _lognormal(median: float, sigma: float) -> LognormalLatency:
    median = max(_round(median), 1e-3)
    return LognormalLatency(
        median_ms=median, p99_ms=max(_round(median * math.exp(Z_P99 * sigma)), median)
    )


def _bimodal(logs: np.ndarray, iterations: int = 200) -> BimodalLatency | None:
    """EM for two normals on the log latencies; None when the two parts do not separate."""
    lo, hi = np.percentile(logs, [25, 75])
    mu = np.array([lo, hi])
    sd = np.full(2, max(float(logs.std()) / 2, 1e-3))
    w = np.array([0.5, 0.5])
    for _ in range(iterations):
        dens = w * stats.norm.pdf(logs[:, None], mu, sd)
        total = dens.sum(axis=1, keepdims=True)
        total[total == 0] = 1e-300
        resp = dens / total
        n_k = resp.sum(axis=0)
        if (n_k < 2).any():
            return None
        w = n_k / len(logs)
        mu = (resp * logs[:, None]).sum(axis=0) / n_k
        sd = np.sqrt((resp * (logs[:, None] - mu) ** 2).sum(axis=0) / n_k).clip(1e-4)
    order = np.argsort(mu)
    mu, sd, w = mu[order], sd[order], w[order]
    return BimodalLatency(
        hit_ratio=round(float(w[0]), 3),
        hit=_lognormal(math.exp(mu[0]), float(sd[0])),
        miss=_lognormal(math.exp(mu[1]), float(sd[1])),
    )


def candidates(samples_ms: np.ndarray) -> list[Latency]:
    """Each family's maximum-likelihood fit to the samples (all positive, in ms)."""
    x = np.asarray(samples_ms, dtype=float)
    logs = np.log(x)
    out: list[Latency] = [
        ConstantLatency(ms=_round(float(np.median(x)))),
        ExponentialLatency(mean_ms=_round(float(x.mean()))),
        _lognormal(math.exp(float(logs.mean())), float(logs.std())),
    ]
    x_min = float(x.min())
    spread = float(np.log(x / x_min).sum())
    if spread > 0:  # alpha within the spec's bounds; a tail too heavy for a mean gets a cap
        alpha = min(PARETO_ALPHA_MAX, max(L.PARETO_ALPHA_MIN, _round(len(x) / spread)))
        cap = _round(float(x.max())) if alpha <= 1 else None
        out.append(ParetoLatency(min_ms=_round(x_min), alpha=alpha, max_ms=cap))
    mixture = _bimodal(logs) if len(x) >= 4 * MIN_SAMPLES else None
    if mixture is not None:
        out.append(mixture)
    return out


def ks_distance(samples_ms: np.ndarray, latency: Latency) -> float:
    """The largest gap between the samples' CDF and the family's CDF."""
    return float(stats.kstest(samples_ms, np.vectorize(lambda v: cdf(latency, float(v)))).statistic)


def fit_latency(samples_ms: np.ndarray) -> list[FamilyFit]:
    """Every family's fit, best first (see the module docstring for the rule)."""
    x = np.asarray(samples_ms, dtype=float)
    x = x[x > 0]
    if len(x) < MIN_SAMPLES:
        raise ValueError(f"{len(x)} latency samples; a fit needs at least {MIN_SAMPLES}")
    fits = [
        FamilyFit(lat.dist, lat, ks_distance(x, lat), quantile(lat, 0.5), quantile(lat, 0.99))
        for lat in candidates(x)
    ]
    one_part = min((f for f in fits if f.dist != "bimodal"), key=lambda f: f.ks)
    mixture = next((f for f in fits if f.dist == "bimodal"), None)
    best = mixture if mixture and mixture.ks < BIMODAL_MARGIN * one_part.ks else one_part
    return [best, *sorted((f for f in fits if f is not best), key=lambda f: f.ks)]
