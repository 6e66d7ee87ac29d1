"""Dynamic configurations: num_workers `auto`, autoscaled instances, loads that change.

The autoscaler's decisions, the cost series and the analysis's verdicts are pure logic, tested
on synthetic inputs; the end-to-end tests run real trials (embedded Redis, mock and worker
processes on loopback) with tiny loads.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import random
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lab.analysis.configs import analyze_trials
from lab.errors import ConfigError
from lab.infra.broker import Broker
from lab.producers.arrivals import arrival_offsets, rate_at
from lab.results import TRIAL_COLUMNS, RunFolder
from lab.runtime.limits import LimitEvent
from lab.scenario.spec import Autoscale, Bursts, Step, axis_values, load_scenario
from lab.sweep.autoscale import BUSY_WINDOW_S, Autoscaler, Load
from lab.sweep.dynamics import record
from lab.sweep.placement import with_cluster
from lab.sweep.runner import plan_trials, run_sweep
from lab.sweep.trial import TrialPlan, run_trial

BASE = """\
name: dyn
seed: 5
services:
  api:
    kind: http_api
    capacity: 16
    queue: 50
    latency: {dist: constant, ms: 20}
workload:
  job: http.call
  service: api
  items: 40
sweep:
  num_workers: [auto, 2]
  instances: [1]
  trial_timeout_s: 60
"""


def scenario_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dyn.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_scenario(scenario_file(tmp_path, text))
    return str(info.value)


# -- the scenario -------------------------------------------------------------------------------


def test_auto_and_autoscale_are_axis_values_with_their_settings(tmp_path: Path) -> None:
    text = BASE.replace("[auto, 2]", "[2, {auto: {min: 2, max: 40, algorithm: aimd}}]").replace(
        "instances: [1]", "instances: [1, {autoscale: {max: 3, cooldown_s: 2}}]"
    )
    scenario = load_scenario(scenario_file(tmp_path, text))
    assert axis_values(scenario.sweep.num_workers) == (2, "auto")
    assert axis_values(scenario.sweep.instances) == (1, "autoscale")
    limit = scenario.sweep.auto_limit.settings()
    assert (limit.min, limit.max, limit.initial, limit.algorithm) == (2, 40, 4, "aimd")
    assert scenario.sweep.autoscale == Autoscale(max=3, cooldown_s=2)
    labels = sorted(p.trial_id for p in plan_trials(scenario))
    assert labels == [
        "nw2-in1-bs1-r0", "nw2-inautoscale-bs1-r0", "nwauto-in1-bs1-r0", "nwauto-inautoscale-bs1-r0",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("[auto, 2]", "[autox, 2]", "sweep.num_workers[0]: must be one of 'auto', got 'autox' (did you mean 'auto'?)"),
        ("[auto, 2]", "[auto, {auto: {}}]", "sweep.num_workers[1]: one dynamic entry per axis"),
        ("[auto, 2]", "[{auto: {mn: 2}}]", "sweep.num_workers[0].auto.mn: unknown key 'mn' (did you mean 'min'?)"),
        ("[auto, 2]", "[{auto: {min: 8, initial: 4}}]", "sweep.num_workers[0].auto.initial: must be in [min, max]"),
        ("[auto, 2]", "[2.5]", "one of 'auto' or a mapping, got 2.5"),
        ("instances: [1]", "instances: [{autoscale: {min: 3, max: 2}}]", "sweep.instances[0].autoscale.max: must be >= min (3), got 2"),
        ("sweep:\n", "workers: {placement: colocated}\nsweep:\n", "autoscale needs workers.placement separate"),
        ("sweep:\n", "cluster: {engine: ray, address: local}\nsweep:\n", "sweep.instances: autoscale starts and stops worker processes on this host"),
        ("  trial_timeout_s: 60\n", "  trial_timeout_s: 60\n  repeats: auto\n", "sweep: auto or autoscale runs as listed"),
    ],
)  # fmt: skip
def test_a_bad_dynamic_entry_is_one_clear_message(
    tmp_path: Path, old: str, new: str, words: str
) -> None:
    dynamic = "colocated" in new or "cluster" in new
    text = BASE.replace("instances: [1]", "instances: [autoscale]") if dynamic else BASE
    message = error_of(tmp_path, text.replace(old, new))
    assert words in message
    assert len(message.splitlines()) == 1


def test_autoscale_is_refused_when_cluster_comes_from_the_command_line(tmp_path: Path) -> None:
    """The autoscaler starts instances through the local placement only."""
    scenario = load_scenario(
        scenario_file(tmp_path, BASE.replace("instances: [1]", "instances: [autoscale]"))
    )
    with pytest.raises(ConfigError, match=r"--cluster: the scenario.s sweep\.instances autoscale"):
        with_cluster(scenario, "local")
    assert with_cluster(scenario, "none").cluster is None


def test_a_step_load_changes_rate_at_once_and_shortens_in_proportion() -> None:
    step = Step.model_validate(
        {"steps": [{"rate_per_s": 100, "duration_s": 10}, {"rate_per_s": 600, "duration_s": 10}]}
    )
    assert [rate_at(step, t) for t in (0, 9.9, 10, 19.9)] == [100, 100, 600, 600]
    offsets = arrival_offsets(step, items=None, rng=random.Random(3))
    first, second = sum(t < 10 for t in offsets), sum(t >= 10 for t in offsets)
    assert first == pytest.approx(1000, rel=0.1) and second == pytest.approx(6000, rel=0.05)
    short = step.scaled_to(5)
    assert [p.duration_s for p in short.steps] == [2.5, 2.5] and short.duration_s == 5


def test_bursts_come_every_period_on_top_of_the_base_rate() -> None:
    bursts = Bursts(
        base_per_s=50, burst_per_s=1000, burst_s=0.5, every_s=4, first_s=1, duration_s=20
    )
    assert [bursts.in_burst(t) for t in (0.9, 1.0, 1.4, 1.6, 5.2, 6)] == [
        False, True, True, False, True, False,
    ]  # fmt: skip
    offsets = arrival_offsets(bursts, items=None, rng=random.Random(4))
    in_bursts = sum(bursts.in_burst(t) for t in offsets)
    # 5 bursts x 0.5 s x 1,000/s = 2,500 in bursts; 17.5 s x 50/s = 875 between them
    assert in_bursts == pytest.approx(2500, rel=0.1)
    assert len(offsets) - in_bursts == pytest.approx(875, rel=0.15)


# -- the autoscaler's decisions -----------------------------------------------------------------


def decisions(spec: Autoscale, backlog: list[int], poll_s: float = 0.5) -> list[int]:
    """Feed a backlog series to the autoscaler, one value per poll; the instances it runs."""
    scaler, current, out = Autoscaler(spec), spec.min, []
    for i, pending in enumerate(backlog):
        current = scaler.decide(i * poll_s, Load(pending), current)
        out.append(current)
    return out


def fleet(spec: Autoscale, rate: Callable[[float], float], until_s: float, *, slots: int = 8,
          job_s: float = 0.03) -> list[tuple[float, int, Load]]:  # fmt: skip
    """A fluid model of instances behind the autoscaler: items arrive at `rate(t)`; each running
    instance finishes up to `slots / job_s` a second, `job_s` each (Little's law gives the jobs
    in flight); an ordered instance runs `start_delay_s` later. Every poll: (t, instances
    running or starting, what the queue held)."""
    scaler = Autoscaler(spec, slots)
    dt, t, pending, ready_at = 0.01, 0.0, 0.0, [0.0] * spec.min
    in_flight, next_poll, out = 0.0, 0.0, []
    while t < until_s:
        running = sum(r <= t for r in ready_at)
        settled = sum(r + spec.poll_s <= t for r in ready_at)  # running for a whole poll
        served = min(pending + rate(t) * dt, running * slots / job_s * dt)
        pending += rate(t) * dt - served
        in_flight = served / dt * job_s
        if t >= next_poll:
            load = Load(int(pending), round(in_flight))
            desired = scaler.decide(t, load, len(ready_at), len(ready_at) - settled)
            ready_at = sorted(ready_at)[:desired] + [t + spec.start_delay_s] * (
                desired - len(ready_at)
            )
            out.append((t, len(ready_at), load))
            next_poll = t + spec.poll_s
        t += dt
    return out


def instances_between(series: list[tuple[float, int, Load]], start: float, end: float) -> set[int]:
    return {n for t, n, _ in series if start <= t < end}


def test_it_scales_up_at_once_to_the_backlog_over_the_target_within_max() -> None:
    spec = Autoscale(min=1, max=5, target_backlog_per_instance=100, cooldown_s=5)
    assert decisions(spec, [0, 50, 250, 420, 2000]) == [1, 1, 3, 5, 5]


def test_it_scales_down_only_to_the_highest_need_of_the_cooldown_window() -> None:
    spec = Autoscale(min=1, max=8, target_backlog_per_instance=10, cooldown_s=2)
    series = [60, 0, 0, 0, 0, 0, 0, 0]  # one poll every 0.5 s
    # 6 at once; the window still holds 6 until it is 2 s old; then down to the minimum
    assert decisions(spec, series) == [6, 6, 6, 6, 6, 1, 1, 1]


def test_a_backlog_within_tolerance_of_the_target_changes_nothing() -> None:
    spec = Autoscale(min=1, max=8, target_backlog_per_instance=100, cooldown_s=0)
    scaler = Autoscaler(spec)
    assert scaler.decide(0.0, Load(420), 4) == 4  # 105 per instance: within 10 %
    assert scaler.decide(0.5, Load(480), 4) == 5  # 120 per instance: one more


#: dynamic_load's autoscaler: 8 slots of 30 ms an instance finish 267 items/s
STEP = Autoscale(min=1, max=4, target_backlog_per_instance=30, cooldown_s=10, start_delay_s=1)


def step_load(t: float) -> float:
    return 60.0 if t < 10 else 300.0 if t < 40 else 60.0


def test_a_steady_load_the_instances_keep_up_with_does_not_flap() -> None:
    series = fleet(STEP, step_load, until_s=40)
    # 300/s needs 2 instances (~10 of their 16 slots busy): once they keep up the pending
    # list reads 0, and the busy slots still hold 2
    assert instances_between(series, 13, 40) == {2}
    assert all(load.pending == 0 for t, _, load in series if 13 <= t < 40)
    # the pending list alone (KEDA's list length) drops to 1 after the cooldown, falls
    # behind, climbs back: flapping
    keda = fleet(STEP.model_copy(update={"target_utilization": None}), step_load, until_s=40)
    changes = sum(a[1] != b[1] for a, b in itertools.pairwise(keda) if a[0] >= 13)
    assert changes >= 2 and 1 in instances_between(keda, 13, 40)


def test_a_step_scales_up_at_once_and_does_not_overshoot_while_instances_start() -> None:
    series = fleet(STEP, step_load, until_s=20)
    assert instances_between(series, 0, 10) == {1}  # 60/s: one is enough
    # at the step: a second one within two polls (the backlog; the busy slots are averaged)
    assert instances_between(series, 11.5, 20) == {2}
    assert max(n for _, n, _ in series) == 2  # not 4 while the second one starts


def test_it_scales_down_after_the_load_falls_only_after_the_window() -> None:
    series = fleet(STEP, step_load, until_s=70)
    assert instances_between(series, 40, 40 + STEP.cooldown_s) == {2}  # held...
    # ...then released, once the busy slots' average has fallen too
    assert instances_between(series, 40 + STEP.cooldown_s + BUSY_WINDOW_S, 70) == {1}


def test_the_backlog_waits_for_the_instances_still_starting() -> None:
    scaler = Autoscaler(STEP)
    assert scaler.decide(0.0, Load(90), 1) == 3  # 90 waiting: 3 instances
    assert scaler.decide(0.5, Load(150), 3, starting=2) == 3  # they start: 150 is their work
    assert scaler.decide(1.0, Load(110), 3) == 4  # started, still behind: more
    # a backlog past twice the target per instance while they start: more at once
    assert Autoscaler(STEP).decide(0.0, Load(230), 3, starting=2) == 4


def test_with_auto_num_workers_the_backlog_alone_decides() -> None:
    scaler = Autoscaler(STEP, slots_per_instance=None)  # num_workers auto: the slots move
    assert scaler.decide(0.0, Load(0, in_flight=500), 1) == 1
    assert Autoscaler(STEP, slots_per_instance=8).decide(0.0, Load(0, in_flight=50), 1) == 4


def test_it_never_goes_below_min_or_above_max() -> None:
    spec = Autoscale(min=2, max=3, target_backlog_per_instance=5, cooldown_s=0.5)
    rng = random.Random(9)
    runs = decisions(spec, [rng.choice([0, 3, 40, 1000]) for _ in range(200)])
    assert set(runs) == {2, 3}  # pushed to both bounds, never past them


# -- the cost of a trial ------------------------------------------------------------------------


def test_slots_and_instance_seconds_follow_the_limits_and_the_instances() -> None:
    start = 1000.0
    events = [
        LimitEvent("a", start - 1, 4, "start", math.nan, math.nan, 0, 0),
        LimitEvent("a", start + 5, 8, "gradient", 20.0, 10.0, 10, 0),
        LimitEvent("b", start + 5, 2, "start", math.nan, math.nan, 0, 0),
        LimitEvent("b", start + 8, 2, "stop", math.nan, math.nan, 0, 0),
    ]
    auto = record(num_workers=None, instances=2, wall_s=10, clock_start=start, limits=events,
                  autoscaled=None)  # fmt: skip
    # a: 4 for 5 s then 8 for 5 s; b: 2 from 5 s to 8 s -> (20 + 40 + 6) / 10
    assert auto.cost["slots_mean"] == pytest.approx(6.6, abs=0.1)
    assert auto.cost["slots_max"] == 10 and auto.cost["instance_seconds"] == 20
    assert auto.timeline is not None and len(auto.timeline["limits"]["rows"]) == 4
    periods = [[0, 0.0, 0.0, None, None], [1, 2.0, 3.0, 6.0, 7.5], [2, 4.0, 5.0, 4.5, 4.5]]
    scaled = record(num_workers=4, instances=None, wall_s=10, clock_start=start, limits=[],
                    autoscaled={"instance_seconds": 15.5, "instances_max": 2, "periods": periods,
                                "instances": {"columns": [], "rows": []}})  # fmt: skip
    # 4 slots all along, 4 more from 3 s (started) to 6 s (asked to stop); the third cancelled
    assert scaled.cost["slots_mean"] == pytest.approx(5.2, abs=0.1)
    fixed = record(num_workers=4, instances=3, wall_s=10, clock_start=start, limits=[],
                   autoscaled=None)  # fmt: skip
    assert fixed.cost == {
        "instance_seconds": 30,
        "instances_max": 3,
        "slots_mean": 12,
        "slots_max": 12,
    }
    assert fixed.timeline is None  # nothing moved: no timeline file


# -- the verdicts -------------------------------------------------------------------------------


def trials_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """trials.csv rows: every column NaN or 0 but those given (one repeat each)."""
    defaults: dict[str, Any] = dict.fromkeys(TRIAL_COLUMNS, np.nan)
    defaults |= {
        "batch_size": 1, "placement": "separate", "repeat": 0, "timed_out": False,
        "error_rate": 0.0, "lost_items": 0, "service_rejected": 0, "timeouts": 0,
        "harness_saturated": False, "machine_saturated": False, "jobs_enqueued": 1000,
    }  # fmt: skip
    table = pd.DataFrame([defaults | r for r in rows])
    table["trial_id"] = [f"t{i}" for i in range(len(table))]
    return table


def test_a_policy_within_noise_and_gentler_wins_one_beaten_loses() -> None:
    from lab.scenario.spec import Objective

    table = trials_table([
        {"num_workers": 4, "instances": 1, "items_per_s": 100.0, "latency_p99_ms": 50.0,
         "instance_seconds": 10.0, "service_rejected": 0},
        {"num_workers": 16, "instances": 1, "items_per_s": 120.0, "latency_p99_ms": 60.0,
         "instance_seconds": 9.0, "service_rejected": 40},
        {"num_workers": "auto", "instances": 1, "items_per_s": 118.0, "latency_p99_ms": 55.0,
         "instance_seconds": 9.0, "service_rejected": 3},
        {"num_workers": "auto", "instances": 2, "items_per_s": 60.0, "latency_p99_ms": 55.0,
         "instance_seconds": 9.0},
        {"num_workers": 16, "instances": 2, "items_per_s": 200.0, "latency_p99_ms": 55.0,
         "instance_seconds": 9.0},
    ])  # fmt: skip
    table["concurrency"] = np.nan
    analysis = analyze_trials(table, Objective())
    verdicts = dict(zip(analysis.dynamic["config"], analysis.dynamic["verdict"], strict=True))
    assert verdicts == {"nwauto-in1-bs1": "wins", "nwauto-in2-bs1": "loses"}
    won = analysis.dynamic.set_index("config").loc["nwauto-in1-bs1"]
    assert won["best_fixed"] == "nw16-in1-bs1" and won["throughput_ratio"] == pytest.approx(
        118 / 120
    )
    assert sorted(analysis.configs["num_workers"]) == [4, 16, 16]  # dynamic rows kept apart
    reasons = " ".join(analysis.recommendation.reasons)
    assert "dynamic num_workers=auto, instances=1" in reasons and "wins" in reasons
    assert [d["verdict"] for d in analysis.recommendation.to_json()["dynamic"]] == ["wins", "loses"]


def test_when_no_fixed_setting_meets_the_slo_it_is_said() -> None:
    from lab.scenario.spec import Objective

    table = trials_table([
        {"num_workers": 4, "instances": 1, "items_per_s": 100.0, "latency_p99_ms": 5000.0},
        {"num_workers": 4, "instances": "autoscale", "items_per_s": 100.0, "latency_p99_ms": 900.0,
         "instance_seconds": 12.0},
    ])  # fmt: skip
    objective = Objective.model_validate({"slo": {"p99_latency_ms": 1000}})
    analysis = analyze_trials(table, objective)
    assert analysis.recommendation.pick is None
    [row] = analysis.dynamic.to_dict("records")
    assert row["verdict"] == "wins"
    assert any("no fixed configuration of its kind meets the SLO; it does" in r
               for r in analysis.recommendation.reasons)  # fmt: skip


# -- end to end ---------------------------------------------------------------------------------


def test_auto_bounds_the_slots_and_autoscaling_adds_instances_end_to_end(tmp_path: Path) -> None:
    text = (
        BASE.replace("[auto, 2]", "[2, {auto: {min: 1, max: 3, initial: 2}}]")
        .replace(
            "  items: 40\n",
            "  arrival: {kind: step, steps: [{rate_per_s: 20, duration_s: 0.5}, "
            "{rate_per_s: 250, duration_s: 1.5}]}\n",
        )
        .replace(
            "instances: [1]",
            "instances: [1, {autoscale: {min: 1, max: 2, target_backlog_per_instance: 5, "
            "cooldown_s: 5, start_delay_s: 0.2, poll_s: 0.1}}]",
        )
    )
    out = io.StringIO()
    run = run_sweep(scenario_file(tmp_path, text), out_dir=tmp_path / "results", stream=out)
    assert run is not None
    trials = RunFolder.open(run.path).trials().set_index("trial_id")
    assert set(trials["num_workers"].astype(str)) == {"2", "auto"}  # trials.csv reads `auto`
    assert set(trials["instances"].astype(str)) == {"1", "autoscale"}
    assert (trials["items_done"] == trials["items_enqueued"]).all()
    assert (trials["lost_items"].isna() | (trials["lost_items"] == 0)).all()

    for tid in ("nwauto-in1-bs1-r0", "nwauto-inautoscale-bs1-r0"):
        # the limiter held each instance to at most 3 jobs at once, as the service saw
        assert trials.loc[tid, "service_max_in_flight"] <= 3 * trials.loc[tid, "instances_max"]
        timeline = run.timeline(tid)
        assert timeline is not None
        limits = pd.DataFrame(timeline["limits"]["rows"], columns=timeline["limits"]["columns"])
        assert {"start", "stop"} <= set(limits["reason"])
        assert limits["limit"].between(1, 3).all()
    assert run.timeline("nw2-in1-bs1-r0") is None

    # 250/s is more than one instance of 2 slots x 20 ms (100/s): the backlog called a second
    scaled = trials.loc["nw2-inautoscale-bs1-r0"]
    assert scaled["instances_max"] == 2
    assert scaled["wall_s"] < scaled["instance_seconds"] < 2 * scaled["wall_s"]
    fixed = trials.loc["nw2-in1-bs1-r0"]
    assert fixed["instance_seconds"] == pytest.approx(fixed["wall_s"])
    timeline = run.timeline("nw2-inautoscale-bs1-r0")
    assert timeline is not None and max(r[3] for r in timeline["instances"]["rows"]) >= 1

    rec = json.loads((run.path / "recommendation.json").read_text())
    assert rec["schema_version"] == 3
    assert {d["config"] for d in rec["dynamic"]} == {
        "nwauto-in1-bs1", "nw2-inautoscale-bs1", "nwauto-inautoscale-bs1",
    }  # fmt: skip
    assert all(d["verdict"] in ("wins", "ties", "loses") for d in rec["dynamic"])
    report = run.report_html.read_text()
    assert "<h2>Dynamic policies</h2>" in report and "nw2-inautoscale-bs1" in report


def test_auto_backs_off_on_429s_end_to_end(broker: Broker, tmp_path: Path) -> None:
    text = (
        BASE.replace("queue: 50", "queue: 0\n    rate_limit: {per_s: 40, burst: 4}")
        .replace("[auto, 2]", "[{auto: {initial: 16, max: 32}}]")
        .replace("items: 40", "items: 120\n  retry: {max_attempts: 30, backoff_ms: 20}")
    )
    scenario = load_scenario(scenario_file(tmp_path, text))
    plan = TrialPlan(index=0, num_workers="auto", instances=1, batch_size=1, repeat=0)
    outcome = run_trial(scenario, plan, broker=broker, logs=tmp_path / "logs")
    assert outcome.row["service_rejected"] > 0  # 16 slots x 50/s each against 40/s: 429s
    assert outcome.timeline is not None
    rows = outcome.timeline["limits"]["rows"]
    drops = [r for r in rows if r[2] == "drop"]
    assert drops and all(r[1] < 16 for r in drops)  # each one a backoff below where it began
    assert outcome.row["items_done"] == 120
