"""The calibration's figures: what was measured on the service, with the fitted twin on it.

matplotlib `Figure` objects, no pyplot (as `lab.report.plots`): the report embeds them as PNG.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from lab.calibrate.fit import CLOSED_PHASES, Fit, clean, fit_rate, steady_throughput
from lab.calibrate.probe import Step
from lab.mocks.distributions import cdf
from lab.report.plots import _log2_x, _log_y

REAL, TWIN = "#1f77b4", "#ff7f0e"


def _closed(steps: list[Step]) -> tuple[list[Step], int | None]:
    """The clean closed-loop, one-item steps by concurrency, and the fewest clients that got
    429s, 5xx or refusals (those steps stop early: their rates say nothing)."""
    one = [s for s in steps if s.phase in CLOSED_PHASES and s.items == 1 and s.samples]
    failing = [s.concurrency for s in one if not clean(s)]
    return sorted((s for s in one if clean(s)), key=lambda s: s.concurrency), min(
        failing, default=None
    )


def load_curves(real: list[Step], twin: list[Step], fit: Fit) -> Figure:
    """Throughput and latency against clients in flight: the service (solid), the twin (dashed);
    a vertical line where each first got rejections."""
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax_x, ax_r = fig.subplots(1, 2)
    fig.suptitle(
        "The service and its fitted twin, under a closed loop of c clients", fontweight="bold"
    )
    levels: list[int] = []
    for steps, color, style, who in ((real, REAL, "-", "service"), (twin, TWIN, "--", "twin")):
        part, failing = _closed(steps)
        if failing is not None:
            levels.append(failing)
            for ax in (ax_x, ax_r):
                ax.axvline(failing, color=color, linestyle=style, alpha=0.5, linewidth=1)
            ax_x.plot(
                [], [], style, color=color, alpha=0.5, label=f"{who}: rejections from {failing}"
            )
        if not part:
            continue
        c = [s.concurrency for s in part]
        levels += c
        ax_x.plot(
            c,
            [steady_throughput(s) for s in part],
            style,
            marker="o",
            color=color,
            label=f"{who}: 2xx/s",
        )
        for q, marker in ((50, "o"), (99, "^")):
            values = [float(np.percentile(s.ok_latencies_ms(), q)) for s in part]
            ax_r.plot(c, values, style, marker=marker, color=color, label=f"{who}: p{q}")
    spec = fit.spec
    if spec.rate_limit is not None:
        ax_x.axhline(spec.rate_limit.per_s, color="grey", linestyle=":", label="fitted rate limit")
    for ax in (ax_x, ax_r):
        if levels:  # ticks at the ladder's rungs; the bisection's levels stay unlabelled
            _log2_x(ax, sorted({c for c in levels if c & (c - 1) == 0} | {max(levels)}))
        ax.set_xlabel("clients in flight (closed loop)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    ax_x.set_ylabel("requests per second")
    ax_x.set_ylim(bottom=0)
    ax_x.set_title(f"throughput (fitted capacity {spec.capacity})")
    _log_y(ax_r)
    ax_r.set_ylabel("latency of 2xx answers (ms)")
    ax_r.set_title("latency")
    return fig


def latency_fit(fit: Fit) -> Figure:
    """The low-load latencies' CDF and each family's fitted CDF (the chosen one bold)."""
    fig = Figure(figsize=(8, 4.4), layout="constrained")
    ax = fig.subplots()
    x = np.sort(fit.low_load_ms)
    ax.step(
        x,
        np.arange(1, len(x) + 1) / len(x),
        where="post",
        color="black",
        label=f"measured ({len(x)})",
    )
    grid = np.geomspace(max(x.min() * 0.8, 1e-3), x.max() * 1.2, 300)
    for i, f in enumerate(fit.latency_fits):
        ax.plot(
            grid, [cdf(f.latency, float(v)) for v in grid],
            linewidth=2.5 if i == 0 else 1, alpha=1 if i == 0 else 0.6,
            label=f"{f.dist} (KS {f.ks:.3f})" + (", chosen" if i == 0 else ""),
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("latency at low load (ms)")
    ax.set_ylabel("share of requests at or below")
    ax.set_title("Latency distribution: measured and fitted", fontweight="bold")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def batch_cost(real: list[Step], twin: list[Step], fit: Fit) -> Figure | None:
    """Median latency against items per request, with the fitted per-item line (None when no
    batch was measured)."""
    if not any(s.phase == "batch" and s.samples for s in real):
        return None
    fig = Figure(figsize=(8, 4.4), layout="constrained")
    ax = fig.subplots()
    for steps, color, who in ((real, REAL, "service"), (twin, TWIN, "twin")):
        points = [
            (s.items, np.median(s.ok_latencies_ms()))
            for s in steps
            if s.phase == "batch" and len(s.ok_latencies_ms())
        ]
        if points:
            ax.plot(*zip(*points, strict=True), "o", color=color, label=f"{who}: median")
    points = fit.figures.get("batch_medians") or []
    if points:
        items = np.array([n for n, _ in points], dtype=float)
        intercept = float(np.mean([m - fit.spec.per_item_ms * n for n, m in points]))
        ax.plot(items, intercept + fit.spec.per_item_ms * items, ":", color="grey",
                label=f"fitted: {fit.spec.per_item_ms:g} ms per item")  # fmt: skip
    ax.set_xlabel("items per request")
    ax.set_ylabel("median latency (ms)")
    ax.set_title("Cost of a batch", fontweight="bold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def rate_phase(real: list[Step]) -> Figure | None:
    """Requests accepted over time while pacing above the limit, and the fitted rate."""
    step = next((s for s in real if s.phase == "rate"), None)
    found = fit_rate(step) if step is not None else None
    if step is None or found is None:
        return None
    fig = Figure(figsize=(8, 4.4), layout="constrained")
    ax = fig.subplots()
    samples = sorted(step.samples, key=lambda s: s.sent_s)
    t = np.array([s.sent_s - step.started_s for s in samples])
    ax.plot(t, np.cumsum([s.ok for s in samples]), color=REAL, label="accepted (2xx)")
    ax.plot(
        t, np.cumsum([s.status == 429 for s in samples]), color="#d62728", label="rejected (429)"
    )
    first = next(s.sent_s for s in samples if s.status == 429) - step.started_s
    ok_first = sum(s.ok for s in samples if s.sent_s - step.started_s < first)
    span = np.array([first, t[-1]])
    ax.plot(span, ok_first + found.per_s * (span - first), ":", color="black",
            label=f"fitted: {found.per_s:.1f}/s once 429s start")  # fmt: skip
    ax.set_xlabel(f"seconds, sending {step.paced_per_s:.0f} requests/s")
    ax.set_ylabel("requests")
    ax.set_title("Rate limit", fontweight="bold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
