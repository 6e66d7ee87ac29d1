"""Locust-driven arrivals and co-located job slots: real Locust, web app, workers and mocks."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

from lab.infra.broker import Broker
from lab.infra.procs import env_with_pythonpath, wait_for
from lab.producers.locust_runner import LOCUST_COLUMNS
from lab.scenario.spec import load_scenario
from lab.sweep.trial import TrialPlan, run_trial
from tests.conftest import process_alive

WEB = """\
name: web
seed: 5
services:
  api: {kind: http_api, capacity: 32, queue: 50, latency: {dist: constant, ms: 5}}
workload:
  job: http.call
  service: api
  arrival: {kind: locust, users: 4, spawn_rate: 4, duration_s: 2, wait_min_s: 0.05, wait_max_s: 0.1}
  cpu_ms_per_item: 1
workers: {placement: [separate, colocated]}
sweep: {num_workers: [2], instances: [1], batch_size: [2], trial_timeout_s: 60}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_locust_driven_trial_merges_locusts_figures(broker: Broker, tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, WEB))
    plan = TrialPlan(index=0, num_workers=2, instances=1, batch_size=2, repeat=0)
    outcome = run_trial(scenario, plan, broker=broker, logs=tmp_path / "logs" / plan.trial_id)
    row = outcome.row
    assert row["web_requests"] > 0 and row["web_failures"] == 0
    assert all(not math.isnan(row[c]) for c in LOCUST_COLUMNS)
    # Locust rounds its percentiles to buckets (2 significant digits), so p99 may pass max a bit
    assert row["web_p50_ms"] <= row["web_p99_ms"] and row["web_p50_ms"] <= row["web_max_ms"]
    assert row["jobs_enqueued"] >= row["web_requests"]  # one job per request; late ones count too
    assert row["items_done"] == row["items_enqueued"] == 2 * row["jobs_enqueued"]
    assert row["unfinished_jobs"] == 0 and row["placement"] == "separate"
    assert {e.instance for e in outcome.events} == {"nw2-in1-bs2-r0-i0"}
    # the figures are Locust's final ones, the same as the summary it printed on exit
    logs = tmp_path / "logs" / plan.trial_id
    assert (logs / "locust_final_stats.csv").exists()
    summary = [line.split() for line in (logs / "locust.log").read_text().splitlines()]
    printed = next(int(words[1]) for words in summary if words[:1] == ["Aggregated"])
    assert row["web_requests"] == printed


def test_colocated_slots_run_inside_the_web_processes(broker: Broker, tmp_path: Path) -> None:
    text = WEB.replace(
        "arrival: {kind: locust, users: 4, spawn_rate: 4, duration_s: 2, wait_min_s: 0.05, wait_max_s: 0.1}",
        "items: 40",
    )
    scenario = load_scenario(write(tmp_path, text))
    plan = TrialPlan(
        index=0, num_workers=3, instances=2, batch_size=2, repeat=0, placement="colocated"
    )
    outcome = run_trial(scenario, plan, broker=broker, logs=tmp_path / "logs" / plan.trial_id)
    row = outcome.row
    assert row["trial_id"] == "nw3-in2-bs2-colo-r0" and row["placement"] == "colocated"
    assert row["items_done"] == 40 and row["unfinished_jobs"] == 0
    assert {e.instance for e in outcome.events} <= {
        "nw3-in2-bs2-colo-r0-i0",
        "nw3-in2-bs2-colo-r0-i1",
    }
    roles = {name: u.role for name, u in outcome.usage.items()}
    assert roles["web-0"] == roles["web-1"] == "worker" and not any(
        n.startswith("worker-") for n in roles
    )
    assert math.isnan(row["web_requests"])  # no Locust: no web figures


def test_ctrl_c_during_a_locust_trial_leaves_no_process(tmp_path: Path) -> None:
    scenario = write(tmp_path, WEB.replace("duration_s: 2,", "duration_s: 30,"))
    sweep = subprocess.Popen(
        [sys.executable, "-m", "lab.sweep", str(scenario), "--out", str(tmp_path / "results")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_with_pythonpath(),
    )  # fmt: skip
    me = psutil.Process(sweep.pid)
    seen: set[int] = set()

    def cmdline(p: psutil.Process) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:  # it exited between the listing and the look
            return ""

    def locust_running() -> bool:
        kids = me.children(recursive=True)
        seen.update(p.pid for p in kids)
        return any("locust" in cmdline(p) for p in kids)

    wait_for(locust_running, what="Locust to run", timeout_s=90)
    sweep.send_signal(signal.SIGINT)
    output, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, output
    # each child was stopped and reaped before the sweep exited; one caught mid-spawn would
    # still get SIGTERM from the kernel when the sweep died: allow it a moment to exit
    wait_for(
        lambda: not [p for p in seen if process_alive(p)],
        what="every child of the sweep to exit",
        timeout_s=10,
    )
