"""The trials a sweep starts from: the grid in a seeded shuffled order, and how long each takes.

Light on purpose (no pandas): `python -m lab.sweep --dry-run` and a bad scenario answer at once.
"""

from __future__ import annotations

import itertools
import math
import random

from lab.mocks.distributions import mean_ms
from lab.producers.arrivals import expected_duration_s
from lab.runtime.jobs import job_type
from lab.scenario.spec import Scenario, axis_values
from lab.sweep import external
from lab.sweep.trial import TrialPlan

#: Seconds a trial costs beyond its drain: workers forked, ready checks, stop, mocks reset.
TRIAL_OVERHEAD_S = 0.3


def _most_slots(scenario: Scenario, plan: TrialPlan) -> int:
    """Total slots, or at most that many for a dynamic policy (auto's max, autoscale's max)."""
    nw = plan.num_workers if isinstance(plan.num_workers, int) else scenario.sweep.auto_limit.max
    return nw * plan.most_instances(scenario)


def estimate_trial_s(scenario: Scenario, plan: TrialPlan) -> float:
    """A rough duration: start-up, plus the drain at the tighter of the two throughput bounds.

    A user handler's requests are unknown to the lab: the estimate assumes one per item."""
    w = scenario.workload
    spec = external.stand_in(scenario.services[w.service])
    kind = job_type(w.job)
    requests_per_job = kind.requests_per_job(plan.batch_size)
    per_request_ms = mean_ms(spec.latency) + spec.per_item_ms * kind.items_per_request(
        plan.batch_size
    )
    job_s = per_request_ms / 1000 * requests_per_job + w.cpu_ms_per_item * plan.batch_size / 1000
    jobs = math.ceil(w.expected_items * plan.length_x / plan.batch_size)
    slots = min(
        _most_slots(scenario, plan),
        spec.capacity * plan.batch_size // max(1, requests_per_job) or 1,
    )
    drain_s = jobs * job_s / max(1, slots)
    if spec.rate_limit is not None:
        drain_s = max(drain_s, jobs * requests_per_job / spec.rate_limit.per_s)
    drain_s = min(max(drain_s, expected_duration_s(w.arrival)), scenario.sweep.trial_timeout_s)
    return TRIAL_OVERHEAD_S + 0.02 * plan.initial_instances(scenario) + drain_s


def plan_trials(scenario: Scenario) -> list[TrialPlan]:
    """Every grid point x first repeats (x placement), in an order shuffled by the seed."""
    s = scenario.sweep
    axes = (
        axis_values(s.num_workers), axis_values(s.instances), s.batch_size, range(s.first_repeats),
        scenario.workers.placements,
    )  # fmt: skip
    grid = list(itertools.product(*axes))
    random.Random(scenario.seed).shuffle(grid)
    return [
        TrialPlan(i, nw, inst, bs, rep, where) for i, (nw, inst, bs, rep, where) in enumerate(grid)
    ]
