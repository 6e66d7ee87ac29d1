"""End to end: a small rate-limited sweep (real Redis, worker and mock processes) names its
bottlenecks in trials.csv, in recommendation.json and in the reasons."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from lab.sweep.runner import run_sweep

RATE_LIMITED = """\
name: tiny_rate_limited
seed: 5
services:
  api:
    kind: http_api
    capacity: 64
    queue: 0
    latency: {dist: constant, ms: 40}
    rate_limit: {per_s: 100, burst: 10}
workload:
  job: http.call
  service: api
  items: 200
  retry: {max_attempts: 12, backoff_ms: 50}
sweep:
  num_workers: [2, 16]
  trial_timeout_s: 60
"""


@pytest.mark.timeout(180)
def test_a_rate_limited_sweep_names_the_rate_limit_and_says_why(tmp_path: Path) -> None:
    """2 slots at 40 ms a call offer 50 calls/s, under the limit of 100/s: `concurrency`.
    16 slots offer 400/s: most attempts get 429 + Retry-After, and the limit holds."""
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(textwrap.dedent(RATE_LIMITED))
    run = run_sweep(scenario, out_dir=tmp_path / "results", stream=io.StringIO())
    assert run is not None

    trials = pd.read_csv(run.path / "trials.csv").set_index("num_workers")
    assert trials.loc[2, "bottleneck"] == "concurrency"
    assert trials.loc[16, "bottleneck"] == "rate_limit"
    assert trials.loc[16, "service_rate_limited"] > 0 and trials.loc[2, "service_rate_limited"] == 0

    rec = json.loads((run.path / "recommendation.json").read_text())
    words = {c["config"]["num_workers"]: c["bottleneck"] for c in rec["configs"]}
    assert words == {2: "concurrency", 16: "rate_limit"}
    [limited] = [c for c in rec["configs"] if c["bottleneck"] == "rate_limit"]
    assert limited["evidence"]["rate_limit_per_s"] == 100
    assert limited["evidence"]["rejected_share"] > 0.25
    reasons = " ".join(rec["reasons"])
    assert "held by the rate limit (100/s)" in reasons
    assert "of attempts were 429s" in reasons
    html = (run.path / "report.html").read_text()
    assert "held by the rate limit (100/s)" in html
