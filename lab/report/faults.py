"""The report's faults section: what went wrong in which trial, what it cost, and the dip.

Shown only when a trial had a fault, an instance exit or could not finish. The table comes from
trials.csv; the timeline from jobs.parquet (items finished per time bin) and `faults/<trial>.json`
(when each fault started and when the system had recovered from it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from html import escape
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lab.analysis.configs import Analysis
from lab.results import RunFolder

#: At most this many trials get a timeline panel.
MAX_TIMELINES = 4

TIMELINE_CAPTION = (
    "Items finished per second during faulted trials; a dashed line marks each fault, the "
    "shaded span lasts until the system recovered (its jobs back in the queue, the service up, "
    "the broker answering)"
)

_COLUMNS = [
    ("trial_id", "trial", ""), ("faults_injected", "faults", "d"),
    ("instance_crashes", "instance exits", "d"), ("recovery_s", "recovery s", ".1f"),
    ("recovered_jobs", "jobs put back", ",d"), ("lost_items", "lost items", ",d"),
    ("duplicate_items", "duplicate items", ",d"), ("dip_ratio", "throughput while faulted", ".0%"),
    ("items_per_s", "items/s", ",.0f"),
]  # fmt: skip


def faulted(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials with a fault, an instance exit, or that could not finish, in run order."""
    if trials.empty:
        return trials
    hit = (
        (trials["faults_injected"].fillna(0) > 0)
        | (trials["instance_crashes"].fillna(0) > 0)
        | trials["failed"].astype(bool)
    )
    return trials[hit].sort_values("order")


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if fmt.endswith("d"):
        return format(int(value), fmt)
    return format(value, fmt) if fmt else escape(str(value))


def _events(folder: RunFolder, trial_id: str) -> str:
    """'kill worker-1 at 3.2 s (was killed by SIGKILL; recovered in 2.1 s)', one per fault."""
    out = []
    for r in folder.faults(trial_id):
        recovered = (
            f"recovered in {r['recovered_s']:.1f} s"
            if r["recovered_s"] is not None
            else "not recovered"
        )
        who = "" if r["injected"] else " (not planned)"
        note = f"; {r['note']}" if r["note"] else ""
        out.append(
            f"{r['action']}{who} {r['target']} at {r['at_s']:.1f} s ({r['detail']}; {recovered}{note})"
        )
    return "<br>".join(escape(line) for line in out)


def faults_table(analysis: Analysis) -> str:
    """One row per faulted trial: its faults, what they cost, why it failed if it did."""
    assert analysis.run is not None
    folder = RunFolder(analysis.run.path)
    head = "".join(f"<th>{escape(t)}</th>" for _, t, _ in _COLUMNS)
    rows = []
    for _, row in faulted(analysis.trials).iterrows():
        cells = "".join(f"<td>{_cell(row[c], fmt)}</td>" for c, _, fmt in _COLUMNS)
        failed = escape(str(row["failure_reason"])) if bool(row["failed"]) else ""
        what = _events(folder, str(row["trial_id"]))
        rows.append(
            f'<tr class="{"out" if failed else ""}">{cells}'
            f'<td class="l">{what}</td><td class="l">{failed}</td></tr>'
        )
    table = (
        f'<table><tr>{head}<th class="l">what happened</th><th class="l">failed</th></tr>'
        f"{''.join(rows)}</table>"
    )
    return f'<div class="wide">{table}</div>'


def timeline(analysis: Analysis, trial_ids: list[str]) -> Figure:
    """Items/s over each trial's time, with its faults and recovery spans."""
    assert analysis.run is not None
    folder, jobs, trials = RunFolder(analysis.run.path), analysis.run.jobs, analysis.trials
    n = max(1, len(trial_ids))
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(6.2 * cols, 3.4 * rows + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
    fig.suptitle("Throughput through the faults", fontsize=13, fontweight="bold")
    for ax, trial_id in zip(axes, trial_ids, strict=False):
        start = float(trials.loc[trials["trial_id"] == trial_id, "started_at"].iloc[0])
        ok = jobs[(jobs["trial_id"] == trial_id) & (jobs["outcome"] == "ok")]
        first = ok.sort_values("finished_at").drop_duplicates("job_id")
        t = first["finished_at"].to_numpy() - start
        end_s = float(t.max()) if len(t) else 1.0
        bin_s = max(0.1, end_s / 40)
        edges = np.arange(0.0, end_s + bin_s, bin_s)
        counts, _ = np.histogram(t, bins=edges, weights=first["items"].to_numpy())
        ax.step(edges[:-1], counts / bin_s, where="post", color="#1f77b4", label="items/s")
        for r in folder.faults(trial_id):
            until = r["at_s"] + r["recovered_s"] if r["recovered_s"] is not None else end_s
            ax.axvspan(r["at_s"], until, color="#d62728", alpha=0.12)
            ax.axvline(r["at_s"], color="#d62728", linestyle="--", linewidth=1)
            ax.annotate(
                f"{r['action']} {r['target']}", (r["at_s"], 1), xycoords=("data", "axes fraction"),
                rotation=90, va="top", ha="right", fontsize=8, color="#d62728",
            )  # fmt: skip
        ax.set_title(trial_id)
        ax.set_xlabel("seconds since the clock start")
        ax.set_ylabel("items/s")
        ax.set_ylim(bottom=0)
        ax.legend(loc="lower right", fontsize=8)
    for ax in axes[len(trial_ids) :]:
        ax.set_visible(False)
    return fig


def faults_section(analysis: Analysis, figure_png: Callable[[Figure], str]) -> str:
    """The section's HTML ('' when nothing went wrong); `figure_png` embeds a figure."""
    if analysis.run is None:
        return ""
    hit = faulted(analysis.trials)
    if hit.empty:
        return ""
    finished = hit[~hit["failed"].astype(bool)]
    shown = list(finished["trial_id"].astype(str))[:MAX_TIMELINES]
    figure = (
        f'<figure><img alt="{escape(TIMELINE_CAPTION)}" '
        f'src="{figure_png(timeline(analysis, shown))}">'
        f"<figcaption>{escape(TIMELINE_CAPTION)}</figcaption></figure>"
        if shown
        else ""
    )
    return (
        "<h2>Faults</h2><p>Trials in which something went wrong, planned (the scenario's "
        "<code>faults</code>) or not. An instance that exits is measured, not fatal: the "
        "survivors put its jobs back once its heartbeat expires. <i>recovery</i>: the longest "
        "time from a fault until its jobs were back in the queue, the service was up again or "
        "the broker answered; <i>duplicate items</i>: the price of at-least-once delivery; "
        "<i>throughput while faulted</i>: items/s until recovery over items/s before the "
        "first fault. Lost items must be 0 after an instance exit.</p>"
        f"{faults_table(analysis)}{figure}"
    )
