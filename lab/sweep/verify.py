"""`python -m lab.sweep SCENARIO --verify`: check the twin's verdict on the real service.

When the workload's service is a mock fitted by `python -m lab.calibrate` (its
`calibrated_from` names the real service and its caps), the sweep runs on the mock as usual,
then the recommended configuration and its runners-up run again, once each, against the real
service (`kind: external`: clipped to its caps, paced, no lab route). `verification.json` holds
predicted (the mock's mean over repeats) and real side by side with the relative error
(predicted - real) / real; the trials themselves go to `verify/` like a run's (trials.csv,
jobs.parquet, services/), and the report shows the comparison.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TextIO

from lab.analysis.recommendation import Candidate, Recommendation
from lab.errors import ConfigError
from lab.external import ExternalService
from lab.infra.broker import Broker
from lab.infra.files import directory
from lab.results import SCHEMA_VERSION, STATUS_COMPLETE, STATUS_RUNNING, RunFolder
from lab.scenario.spec import Scenario
from lab.sweep.trial import TrialOptions, TrialPlan, run_trial

#: verification.json history: 1 - first version.
VERIFICATION_SCHEMA_VERSION = 1

RUNNERS_UP = 2
"""Runners-up rerun on the real service besides the recommendation."""

FIGURES = ("items_per_s", "latency_p50_ms", "latency_p99_ms", "error_rate")


def real_service(scenario: Scenario) -> tuple[str, ExternalService]:
    """(the workload's service name, the real service it was fitted to); ConfigError if none."""
    name = scenario.workload.service
    spec = scenario.services[name]
    if isinstance(spec, ExternalService):
        raise ConfigError(
            f"--verify: services.{name} is already the real service; verify compares a fitted "
            "mock with the service it was fitted to"
        )
    if spec.calibrated_from is None:
        raise ConfigError(
            f"--verify: services.{name} has no calibrated_from, so there is no real service "
            "to check it against (python -m lab.calibrate URL writes a block that has one)"
        )
    return name, spec.calibrated_from


def real_scenario(scenario: Scenario) -> Scenario:
    """The scenario with its fitted mock replaced by the real service."""
    name, real = real_service(scenario)
    return scenario.model_copy(update={"services": {**scenario.services, name: real}})


def _error(predicted: Any, real: Any) -> float | None:
    try:
        p, r = float(predicted), float(real)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(p) and math.isfinite(r)) or r == 0:
        return None
    return (p - r) / r


def compare(candidate: Candidate, row: Mapping[str, Any]) -> dict[str, Any]:
    """One configuration: predicted (mock) and real figures, and the relative errors."""
    predicted = {k: candidate.figures.get(k) for k in FIGURES}
    real = {k: row.get(k) for k in FIGURES}
    return {
        "config": candidate.config.to_json(),
        "label": candidate.config.label,
        "predicted": predicted,
        "real": real,
        "error": {k: _error(predicted[k], real[k]) for k in FIGURES if k != "error_rate"},
        "clipped": row.get("clipped") or "",
        "trial_id": row.get("trial_id"),
    }


def verify(
    run: RunFolder,
    scenario: Scenario,
    recommendation: Recommendation,
    *,
    broker: Broker,
    options: TrialOptions,
    stream: TextIO,
) -> dict[str, Any]:
    """Rerun the pick and its runners-up on the real service; write verification.json."""
    name, real = real_service(scenario)
    on_real = real_scenario(scenario)
    candidates = [c for c in (recommendation.pick, *recommendation.runners_up[:RUNNERS_UP]) if c]
    with directory(run.path, "verify", create=True):  # never through a planted link
        pass
    folder = RunFolder(run.path / "verify")
    folder.write_manifest(
        {"schema_version": SCHEMA_VERSION, "status": STATUS_RUNNING, "of": "verification"}
    )
    stream.write(f"verify: {len(candidates)} configuration(s) on {real.url}\n")
    entries = []
    for i, candidate in enumerate(candidates):
        c = candidate.config
        if not (isinstance(c.num_workers, int) and isinstance(c.instances, int)):
            continue  # a dynamic configuration has no fixed slots to rerun
        plan = TrialPlan(i, c.num_workers, c.instances, c.batch_size, 0, c.placement)  # type: ignore[arg-type]
        outcome = run_trial(
            on_real, plan, broker=broker, logs=run.trial_logs(f"verify-{plan.trial_id}"),
            options=dataclasses.replace(options, on_progress=None),
        )  # fmt: skip
        folder.add_trial(outcome.row, outcome.events, outcome.services)
        entry = compare(candidate, outcome.row)
        entries.append(entry)
        stream.write(describe(entry) + "\n")
    document = {
        "schema_version": VERIFICATION_SCHEMA_VERSION,
        "service": name,
        "real": real.model_dump(mode="json"),
        "repeats_real": 1,
        "configs": entries,
    }
    run.write_json("verification.json", document)
    folder.mark(STATUS_COMPLETE)
    return document


def describe(entry: Mapping[str, Any]) -> str:
    """`nw8-in1-bs1: predicted 160 items/s, real 150 (+6.7%)`."""
    p, r, e = entry["predicted"], entry["real"], entry["error"]
    err = e.get("items_per_s")
    text = (
        f"  {entry['label']}: predicted {_num(p['items_per_s'])} items/s, real "
        f"{_num(r['items_per_s'])}" + (f" ({err:+.1%})" if err is not None else "")
    )
    return text + (f"; clipped: {entry['clipped']}" if entry["clipped"] else "")


def _num(value: Any) -> str:
    try:
        return f"{float(value):,.0f}"
    except (TypeError, ValueError):
        return "–"
