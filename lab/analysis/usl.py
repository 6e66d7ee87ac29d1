"""The Universal Scalability Law, fitted to a sweep's throughput against total concurrency.

    X(N) = λN / (1 + σ(N − 1) + κN(N − 1))

λ is the throughput of one slot alone, σ the share of the work that serialises (contention:
the service's capacity, a lock), κ the cost of keeping N slots coherent (crosstalk: it makes
throughput fall past a peak at N* = sqrt((1 − σ) / κ)). Gunther, "Guerrilla Capacity Planning".

The fit is a description of the measured curve, not a model of the lab: a hard capacity limit
makes a knee that the smooth USL rounds off, which R² shows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Fewer distinct concurrency levels than this leave the three parameters underdetermined.
MIN_LEVELS = 4

#: κ below this is treated as zero: no measurable retrograde, so no peak to report.
KAPPA_EPSILON = 1e-9

#: Below this R², the description says the curve is a poor description of the data.
GOOD_R_SQUARED = 0.8


def _number(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def usl(n: np.ndarray, lambda_: float, sigma: float, kappa: float) -> np.ndarray:
    """Throughput at concurrency `n` (same unit as λ: items/s per slot)."""
    return lambda_ * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


@dataclass(frozen=True)
class UslFit:
    """One fit, or why there is none (`skipped`). Throughputs in items/s."""

    batch_size: int
    levels: int
    lambda_: float | None = None
    sigma: float | None = None
    kappa: float | None = None
    r_squared: float | None = None
    peak_concurrency: float | None = None  # N*, when κ > 0
    peak_items_per_s: float | None = None  # X(N*), or the asymptote λ/σ when κ = 0
    measured_max_items_per_s: float | None = None
    skipped: str | None = None

    def describe(self) -> str:
        """One sentence for a reader, with the numbers."""
        head = f"batch {self.batch_size}"
        if self.skipped is not None:
            return f"scalability fit, {head}: skipped ({self.skipped})"
        assert self.lambda_ is not None and self.sigma is not None and self.kappa is not None
        fit = (
            f"λ={self.lambda_:,.1f} items/s per slot, σ={self.sigma:.3f}, κ={self.kappa:.2e}, "
            f"R²={_number(self.r_squared)} over {self.levels} concurrency levels"
        )
        if self.peak_concurrency is not None:
            where = (
                f"the curve peaks at concurrency ≈{self.peak_concurrency:,.0f} "
                f"(≈{self.peak_items_per_s:,.0f} items/s) and falls beyond"
            )
        elif self.peak_items_per_s is not None:
            where = f"no peak: the curve levels off towards ≈{self.peak_items_per_s:,.0f} items/s"
        else:
            where = "no contention measured: throughput grows linearly"
        measured = f" (best measured: {self.measured_max_items_per_s:,.0f})"
        good = self.r_squared is not None and self.r_squared >= GOOD_R_SQUARED
        quality = "" if good else "; a poor fit, read it with care"
        return f"scalability fit (USL), {head}: {fit}; {where}{measured}{quality}"


def fit_usl(
    concurrency: Sequence[float] | np.ndarray,
    items_per_s: Sequence[float] | np.ndarray,
    *,
    batch_size: int,
) -> UslFit:
    """Fit λ, σ, κ (σ in [0, 1], κ ≥ 0) by least squares; a `skipped` fit says why not."""
    from scipy.optimize import OptimizeWarning, curve_fit

    n = np.asarray(concurrency, dtype=float)
    x = np.asarray(items_per_s, dtype=float)
    keep = np.isfinite(n) & np.isfinite(x) & (n > 0)
    n, x = n[keep], x[keep]
    levels = len(np.unique(n))
    if levels < MIN_LEVELS:
        return UslFit(
            batch_size,
            levels,
            measured_max_items_per_s=float(x.max()) if len(x) else None,
            skipped=f"{levels} distinct concurrency level(s), the fit needs {MIN_LEVELS}",
        )
    # start from the best per-slot rate at the lowest concurrency: λ is what one slot does alone
    lowest = n == n.min()
    lambda0 = max(float(np.max(x[lowest] / n[lowest])), 1e-9)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # covariance unknown: not used
            params, _ = curve_fit(
                usl, n, x, p0=(lambda0, 0.05, 1e-4),
                bounds=([0.0, 0.0, 0.0], [np.inf, 1.0, np.inf]), maxfev=20_000,
            )  # fmt: skip
    except (RuntimeError, ValueError) as exc:
        return UslFit(
            batch_size, levels, measured_max_items_per_s=float(x.max()),
            skipped=f"the fit did not converge ({exc})",
        )  # fmt: skip
    lambda_, sigma, kappa = (float(p) for p in params)
    residual = float(np.sum((x - usl(n, *params)) ** 2))
    total = float(np.sum((x - x.mean()) ** 2))
    r_squared = 1 - residual / total if total > 0 else math.nan
    peak_n = peak_x = None
    if kappa > KAPPA_EPSILON and sigma < 1:
        peak_n = math.sqrt((1 - sigma) / kappa)
        peak_x = float(usl(np.array([peak_n]), lambda_, sigma, kappa)[0])
    elif sigma > 0:
        peak_x = lambda_ / sigma
    return UslFit(
        batch_size, levels, lambda_=lambda_, sigma=sigma, kappa=kappa,
        r_squared=r_squared, peak_concurrency=peak_n, peak_items_per_s=peak_x,
        measured_max_items_per_s=float(x.max()),
    )  # fmt: skip
