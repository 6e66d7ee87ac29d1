"""Faults are part of the experiment: crashed instances are measured, a failed trial is recorded,
a lost broker stops the run cleanly and resumably. Real Redis, workers and mocks throughout;
the outside killer is this test process, not the lab."""

from __future__ import annotations

import contextlib
import io
import json
import random
import signal
import socket
import sys
import textwrap
import threading
import time
from html import escape
from pathlib import Path

import pandas as pd
import psutil
import pytest
import redis

from lab.bench.faults import OutsideKiller, broker_url, running_sweep, sweep_processes
from lab.errors import ConfigError, HarnessError, ServiceError
from lab.infra.broker import Broker
from lab.infra.procs import env_with_pythonpath, python_module_argv, spawn, wait_for
from lab.report.faults import TIMELINE_CAPTION
from lab.results import STATUS_COMPLETE, STATUS_FAILED, RunFolder
from lab.runtime.queue import OK, JobEvent
from lab.scenario.spec import load_scenario
from lab.sweep.faults import FaultRecord, dip_ratio
from lab.sweep.runner import run_sweep
from lab.sweep.trial import TrialPlan, run_trial
from tests.conftest import process_alive

ROOT = Path(__file__).resolve().parent.parent

SMALL = """\
name: small
seed: 5
services:
  search:
    kind: opensearch
    capacity: 16
    queue: 100
    latency: {dist: constant, ms: 20}
workload:
  job: opensearch.bulk
  service: search
  items: 400
workers: {heartbeat_ttl_s: 0.5}
sweep:
  num_workers: [2]
  instances: [2]
  batch_size: [1]
  repeats: 2
  trial_timeout_s: 60
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_an_outside_sigkill_of_an_instance_is_measured_and_the_sweep_goes_on(
    tmp_path: Path,
) -> None:
    results = tmp_path / "results"
    with running_sweep(str(write(tmp_path, SMALL)), "--out", str(results)) as sweep:
        killer = OutsideKiller(psutil.Process(sweep.pid), instances=2, rng=random.Random(1))
        client = None
        while sweep.poll() is None:
            if client is None and (url := broker_url(killer.sweep)) is not None:
                client = redis.Redis.from_url(url)
            if client is not None and not killer.kills:  # the first trial only
                with contextlib.suppress(redis.RedisError, psutil.Error):  # a trial that ended
                    killer.poll(client)
            time.sleep(0.01)
        out, err = sweep.communicate()
    if client is not None:
        client.close()
    assert sweep.returncode == 0, err
    [kill] = killer.kills
    [run_dir] = results.glob("small/*")
    run = RunFolder.open(run_dir)
    assert run.manifest["status"] == STATUS_COMPLETE
    trials = run.trials().set_index("trial_id")
    assert len(trials) == 2  # the sweep went on to the next trial
    hit = trials.loc[kill.trial_id]
    assert hit["instance_crashes"] == 1 and not hit["failed"]
    assert hit["items_done"] == 400 and hit["unfinished_jobs"] == 0
    assert hit["lost_items"] == 0  # at-least-once: the dead instance's jobs came back
    writes = json.loads((run_dir / "services" / f"{kill.trial_id}.json").read_text())
    assert hit["duplicate_items"] == writes["search"]["opensearch"]["totals"]["writes"] - 400
    [record] = run.faults(kill.trial_id)
    assert record["action"] == "exit" and not record["injected"]
    assert record["detail"] == "was killed by SIGKILL" and record["recovered_s"] > 0
    other = trials.drop(index=kill.trial_id).iloc[0]
    assert other["instance_crashes"] == 0 and other["items_done"] == 400
    warnings = json.loads((run_dir / "recommendation.json").read_text())["warnings"]
    assert any("did not plan" in w and kill.trial_id in w for w in warnings)
    assert "<h2>Faults</h2>" in (run_dir / "report.html").read_text()
    assert "instance exits 1" in out


def test_a_trial_whose_every_instance_dies_is_recorded_failed_and_the_sweep_goes_on(
    tmp_path: Path,
) -> None:
    text = SMALL + "faults: [{at_s: 0.2, kill: instance, count: 2}]\n"
    run = run_sweep(write(tmp_path, text), out_dir=tmp_path / "results", stream=io.StringIO())
    assert run is not None and run.manifest["status"] == STATUS_COMPLETE
    trials = run.trials()
    assert len(trials) == 2 and trials["failed"].all() and not trials["timed_out"].any()
    assert (trials["instance_crashes"] == 2).all()
    assert trials["failure_reason"].str.startswith("every instance exited").all()
    rec = json.loads((run.path / "recommendation.json").read_text())
    assert rec["config"] is None
    assert any("could not finish" in w for w in rec["warnings"])


def test_losing_the_broker_mid_trial_exits_2_with_one_message_and_resume_finishes(
    tmp_path: Path,
) -> None:
    results = tmp_path / "results"
    one = SMALL.replace("repeats: 2", "repeats: 1")
    with running_sweep(str(write(tmp_path, one)), "--out", str(results)) as sweep:
        me = psutil.Process(sweep.pid)
        seen: set[int] = set()

        def a_trial_is_draining() -> bool:
            seen.update(p.pid for p in me.children(recursive=True))
            url = broker_url(me)
            if url is None or len(sweep_processes(me, "lab.runtime.worker")) < 2:
                return False
            with redis.Redis.from_url(url) as client:
                return any(client.scan_iter(match="lab:*:events"))

        wait_for(a_trial_is_draining, what="a trial in flight", timeout_s=60)
        seen.update(p.pid for p in me.children(recursive=True))
        for proc in sweep_processes(me, "redis-server"):
            proc.send_signal(signal.SIGKILL)
        _, err = sweep.communicate(timeout=60)
    assert sweep.returncode == 2
    assert err.startswith("lab.sweep: the broker at ") and "stopped answering during trial" in err
    assert "queued jobs were lost with it" in err and "--resume" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 3
    wait_for(
        lambda: not any(process_alive(p) for p in seen), what="every child to exit", timeout_s=10
    )
    [run_dir] = results.glob("small/*")
    assert RunFolder.open(run_dir).manifest["status"] == STATUS_FAILED
    resumed = run_sweep(resume=run_dir, stream=io.StringIO())  # a new private broker
    assert resumed is not None and resumed.manifest["status"] == STATUS_COMPLETE
    assert len(resumed.trials()) == 1 and resumed.trials()["items_done"].iloc[0] == 400


def test_the_crash_recovery_scenario_runs_and_counts_what_each_fault_cost(tmp_path: Path) -> None:
    run = run_sweep(
        ROOT / "scenarios" / "crash_recovery.yaml",
        out_dir=tmp_path / "results",
        quick=True,
        stream=io.StringIO(),
    )
    assert run is not None and run.manifest["status"] == STATUS_COMPLETE
    [row] = run.trials().to_dict("records")
    assert row["faults_injected"] == 3 and row["instance_crashes"] == 1 and not row["failed"]
    assert row["lost_items"] == 0 and row["items_done"] == row["items_enqueued"]
    assert row["duplicate_items"] >= 0 and row["recovery_s"] > 0
    records = run.faults(row["trial_id"])
    assert [r["action"] for r in records] == ["kill", "stall", "stall"]
    assert all(r["recovered_s"] is not None for r in records)
    assert escape(TIMELINE_CAPTION) in (run.path / "report.html").read_text()


def test_a_service_restart_and_a_broker_pause_keep_every_item_and_the_ledger_whole(
    broker: Broker, tmp_path: Path
) -> None:
    faults = (
        "faults: [{at_s: 0.3, restart: service, name: search}, {at_s: 0.5, pause: broker, "
        "for_s: 0.3}]\n"
    )
    scenario = load_scenario(write(tmp_path, SMALL + faults))
    plan = TrialPlan(index=0, num_workers=4, instances=2, batch_size=1, repeat=0)
    outcome = run_trial(scenario, plan, broker=broker, logs=tmp_path / "logs")
    row = outcome.row
    assert row["faults_injected"] == 2 and row["instance_crashes"] == 0
    assert row["items_done"] == 400 and row["lost_items"] == 0
    totals = outcome.services["search"]["opensearch"]["totals"]
    assert totals["unique_ids_written"] == 400  # the ids written before the restart are kept
    assert outcome.services["search"]["requests"] >= 400  # and so are the counters
    restart, pause = outcome.faults
    assert restart["action"] == "restart" and restart["recovered_s"] > 0
    assert pause["action"] == "pause" and pause["recovered_s"] > 0


def test_a_mock_that_dies_mid_trial_is_a_broken_harness_with_one_message(
    broker: Broker, tmp_path: Path
) -> None:
    scenario = load_scenario(write(tmp_path, SMALL))
    plan = TrialPlan(index=0, num_workers=2, instances=2, batch_size=1, repeat=0)
    me = psutil.Process()

    def kill_the_mock_once_work_flows() -> None:
        with broker.client() as client:
            wait_for(
                lambda: any(client.scan_iter(match=f"lab:{{trial-{plan.trial_id}-*}}:events")),
                what="the trial's first finished job",
                timeout_s=60,
            )
        for proc in sweep_processes(me, "lab.mocks"):
            proc.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_the_mock_once_work_flows)
    killer.start()
    with pytest.raises(HarnessError) as broken:
        run_trial(scenario, plan, broker=broker, logs=tmp_path / "logs")
    killer.join()
    assert broken.value.exit_code == 2
    message = str(broken.value)
    assert message.startswith(
        f"the mock service search was killed by SIGKILL during trial {plan.trial_id}"
    )
    assert not sweep_processes(me, "lab.")  # the trial stopped every child it had started


def test_a_worker_that_cannot_import_its_handler_stops_the_run_with_the_real_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tests.handlers_env  # noqa: F401  # imports here; the workers will not manage to

    monkeypatch.setenv("LAB_TEST_BREAK_HANDLER_IMPORT", "1")
    text = SMALL.replace("job: opensearch.bulk", "job: tests.handlers_env:ok")
    with pytest.raises(ServiceError) as failed:
        run_sweep(write(tmp_path, text), out_dir=tmp_path / "results", stream=io.StringIO())
    message = str(failed.value)
    assert "exited with code 2 while waiting for" in message
    assert "No module named 'lab_test_missing_dependency'" in message.splitlines()[0]
    [run_dir] = (tmp_path / "results").glob("small/*")
    assert RunFolder.open(run_dir).manifest["status"] == STATUS_FAILED


def test_a_child_that_cannot_start_or_is_killed_is_reported_with_what_it_said(
    tmp_path: Path,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        argv = python_module_argv("lab.mocks", "opensearch", "--port", port)
        with (
            spawn(argv, name="mock", log_path=tmp_path / "m.log", env=env_with_pythonpath()) as c,
            pytest.raises(ServiceError) as failed,
        ):
            wait_for(lambda: False, what="the mock", timeout_s=30, children=[c])
    assert "mock exited with code 1 while waiting for the mock" in str(failed.value)
    assert "address already in use" in str(failed.value).splitlines()[0].lower()
    with spawn([sys.executable, "-c", "import time; time.sleep(60)"], name="quiet") as quiet:
        quiet.signal(signal.SIGKILL)
        quiet.popen.wait()
        assert quiet.exit_description() == "was killed by SIGKILL"
        assert quiet.last_words() == "it wrote nothing"


def test_bad_faults_are_located_errors(tmp_path: Path) -> None:
    first = len(SMALL.splitlines()) + 2  # the line of faults[0]
    shapes = "faults:\n  - {at_s: 1, kill: instance}\n  - {at_s: 1, kill: instance, for_s: 2}\n"
    with pytest.raises(ConfigError) as bad:
        load_scenario(write(tmp_path, SMALL + shapes + "  - {at_s: 2, pause: broker}\n"))
    assert f"small.yaml:{first + 1}: faults[1].for_s: not used by kill" in str(bad.value)
    assert f"small.yaml:{first + 2}: faults[2].for_s: required by pause" in str(bad.value)
    late = "faults:\n  - {at_s: 1, restart: service, name: serch}\n  - {at_s: 99, kill: instance}\n"
    with pytest.raises(ConfigError) as bad:
        load_scenario(write(tmp_path, SMALL + late))
    assert "faults[0].name: unknown service 'serch' (did you mean 'search'?)" in str(bad.value)
    assert "faults[1].at_s: must be < sweep.trial_timeout_s (60), got 99" in str(bad.value)


def test_the_dip_is_throughput_while_faults_last_over_throughput_before() -> None:
    def done(job: str, at_s: float) -> JobEvent:
        return JobEvent(job, "noop", "i", 0.0, at_s - 0.01, at_s, 1, OK, 10, None, None)

    # 10 items per 0.1 s before the fault at 1 s, then 10 items per 0.2 s until it recovered at 2 s
    events = [done(f"a{i}", 0.1 * i) for i in range(1, 11)]
    events += [done(f"b{i}", 1.0 + 0.2 * i) for i in range(1, 6)]
    events += [done("b1", 1.3)]  # a duplicate run counts once, at its first success
    fault = FaultRecord(1.0, "kill", "worker-0", "was killed by SIGKILL", True, recovered_s=1.0)
    assert dip_ratio([fault], events, clock_start=0.0) == pytest.approx(0.5)
    assert pd.isna(dip_ratio([], events, clock_start=0.0))
