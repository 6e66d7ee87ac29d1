"""Every standard figure renders, with a title, axis labels with units and a legend."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.text import Text

from lab.analysis.configs import Analysis, analyze_trials
from lab.report import plots
from lab.scenario.spec import Objective
from tests.test_analysis import SERVICE, grid, plateau

UNITS = (
    "(items/s)",
    "(ms",
    "(%)",
    "per trial",
    "(async slots per instance)",
    "(num_workers × instances)",
    "(worker processes)",
)


@pytest.fixture(scope="module")
def analysis() -> Analysis:
    """Two batch sizes, two instance counts, an SLO that rules out the slowest corner."""
    batch_1 = grid(plateau, repeats=2, noise=0.02, workers=(1, 4, 16))
    batch_50 = grid(
        lambda nw, inst: 40 * plateau(nw, inst), repeats=2, noise=0.02, workers=(1, 4, 16)
    )
    batch_50["batch_size"] = 50
    trials = pd.concat([batch_1, batch_50], ignore_index=True)
    trials.loc[trials["concurrency"] == 1, "latency_p99_ms"] = 3000.0
    trials.loc[trials["concurrency"] == 32, ["service_rejected", "retries"]] = [40, 12]
    objective = Objective.model_validate({"slo": {"p99_latency_ms": 2000}})
    return analyze_trials(trials, objective, service=SERVICE)


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text)]


@pytest.mark.parametrize("name", list(plots.STANDARD))
def test_each_figure_renders_with_a_title_labelled_axes_and_a_legend(
    analysis: Analysis, name: str
) -> None:
    fig = plots.STANDARD[name][1](analysis)
    assert isinstance(fig, Figure)
    assert fig.get_suptitle()
    data_axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    for ax in data_axes:
        for axis_label in (ax.get_xlabel(), ax.get_ylabel()):
            assert axis_label and any(u in axis_label for u in UNITS), (name, axis_label)
    legends = fig.legends + [leg for ax in fig.axes if (leg := ax.get_legend()) is not None]
    assert legends and all(leg.get_texts() for leg in legends)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=40)
    assert png.getvalue().startswith(b"\x89PNG")


def test_batch_panels_and_the_marks_follow_the_data(analysis: Analysis) -> None:
    fig = plots.throughput_vs_workers(analysis)
    assert [ax.get_title() for ax in fig.axes] == ["batch_size 1", "batch_size 50"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"1 instance", "2 instances", "service capacity bound", "recommended"} <= set(legend)
    assert "SLO p99 2,000 ms" in texts(plots.latency_vs_concurrency(analysis))
    heat = texts(plots.heatmap(analysis))
    assert sum(t.endswith("\n✗") for t in heat) == 2  # 1 slot x 1 instance: p99 over the SLO
    assert analysis.chosen is not None
    chosen = (
        f"recommended: nw{analysis.chosen['num_workers']}-in{analysis.chosen['instances']}-bs50"
    )
    assert chosen in texts(plots.frontier(analysis))


def test_standard_figures_returns_every_figure_in_order(analysis: Analysis) -> None:
    assert list(plots.standard_figures(analysis)) == list(plots.STANDARD)


def test_the_web_figure_draws_both_placements_when_there_was_web_traffic() -> None:
    separate = grid(plateau, repeats=1, noise=0.0, workers=(1, 4, 16))
    colocated = separate.assign(placement="colocated", trial_id=separate["trial_id"] + "-colo")
    trials = pd.concat([separate.assign(placement="separate"), colocated], ignore_index=True)
    trials["web_requests_per_s"] = 50.0
    trials["web_p50_ms"] = 5.0
    trials["web_p99_ms"] = 20.0 + (trials["placement"] == "colocated") * trials["num_workers"] * 10
    web = analyze_trials(trials, Objective(), service=SERVICE)
    assert plots.has_web(web)
    fig = plots.standard_figures(web)["web"]
    legend = texts(fig)
    assert any("p99, colocated" in t for t in legend) and any("p99, separate" in t for t in legend)
    assert fig.axes[0].get_ylabel() == "web response time (ms)"
    assert "web" not in plots.standard_figures(
        analyze_trials(separate, Objective(), service=SERVICE)
    )


def test_a_run_with_both_placements_gets_a_panel_for_each() -> None:
    separate = grid(plateau, repeats=1, noise=0.0, workers=(1, 4, 16))
    colocated = separate.assign(placement="colocated", trial_id=separate["trial_id"] + "-colo")
    trials = pd.concat([separate.assign(placement="separate"), colocated], ignore_index=True)
    both = analyze_trials(trials, Objective(), service=SERVICE)
    for make in (plots.throughput_vs_workers, plots.heatmap):
        titles = [ax.get_title() for ax in make(both).axes if ax.get_label() != "<colorbar>"]
        assert titles == ["batch_size 1, colocated", "batch_size 1, separate"]


@pytest.mark.parametrize("name", ["heatmap", "throughput"])
def test_the_heatmap_and_throughput_mark_each_bottleneck_with_a_legend(
    analysis: Analysis, name: str
) -> None:
    fig = plots.STANDARD[name][1](analysis)
    legend = " ".join(t.get_text() for leg in fig.legends for t in leg.get_texts())
    words = set(analysis.configs["bottleneck"])
    assert words == {"concurrency", "service_capacity"}  # the fixture's plateau: both kinds
    assert all(f"held by: {w}" in legend for w in words)
    assert "held by: rate_limit" not in legend  # only the kinds present
    shapes = {
        str(np.asarray(c.get_paths()[0].vertices).round(2).tolist())
        for ax in fig.axes
        for c in ax.collections
        if isinstance(c, PathCollection) and len(c.get_sizes()) and c.get_sizes()[0] in (55, 70)
    }
    assert len(shapes) == 2  # one marker shape per kind, on the points or cells
