"""The report's search path and queueing-model sections, and their figures.

The search path: every decision of the search (search.jsonl) in order, and the figure of the
trials in the order measured, coloured by the decision that asked for them; a trial stopped
early is drawn hollow. The model: its fitted parameters, predicted vs measured for every
measured configuration with the error, its pick beside the measured one, and its curves over
every num_workers with the measured points on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lab.analysis.configs import Analysis, rank_metric, unit
from lab.analysis.model import QueueingModel, compare, median_abs_error, model_of_run, model_pick
from lab.configuration import label
from lab.results import RunFolder

#: Colour of a trial by the decision that planned it.
ACTIONS = {
    "plan": ("#1f77b4", "starting grid"),
    "repeat": ("#ff7f0e", "racing repeat"),
    "lengthen": ("#9467bd", "lengthened"),
    "refine": ("#2ca02c", "refinement"),
}

Png = Callable[[Figure], str]


def decisions_of(analysis: Analysis) -> list[dict[str, Any]]:
    """The run's search decisions (none for a run from before the search existed)."""
    return [] if analysis.run is None else RunFolder(analysis.run.path).decisions()


def trial_figure(trials: pd.DataFrame, metric: str) -> pd.Series:
    """Each trial's own figure for the ranking: its steady rate, else its whole-trial rate."""
    whole = metric.removeprefix("steady_")
    steady = trials[metric] if metric in trials else pd.Series(math.nan, index=trials.index)
    short = trials["too_short"].astype(object).fillna(True).astype(bool)
    return steady.where(~short & steady.notna(), trials[whole]).astype(float)


def search_path(analysis: Analysis, decisions: Sequence[dict[str, Any]]) -> Figure:
    """The trials in the order measured: the ranked figure, coloured by why each was run,
    hollow where the trial was stopped early; the recommendation's figure as a line."""
    trials = analysis.trials.sort_values("started_at").reset_index(drop=True)
    metric = rank_metric(analysis.objective)
    why = {str(t["trial_id"]): d["action"] for d in decisions for t in d.get("trials", ())}
    y = trial_figure(trials, metric)
    fig = Figure(figsize=(9.5, 4.2), layout="constrained")
    ax = fig.subplots()
    stopped = trials["stopped_early"].astype(object).fillna(False).astype(bool)
    for action, (color, _) in ACTIONS.items():
        mine = trials["trial_id"].astype(str).map(lambda t, a=action: why.get(t, "plan") == a)
        for hollow in (False, True):
            part = mine & (stopped == hollow)
            if part.any():
                ax.scatter(
                    np.flatnonzero(part) + 1, y[part], s=42, color=color,
                    facecolors="white" if hollow else color, linewidths=1.5, zorder=3,
                )  # fmt: skip
    for i, row in trials.iterrows():
        if why.get(str(row["trial_id"])) == "refine":
            ax.annotate(
                label(row),
                (int(i) + 1, y[i]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    pick = analysis.recommendation.pick
    if pick is not None and pick.figures.get(metric) is not None:
        ax.axhline(pick.figures[metric], color="goldenrod", linestyle="--", linewidth=1.2)
    ax.set_xlabel("trial, in the order measured")
    ax.set_ylabel(f"{unit(metric)} (steady window where measurable)")
    ax.set_title("Search path", fontsize=13, fontweight="bold")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=c, label=words)
        for c, words in ACTIONS.values()
    ]
    handles.append(
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            color="grey",
            markerfacecolor="white",
            label="stopped early",
        )
    )
    if pick is not None:
        handles.append(
            Line2D(
                [], [], color="goldenrod", linestyle="--", label=f"recommended: {pick.config.label}"
            )
        )
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    return fig


def model_curves(analysis: Analysis, model: QueueingModel) -> Figure:
    """The model's items/s over every num_workers (a line per instance count, a panel per
    batch size) with the measured configurations on it (hollow: stopped early)."""
    configs = analysis.configs
    metric = rank_metric(analysis.objective)
    batches = sorted(int(b) for b in configs["batch_size"].unique())
    instances = sorted(int(i) for i in configs["instances"].unique())
    top_nw = int(configs["num_workers"].max())
    fig = Figure(figsize=(max(4.8 * len(batches), 7.5), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(batches), squeeze=False)[0])
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for ax, batch in zip(axes, batches, strict=True):
        for i, inst in enumerate(instances):
            color = palette[i % len(palette)]
            line = model.predict_line(batch, inst, range(1, top_nw + 1))
            ax.plot(
                [p.config.num_workers for p in line], [p.items_per_s for p in line], color=color
            )
            part = configs[(configs["batch_size"] == batch) & (configs["instances"] == inst)]
            stopped = part["stopped_early"].astype(bool)
            ax.scatter(part["num_workers"], part[metric], color=color, s=36, zorder=3,
                       facecolors=[("white" if s else color) for s in stopped])  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
        ax.set_title(f"batch_size {batch}")
        ax.set_xlabel("num_workers (async slots per instance)")
        ax.set_ylabel(f"{unit(metric)}")
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
        ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], color=palette[i % len(palette)], marker="o", label=f"{n} instance(s)")
        for i, n in enumerate(instances)
    ]
    fig.suptitle("Queueing model (lines) and measurements (points)", fontsize=13, fontweight="bold")
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return fig


def search_section(analysis: Analysis, png: Png) -> str:
    """The "Search path" section: the decisions and the figure ("" without search.jsonl)."""
    decisions = decisions_of(analysis)
    if analysis.configs.empty or all(d["action"] in ("plan", "done") for d in decisions):
        return ""  # a plain grid: its path is the grid, in a shuffled order
    items = "".join(
        f"<li><b>{escape(d['action'])}</b> after {d['step']} trial(s), {d['elapsed_s']:,.0f} s: "
        f"{escape(d['reason'])}</li>"
        for d in decisions
    )
    stopped = analysis.trials["stopped_early"].astype(object).fillna(False).astype(bool).sum()
    caption = "Trials in the order measured, coloured by why they were run; hollow: stopped early"
    return (
        f"<h2>Search path</h2><p>{len(analysis.trials)} trials, {int(stopped)} stopped early. "
        "Every decision of the search, in order (search.jsonl):</p>"
        f"<ol>{items}</ol>"
        f'<figure><img alt="{escape(caption)}" src="{png(search_path(analysis, decisions))}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def model_section(analysis: Analysis, png: Png) -> str:
    """The "Queueing model" section: parameters, predicted vs measured, the two picks."""
    if analysis.run is None or analysis.configs.empty:
        return ""
    try:
        model = model_of_run(analysis.run)
    except ValueError as exc:
        return f"<h2>Queueing model</h2><p>Not fitted: {escape(str(exc))}.</p>"
    metric = rank_metric(analysis.objective)
    table = compare(model, analysis.configs, metric)
    rows = "".join(
        f'<tr><td class="l">{escape(r.config)}</td><td>{r.measured:,.0f}</td>'
        f'<td>{r.predicted:,.0f}</td><td>{r.error:+.0%}</td><td class="l">{escape(r.bound)}'
        f"{' (whole trial)' if r.too_short else ''}</td></tr>"
        for r in table.itertuples()
    )
    params = "".join(
        f'<tr><td class="l">{escape(n)}</td><td class="l">{escape(v)}</td><td class="l">{escape(src)}</td></tr>'
        for n, v, src in model.fit.describe()
    )
    mp = model_pick(model)
    measured = analysis.recommendation.config
    here = model.predict(measured) if measured is not None else None
    picks = (
        f"<p>The model's pick: <b>{escape(mp.pick.config.describe())}</b>, "
        f"{mp.pick.items_per_s:,.0f} {unit(metric)} predicted ({escape(mp.pick.bound)}-bound); "
        f"the measured pick: <b>{escape(measured.describe() if measured else 'none')}</b>"
        + (f", {here.items_per_s:,.0f} predicted ({escape(here.bound)}-bound)" if here else "")
        + f". Median absolute error over the {len(table)} measured configurations: "
        f"{median_abs_error(table):.0%}.</p>"
    )
    caption = "The model's curves over every num_workers, the measured configurations on them"
    return (
        "<h2>Queueing model</h2><p>Fitted from this run's own trials (lab.analysis.model): "
        "each configuration as a closed queueing network of the service (its capacity), the "
        "workers' CPU (a core per instance), Redis and the client's own time, solved by mean "
        "value analysis. Not modelled: retries and Retry-After waits, brown-outs.</p>"
        f"{picks}"
        f'<table><tr><th class="l">parameter</th><th class="l">value</th><th class="l">from</th></tr>{params}</table>'
        '<table><tr><th class="l">configuration</th><th>measured</th><th>predicted</th>'
        f'<th>error</th><th class="l">predicted bound</th></tr>{rows}</table>'
        f'<figure><img alt="{escape(caption)}" src="{png(model_curves(analysis, model))}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )
