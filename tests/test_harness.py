"""What a sweep shares across trials: mocks reused (reset as fresh) and the workers' fork server.

Reuse must never let one trial's leftovers into the next: a trial on a reused mock sees exactly
what it would see on a fresh process with the same seed, and a mock that will not empty is
replaced. Real processes throughout (Redis, mocks, workers).
"""

from __future__ import annotations

import contextlib
import textwrap
import threading
import urllib.request
from pathlib import Path

import psutil
import pytest

from lab.infra.broker import Broker
from lab.infra.procs import wait_for
from lab.mocks.control import MockControl
from lab.mocks.spec import parse_spec
from lab.scenario.spec import Scenario, load_scenario
from lab.sweep.harness import ServicePool, start_harness
from lab.sweep.trial import TrialPlan, run_trial

SCENARIO = """\
name: reuse
seed: 5
services:
  search:
    kind: opensearch
    capacity: 2
    queue: 50
    latency: {dist: lognormal, median_ms: 1, p99_ms: 5}
    per_item_ms: 0.01
workload:
  job: opensearch.bulk
  service: search
  items: 80
"""


def scenario(tmp_path: Path, text: str = SCENARIO) -> Scenario:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return load_scenario(path)


def service_figures(stats: dict[str, object]) -> dict[str, object]:
    """What a trial's service saw, without wall-clock timing: the draws as a multiset (the
    order in which concurrent requests met them may differ), counters and the ledger."""
    s = dict(stats)
    samples = s["samples"]
    assert isinstance(samples, dict)
    return {
        "requests": s["requests"],
        "served_items": s["served_items"],
        "rejected": s["rejected"],
        "service_ms": sorted(samples["service_ms"]),
        "opensearch": s["opensearch"],
        "seed": s["spec"]["seed"],  # type: ignore[index]
    }


def test_a_reused_mock_gives_the_next_trial_what_a_fresh_one_would(
    tmp_path: Path, broker: Broker
) -> None:
    sc = scenario(tmp_path)
    later = TrialPlan(1, 2, 1, 10, repeat=1)
    with start_harness(tmp_path / "shared") as harness:
        first = run_trial(sc, TrialPlan(0, 4, 2, 20, repeat=0), broker=broker,
                          logs=tmp_path / "a", harness=harness)  # fmt: skip
        reused = run_trial(sc, later, broker=broker, logs=tmp_path / "b", harness=harness)
        [mock] = harness.services.children.values()
        assert harness.services.restarts == 0
    fresh = run_trial(sc, later, broker=broker, logs=tmp_path / "c")
    assert first.services["search"]["opensearch"]["totals"]["docs"] == 80
    assert service_figures(reused.services["search"]) == service_figures(fresh.services["search"])
    for row in (reused.row, fresh.row):
        assert row["items_done"] == 80 and row["lost_items"] == 0 and row["duplicate_items"] == 0
    assert not mock.alive()  # the harness stopped what it started
    assert (tmp_path / "b" / "worker-0.log.exit").read_text() == "0"  # a graceful stop


def test_a_mock_that_will_not_empty_is_replaced(tmp_path: Path) -> None:
    spec = parse_spec(
        {"kind": "http_api", "capacity": 1, "latency": {"dist": "constant", "ms": 3000}}
    )
    pool = ServicePool(tmp_path)
    pool.quiet_timeout_s = 0.2
    try:
        [url] = pool.checkout({"api": spec}).values()
        [ready] = pool.starting
        [old] = pool.children.values()
        wait_for(ready.exists, what="the mock", timeout_s=30, children=[old])

        def call() -> None:
            with contextlib.suppress(OSError):  # the mock is stopped under it
                urllib.request.urlopen(f"{url}/call", data=b"{}", timeout=10).read()

        slow = threading.Thread(target=call, daemon=True)
        slow.start()  # a request left behind, still inside the service
        wait_for(
            lambda: MockControl(url, pool.token).stats()["now"]["in_flight"] == 1,
            what="the request inside",
            timeout_s=10,
        )
        pool.checkout({"api": spec.model_copy(update={"seed": 9})})
        [new] = pool.children.values()
        assert pool.restarts == 1 and new.pid != old.pid and not old.alive()
        slow.join(timeout=10)
    finally:
        pool.close()


@pytest.mark.parametrize("instances", [3])
def test_forked_workers_stop_with_their_trial_and_the_fork_server_with_the_harness(
    tmp_path: Path, broker: Broker, instances: int
) -> None:
    sc = scenario(tmp_path)
    with start_harness(tmp_path / "shared") as harness:
        zygote = psutil.Process(harness.launcher.child.pid)
        seen: set[int] = set()
        outcome = run_trial(sc, TrialPlan(0, 2, instances, 10, 0), broker=broker,
                            logs=tmp_path / "t", harness=harness)  # fmt: skip
        seen.update(p.pid for p in zygote.children())
        assert outcome.row["items_done"] == 80
        assert {u.role for u in outcome.usage.values()} >= {"worker", "mock"}
        assert not zygote.children()  # every forked worker stopped with its trial
    assert not psutil.pid_exists(zygote.pid) or zygote.status() == psutil.STATUS_ZOMBIE


def test_a_stop_rule_ends_a_trial_early_and_says_why(tmp_path: Path, broker: Broker) -> None:
    """The drain asks the rule at every poll; a reason stops the trial (nothing left running)."""
    from lab.sweep.trial import DrainProgress, TrialOptions

    slow = SCENARIO.replace("median_ms: 1, p99_ms: 5", "median_ms: 50, p99_ms: 60")
    seen: list[DrainProgress] = []

    def rule(p: DrainProgress) -> str | None:
        seen.append(p)
        return "enough seen" if p.items_done >= 20 else None

    outcome = run_trial(scenario(tmp_path, slow), TrialPlan(0, 1, 1, 10, 0), broker=broker,
                        logs=tmp_path / "t", options=TrialOptions(stop_rule=rule))  # fmt: skip
    row = outcome.row
    assert row["stopped_early"] is True and row["stop_reason"] == "enough seen"
    assert row["timed_out"] is False and 20 <= row["items_done"] < 80
    assert row["unfinished_jobs"] > 0 and row["error_rate"] == 0.0  # cut, not failed
    assert seen[-1].items_planned == 80 and len(seen[-1].arrivals_s) == 8


def test_the_fork_server_reports_how_each_child_ended(tmp_path: Path) -> None:
    """Its children are not the lab's: their exit status comes back through the zygote."""
    import signal

    from lab.infra.zygote import start_zygote

    with start_zygote(["lab.infra.zygote"], log_path=tmp_path / "zygote.log") as zygote:
        with zygote.spawn(
            "lab.infra.zygote", ["--nonsense"], name="bad", log_path=tmp_path / "bad.log"
        ) as bad:
            wait_for(lambda: not bad.alive(), what="the bad child to exit", timeout_s=30)
            assert bad.exit_description() == "exited with code 2"  # argparse's usage error
            assert "usage:" in bad.log_tail()
        env = {"PATH": "/usr/bin:/bin", "LAB_MARK": "from-the-request"}
        code = "import os, time; print(os.environ['LAB_MARK'], flush=True); time.sleep(60)"
        with zygote.spawn(
            "tests.zygote_probe", [code], name="probe", log_path=tmp_path / "p.log", env=env
        ) as probe:
            wait_for(
                lambda: "from-the-request" in probe.log_tail(),
                what="the probe's line",
                timeout_s=30,
            )
            probe.signal(signal.SIGKILL)
            wait_for(lambda: not probe.alive(), what="the probe to die", timeout_s=30)
            assert probe.exit_description() == "was killed by SIGKILL"
    assert not psutil.pid_exists(zygote.child.pid) or not zygote.child.alive()
