"""The search's decisions on synthetic trial outcomes whose answer is known.

Here a fake trial function stands in for the runtime (the search's logic is under test, not the
runtime): it turns a plan into a trials.csv row (and the service's statistics) from a known
throughput curve with seeded noise, and plays the trial's progress through the stop rule.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from lab.configuration import Configuration
from lab.results import TRIAL_COLUMNS
from lab.scenario.spec import Scenario, load_scenario
from lab.sweep.search import BUDGET, DONE, LENGTHEN, REFINE, REPEAT, EarlyStop, Search
from lab.sweep.trial import DrainProgress, TrialPlan

SERVICE_MS = 10.0  # one request of one item


def scenario(tmp_path: Path, *, capacity: int, sweep: str, items: int = 4000) -> Scenario:
    data = {
        "name": "synthetic",
        "seed": 3,
        "services": {
            "api": {"kind": "http_api", "capacity": capacity, "queue": 1000,
                    "latency": {"dist": "constant", "ms": SERVICE_MS}},
        },
        "workload": {"job": "http.call", "service": "api", "items": items},
        "sweep": yaml.safe_load(textwrap.dedent(sweep)),
        "objective": {"maximize": "items_per_s", "prefer": ["fewer_instances", "fewer_num_workers"]},
    }  # fmt: skip
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_scenario(path)


def knee_curve(capacity: int) -> Callable[[Configuration], float]:
    """Little's law up to the service's capacity, flat after: items/s."""
    return lambda c: 1000 / SERVICE_MS * min(int(c.num_workers) * int(c.instances), capacity)


@dataclass
class FakeTrials:
    """Trials whose steady throughput is `truth(config)` x (1 +- noise), measured over a trial
    of items / rate seconds; the progress goes through the stop rule every 0.02 s, at a tenth of
    the rate for the first 0.6 s (start-up: first connections, first claims, as measured on
    this machine), so an early stop sees a pessimistic pace first."""

    truth: Callable[[Configuration], float]
    noise: float
    capacity: int
    seed: int = 1
    clock_s: float = 0.0
    stopped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def run(self, plan: TrialPlan, rule: Any, items: int) -> tuple[dict[str, Any], dict[str, Any]]:
        c = plan.configuration
        rate = self.truth(c) * (1 + self.rng.uniform(-self.noise, self.noise))
        items *= plan.length_x
        makespan = items / rate + 0.6 * 0.9  # the slow start costs 0.54 s
        reason, done_at = None, makespan
        if rule is not None:
            t = 0.02
            while t < makespan and reason is None:
                done = rate * (0.1 * min(t, 0.6) + max(0.0, t - 0.6))
                reason = rule(
                    DrainProgress(t, int(min(done, items)), items, int(min(done, items)), 0,
                                  [0.0] * items, lambda: [])
                )  # fmt: skip
                done_at = t
                t += 0.02
        if reason is not None:
            self.stopped.append(plan.trial_id)
        self.clock_s += done_at + 0.3
        n = int(c.num_workers) * int(c.instances)
        queued = n > self.capacity
        row: dict[str, Any] = dict.fromkeys(TRIAL_COLUMNS, 0.0) | plan.config()
        row |= {
            "started_at": 0.0, "wall_s": done_at, "timed_out": False,
            "stopped_early": reason is not None, "stop_reason": reason or "",
            "jobs_enqueued": items, "items_enqueued": items, "jobs_done": items, "items_done": items,
            "makespan_s": makespan, "items_per_s": items / makespan, "jobs_per_s": items / makespan,
            "steady_items_per_s": rate, "steady_jobs_per_s": rate, "steady_s": makespan * 0.8,
            "too_short": False, "attempts": items, "latency_p99_ms": 100.0,
            "service_mean_ms": 1000 * n / rate, "lost_items": 0, "duplicate_items": 0,
            "service_max_queue_depth": 5 if queued else 0, "service_max_in_flight": min(n, self.capacity),
            "capacity_bound_items_per_s": 1000 / SERVICE_MS * self.capacity,
            "littles_bound_items_per_s": 1000 / SERVICE_MS * n, "bound_ratio": 0.9,
            "workers_cores": 0.05, "harness_saturated": False, "machine_saturated": False,
            "saturation_reason": "",
        }  # fmt: skip
        stats = {
            "api": {
                "requests": items, "served": items, "served_items": items,
                "samples": {"service_ms": [SERVICE_MS] * 50, "wait_ms": [0.0] * 50},
            }
        }  # fmt: skip
        return row, stats


def drive(sc: Scenario, fake: FakeTrials, *, limit: int = 400, search: Search | None = None,
          stop_after: int | None = None) -> Search:  # fmt: skip
    search = search or Search(sc, clock=lambda: fake.clock_s)
    if not search.decisions:
        search.start()
    for _ in range(limit):
        if stop_after is not None and len(search.rows) >= stop_after:
            return search
        plan = search.next_trial()
        if plan is None:
            return search
        row, stats = fake.run(plan, search.stop_rule(plan), sc.workload.items or 0)
        search.record(row, stats)
    raise AssertionError("the search did not end")


def pick(search: Search) -> Configuration:
    analysis = search.analysis()
    assert analysis is not None and analysis.recommendation.config is not None
    return analysis.recommendation.config


def test_adaptive_finds_a_knee_between_grid_points(tmp_path: Path) -> None:
    sc = scenario(tmp_path, capacity=6, sweep="""\
        num_workers: [1, 4, 16, 64]
        repeats: auto
        search: {kind: adaptive, budget_trials: 40}
        """)  # fmt: skip
    fake = FakeTrials(knee_curve(6), noise=0.02, capacity=6)
    search = drive(sc, fake)
    assert pick(search).num_workers in (6, 7, 8)
    assert len(search.rows) <= 40
    actions = [d.action for d in search.decisions]
    assert actions[0] == "plan" and REFINE in actions and actions[-1] in (DONE, BUDGET)
    measured = {Configuration.of(r).num_workers for r in search.rows}
    assert measured - {1, 4, 16, 64}, "it measured between the grid points"


def test_a_grid_alone_can_only_report_a_grid_point(tmp_path: Path) -> None:
    sc = scenario(tmp_path, capacity=6, sweep="num_workers: [1, 4, 16, 64]\nrepeats: 2\n")
    search = drive(sc, FakeTrials(knee_curve(6), noise=0.02, capacity=6))
    assert pick(search).num_workers == 16
    assert [d.action for d in search.decisions] == ["plan", DONE]
    assert len(search.rows) == 8


@pytest.mark.parametrize("budget", ["budget_trials: 7", "budget_s: 12"])
def test_the_budget_is_respected(tmp_path: Path, budget: str) -> None:
    sc = scenario(tmp_path, capacity=6, sweep=f"""\
        num_workers: [1, 4, 16, 64]
        instances: [1, 2]
        repeats: auto
        search: {{kind: adaptive, {budget}}}
        """)  # fmt: skip
    fake = FakeTrials(knee_curve(6), noise=0.02, capacity=6)
    search = drive(sc, fake)
    last = search.decisions[-1]
    assert last.action == BUDGET
    if "trials" in budget:
        assert len(search.rows) == 7
    else:  # checked before each trial: at most one trial past the limit
        assert search.elapsed_s >= 12 and last.step == len(search.rows)
        longest = max(float(r["wall_s"]) for r in search.rows) + 0.3
        assert search.elapsed_s - longest < 12


def test_racing_stops_when_the_intervals_separate(tmp_path: Path) -> None:
    # 10 % apart with +-12 % noise: one repeat each cannot tell them apart, a few can
    truth = {4: 400.0, 5: 440.0}
    sc = scenario(
        tmp_path, capacity=64, sweep="num_workers: [4, 5]\nrepeats: auto\nmax_repeats: 8\n"
    )
    search = drive(
        sc, FakeTrials(lambda c: truth[int(c.num_workers)], noise=0.12, capacity=64, seed=4)
    )
    analysis = search.analysis()
    assert analysis is not None
    configs = analysis.configs.set_index("num_workers")
    repeats = configs["repeats"].to_dict()
    assert REPEAT in [d.action for d in search.decisions]
    assert 2 <= repeats[4] < 8 and 2 <= repeats[5] < 8  # raced, and stopped before the cap
    m = "steady_items_per_s"
    assert configs.loc[4, f"{m}_ci_high"] < configs.loc[5, f"{m}_ci_low"]  # separated
    assert pick(search).num_workers == 5


def test_racing_stops_at_max_repeats_when_they_never_separate(tmp_path: Path) -> None:
    sc = scenario(
        tmp_path, capacity=64, sweep="num_workers: [4, 5]\nrepeats: auto\nmax_repeats: 4\n"
    )
    search = drive(sc, FakeTrials(lambda c: 400.0, noise=0.3, capacity=64, seed=2))
    analysis = search.analysis()
    assert analysis is not None
    assert analysis.configs["repeats"].max() <= 4
    assert search.decisions[-1].action == DONE


@pytest.mark.parametrize("seed", [0, 1])
def test_early_stop_never_stops_the_eventual_best(tmp_path: Path, seed: int) -> None:
    sc = scenario(tmp_path, capacity=16, sweep="""\
        num_workers: [1, 4, 16, 32]
        instances: [1, 2]
        repeats: auto
        """, items=3000)  # fmt: skip
    sc = sc.model_copy(update={"seed": seed})
    truth = knee_curve(16)
    fake = FakeTrials(truth, noise=0.04, capacity=16, seed=seed)
    search = drive(sc, fake)
    stopped = {r["trial_id"].rsplit("-r", 1)[0]: r for r in search.rows if r["stopped_early"]}
    assert stopped, "nothing was stopped: the test would prove nothing"
    plateau = max(truth(Configuration.of(r)) for r in search.rows)
    for name, row in stopped.items():  # only what could never come within noise of the best
        assert truth(Configuration.of(row)) < plateau / 1.05, f"{name} was stopped on the plateau"
    chosen = pick(search)
    assert chosen.label == "nw16-in1-bs1"  # the cheapest on the plateau, never stopped
    assert chosen.label not in stopped


def test_a_too_short_trial_is_lengthened_for_the_ranking(tmp_path: Path) -> None:
    sc = scenario(tmp_path, capacity=8, sweep="num_workers: [4, 8]\nrepeats: auto\n", items=40)
    fake = FakeTrials(knee_curve(8), noise=0.02, capacity=8)
    real_run = fake.run

    def short_unless_lengthened(plan: TrialPlan, rule: Any, items: int) -> Any:
        row, stats = real_run(plan, rule, items)
        row["too_short"] = plan.length_x == 1
        return row, stats

    fake.run = short_unless_lengthened  # type: ignore[method-assign]
    search = drive(sc, fake)
    lengthen = [d for d in search.decisions if d.action == LENGTHEN]
    assert lengthen and all(t["length_x"] > 1 for t in lengthen[0].trials)
    analysis = search.analysis()
    assert analysis is not None and not analysis.configs["too_short"].any()
    assert pick(search).num_workers == 8


def test_a_resumed_search_continues_from_its_decisions(tmp_path: Path) -> None:
    sweep = (
        "num_workers: [1, 4, 16, 64]\nrepeats: auto\nsearch: {kind: adaptive, budget_trials: 14}\n"
    )
    sc = scenario(tmp_path, capacity=6, sweep=sweep)
    whole = drive(sc, FakeTrials(knee_curve(6), noise=0.02, capacity=6))
    fake = FakeTrials(knee_curve(6), noise=0.02, capacity=6)
    first = drive(sc, fake, stop_after=9)  # in the middle of the refinement
    decisions = [d.to_json() for d in first.decisions]
    again = Search(sc, clock=lambda: fake.clock_s)
    again.replay(first.rows, first.services, decisions)
    assert [p.trial_id for p in again.pending] == [p.trial_id for p in first.pending]
    resumed = drive(sc, fake, search=again)
    assert [r["trial_id"] for r in resumed.rows] == [r["trial_id"] for r in whole.rows]
    assert pick(resumed) == pick(whole)


def test_an_slo_already_broken_stops_an_open_loop_trial() -> None:
    from lab.runtime.queue import JobEvent
    from lab.scenario.spec import Scenario as S

    sc = S.model_validate({
        "name": "open", "services": {"api": {"kind": "http_api"}},
        "workload": {"job": "http.call", "service": "api",
                     "arrival": {"kind": "poisson", "rate_per_s": 100, "duration_s": 10}},
        "objective": {"slo": {"p99_latency_ms": 500, "max_error_rate": 0.05}},
    })  # fmt: skip
    arrivals = [i / 100 for i in range(1000)]
    late = [
        JobEvent(f"j{i}", "http.call", "w", 0.0, 0.0, 0.9, 1, "ok", 1, None, None)
        for i in range(10)
    ]
    feed = iter([late[:5], late[5:], []])
    rule = EarlyStop(sc, TrialPlan(0, 1, 1, 1, 0), best_rate=None, best_name="")

    def progress(elapsed: float, settled: int, dead: int = 0) -> DrainProgress:
        return DrainProgress(
            elapsed, settled, 1000, settled, dead, arrivals, lambda: next(feed, [])
        )

    assert rule(progress(0.5, 40)) is None  # too early to judge
    assert rule(progress(1.2, 70)) is None  # 5 late (p99 of 1,000 jobs needs 11), all due settled
    why = rule(progress(1.3, 70))  # 10 late done, and 10 due before 0.8 s not settled
    assert why is not None and "SLO already broken" in why
    assert "dead" in (rule(progress(1.4, 60, dead=51)) or "")


ADAPTIVE = """\
name: tiny_adaptive
seed: 4
services:
  api: {kind: http_api, capacity: 2, queue: 50, latency: {dist: constant, ms: 4}}
workload: {job: http.call, service: api, items: 150}
sweep:
  num_workers: [1, 4]
  repeats: auto
  max_repeats: 3
  search: {kind: adaptive, budget_trials: 7}
  trial_timeout_s: 60
"""


@pytest.mark.timeout(300)
def test_a_small_adaptive_sweep_end_to_end(tmp_path: Path) -> None:
    """Real Redis, mocks and workers: the decisions land in the run folder and the report."""
    import io
    import json

    from lab.results import RunFolder
    from lab.sweep.runner import run_sweep

    path = tmp_path / "adaptive.yaml"
    path.write_text(ADAPTIVE)
    out = io.StringIO()
    assert run_sweep(path, dry_run=True, stream=out) is None
    assert "budget: 7 trials" in out.getvalue() and "2 trials to start with" in out.getvalue()
    run = run_sweep(path, out_dir=tmp_path / "results", stream=io.StringIO())
    assert run is not None
    folder = RunFolder.open(run.path)
    decisions = folder.decisions()
    assert decisions[0]["action"] == "plan" and decisions[-1]["action"] in (DONE, BUDGET)
    planned = [t["trial_id"] for d in decisions for t in d["trials"]]
    trials = folder.trials()
    assert set(trials["trial_id"]) <= set(planned) and 2 <= len(trials) <= 7
    assert trials["steady_items_per_s"].notna().any()
    rec = json.loads((run.path / "recommendation.json").read_text())
    assert rec["config"] is not None
    html = (run.path / "report.html").read_text()
    assert "<h2>Search path</h2>" in html and "<h2>Queueing model</h2>" in html
    assert html.count("data:image/png;base64,") >= 7


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        ("repeats: some", "sweep.repeats"),
        ("search: {kind: adaptve}", "sweep.search"),
        (
            "search: {kind: adaptive, budget_trials: 0}",
            "sweep.search.budget_trials: must be an integer in [1, 10,000]",
        ),
        ("search: {kind: adaptive, budget_s: -1}", "sweep.search.budget_s: must be a number"),
        ("search: {kind: grid, budget_trials: 5}", "budget_trials"),
        ("repeats: 6\n  max_repeats: 3", "sweep.max_repeats: must be >= repeats (6), got 3"),
    ],
)
def test_bad_search_settings_are_located_errors(tmp_path: Path, sweep: str, expected: str) -> None:
    from lab.errors import ConfigError

    path = tmp_path / "s.yaml"
    path.write_text(ADAPTIVE.split("sweep:")[0] + f"sweep:\n  {sweep}\n")
    with pytest.raises(ConfigError) as error:
        load_scenario(path)
    assert expected in str(error.value) and str(path) in str(error.value)


def test_plots_draw_a_configuration_stopped_early_hollow(tmp_path: Path) -> None:
    from lab.analysis.configs import analyze_trials
    from lab.report.plots import throughput_vs_workers

    sc = scenario(tmp_path, capacity=8, sweep="num_workers: [1, 8]\nrepeats: auto\n")
    fake = FakeTrials(knee_curve(8), noise=0.0, capacity=8)
    rows = [fake.run(TrialPlan(i, nw, 1, 1, 0), None, 1000)[0] for i, nw in enumerate((1, 8))]
    rows[0] |= {"stopped_early": True, "stop_reason": "projected makespan 10 s"}
    analysis = analyze_trials(pd.DataFrame(rows), sc.objective)
    assert analysis.recommendation.config is not None
    assert analysis.recommendation.config.num_workers == 8  # never the stopped one
    fig = throughput_vs_workers(analysis)
    white = (1.0, 1.0, 1.0, 1.0)
    hollow = [
        np.asarray(c.get_offsets())[:, 0].tolist() for ax in fig.axes for c in ax.collections
        if len(np.asarray(c.get_facecolor())) and tuple(np.asarray(c.get_facecolor())[0]) == white
    ]  # fmt: skip
    assert hollow == [[1]]
