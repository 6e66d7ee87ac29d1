"""Local attackers on a shared machine: a payload in Redis cannot make a worker import a module
or call an arbitrary URL, a broker password never reaches a command line or a file others read,
and (in test_mock_control.py) a mock's control routes need the run's token.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
import threading
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from lab.infra.broker import Broker
from lab.infra.procs import env_with_pythonpath, wait_for
from lab.runtime import jobs
from lab.runtime.jobs import JobContext, JobError
from lab.runtime.queue import DEAD, OK, Queue
from lab.sweep.runner import run_sweep
from lab.sweep.trial_row import bounds
from tests.conftest import StartWorker

EVIL = """\
import os, pathlib
pathlib.Path(os.environ["LAB_TEST_MARKER"]).write_text("imported")

async def run(ctx, args):
    return None
"""


def drained(queue: Queue) -> bool:
    stats = queue.stats()
    return stats.get("done", 0) + stats.get("dead", 0) >= stats.get("enqueued", 0) > 0


def test_a_worker_never_imports_a_module_a_payload_names(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    (tmp_path / "evil_jobs.py").write_text(EVIL)
    marker = tmp_path / "marker"
    path = f"{tmp_path}{os.pathsep}{env_with_pythonpath()['PYTHONPATH']}"
    env = {"PYTHONPATH": path, "LAB_TEST_MARKER": str(marker)}
    queue.enqueue("evil_jobs:run")
    queue.enqueue("noop")
    worker = start_worker(env=env)  # built-ins only: no --job
    wait_for(lambda: drained(queue), what="both jobs to settle", timeout_s=30)
    outcomes = {e.job: (e.outcome, e.error or "") for e in queue.events()}
    assert outcomes["noop"][0] == OK
    assert outcomes["evil_jobs:run"][0] == DEAD
    assert "not a built-in nor one this worker was started with" in outcomes["evil_jobs:run"][1]
    assert not marker.exists()
    worker.stop()
    # the control: a worker started WITH the job imports it (so the check above could fail)
    queue.enqueue("evil_jobs:run")
    start_worker("--job", "evil_jobs:run", env=env)
    assert marker.read_text() == "imported"


@pytest.mark.asyncio
async def test_http_call_goes_only_to_the_trials_services() -> None:
    services = {"api": "http://127.0.0.1:9"}
    async with aiohttp.ClientSession() as session:
        ctx = JobContext(instance="t", session=session, services=services)
        assert ctx.service_url({"url": "http://127.0.0.1:9/"}) == "http://127.0.0.1:9"
        for url in ("http://127.0.0.1:10", "https://127.0.0.1:9", "http://example.com:9"):
            with pytest.raises(JobError, match="not one of this worker's services"):
                await jobs.http_call(ctx, {"url": url})
        for path in ("@example.com/", ":80@example.com/x", "example.com"):
            with pytest.raises(JobError, match="must be a path on the service"):
                await jobs.http_call(ctx, {"service": "api", "path": path})
        with pytest.raises(JobError, match="this worker knows: api"):
            await jobs.opensearch_bulk(ctx, {"service": "elsewhere", "items": [1]})


SWEEP = """\
name: secret-broker
broker: {{url: "{url}"}}
services:
  search: {{kind: opensearch, capacity: 4, latency: {{dist: constant, ms: 1}}}}
workload: {{job: opensearch.bulk, service: search, items: 40}}
sweep: {{num_workers: [2], batch_size: [10], trial_timeout_s: 60}}
"""


def test_a_broker_password_never_reaches_a_command_line_or_a_shared_file(
    broker: Broker, tmp_path: Path
) -> None:
    password = broker.url.split("@")[0].rsplit(":", 1)[1]
    assert len(password) > 20
    scenario = tmp_path / "secret.yaml"
    scenario.write_text(SWEEP.format(url=broker.url))
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:  # what `ps` shows every local user while the sweep runs
        me = psutil.Process()
        while not done.is_set():
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    seen.append(" ".join(child.cmdline()))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run = run_sweep(scenario, out_dir=tmp_path / "results", stream=io.StringIO())
    finally:
        done.set()
        watcher.join()
    assert run is not None
    assert any("lab.runtime.worker" in argv for argv in seen)  # the watcher saw the workers
    assert not [argv for argv in seen if password in argv]
    for path in run.path.rglob("*"):
        if path.is_file() and path.name != "scenario.yaml":
            assert password.encode() not in path.read_bytes(), path
    assert "***" in (run.path / "report.html").read_text()
    assert stat.S_IMODE((run.path / "scenario.yaml").stat().st_mode) == 0o600  # the exact copy


def test_a_service_of_constant_0_ms_has_no_capacity_bound_rather_than_a_crash() -> None:
    figures = {"items_done": 10, "jobs_done": 10, "service_mean_ms": 0.0, "items_per_s": 1e6}
    stats = {"samples": {"service_ms": [0.0, 0.0]}, "served": 2, "served_items": 2}
    out = bounds(figures, concurrency=4, capacity=8, service_stats=stats, rate_limit_per_s=None)
    assert math.isnan(out["capacity_bound_items_per_s"]) and math.isnan(out["bound_ratio"])
