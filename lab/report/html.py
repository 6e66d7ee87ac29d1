"""`python -m lab.report RUN_DIR`: write RUN_DIR/report.html, one self-contained file to share.

The report opens offline in any browser and can be attached to a ticket: figures are embedded
as base64 PNG, the style sheet is inline, nothing is fetched. It shows the scenario, the machine,
the recommendation and its reasons, the warnings, every standard figure, the faults (when a
trial had one), the table of configurations and the scalability fits. Everything that comes from the scenario or the
manifest is escaped (a scenario is user input).
"""

from __future__ import annotations

import argparse
import base64
import io
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from lab.analysis.configs import Analysis, Run, analyze, load_run
from lab.analysis.recommendation import Recommendation
from lab.configuration import label
from lab.errors import exit_status
from lab.external import ExternalService
from lab.infra.broker import redact_url
from lab.mocks.spec import ServiceSpec
from lab.report import placement, verification
from lab.report.faults import faults_section
from lab.report.plots import (
    DYNAMIC_CAPTION,
    STANDARD,
    WEB_CAPTION,
    dynamic_timeline,
    has_dynamic,
    has_web,
    web_latency_vs_workers,
)
from lab.report.search import model_section, search_section
from lab.results import RunFolder
from lab.scenario.spec import axis_values

#: Resolution of the embedded figures: sharp on a laptop screen, ~100 kB each.
DPI = 100

_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1320px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.7em; margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #ddd; margin-top: 2em; }
.sub { color: #666; margin-top: 0; }
.box { border-radius: 6px; padding: 0.8em 1.2em; margin: 1em 0; }
.pick { background: #eef7ee; border: 1px solid #7bb77b; }
.none { background: #fbeaea; border: 1px solid #d08080; }
.warn { background: #fff7e0; border: 1px solid #e0b84c; }
.pick .config { font-size: 1.45em; font-weight: 600; }
.figs { display: flex; flex-wrap: wrap; gap: 1.2em 2em; margin-right: 1em; }
.figs span { white-space: nowrap; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-style: italic; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
td { white-space: nowrap; } td.l { white-space: normal; min-width: 16em; }
th { background: #f4f4f4; position: sticky; top: 0; } td.l, th.l { text-align: left; }
tr.chosen td { background: #fff3b0; font-weight: 600; } tr.out td { color: #999; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 1.2em; }
dt { color: #666; } dd { margin: 0; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 13px; }
"""


def figure_png(fig: Figure) -> str:
    """A figure as a base64 PNG data URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _num(value: Any, fmt: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    return format(value, fmt)


def _recommendation(rec: Recommendation) -> str:
    reasons = "".join(f"<li>{escape(r)}</li>" for r in rec.reasons)
    if rec.pick is None:
        return f'<div class="box none"><p class="config"><b>No configuration recommended.</b></p><ul>{reasons}</ul></div>'
    f = rec.pick.figures
    interval = (
        f" (95 % CI {_num(f['items_per_s_ci_low'])}–{_num(f['items_per_s_ci_high'])})"
        if f.get("items_per_s_ci_low") is not None
        else ""
    )
    figures = [
        f"<b>{_num(f['items_per_s'])} items/s</b>{interval}",
        f"{_num(f['jobs_per_s'], ',.1f')} jobs/s",
        f"p50 {_num(f['latency_p50_ms'])} ms",
        f"p99 {_num(f['latency_p99_ms'])} ms",
        f"errors {_num(f['error_rate'], '.1%')}",
        f"{f['repeats']} repeat(s)",
    ]
    spans = "".join(f"<span>{x}</span>" for x in figures)  # numbers only: nothing to escape
    runners = "".join(f"<li>{escape(r.describe())}</li>" for r in rec.runners_up)
    return (
        f'<div class="box pick"><p class="config">{escape(rec.pick.config.describe())}</p>'
        f'<p class="figs">{spans}</p><h3>Why</h3><ul>{reasons}</ul>'
        f"<h3>Runners-up</h3><ul>{runners or '<li>none</li>'}</ul></div>"
    )


_TABLE = [
    ("num_workers", "num_workers", "d"), ("instances", "instances", "d"),
    ("batch_size", "batch_size", "d"), ("concurrency", "concurrency", "d"),
    ("repeats", "repeats", "d"), ("items_per_s", "items/s", ",.0f"),
    ("items_per_s_ci", "95 % CI", ""),
    ("jobs_per_s", "jobs/s", ",.1f"), ("latency_p50_ms", "p50 ms", ",.0f"),
    ("latency_p99_ms", "p99 ms", ",.0f"), ("latency_p99_worst_ms", "worst p99 ms", ",.0f"),
    ("error_rate", "errors", ".1%"), ("retries", "retries", ",.0f"),
    ("service_rejected", "429s", ",.0f"), ("bound_ratio", "of bound", ".0%"),
    ("workers_cores", "worker cores", ".2f"), ("bottleneck", "held by", ""),
]  # fmt: skip


def _configs_table(analysis: Analysis) -> str:
    head = "".join(f"<th>{escape(title)}</th>" for _, title, _ in _TABLE)
    rows = []
    metric = analysis.objective.maximize
    for _, row in analysis.configs.sort_values(metric, ascending=False).iterrows():
        row = row.copy()
        row["items_per_s_ci"] = (
            "–"
            if pd.isna(row["items_per_s_ci_low"])
            else f"{row['items_per_s_ci_low']:,.0f}–{row['items_per_s_ci_high']:,.0f}"
        )
        cells = "".join(
            f"<td>{_num(row[col], fmt) if fmt else row[col]}</td>" for col, _, fmt in _TABLE
        )
        flags = list(row["slo_problems"])
        if bool(row["harness_saturated"]):
            flags.append("harness-saturated: not trusted")
        elif bool(row["machine_saturated"]):
            flags.append("all cores busy")
        chosen = analysis.chosen is not None and label(row) == label(analysis.chosen)
        css = "chosen" if chosen else ("out" if row["slo_problems"] else "")
        note = "recommended" if chosen else "; ".join(flags)
        rows.append(f'<tr class="{css}">{cells}<td class="l">{escape(note)}</td></tr>')
    table = f'<table><tr>{head}<th class="l">notes</th></tr>{"".join(rows)}</table>'
    return f'<div class="wide">{table}</div>'


def _bottlenecks(analysis: Analysis) -> str:
    """What held each configuration, in words, best first (lab.analysis.attribution)."""
    metric = analysis.objective.maximize
    items = "".join(
        f"<li><b>{escape(label(row))}</b> ({_num(row[metric])} {escape(metric.replace('_per_s', '/s'))}): "
        f"held by {escape(str(row['why']))}</li>"
        for _, row in analysis.configs.sort_values(metric, ascending=False).iterrows()
    )
    return f"<ul>{items}</ul>"


def _fits_table(analysis: Analysis) -> str:
    rows = "".join(
        f"<tr><td>{f.batch_size}</td><td>{f.levels}</td><td>{_num(f.lambda_, ',.1f')}</td>"
        f"<td>{_num(f.sigma, '.3f')}</td><td>{_num(f.kappa, '.2e')}</td>"
        f"<td>{_num(f.r_squared, '.2f')}</td><td>{_num(f.peak_concurrency, ',.0f')}</td>"
        f"<td>{_num(f.peak_items_per_s, ',.0f')}</td><td>{_num(f.measured_max_items_per_s, ',.0f')}</td>"
        f'<td class="l">{escape(f.skipped or "")}</td></tr>'
        for f in analysis.fits
    )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("batch_size", "levels", "λ items/s per slot", "σ", "κ", "R²", "peak N*",
                  "X(N*) items/s", "best measured")
    )  # fmt: skip
    return (
        "<p>X(N) = λN / (1 + σ(N−1) + κN(N−1)), fitted to items/s against total concurrency N: "
        "σ is contention (the part that serialises), κ crosstalk (it makes throughput fall "
        "past N* = √((1−σ)/κ)).</p>"
        f'<table><tr>{head}<th class="l">skipped</th></tr>{rows}</table>'
    )


def _definitions(items: Sequence[tuple[str, Any]]) -> str:
    return (
        "<dl>"
        + "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in items)
        + "</dl>"
    )


def _scenario(run: Run) -> str:
    s = run.scenario
    w, sweep, o = s.workload, s.sweep, s.objective
    services = "; ".join(_service(name, spec) for name, spec in s.services.items())
    text = redact_url(RunFolder(run.path).scenario_text())  # a broker password stays out
    return (
        _definitions(
            [
                ("services", services),
                (
                    "job",
                    f"{w.job} against {w.service}, {w.expected_items:,} items, arrival {w.arrival.kind}",
                ),
                (
                    "grid",
                    f"num_workers {list(axis_values(sweep.num_workers))} × instances "
                    f"{list(axis_values(sweep.instances))} × "
                    f"batch_size {list(sweep.batch_size)}, {sweep.repeats} repeat(s)",
                ),
                ("objective", f"maximize {o.maximize}; prefer {', '.join(o.prefer) or '-'}"),
                (
                    "SLO",
                    f"p99 ≤ {o.slo.p99_latency_ms:,.0f} ms, errors ≤ {o.slo.max_error_rate:.1%}"
                    if o.slo.p99_latency_ms is not None
                    else f"no p99 limit, errors ≤ {o.slo.max_error_rate:.1%}",
                ),
            ]
        )
        + f"<details><summary>scenario.yaml, as run</summary><pre>{escape(text)}</pre></details>"
    )


def _service(name: str, spec: ServiceSpec | ExternalService) -> str:
    if isinstance(spec, ExternalService):
        return (
            f"{name}: a real {spec.protocol} service at {spec.url}, at most {spec.max_in_flight} "
            f"requests in flight and {spec.max_requests_per_s:g} per second"
        )
    return (
        f"{name}: {spec.kind}, capacity {spec.capacity}, queue {spec.queue}, "
        f"latency {_latency(spec.latency.model_dump(exclude_none=True))}, "
        f"per item {spec.per_item_ms:g} ms"
        + (f", rate limit {spec.rate_limit.per_s:g}/s" if spec.rate_limit else "")
        + (f", fitted to {spec.calibrated_from.url}" if spec.calibrated_from else "")
    )


def _latency(fields: dict[str, Any]) -> str:
    """{'dist': 'lognormal', 'median_ms': 15.0} -> 'lognormal, median_ms 15'."""
    rest = ", ".join(
        f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in fields.items()
        if k != "dist"
    )
    return f"{fields.get('dist', '?')}{', ' + rest if rest else ''}"


def _machine(run: Run) -> str:
    m = run.manifest
    keys = ["hostname", "platform", "cpu_count", "python", "lab_version", "broker", "seed",
            "quick", "started_at", "finished_at", "status"]  # fmt: skip
    return _definitions([(k, m[k]) for k in keys if k in m] + [("run folder", run.path)])


def _web_section(analysis: Analysis) -> str:
    """Web response times against num_workers for each placement, when there was web traffic."""
    if analysis.configs.empty or not has_web(analysis):
        return ""
    return (
        "<h2>Web response times</h2><p>Locust's view of the app under test. With "
        "<i>colocated</i> placement the job slots share the web process's event loop, so the "
        "jobs' CPU shows up here; with <i>separate</i> placement the web app only enqueues.</p>"
        f'<figure><img alt="{escape(WEB_CAPTION)}" src="{figure_png(web_latency_vs_workers(analysis))}">'
        f"<figcaption>{escape(WEB_CAPTION)}</figcaption></figure>"
    )


_DYNAMIC_TABLE = [
    ("config", "policy", ""), ("verdict", "verdict", ""), ("items_per_s", "items/s", ",.0f"),
    ("throughput_ratio", "× best", ".0%"), ("latency_p99_ms", "p99 ms", ",.0f"),
    ("p99_ratio", "p99 × best", ".2f"), ("best_fixed", "best fixed", ""),
    ("overloads", "429s + timeouts", ",.0f"), ("pick_overloads", "the pick's", ",.0f"),
    ("instance_seconds", "instance-s", ",.1f"), ("pick_instance_seconds", "the pick's", ",.1f"),
    ("fixed_pick", "fixed pick", ""), ("cheapest_instance_seconds", "cheapest meeting SLO", ",.1f"),
    ("settle_s", "settled after s", ",.1f"), ("slots_during_share", "slots in brown-out", ".0%"),
    ("recovery_s", "back after s", ",.1f"),
]  # fmt: skip


def _dynamic_section(analysis: Analysis) -> str:
    """Each dynamic policy against the fixed configurations, and the policies over time."""
    if not has_dynamic(analysis):
        return ""
    head = "".join(f"<th>{escape(title)}</th>" for _, title, _ in _DYNAMIC_TABLE)
    rows = []
    for _, row in analysis.dynamic.iterrows():
        cells = "".join(
            f"<td>{_num(row.get(col), fmt) if fmt else escape(str(row.get(col) or '–'))}</td>"
            for col, _, fmt in _DYNAMIC_TABLE
        )
        note = "; ".join(row["slo_problems"]) or "meets the SLO"
        rows.append(f'<tr>{cells}<td class="l">{escape(note)}</td></tr>')
    table = f'<table><tr>{head}<th class="l">SLO</th></tr>{"".join(rows)}</table>'
    return (
        "<h2>Dynamic policies</h2><p>Each policy against the fixed configurations of the same "
        "batch size (and the same value of the knob it does not adapt), from this run: the "
        "<i>best fixed</i> has the highest throughput within the SLO; the <i>fixed pick</i> is "
        "what the sweep recommends among them; the cost is instance-seconds. A policy <i>wins</i> "
        "when it meets the SLO, the best fixed does not beat it beyond the noise, and it is "
        "cheaper or gets fewer 429s and timeouts than the pick.</p>"
        f'<div class="wide">{table}</div>'
        f'<figure><img alt="{escape(DYNAMIC_CAPTION)}" src="{figure_png(dynamic_timeline(analysis))}">'
        f"<figcaption>{escape(DYNAMIC_CAPTION)}</figcaption></figure>"
    )


def render_report(analysis: Analysis) -> str:
    """The report's HTML text, self-contained. Needs an analysis of a run (`analyze(path)`)."""
    if analysis.run is None:
        raise ValueError("render_report needs an analysis made from a run folder (analyze(path))")
    run = analysis.run
    name = escape(run.scenario.name)
    warnings = "".join(f"<li>{escape(w)}</li>" for w in analysis.warnings)
    figures = (
        "".join(
            f'<figure><img alt="{escape(caption)}" src="{figure_png(make(analysis))}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
            for caption, make in STANDARD.values()
            if not analysis.configs.empty
        )
        or "<p>No trial finished: nothing to draw.</p>"
    )
    sections = [
        f"<h1>{name}: which configuration to run</h1>",
        f'<p class="sub">{escape(run.scenario.description)}<br>{len(analysis.trials)} trials, '
        f"{len(analysis.configs)} configurations, run {escape(run.path.name)} "
        f"({escape(str(run.manifest.get('status', '?')))})</p>",
        "<h2>Recommendation</h2>",
        _recommendation(analysis.recommendation),
        verification.section(run.path),
        f'<h2>Warnings</h2><div class="box warn"><ul>{warnings}</ul></div>' if warnings else "",
        "<h2>Figures</h2>",
        figures,
        _web_section(analysis),
        _dynamic_section(analysis),
        search_section(analysis, figure_png),
        faults_section(analysis, figure_png),
        placement.section(run.path, analysis.trials),
        "<h2>Configurations</h2>",
        "<p>Means over repeats; the interval is Student-t 95 % (none with one repeat). "
        "<i>of bound</i>: throughput over the tighter of the Little's-law and capacity bounds. "
        "Greyed: ruled out by the SLO, lost items or a timeout.</p>",
        _configs_table(analysis),
        "<h2>What held each configuration</h2>",
        "<p>The binding constraint of each configuration, from its own evidence (repeats "
        "aggregated): concurrency, the service's capacity, its rate limit or connection limit, "
        "the workers' CPU, the broker or the lab itself, retries, the arrivals, or errors. The "
        "heatmap and the throughput figure mark it with the same words.</p>",
        _bottlenecks(analysis),
        "<h2>Scalability fit (Universal Scalability Law)</h2>",
        _fits_table(analysis),
        model_section(analysis, figure_png),
        "<h2>Scenario</h2>",
        _scenario(run),
        "<h2>Machine and run</h2>",
        _machine(run),
    ]
    return html_page(f"{run.scenario.name}: lab report", "\n".join(sections))


def html_page(title: str, body: str) -> str:
    """A self-contained HTML document around `body`: inline style, no script, nothing fetched."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def write_report(run_dir: str | Path, *, analysis: Analysis | None = None) -> Path:
    """Write RUN_DIR/report.html (replacing an older one) and return its path."""
    folder = RunFolder.open(Path(run_dir))
    if analysis is None or analysis.run is None:
        analysis = analyze(load_run(folder.path))
    return folder.write_text(folder.report_html.name, render_report(analysis))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder")
    ns = parser.parse_args(argv)
    return exit_status("lab.report", lambda: print(write_report(ns.run_dir)))
