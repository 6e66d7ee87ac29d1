"""The standard figures of a run: functions that take an `Analysis` and return a matplotlib Figure.

Figures are built with `matplotlib.figure.Figure`, not pyplot: no global state, no display and
no backend switch, so they render the same in a notebook, a test or the report (which saves them
as PNG). Every figure has a title, axis labels with units and a legend.

Throughput is drawn in items/s, the unit that compares batch sizes fairly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from lab.analysis.configs import Analysis
from lab.configuration import label

PANEL_W_IN, PANEL_H_IN = 4.8, 3.8
MIN_FIGURE_W_IN = 7.5
RECOMMENDED: dict[str, Any] = {
    "marker": "*",
    "s": 260,
    "color": "gold",
    "edgecolor": "black",
    "zorder": 5,
}
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]

#: A marker and a colour per bottleneck word (lab.analysis.attribution.BOTTLENECKS).
BOTTLENECK_STYLE: dict[str, tuple[str, str]] = {
    "concurrency": ("o", "#1f77b4"),
    "service_capacity": ("s", "#ff7f0e"),
    "rate_limit": ("v", "#d62728"),
    "connection_limit": ("D", "#9467bd"),
    "worker_cpu": ("^", "#8c564b"),
    "broker": ("P", "#7f7f7f"),
    "harness": ("X", "#3b3b3b"),
    "retry_waste": ("<", "#e377c2"),
    "arrivals": (">", "#2ca02c"),
    "errors": ("p", "#bcbd22"),
}


Panel = tuple[int, str | None]  # (batch_size, placement or None when the run had one)


def _panels(
    analysis: Analysis, title: str, rows: int = 1, *, by_placement: bool = True
) -> tuple[Figure, np.ndarray, list[Panel]]:
    """A figure with a column of panels per batch size (and per placement, when the run swept
    both, so that separate and co-located figures never share a line or a cell)."""
    configs = analysis.configs
    batches = sorted(int(b) for b in configs["batch_size"].unique()) or [1]
    placements = sorted(configs["placement"].unique()) if "placement" in configs else []
    if by_placement and len(placements) > 1:
        panels: list[Panel] = [(b, p) for b in batches for p in placements]
    else:
        panels = [(b, None) for b in batches]
    # wide enough for the title even with one panel: a clipped title reads badly in the report
    width_in = max(PANEL_W_IN * len(panels), MIN_FIGURE_W_IN)
    fig = Figure(figsize=(width_in, PANEL_H_IN * rows + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(rows, len(panels), squeeze=False))
    fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig, axes, panels


def _select(configs: pd.DataFrame, panel: Panel) -> pd.DataFrame:
    batch, placement = panel
    part = configs[configs["batch_size"] == batch]
    return part if placement is None else part[part["placement"] == placement]


def _title(panel: Panel) -> str:
    batch, placement = panel
    return f"batch_size {batch}" + (f", {placement}" if placement else "")


def _log2_x(ax: Axes, values: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted({int(v) for v in values})
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
    ax.minorticks_off()


def _log_y(ax: Axes) -> None:
    """A log scale labelled 10, 20, 50, 100 ... in plain numbers, not powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _thousands(ax: Axes) -> None:
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def _is_chosen(analysis: Analysis, row: pd.Series) -> bool:
    return analysis.chosen is not None and label(row) == label(analysis.chosen)


def _yerr(part: pd.DataFrame, metric: str) -> np.ndarray | None:
    low, high = part[f"{metric}_ci_low"], part[f"{metric}_ci_high"]
    if low.isna().all():
        return None
    mean = part[metric]
    return np.vstack([(mean - low).fillna(0).to_numpy(), (high - mean).fillna(0).to_numpy()])


def _bottleneck_handles(configs: pd.DataFrame, *, coloured: bool) -> list[Artist]:
    """Legend entries for the bottleneck words present: their marker (and colour)."""
    present = set(configs["bottleneck"].dropna()) if "bottleneck" in configs else set()
    return [
        Line2D(
            [], [], linestyle="", marker=marker, markersize=8, label=f"held by: {word}",
            markerfacecolor=color if coloured else "white", markeredgecolor="black",
        )
        for word, (marker, color) in BOTTLENECK_STYLE.items()
        if word in present
    ]  # fmt: skip


def throughput_vs_workers(analysis: Analysis) -> Figure:
    """Items/s against num_workers: a line per instance count, a panel per batch size, with the
    Little's-law bound (dotted, per instance count) and the service's capacity bound (dashed).
    Each point's marker says what held it (its bottleneck)."""
    configs = analysis.configs
    fig, axes, batches = _panels(analysis, "Throughput vs num_workers")
    instances = sorted(int(i) for i in configs["instances"].unique())
    for ax, batch in zip(axes[0], batches, strict=True):
        part = _select(configs, batch)
        top = part["items_per_s_ci_high"].fillna(part["items_per_s"]).max()
        for i, n_inst in enumerate(instances):
            line = part[part["instances"] == n_inst].sort_values("num_workers")
            if line.empty:
                continue
            color = _PALETTE[i % len(_PALETTE)]
            ax.errorbar(
                line["num_workers"],
                line["items_per_s"],
                yerr=_yerr(line, "items_per_s"),
                color=color,
                capsize=3,
                label=f"{n_inst} instance{'s' if n_inst > 1 else ''}",
            )
            for _, point in line.iterrows():
                marker, _ = BOTTLENECK_STYLE.get(str(point.get("bottleneck")), ("o", color))
                ax.scatter(
                    [point["num_workers"]], [point["items_per_s"]], marker=marker, s=55,
                    color=color, edgecolor="black", linewidth=0.6, zorder=4,
                )  # fmt: skip
            ax.plot(line["num_workers"], line["littles_bound_items_per_s"], ":", color=color)
            _hollow_if_stopped(ax, line, "num_workers", "items_per_s", color)
        capacity = part["capacity_bound_items_per_s"].mean()
        if np.isfinite(capacity):
            ax.axhline(capacity, color="grey", linestyle="--", linewidth=1.2)
            top = max(top, capacity)
        for _, row in part.iterrows():
            if _is_chosen(analysis, row):
                ax.scatter([row["num_workers"]], [row["items_per_s"]], **RECOMMENDED)
        _log2_x(ax, part["num_workers"])
        ax.set_ylim(0, top * 1.15 if np.isfinite(top) and top > 0 else 1)
        _thousands(ax)
        ax.set_title(_title(batch))
        ax.set_xlabel("num_workers (async slots per instance)")
        ax.set_ylabel("throughput (items/s)")
        ax.grid(alpha=0.3)
    handles = axes[0][0].get_legend_handles_labels()[0]
    handles += [
        Line2D([], [], color="black", linestyle=":", label="Little's-law bound (same colour)"),
        Line2D([], [], color="grey", linestyle="--", label="service capacity bound"),
    ]
    if analysis.chosen is not None:
        handles.append(Line2D([], [], linestyle="", label="recommended", **_star_handle()))
    handles += _bottleneck_handles(configs, coloured=False)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3))
    return fig


def _hollow_if_stopped(ax: Axes, part: pd.DataFrame, x: str, y: str, color: str) -> None:
    """Draw over a configuration stopped early (by the search) with a hollow marker."""
    if "stopped_early" not in part:
        return
    stopped = part[part["stopped_early"].astype(bool)]
    if not stopped.empty:
        ax.scatter(stopped[x], stopped[y], s=60, facecolors="white", edgecolors=color, zorder=4)


def _star_handle() -> dict[str, Any]:
    return {"marker": "*", "markersize": 14, "markerfacecolor": "gold", "markeredgecolor": "black"}


def latency_vs_concurrency(analysis: Analysis) -> Figure:
    """p50, p90, p99 job latency against total concurrency, a panel per batch size, SLO line."""
    configs, slo = analysis.configs, analysis.objective.slo.p99_latency_ms
    fig, axes, batches = _panels(analysis, "Job latency vs total concurrency")
    styles = {
        "latency_p50_ms": ("p50", "#2ca02c"),
        "latency_p90_ms": ("p90", "#ff7f0e"),
        "latency_p99_ms": ("p99", "#d62728"),
    }
    for ax, batch in zip(axes[0], batches, strict=True):
        part = _select(configs, batch)
        by_n = part.groupby("concurrency")[list(styles)].mean().sort_index()
        for column, (name, color) in styles.items():
            ax.scatter(part["concurrency"], part[column], color=color, s=14, alpha=0.5)
            ax.plot(by_n.index, by_n[column], marker="o", color=color, label=name)
        if slo is not None:
            ax.axhline(
                slo, color="black", linestyle="--", linewidth=1.2, label=f"SLO p99 {slo:,.0f} ms"
            )
        _log2_x(ax, part["concurrency"])
        _log_y(ax)
        ax.set_title(_title(batch))
        ax.set_xlabel("total concurrency (num_workers × instances)")
        ax.set_ylabel("job latency, enqueue to done (ms)")
        ax.grid(alpha=0.3, which="both")
    handles = axes[0][0].get_legend_handles_labels()[0]
    if slo is None:
        handles.append(Line2D([], [], linestyle="", label="no p99 SLO in this scenario"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return fig


def heatmap(analysis: Analysis) -> Figure:
    """Items/s on an instances × num_workers grid, a panel per batch size. ✗: ruled out by the
    SLO, lost items or a timeout; a thick frame: the recommendation; the marker in a cell's
    corner: what held it (its bottleneck)."""
    configs = analysis.configs
    fig, axes, batches = _panels(analysis, "Throughput (items/s) by instances × num_workers")
    workers = sorted(int(w) for w in configs["num_workers"].unique())
    instances = sorted(int(i) for i in configs["instances"].unique())
    for ax, batch in zip(axes[0], batches, strict=True):
        part = _select(configs, batch)
        grid = np.full((len(instances), len(workers)), np.nan)
        for _, row in part.iterrows():
            cell = instances.index(int(row["instances"])), workers.index(int(row["num_workers"]))
            grid[cell] = row["items_per_s"]
        finite = grid[np.isfinite(grid)]
        top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        # the scale starts at 0: cells within noise of each other look alike, instead of a
        # 0.1 % difference spanning the whole colour map
        image = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto", vmin=0, vmax=top)
        fig.colorbar(image, ax=ax, label="items/s", format=FuncFormatter(lambda v, _: f"{v:,.0f}"))
        middle = top / 2
        for _, row in part.iterrows():
            r, c = instances.index(int(row["instances"])), workers.index(int(row["num_workers"]))
            mark = "\n✗" if row["slo_problems"] else ""
            color = "black" if row["items_per_s"] > middle else "white"
            ax.text(
                c,
                r,
                f"{row['items_per_s']:,.0f}{mark}",
                ha="center",
                va="center",
                color=color,
                fontsize=9,
            )
            if _is_chosen(analysis, row):
                ax.add_patch(
                    Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3)
                )
            style = BOTTLENECK_STYLE.get(str(row.get("bottleneck")))
            if style is not None:
                ax.scatter(
                    [c - 0.32], [r + 0.3], marker=style[0], s=70, color=style[1],
                    edgecolor="white", linewidth=0.8, zorder=4,
                )  # fmt: skip
        ax.set_xticks(range(len(workers)), [str(w) for w in workers])
        ax.set_yticks(range(len(instances)), [str(i) for i in instances])
        ax.set_title(_title(batch))
        ax.set_xlabel("num_workers (async slots per instance)")
        ax.set_ylabel("instances (worker processes)")
    handles: list[Artist] = [
        Line2D(
            [],
            [],
            linestyle="",
            marker="$✗$",
            color="black",
            label="ruled out (SLO, lost items, timeout)",
        )
    ]
    if analysis.chosen is not None:
        handles.append(
            Rectangle((0, 0), 1, 1, fill=False, edgecolor="red", linewidth=3, label="recommended")
        )
    handles += _bottleneck_handles(configs, coloured=True)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3))
    return fig


def frontier(analysis: Analysis) -> Figure:
    """Throughput against p99 latency, one point per configuration; the frontier (no other point
    is both faster and quicker) as a line, the SLO and the recommendation marked."""
    configs, slo = analysis.configs, analysis.objective.slo.p99_latency_ms
    fig = Figure(figsize=(8.5, 5.5), layout="constrained")
    ax = fig.subplots()
    fig.suptitle("Throughput / latency frontier", fontsize=13, fontweight="bold")
    batches = sorted(int(b) for b in configs["batch_size"].unique())
    for i, batch in enumerate(batches):
        part = configs[configs["batch_size"] == batch]
        ok = part["slo_problems"].map(len) == 0
        color = _PALETTE[i % len(_PALETTE)]
        ax.scatter(
            part.loc[ok, "latency_p99_ms"],
            part.loc[ok, "items_per_s"],
            color=color,
            label=f"batch_size {batch}",
        )
        ax.scatter(
            part.loc[~ok, "latency_p99_ms"],
            part.loc[~ok, "items_per_s"],
            facecolors="none",
            edgecolors=color,
        )
    ordered = configs.sort_values(["latency_p99_ms", "items_per_s"], ascending=[True, False])
    best, front = -np.inf, []
    for _, row in ordered.iterrows():
        if row["items_per_s"] > best:
            best = row["items_per_s"]
            front.append(row)
    if len(front) > 1:  # one point that beats every other on both counts needs no line
        frame = pd.DataFrame(front)
        ax.step(
            frame["latency_p99_ms"],
            frame["items_per_s"],
            where="post",
            color="grey",
            linewidth=1,
            label="frontier",
        )
    if slo is not None:
        ax.axvline(
            slo, color="black", linestyle="--", linewidth=1.2, label=f"SLO p99 {slo:,.0f} ms"
        )
    chosen = [row for _, row in configs.iterrows() if _is_chosen(analysis, row)]
    for row in chosen:
        ax.scatter(
            [row["latency_p99_ms"]],
            [row["items_per_s"]],
            label=f"recommended: {label(row)}",
            **RECOMMENDED,
        )
        ax.annotate(
            label(row),
            (row["latency_p99_ms"], row["items_per_s"]),
            textcoords="offset points",
            xytext=(10, -14),
        )
    ax.scatter([], [], facecolors="none", edgecolors="grey", label="hollow: ruled out")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    _thousands(ax)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("p99 job latency (ms, log scale)")
    ax.set_ylabel("throughput (items/s)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=9)
    return fig


def errors_vs_concurrency(analysis: Analysis) -> Figure:
    """Rejected requests (429), retries and the error rate against total concurrency."""
    configs = analysis.configs
    fig, axes, batches = _panels(
        analysis, "Rejections, retries and errors vs total concurrency", rows=2
    )
    limit = analysis.objective.slo.max_error_rate
    for top, bottom, batch in zip(axes[0], axes[1], batches, strict=True):
        part = _select(configs, batch)
        by_n = part.groupby("concurrency")[["service_rejected", "retries", "error_rate"]].max()
        top.plot(
            by_n.index,
            by_n["service_rejected"],
            marker="o",
            color="#d62728",
            label="rejected requests (429)",
        )
        top.plot(by_n.index, by_n["retries"], marker="s", color="#ff7f0e", label="job retries")
        bottom.plot(
            by_n.index, by_n["error_rate"] * 100, marker="o", color="#9467bd", label="error rate"
        )
        bottom.axhline(
            limit * 100,
            color="black",
            linestyle="--",
            linewidth=1.2,
            label=f"SLO max error rate {limit:.1%}",
        )
        for ax in (top, bottom):
            _log2_x(ax, part["concurrency"])
            ax.grid(alpha=0.3)
            ax.set_xlabel("total concurrency (num_workers × instances)")
        worst = by_n[["service_rejected", "retries"]].to_numpy().max()
        top.set_ylim(0, max(1.0, worst * 1.15))
        top.yaxis.set_major_locator(MaxNLocator(integer=True))
        if worst == 0 and by_n["error_rate"].max() == 0:
            top.text(
                0.5,
                0.5,
                "no 429s, retries or failed jobs",
                transform=top.transAxes,
                ha="center",
                va="center",
                color="grey",
            )
        bottom.set_ylim(bottom=0, top=max(limit * 100 * 2, by_n["error_rate"].max() * 110, 1))
        _thousands(top)
        top.set_title(_title(batch))
        top.set_ylabel("count per trial")
        bottom.set_ylabel("jobs failed for good (%)")
    handles = [h for ax in (axes[0][0], axes[1][0]) for h in ax.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return fig


def comparison(analysis: Analysis, rows: dict[str, pd.Series]) -> Figure:
    """Chosen configurations side by side (`configs` rows by name): items/s with its 95 %
    interval, and each one's speed-up over the first."""
    from lab.analysis.configs import speedup

    names = list(rows)
    values = [rows[n]["items_per_s"] for n in names]
    fig = Figure(figsize=(8.5, 1.2 + 0.8 * len(names)), layout="constrained")
    ax = fig.subplots()
    fig.suptitle("Throughput compared", fontsize=13, fontweight="bold")
    errors = _yerr(pd.DataFrame(list(rows.values())), "items_per_s")
    colors = [_PALETTE[i % len(_PALETTE)] for i in range(len(names))]
    ax.barh(names, values, xerr=errors, capsize=4, color=colors)
    base, right = rows[names[0]], 0.0
    for i, name in enumerate(names):
        factor = speedup(analysis, base, rows[name]).factor
        high = rows[name]["items_per_s_ci_high"]
        at = max(values[i], high) if np.isfinite(high) else values[i]  # right of the interval
        text = f"  {values[i]:,.0f} items/s, {factor:,.1f}×  ({label(rows[name])})"
        ax.text(at, i, text, va="center")
        right = max(right, at)
    ax.invert_yaxis()
    ax.set_xlim(0, right * 1.8)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("throughput (items/s)")
    ax.set_ylabel("configuration")
    ax.grid(alpha=0.3, axis="x")
    interval = Line2D([], [], color="black", marker="|", markersize=10, label="95 % interval")
    speed = Line2D([], [], linestyle="", label=f"×: speed-up over {names[0]}")
    ax.legend(handles=[interval, speed], loc="upper right", fontsize=9)
    return fig


def has_web(analysis: Analysis) -> bool:
    """True when the run had web traffic (Locust figures in its trials)."""
    rates = analysis.configs.get("web_requests_per_s")
    return rates is not None and bool((rates.fillna(0) > 0).any())


def web_latency_vs_workers(analysis: Analysis) -> Figure:
    """The web's own response time (from Locust) vs num_workers, a line per placement: what
    running the job slots inside the web process costs its users."""
    fig, axes, batches = _panels(
        analysis, "Web response time vs num_workers (Locust)", by_placement=False
    )
    configs = analysis.configs
    placements = sorted(configs["placement"].unique()) if "placement" in configs else ["separate"]
    for ax, batch in zip(axes[0], batches, strict=True):
        part = _select(configs, batch)
        for color, placement in zip(_PALETTE, placements, strict=False):
            for instances, group in part[part["placement"] == placement].groupby("instances"):
                group = group.sort_values("num_workers")
                tag = f"{placement}, {instances} instance{'s' if instances != 1 else ''}"
                ax.plot(
                    group["num_workers"],
                    group["web_p99_ms"],
                    marker="o",
                    color=color,
                    label=f"p99, {tag}",
                )
                ax.plot(
                    group["num_workers"],
                    group["web_p50_ms"],
                    marker=".",
                    linestyle=":",
                    color=color,
                    label=f"p50, {tag}",
                )
        _log2_x(ax, part["num_workers"])
        ax.set_ylim(bottom=0)
        ax.set_title(_title(batch))
        ax.set_xlabel("num_workers (job slots per instance)")
        ax.set_ylabel("web response time (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


#: The report's figures, in order: name -> (caption, function).
STANDARD: dict[str, tuple[str, Callable[[Analysis], Figure]]] = {
    "throughput": (
        "Throughput vs num_workers, with the Little's-law and capacity bounds; the marker says "
        "what held each point",
        throughput_vs_workers,
    ),
    "latency": ("Latency percentiles vs total concurrency, with the SLO", latency_vs_concurrency),
    "heatmap": ("Throughput by instances × num_workers, what held each cell marked", heatmap),
    "frontier": ("Throughput / latency frontier, the recommendation marked", frontier),
    "errors": ("429s, retries and errors vs total concurrency", errors_vs_concurrency),
}


WEB_CAPTION = "Web response time (p99 and p50, from Locust) vs num_workers, by placement"


def standard_figures(analysis: Analysis) -> dict[str, Figure]:
    """Every standard figure, by name (the order the report shows them); the web figure when
    the run had web traffic."""
    figures = {name: make(analysis) for name, (_, make) in STANDARD.items()}
    if has_web(analysis):
        figures["web"] = web_latency_vs_workers(analysis)
    return figures


# -- dynamic policies --------------------------------------------------------------------------

#: Width of the bins of the load curves, in seconds.
LOAD_BIN_S = 0.5

#: At most this many policies side by side in the timeline figure.
MAX_POLICIES = 4

DYNAMIC_CAPTION = (
    "Dynamic policies over time (one trial each): the load and the jobs done, the job slots "
    "(num_workers auto: the sum of the instances' limits) and the instances, and the service's "
    "requests in flight and queued; brown-out windows shaded"
)


def has_dynamic(analysis: Analysis) -> bool:
    """True when the run had a dynamic policy (num_workers auto, autoscaled instances)."""
    return not analysis.dynamic.empty and analysis.run is not None


def _per_s(times: pd.Series, weights: pd.Series, end_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Items per second in LOAD_BIN_S bins of `times` (seconds after the clock start)."""
    edges = np.arange(0.0, max(end_s, LOAD_BIN_S) + LOAD_BIN_S, LOAD_BIN_S)
    counts, _ = np.histogram(times, bins=edges, weights=weights)
    return edges[:-1] + LOAD_BIN_S / 2, counts / LOAD_BIN_S


def dynamic_timeline(analysis: Analysis) -> Figure:
    """Each dynamic policy's first trial over time, a column each: the load (items arriving and
    done per second), what the policy did (slots; instances and backlog when autoscaled), and
    the service (requests in flight and queued), with the brown-outs shaded."""
    from lab.analysis.dynamic import timeline_frame
    from lab.results import RunFolder

    assert analysis.run is not None
    run, folder = analysis.run, RunFolder(analysis.run.path)
    labels = list(analysis.dynamic["config"])[:MAX_POLICIES]
    fig = Figure(
        figsize=(max(PANEL_W_IN * len(labels), MIN_FIGURE_W_IN), 2.6 * 3 + 0.8),
        layout="constrained",
    )
    axes = np.asarray(fig.subplots(3, len(labels), squeeze=False, sharex="col"))
    fig.suptitle("Dynamic policies over time", fontsize=13, fontweight="bold")
    target = run.scenario.workload.service
    brownouts = analysis.service.brownouts if analysis.service is not None else []
    for col, name in enumerate(labels):
        trial = run.trials[[label(r) == name for _, r in run.trials.iterrows()]].iloc[0]
        tid, start, end = str(trial["trial_id"]), float(trial["started_at"]), float(trial["wall_s"])
        jobs = run.jobs[run.jobs["trial_id"] == tid]
        load, work, service = axes[0][col], axes[1][col], axes[2][col]
        first = jobs[jobs["attempt"] == 1]
        load.plot(*_per_s(first["enqueued_at"] - start, first["items"], end), color="#1f77b4",
                  label="arriving")  # fmt: skip
        done = jobs[jobs["outcome"] == "ok"]
        load.plot(*_per_s(done["finished_at"] - start, done["items"], end), color="#2ca02c",
                  label="done")  # fmt: skip
        load.set_title(tid)
        load.set_ylabel("items/s")
        timeline = folder.timeline(tid) or {}
        slots = timeline_frame(timeline, "slots")
        work.step(slots["t_s"], slots["slots"], where="post", color="#ff7f0e", label="job slots")
        work.set_ylabel("job slots")
        scaled = timeline_frame(timeline, "instances")
        if not scaled.empty:
            twin = work.twinx()
            twin.step(scaled["t_s"], scaled["running"] + scaled["starting"], where="post",
                      color="#9467bd", label="instances")  # fmt: skip
            twin.set_ylabel("instances", color="#9467bd")
            twin.yaxis.set_major_locator(MaxNLocator(integer=True))
            twin.set_ylim(bottom=0)
            load.plot(
                scaled["t_s"], scaled["backlog"], ":", color="#7f7f7f", label="backlog (jobs)"
            )
        series = folder.services(tid).get(target, {}).get("series", {})
        service.plot(series.get("t_s", []), series.get("in_flight", []), color="#d62728",
                     label="in flight")  # fmt: skip
        service.plot(series.get("t_s", []), series.get("queue_depth", []), color="#8c564b",
                     label="queued")  # fmt: skip
        service.set_ylabel(f"{target} requests")
        service.set_xlabel("seconds since the clock start")
        for ax in (load, work, service):
            for window in brownouts:
                ax.axvspan(window.start_s, window.start_s + window.duration_s, color="grey",
                           alpha=0.15, linewidth=0)  # fmt: skip
            ax.set_xlim(0, end)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
    handles = [h for ax in axes[:, 0] for h in ax.get_legend_handles_labels()[0]]
    if any(not timeline_frame(folder.timeline(str(t)) or {}, "instances").empty
           for t in run.trials["trial_id"]):  # fmt: skip
        handles.append(Line2D([], [], color="#9467bd", label="instances (right axis)"))
    if brownouts:
        handles.append(Rectangle((0, 0), 1, 1, color="grey", alpha=0.15, label="brown-out"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return fig
