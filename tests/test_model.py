"""The queueing model: it recovers known parameters from synthetic trials, names the bound that
binds, predicts past this machine, and stays close to the committed example runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lab.analysis.configs import analyze, rank_metric
from lab.analysis.model import compare, fit_model, median_abs_error, model_of_run, model_pick
from lab.configuration import Configuration
from lab.results import TRIAL_COLUMNS
from lab.scenario.spec import Scenario

EXAMPLES = Path(__file__).resolve().parent.parent / "results" / "examples"
TRUE = {
    "fixed_ms": 12.0,
    "per_item_ms": 0.3,
    "cpu_job_ms": 0.8,
    "cpu_item_ms": 0.02,
    "broker_ms": 0.2,
}


def scenario(**service: Any) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "synthetic",
            "services": {"search": {"kind": "opensearch", "capacity": 8, "queue": 200, **service}},
            "workload": {"job": "opensearch.bulk", "service": "search", "items": 5000},
            "sweep": {
                "num_workers": [1, 4, 16],
                "instances": [1, 2],
                "batch_size": [1, 10, 50, 200],
            },
        }
    )


def synthetic(rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Trials whose service times, worker CPU and Redis CPU follow TRUE, with 5 % noise."""
    rows, services = [], {}
    for bs in (1, 10, 50, 200):
        for nw, inst in ((1, 1), (4, 1), (16, 2)):
            trial_id = f"nw{nw}-in{inst}-bs{bs}-r0"
            jobs = 5000 // bs
            service_ms = TRUE["fixed_ms"] + TRUE["per_item_ms"] * bs
            samples = list(service_ms * (1 + rng.uniform(-0.05, 0.05, 200)))
            wall = jobs * service_ms / 1000 / min(nw * inst, 8) + 0.1
            cpu_s = jobs * (TRUE["cpu_job_ms"] + TRUE["cpu_item_ms"] * bs) / 1000
            row: dict[str, Any] = dict.fromkeys(TRIAL_COLUMNS, 0.0)
            row |= {
                "trial_id": trial_id, "num_workers": nw, "instances": inst, "batch_size": bs,
                "placement": "separate", "concurrency": nw * inst, "wall_s": wall,
                "attempts": jobs, "jobs_done": jobs, "jobs_enqueued": jobs, "items_enqueued": 5000,
                "service_mean_ms": service_ms + 1.0 + 1000 * cpu_s / jobs,
                "workers_cores": cpu_s / wall * (1 + rng.uniform(-0.05, 0.05)),
                "redis_cores": jobs * TRUE["broker_ms"] / 1000 / wall,
                "stopped_early": False, "service_max_queue_depth": 0,
            }  # fmt: skip
            rows.append(row)
            services[trial_id] = {
                "search": {
                    "requests": jobs, "served": jobs, "served_items": 5000,
                    "samples": {"service_ms": samples, "wait_ms": [0.0] * 200},
                }
            }  # fmt: skip
    return pd.DataFrame(rows), services


def test_the_model_recovers_known_parameters_from_synthetic_trials() -> None:
    trials, services = synthetic(np.random.default_rng(5))
    fit = fit_model(trials, services, scenario(), cores=2).fit
    assert fit.fixed_ms == pytest.approx(TRUE["fixed_ms"], rel=0.05)
    assert fit.per_item_ms == pytest.approx(TRUE["per_item_ms"], rel=0.05)
    assert fit.worker_cpu_ms_per_job == pytest.approx(TRUE["cpu_job_ms"], rel=0.1)
    assert fit.worker_cpu_ms_per_item == pytest.approx(TRUE["cpu_item_ms"], rel=0.1)
    assert fit.broker_cpu_ms_per_job == pytest.approx(TRUE["broker_ms"], rel=0.05)
    assert fit.client_ms == pytest.approx(1.0, abs=0.1)
    assert fit.capacity == 8 and fit.sources["capacity"] == "scenario"


def test_the_model_names_the_bound_and_predicts_past_this_machine() -> None:
    trials, services = synthetic(np.random.default_rng(5))
    model = fit_model(trials, services, scenario(), cores=2)
    one = model.predict(Configuration(1, 1, 50))
    assert one.bound == "concurrency"
    # one job at a time: items / (service + client + worker CPU + broker)
    alone_ms = 12 + 0.3 * 50 + 1.0 + 0.8 + 0.02 * 50 + 0.2
    assert one.items_per_s == pytest.approx(50 / alone_ms * 1000, rel=0.03)
    wide = model.predict(Configuration(64, 4, 50), this_machine=False)
    assert wide.bound == "service_capacity"
    assert wide.items_per_s == pytest.approx(8 * 50 / (12 + 0.3 * 50) * 1000, rel=0.03)
    huge = model.predict(Configuration(64, 100, 500), this_machine=False)  # past this machine
    assert huge.bound == "service_capacity" and np.isfinite(huge.items_per_s)
    limited = fit_model(trials, services, scenario(rate_limit={"per_s": 50, "burst": 10}), cores=2)
    assert limited.predict(Configuration(16, 2, 50)).bound == "rate_limit"
    assert limited.predict(Configuration(16, 2, 50)).items_per_s == pytest.approx(50 * 50)
    pick = model_pick(model, this_machine=False)
    assert pick.pick.items_per_s >= pick.best.items_per_s / 1.05


@pytest.mark.parametrize("example", ["quickstart", "opensearch_index", "opensearch_delete"])
def test_the_model_stays_within_15_percent_on_the_committed_examples(example: str) -> None:
    analysis = analyze(EXAMPLES / example)
    model = model_of_run(analysis.run)  # type: ignore[arg-type]
    table = compare(model, analysis.configs, rank_metric(analysis.objective))
    assert len(table) == len(analysis.configs)
    assert median_abs_error(table) <= 0.15, table.to_string()
