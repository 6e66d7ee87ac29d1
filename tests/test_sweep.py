"""The sweep end to end: real embedded Redis, real mock and worker processes, tiny scenarios."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import psutil
import pytest

from lab.infra.broker import Broker
from lab.infra.procs import env_with_pythonpath, wait_for
from lab.results import STATUS_COMPLETE, STATUS_INTERRUPTED, TRIAL_COLUMNS, RunFolder
from lab.scenario.spec import load_scenario
from lab.sweep.runner import main, plan_trials, run_sweep
from lab.sweep.trial import TrialPlan, run_trial
from tests.conftest import process_alive

TINY = """\
name: tiny
seed: 3
services:
  search:
    kind: opensearch
    capacity: 4
    queue: 50
    latency: {dist: constant, ms: 2}
workload:
  job: opensearch.bulk
  service: search
  items: 60
sweep:
  num_workers: [1, 4]
  instances: [1]
  batch_size: [10]
  trial_timeout_s: 60
"""


def write(tmp_path: Path, text: str, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_tiny_sweep_writes_every_file_with_the_documented_columns(tmp_path: Path) -> None:
    scenario = write(tmp_path, TINY)
    out = io.StringIO()
    run = run_sweep(scenario, out_dir=tmp_path / "results", stream=out)
    assert run is not None
    assert run.path.parent == tmp_path / "results" / "tiny"
    assert (run.path / "scenario.yaml").read_text() == scenario.read_text()

    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["status"] == STATUS_COMPLETE
    assert manifest["trials_completed"] == 2
    assert {
        "lab_version",
        "python",
        "cpu_count",
        "hostname",
        "started_at",
        "finished_at",
        "seed",
    } <= set(manifest)

    trials = pd.read_csv(run.path / "trials.csv")
    assert list(trials.columns) == list(TRIAL_COLUMNS)
    assert sorted(trials["trial_id"]) == ["nw1-in1-bs10-r0", "nw4-in1-bs10-r0"]
    assert (trials["items_done"] == 60).all() and (trials["jobs_done"] == 6).all()
    assert (trials["lost_items"] == 0).all() and (trials["duplicate_items"] == 0).all()
    assert (trials["items_per_s"] > 0).all() and (trials["latency_p99_ms"] > 0).all()
    # the workers measured their own cost (NaN would fail these)
    assert (trials["slot_gap_p99_ms"] >= 0).all() and (trials["exchange_batch_mean"] > 0).all()

    jobs = pd.read_parquet(run.path / "jobs.parquet")
    assert len(jobs) == 12 and set(jobs["outcome"]) == {"ok"}
    for trial_id in trials["trial_id"]:
        stats = json.loads((run.path / "services" / f"{trial_id}.json").read_text())
        assert stats["search"]["opensearch"]["totals"]["unique_ids_written"] == 60

    rec = json.loads((run.path / "recommendation.json").read_text())
    assert set(rec["config"]) == {"num_workers", "instances", "batch_size"}
    assert {"figures", "reasons", "runners_up"} <= set(rec)
    assert "recommended: num_workers=" in out.getvalue() and str(run.path) in out.getvalue()


def test_a_second_run_never_overwrites_the_first(tmp_path: Path) -> None:
    scenario = write(tmp_path, TINY.replace("num_workers: [1, 4]", "num_workers: [2]"))
    first = run_sweep(scenario, out_dir=tmp_path, stream=io.StringIO())
    second = run_sweep(scenario, out_dir=tmp_path, stream=io.StringIO())
    assert first is not None and second is not None and first.path != second.path
    assert len(pd.read_csv(first.path / "trials.csv")) == 1


def test_killing_an_instance_mid_trial_loses_nothing_and_counts_duplicates(
    broker: Broker, tmp_path: Path
) -> None:
    text = (
        TINY.replace("items: 60", "items: 200")
        .replace("ms: 2}", "ms: 40}")
        .replace("capacity: 4", "capacity: 16")
    )
    faults = "workers: {heartbeat_ttl_s: 1.0}\nfaults: [{at_s: 0.4, kill: instance}]\n"
    scenario = load_scenario(write(tmp_path, text + faults))
    plan = TrialPlan(index=0, num_workers=4, instances=2, batch_size=1, repeat=0)
    outcome = run_trial(scenario, plan, broker=broker, logs=tmp_path / "logs" / plan.trial_id)
    row = outcome.row
    totals = outcome.services["search"]["opensearch"]["totals"]
    assert row["recovered_jobs"] >= 1  # the killed instance held jobs; they came back
    assert row["lost_items"] == 0 and totals["unique_ids_written"] == 200
    assert row["items_done"] == 200 and row["unfinished_jobs"] == 0
    # a recovered job can have been written before the kill: at most once more each
    assert row["duplicate_items"] == totals["writes"] - 200
    assert 0 <= row["duplicate_items"] <= row["recovered_jobs"]


def test_plan_is_the_full_grid_in_a_seeded_shuffled_order(tmp_path: Path) -> None:
    scenario = load_scenario(
        write(tmp_path, TINY.replace("batch_size: [10]", "batch_size: [1, 10, 20]\n  repeats: 2"))
    )
    plan = plan_trials(scenario)
    assert len(plan) == len({p.trial_id for p in plan}) == 2 * 3 * 2
    assert [p.index for p in plan] == list(range(12))
    assert [p.trial_id for p in plan] == [p.trial_id for p in plan_trials(scenario)]
    assert [p.trial_id for p in plan] != sorted(p.trial_id for p in plan)


def test_dry_run_prints_the_plan_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = write(tmp_path, TINY)
    assert main([str(scenario), "--out", str(tmp_path / "results"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "2 trials" in printed and "estimated duration" in printed
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: tiny\nservices: [oops\n", "tiny.yaml:"),
        (TINY + "  repets: 2\n", "did you mean 'repeats'?"),
        (TINY.replace("service: search", "service: serch"), "workload.service"),
        (TINY.replace("num_workers: [1, 4]", "num_workers: []"), "sweep.num_workers"),
    ],
)
def test_bad_input_exits_2_with_one_clear_message_and_writes_nothing(
    tmp_path: Path, text: str, expected: str
) -> None:
    scenario = write(tmp_path, text)
    done = subprocess.run(
        [sys.executable, "-m", "lab.sweep", str(scenario), "--out", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=60, env=env_with_pythonpath(),
    )  # fmt: skip
    assert done.returncode == 2
    assert expected in done.stderr and str(scenario) in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results").exists()


def test_ctrl_c_stops_everything_marks_the_run_and_resume_finishes_it(tmp_path: Path) -> None:
    slow = TINY.replace("ms: 2}", "ms: 20}").replace(
        "num_workers: [1, 4]", "num_workers: [1, 2, 3]"
    )
    scenario = write(tmp_path, slow.replace("batch_size: [10]", "batch_size: [1]"))
    results = tmp_path / "results"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "lab.sweep", str(scenario), "--out", str(results)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_with_pythonpath(),
    )  # fmt: skip
    me = psutil.Process(sweep.pid)
    descendants: set[int] = set()

    def first_trial_done_and_second_running() -> bool:
        descendants.update(p.pid for p in me.children(recursive=True))
        runs = list(results.glob("tiny/*/trials.csv"))
        return bool(runs) and len(runs[0].read_text().splitlines()) >= 2 and len(me.children()) >= 2

    wait_for(first_trial_done_and_second_running, what="a trial in flight", timeout_s=90)
    descendants.update(p.pid for p in me.children(recursive=True))
    sweep.send_signal(signal.SIGINT)
    output, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, output
    assert "--resume" in output
    assert descendants, "the sweep had started no child process"
    # each child was stopped and reaped before the sweep exited; one caught mid-spawn would
    # still get SIGTERM from the kernel when the sweep died: allow it a moment to exit
    wait_for(
        lambda: not [p for p in descendants if process_alive(p)],
        what="every child of the sweep to exit",
        timeout_s=10,
    )

    [run_dir] = results.glob("tiny/*")
    run = RunFolder.open(run_dir)
    assert run.manifest["status"] == STATUS_INTERRUPTED
    before = run.trials()
    assert 1 <= len(before) < 3

    resumed = run_sweep(resume=run_dir, stream=io.StringIO())
    assert resumed is not None and resumed.path == run_dir
    after = run.trials()
    assert sorted(after["trial_id"]) == ["nw1-in1-bs1-r0", "nw2-in1-bs1-r0", "nw3-in1-bs1-r0"]
    # the finished trials were not run again: their rows are untouched
    kept = after.set_index("trial_id").loc[before["trial_id"], "started_at"]
    assert list(kept) == list(before["started_at"])
    assert run.manifest["status"] == STATUS_COMPLETE


def test_an_open_loop_trial_counts_latency_from_the_scheduled_arrivals(
    broker: Broker, tmp_path: Path
) -> None:
    text = TINY.replace(
        "  items: 60\n", "  arrival: {kind: poisson, rate_per_s: 200, duration_s: 0.5}\n"
    )
    scenario = load_scenario(write(tmp_path, text))
    plan = TrialPlan(index=0, num_workers=4, instances=1, batch_size=5, repeat=0)
    outcome = run_trial(scenario, plan, broker=broker, logs=tmp_path / "logs" / plan.trial_id)
    row = outcome.row
    assert 50 <= row["items_enqueued"] <= 150 and row["items_done"] == row["items_enqueued"]
    assert row["jobs_enqueued"] == -(-row["items_enqueued"] // 5)
    start = row["started_at"]
    arrivals = sorted(e.enqueued_at - start for e in outcome.events)
    assert arrivals[0] >= 0 and arrivals[-1] < 0.5  # stamped on the schedule, not when sent
    assert all(e.started_at >= e.enqueued_at for e in outcome.events)
