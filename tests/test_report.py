"""The HTML report: one self-contained file with every figure, the warnings, escaped text."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import shutil
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from lab.analysis.configs import analyze
from lab.analysis.recommendation import SCHEMA_VERSION
from lab.configuration import Configuration
from lab.report.html import main, render_report, write_report
from lab.report.plots import STANDARD
from lab.sweep.runner import run_sweep

EXAMPLE = Path(__file__).resolve().parent.parent / "results" / "examples" / "quickstart"


class Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A copy of the committed quickstart example, free to change."""
    return Path(shutil.copytree(EXAMPLE, tmp_path / "run"))


def test_the_report_is_one_self_contained_file_with_every_figure(run_dir: Path) -> None:
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    page = Tags(path.read_text(encoding="utf-8"))
    images = [attrs["src"] or "" for tag, attrs in page.tags if tag == "img"]
    assert len(images) == len(STANDARD) + 1  # and the queueing model's curves
    for src in images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix) :]).startswith(b"\x89PNG")
    # nothing to fetch: no script, no linked style sheet or font, no remote address
    assert not [tag for tag, _ in page.tags if tag in ("script", "link", "iframe")]
    assert not [a for _, attrs in page.tags for a in attrs.values() if a and "://" in a]
    text = " ".join(page.text)
    rec = json.loads((run_dir / "recommendation.json").read_text())
    assert Configuration.of(rec["config"]).describe() in text and "Why" in text
    assert "Configurations" in text and "Machine and run" in text and "quickstart" in text
    # what held each configuration, in words: the capacity plateau of batch 1 says so
    assert "What held each configuration" in text
    assert "(305 items/s): held by the service's capacity: it serves 4" in text


def test_scenario_text_is_escaped(run_dir: Path) -> None:
    scenario = run_dir / "scenario.yaml"
    scenario.write_text(
        scenario.read_text().replace(
            "description: ", "description: <img src=x onerror=alert(2)> & "
        )
    )
    analysis = analyze(run_dir)
    assert analysis.run is not None
    # a name cannot hold '<' in a valid scenario; the report must not trust that either
    hostile = analysis.run.scenario.model_copy(update={"name": "<script>alert(1)</script>"})
    analysis = dataclasses.replace(
        analysis, run=dataclasses.replace(analysis.run, scenario=hostile)
    )
    html = render_report(analysis)
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt; &amp;" in html


def test_warnings_are_in_the_report(run_dir: Path) -> None:
    trials = pd.read_csv(run_dir / "trials.csv")
    trials["saturation_reason"] = trials["saturation_reason"].astype(object)  # all empty: float
    trials.loc[0, ["harness_saturated", "saturation_reason"]] = [True, "redis used 0.98 cores"]
    trials.loc[1, "lost_items"] = 3
    trials.to_csv(run_dir / "trials.csv", index=False)
    text = " ".join(Tags(write_report(run_dir).read_text(encoding="utf-8")).text)
    assert "Warnings" in text
    assert "harness-saturated, not trusted" in text and "redis used 0.98 cores" in text
    assert f"3 item(s) lost, in trial(s) {trials.loc[1, 'trial_id']}" in text


def test_a_run_without_trials_still_gets_a_report_that_says_so(run_dir: Path) -> None:
    (run_dir / "trials.csv").unlink()
    text = " ".join(Tags(write_report(run_dir).read_text(encoding="utf-8")).text)
    assert "No configuration recommended" in text and "no trial finished" in text
    assert "nothing to draw" in text


def test_the_command_line_writes_the_report_and_prints_its_path(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.html")
    assert (run_dir / "report.html").stat().st_size > 0


def test_the_command_line_refuses_a_folder_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_a_sweep_ends_with_its_recommendation_and_report(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(
        textwrap.dedent(
            """\
            name: tiny
            services:
              search: {kind: opensearch, capacity: 2, queue: 50, latency: {dist: constant, ms: 2}}
            workload: {job: opensearch.bulk, service: search, items: 40}
            sweep: {num_workers: [1, 2], batch_size: [10], trial_timeout_s: 60}
            """
        )
    )
    out = io.StringIO()
    run = run_sweep(scenario, out_dir=tmp_path / "results", stream=out)
    assert run is not None
    rec = json.loads((run.path / "recommendation.json").read_text())
    assert rec["schema_version"] == SCHEMA_VERSION and rec["config"] is not None
    printed = out.getvalue()
    assert "recommended: num_workers=" in printed
    assert f"report: {run.path / 'report.html'}" in printed
    images = [t for t, _ in Tags((run.path / "report.html").read_text()).tags if t == "img"]
    assert len(images) == 6  # the five standard figures and the queueing model's curves


def test_a_colocated_pick_reads_as_colocated_in_every_rendering(run_dir: Path) -> None:
    """The verdict line, the summary, the report's headline and the JSON all come from one type."""
    trials = pd.read_csv(run_dir / "trials.csv")
    trials["placement"] = "colocated"
    trials.to_csv(run_dir / "trials.csv", index=False)
    analysis = analyze(run_dir)
    rec = analysis.recommendation
    assert rec.config is not None and rec.config.placement == "colocated"
    assert "placement=colocated" in rec.describe()
    assert "placement=colocated" in analysis.summary()
    assert rec.to_json()["config"]["placement"] == "colocated"
    page = Tags(render_report(analysis))
    assert "placement=colocated" in " ".join(page.text)
    assert rec.config.label.endswith("-colo")
