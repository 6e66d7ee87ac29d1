"""The recommendation on synthetic trials whose answer is known, the intervals, the USL fit."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lab.analysis.configs import (
    analyze,
    analyze_trials,
    load_run,
    per_config,
    recommend,
)
from lab.analysis.recommendation import SCHEMA_VERSION
from lab.analysis.usl import fit_usl, usl
from lab.mocks.spec import ServiceSpec
from lab.results import TRIAL_COLUMNS
from lab.scenario.spec import Objective

EXAMPLES = Path(__file__).resolve().parent.parent / "results" / "examples"
SERVICE = ServiceSpec.model_validate(
    {"kind": "opensearch", "capacity": 8, "queue": 200, "latency": {"dist": "constant", "ms": 10}}
)


def trial(nw: int, inst: int, bs: int, rep: int = 0, **figures: Any) -> dict[str, Any]:
    """One trials.csv row with harmless defaults: all done, no errors, quick, nothing lost."""
    row: dict[str, Any] = dict.fromkeys(TRIAL_COLUMNS, 0.0)
    row |= {
        "trial_id": f"nw{nw}-in{inst}-bs{bs}-r{rep}", "num_workers": nw, "instances": inst,
        "batch_size": bs, "repeat": rep, "concurrency": nw * inst, "placement": "separate",
        "timed_out": False, "harness_saturated": False, "machine_saturated": False,
        "saturation_reason": "", "jobs_enqueued": 1000, "items_enqueued": 1000 * bs,
        "latency_p50_ms": 50.0, "latency_p90_ms": 80.0, "latency_p99_ms": 100.0,
        "queue_wait_p99_ms": 10.0, "lost_items": 0, "duplicate_items": 0,
        "capacity_bound_items_per_s": 1000.0, "littles_bound_items_per_s": 125.0 * nw * inst,
        "bound_ratio": 0.9, "service_max_in_flight": min(8, nw * inst), "workers_cores": 0.2,
        # no steady window: the ranking stands on items_per_s
        "length_x": 1, "too_short": True, "stopped_early": False, "stop_reason": "",
        # a service of capacity 8: slots past 8 queue there, and it is busy in proportion
        "service_max_queue_depth": max(0, nw * inst - 8),
        "service_utilization": min(1.0, nw * inst / 8), "bottleneck": None,
    }  # fmt: skip
    return row | figures


def grid(
    throughput: Callable[[int, int], float],
    *,
    repeats: int = 1,
    noise: float = 0.0,
    workers: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    instances: tuple[int, ...] = (1, 2),
    **figures: Any,
) -> pd.DataFrame:
    """A full grid at batch 1 whose items_per_s follows `throughput(nw, inst)`, +-noise."""
    rng = np.random.default_rng(7)
    rows = [
        trial(nw, inst, 1, rep, items_per_s=throughput(nw, inst) * (1 + rng.uniform(-noise, noise)), **figures)
        for nw in workers for inst in instances for rep in range(repeats)
    ]  # fmt: skip
    frame = pd.DataFrame(rows)
    frame["jobs_per_s"] = frame["items_per_s"]
    return frame


def plateau(nw: int, inst: int) -> float:
    return 100.0 * min(nw * inst, 8)  # Little's law up to a capacity of 8, flat after


OBJECTIVE = Objective.model_validate({"slo": {"p99_latency_ms": 2000, "max_error_rate": 0.01}})


def test_a_plateau_recommends_the_cheapest_configuration_on_it() -> None:
    analysis = analyze_trials(grid(plateau, repeats=3, noise=0.01), OBJECTIVE, service=SERVICE)
    rec = analysis.recommendation.to_json()
    # 8 slots in one instance reach the plateau: fewer instances first, then fewer num_workers
    assert rec["config"] == {"num_workers": 8, "instances": 1, "batch_size": 1}
    assert rec["figures"]["items_per_s"] == pytest.approx(800, rel=0.02)
    assert rec["figures"]["repeats"] == 3
    text = " ".join(rec["reasons"])
    assert "stops growing at concurrency 8" in text
    assert "the service's capacity: it serves 8 requests at once" in text
    assert "no request was rejected" in text
    assert len(rec["runners_up"]) == 3 and all(r["within_noise"] for r in rec["runners_up"])


def test_an_slo_cutoff_drops_the_fastest_configurations_and_says_where() -> None:
    trials = grid(lambda nw, inst: 100.0 * nw * inst, workers=(1, 4, 16))
    slow = trials["concurrency"] >= 16  # the fastest ones break the p99 SLO
    trials.loc[slow, "latency_p99_ms"] = 2500.0
    rec = recommend(trials, OBJECTIVE, service=SERVICE)
    assert rec["config"] == {"num_workers": 4, "instances": 2, "batch_size": 1}
    text = " ".join(rec["reasons"])
    assert "2 of 6 configurations are ruled out" in text
    assert "p99 over 2,000 ms at concurrency 16 and 32 (up to 2,500 ms)" in text


def test_within_noise_the_cheaper_wins_beyond_it_the_better_does() -> None:
    # two instances measure 8 % more, but the repeats scatter by +-10 %: intervals overlap
    noisy = grid(
        lambda nw, inst: 1000.0 * (1.08 if inst == 2 else 1), repeats=3, noise=0.1, workers=(4,)
    )
    assert recommend(noisy, OBJECTIVE)["config"]["instances"] == 1
    # the same 8 % with tight repeats: the intervals are apart and the gain beats 5 %
    tight = grid(
        lambda nw, inst: 1000.0 * (1.08 if inst == 2 else 1), repeats=3, noise=0.005, workers=(4,)
    )
    assert recommend(tight, OBJECTIVE)["config"]["instances"] == 2
    # apart but a gain under the margin is still a tie
    small = grid(
        lambda nw, inst: 1000.0 * (1.03 if inst == 2 else 1), repeats=3, noise=0.001, workers=(4,)
    )
    assert recommend(small, OBJECTIVE)["config"]["instances"] == 1


def test_with_one_repeat_the_margin_alone_decides_and_the_reasons_say_so() -> None:
    within = grid(lambda nw, inst: 1000.0 * (1.04 if inst == 2 else 1), workers=(4,))
    rec = recommend(within, OBJECTIVE)
    assert rec["config"]["instances"] == 1
    assert "one repeat gives no confidence interval, so the margin alone" in rec["reasons"][0]
    assert rec["figures"]["items_per_s_ci_low"] is None  # JSON: None, never NaN
    beyond = grid(lambda nw, inst: 1000.0 * (1.2 if inst == 2 else 1), workers=(4,))
    assert recommend(beyond, OBJECTIVE)["config"]["instances"] == 2


def test_when_every_configuration_fails_the_slo_nothing_is_recommended() -> None:
    trials = grid(plateau, workers=(1, 4), latency_p99_ms=5000.0)
    trials.loc[trials["num_workers"] == 4, "error_rate"] = 0.2
    rec = recommend(trials, OBJECTIVE)
    assert rec["config"] is None and rec["figures"] == {} and rec["runners_up"] == []
    assert rec["reasons"][0].startswith("no configuration met the SLO")
    assert "errors over 1.0% at concurrency 4 and 8 (up to 20.0%)" in " ".join(rec["reasons"])


def test_lost_items_and_timeouts_rule_a_configuration_out_and_warn() -> None:
    trials = grid(plateau, workers=(4, 8))
    trials.loc[trials["concurrency"] == 16, "lost_items"] = 5
    trials.loc[trials["concurrency"] == 8, "timed_out"] = True
    trials.loc[trials["concurrency"] == 4, ["harness_saturated", "saturation_reason"]] = [
        True,
        "mock used 0.97 cores",
    ]
    analysis = analyze_trials(trials, OBJECTIVE)
    assert analysis.chosen == {"num_workers": 4, "instances": 1, "batch_size": 1}
    warnings = " ".join(analysis.warnings)
    assert "5 item(s) lost, in trial(s) nw8-in2-bs1-r0" in warnings
    assert "timed out before draining" in warnings
    assert "1 trial(s) harness-saturated, not trusted" in warnings and "mock used 0.97" in warnings
    assert any(
        r.startswith("caution: a trial of the chosen") for r in analysis.recommendation.reasons
    )


def test_the_recommendation_is_versioned_json_without_nan() -> None:
    rec = recommend(grid(plateau, repeats=2, noise=0.02), OBJECTIVE)
    text = json.dumps(rec, allow_nan=False, sort_keys=True)  # raises on NaN
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION
    assert set(rec) >= {"config", "figures", "reasons", "runners_up", "warnings", "scalability"}
    assert rec["objective"]["noise_margin"] == 0.05


def test_per_config_takes_the_mean_a_student_t_interval_and_the_worst_p99() -> None:
    trials = pd.DataFrame(
        [
            trial(4, 1, 1, r, items_per_s=v, latency_p99_ms=p)
            for r, (v, p) in enumerate([(10.0, 10), (11.0, 30), (12.0, 20)])
        ]
    )
    [row] = per_config(trials).to_dict("records")
    assert row["items_per_s"] == 11.0 and row["latency_p99_worst_ms"] == 30
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2) x sd 1 / sqrt(3)
    assert row["items_per_s_ci_low"] == pytest.approx(11 - half, rel=1e-5)
    assert row["items_per_s_ci_high"] == pytest.approx(11 + half, rel=1e-5)
    one = per_config(pd.DataFrame([trial(4, 1, 1, 0, items_per_s=5.0)]))  # one repeat: no interval
    assert math.isnan(one["items_per_s_ci_low"].iloc[0])
    assert math.isnan(one["items_per_s_ci_high"].iloc[0])
    # a rate is never negative: the interval's low end is clipped at 0
    wide = pd.DataFrame([trial(4, 1, 1, r, items_per_s=v) for r, v in enumerate([1.0, 9.0])])
    assert per_config(wide)["items_per_s_ci_low"].iloc[0] == 0.0


def test_usl_recovers_known_parameters_and_reports_the_peak() -> None:
    n = np.array([1, 2, 4, 8, 16, 32, 64], dtype=float)
    fit = fit_usl(n, usl(n, 100.0, 0.05, 0.001), batch_size=1)
    assert fit.skipped is None
    assert fit.lambda_ == pytest.approx(100, rel=1e-3) and fit.sigma == pytest.approx(
        0.05, abs=1e-3
    )
    assert fit.kappa == pytest.approx(0.001, rel=1e-2) and fit.r_squared == pytest.approx(1.0)
    assert fit.peak_concurrency == pytest.approx(math.sqrt(0.95 / 0.001), rel=1e-2)
    assert "peaks at concurrency ≈31" in fit.describe()


def test_usl_is_skipped_with_a_reason_when_the_data_cannot_support_it() -> None:
    fit = fit_usl([1, 2, 4, 1], [10, 20, 40, 11], batch_size=50)
    assert fit.skipped == "3 distinct concurrency level(s), the fit needs 4"
    assert "skipped" in fit.describe()
    rec = recommend(grid(plateau, workers=(1, 4), instances=(1,)), OBJECTIVE)
    assert rec["scalability"][0]["skipped"] is not None and rec["scalability"][0]["sigma"] is None


def test_load_run_reads_a_committed_example_as_tables() -> None:
    run = load_run(EXAMPLES / "quickstart")
    assert list(run.trials.columns) == list(TRIAL_COLUMNS)
    assert {"job_id", "outcome", "items", "enqueued_at"} <= set(run.jobs.columns)
    assert run.manifest["status"] == "complete" and run.scenario.name == "quickstart"
    analysis = analyze(run)
    assert analysis.chosen is not None and analysis.chosen["batch_size"] == 50
