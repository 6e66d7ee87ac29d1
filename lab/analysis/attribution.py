"""What held each trial's throughput: one word from a fixed vocabulary, and the numbers behind it.

The words (`BOTTLENECKS`) and the order they are tried in follow queueing arithmetic, not the
shipped examples. A figure is held by the FIRST of these that the evidence shows:

1. `errors`: the service failed more requests (5xx) than the SLO allows errors.
2. `arrivals`: open-loop arrivals and the workers kept up (the last job ended soon after the
   last arrival): the offered load itself is the throughput.
3. `rate_limit`: rate-limit 429s happened, and either the accepted request rate over the
   steady part reached the limit (`RATE_LIMIT_REACHED` of it) or at least `RETRY_WASTE_SHARE`
   of all attempts were 429s: the slots offered more than the token bucket lets through, and
   the Retry-After waits (the 429s' cost) are part of that limit. Except when those 429s came
   back in waves and the limit was not reached: then `retry_waste`, since the tokens went
   unused between the waves, a fault of the retries, not of the limit.
4. `service_capacity`: more requests were outstanding than the service serves at once, its
   in-flight count reached its capacity and requests queued there (or got 429 "queue full"),
   and it was busy at least `CAPACITY_BUSY` of the run.
5. `connection_limit`: the slots wanted more connections than the service holds: connections
   were refused, or waited for a held one to close.
6. `harness` / `broker`: a lab process (mock, producer, web app, Locust; or redis-server) was
   near a full core (the sweep's `harness_saturated`, at 0.85 of a core): the figure measures
   the lab, not the configuration.
7. `worker_cpu`: the busiest worker instance used, or wanted (ran or waited runnable: on a
   busy machine it may get less than it wants), `WORKER_FULL_CORE` of a core over the steady
   part: one process runs Python on one core, so only more instances raise the ceiling.
8. `harness`: every core of the machine was busy (workers and lab competed for CPU).
9. `retry_waste`: at least `RETRY_WASTE_SHARE` of the attempts failed and were retried, and no
   limit above was reached: the retries, not a ceiling, cost the throughput (the retry-wave
   detector says whether they marched in step).
10. `arrivals`: a backlog with no more jobs than slots: the work itself is the limit.
11. `concurrency`: none of the above: throughput ≈ concurrency / service time (Little's law),
    the service had room and rejected nothing; more slots would help, up to the next bound.

Inputs are what the results folder holds: a trials.csv row, the trial's job attempts
(jobs.parquet, for the retry-wave detector in lab.analysis.waves) and the scenario. The sweep
calls `trial_bottleneck` when it writes a row, the analysis `attribute_configs` when it reads a
run, so both say the same word.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lab.analysis.waves import Waves, mean_waves, waves_of_events, waves_of_jobs
from lab.mocks.spec import ServiceSpec
from lab.producers.arrivals import expected_duration_s
from lab.runtime.queue import OK, JobEvent
from lab.scenario.spec import Scenario

BOTTLENECKS = (
    "concurrency", "service_capacity", "rate_limit", "connection_limit", "worker_cpu", "broker",
    "harness", "retry_waste", "arrivals", "errors",
)  # fmt: skip

#: Steady accepted request rate at or above this share of the rate limit: the limit holds.
RATE_LIMIT_REACHED = 0.8
#: The service busy (mean in flight / capacity) at least this share of the run, with requests
#: queued: its capacity holds (the rest is start-up and the drain's tail).
CAPACITY_BUSY = 0.5
#: A worker instance at this share of a core over the steady part is CPU-bound.
WORKER_FULL_CORE = 0.85
#: This share of attempts failed and retried: the retries are a cost of their own.
RETRY_WASTE_SHARE = 0.25
#: Open loop: the workers kept up when the last job ended within this many seconds of the
#: last arrival (or three p99 service times, when longer).
KEPT_UP_TAIL_S = 0.5
#: The steady part: between these quantiles of the items done (start-up and tail left out).
STEADY_QUANTILES = (0.1, 0.9)


@dataclass(frozen=True)
class Context:
    """What the trials ran against: the target service, the SLO's error ceiling, the arrivals."""

    service: ServiceSpec | None = None
    max_error_rate: float = 0.01
    open_loop_s: float | None = None  # how long open-loop arrivals lasted; None: a backlog
    cpu_count: int | None = None

    @classmethod
    def of(cls, scenario: Scenario, cpu_count: int | None = None) -> Context:
        w = scenario.workload
        duration_s = expected_duration_s(w.arrival)
        service = scenario.services.get(w.service)
        return cls(
            service=service if isinstance(service, ServiceSpec) else None,  # None: a real one
            max_error_rate=scenario.objective.slo.max_error_rate,
            open_loop_s=duration_s or None,
            cpu_count=cpu_count,
        )


#: A steady part shorter than this, or holding fewer job completions, is too short to rank by.
MIN_STEADY_S = 0.5
MIN_STEADY_JOBS = 10


def steady_window(finished_at: Sequence[float], items: Sequence[int]) -> tuple[float, int, float]:
    """(items done, jobs done, seconds) between the STEADY_QUANTILES of the items done (by
    completion time): the steady part, without the start-up and the drain's tail."""
    if len(finished_at) < 2:
        return 0.0, 0, 0.0
    order = np.argsort(np.asarray(finished_at, dtype=float))
    t = np.asarray(finished_at, dtype=float)[order]
    done = np.cumsum(np.asarray(items, dtype=float)[order])
    lo_q, hi_q = STEADY_QUANTILES
    lo = int(np.searchsorted(done, lo_q * done[-1]))
    hi = int(np.searchsorted(done, hi_q * done[-1]))
    return float(done[hi] - done[lo]), hi - lo, float(t[hi] - t[lo])


def steady_items_per_s(finished_at: Sequence[float], items: Sequence[int]) -> float:
    """Items/s over the steady part (`steady_window`). NaN with fewer than 10 jobs."""
    if len(finished_at) < 10:
        return math.nan
    done, _, span = steady_window(finished_at, items)
    return done / span if span > 0 else math.nan


def too_short(finished_at: Sequence[float], items: Sequence[int]) -> bool:
    """The steady part lasts under MIN_STEADY_S or holds under MIN_STEADY_JOBS completions: a
    rate over it swings with every repeat, so it should not decide a ranking."""
    _, jobs, span = steady_window(finished_at, items)
    return bool(jobs < MIN_STEADY_JOBS or span < MIN_STEADY_S or len(finished_at) < MIN_STEADY_JOBS)


def service_columns(
    stats: Mapping[str, Any], spec: ServiceSpec | None, makespan_s: float
) -> dict[str, Any]:
    """The trials.csv columns that split the target service's rejections by kind and say how busy
    it was, from its `/_lab/stats` document (`spec` None: a real service, utilization unknown)."""
    rejections = stats.get("rejections", {})
    samples = stats.get("samples", {}).get("service_ms", [])
    served = stats.get("served", 0)
    busy_s = served * float(np.mean(samples)) / 1000 if samples else math.nan
    return {
        "service_rate_limited": rejections.get("rate_limit", 0),
        "service_queue_full": rejections.get("queue_full", 0),
        "service_connections_refused": rejections.get("connection_limit", 0)
        + rejections.get("connection_wait_timeout", 0),
        "service_max_connections": stats.get("max", {}).get("connections", 0),
        "service_utilization": busy_s / (spec.capacity * makespan_s)
        if spec is not None and makespan_s and makespan_s > 0
        else math.nan,
    }


# -- evidence -----------------------------------------------------------------------------------


def _num(row: Mapping[str, Any], key: str, default: float = math.nan) -> float:
    value = row.get(key, default)
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(out) else out


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


_LAB_CORES = {
    "mock_cores": "the mock service", "producer_cores": "the lab's producer",
    "web_cores": "the web app (producing only)", "locust_cores": "Locust", "redis_cores": "redis-server",
}  # fmt: skip


def evidence(row: Mapping[str, Any], ctx: Context, waves: Waves) -> dict[str, Any]:
    """Every number the decision looks at, from one trials.csv row (or a configuration's means)."""
    spec = ctx.service
    makespan = _num(row, "makespan_s")
    items_per_s = _num(row, "items_per_s")
    steady = _num(row, "steady_items_per_s", items_per_s)
    concurrency = _num(row, "concurrency", 1)
    instances = _num(row, "instances", 1)
    jobs = _num(row, "jobs_enqueued", 0)
    requests = _num(row, "service_requests", 0)
    rate_limited = _num(row, "service_rate_limited", 0)
    queue_full = _num(row, "service_queue_full", 0)
    accepted = requests - rate_limited
    handled = accepted - queue_full
    items_per_request = _ratio(_num(row, "items_done", 0), handled) if handled > 0 else 1.0
    steady_accepted = _ratio(accepted, makespan) * _ratio(steady, items_per_s)
    limit = spec.rate_limit.per_s if spec is not None and spec.rate_limit else None
    worker_cores = _num(row, "worker_steady_cores")
    if not math.isfinite(worker_cores):
        worker_cores = _ratio(_num(row, "workers_cores", 0), instances)
    worker_demand = _num(row, "worker_cpu_demand", worker_cores)
    lab = {k: _num(row, k, 0) for k in _LAB_CORES}
    busiest = max(lab, key=lambda k: lab[k])
    workers_cores = _num(row, "workers_cores", 0)
    usable = min(instances, ctx.cpu_count or instances)
    cpu_bound = usable * items_per_s / workers_cores if workers_cores > 0 else math.nan
    tail = makespan - ctx.open_loop_s if ctx.open_loop_s else math.nan
    ev: dict[str, Any] = {
        "items_per_s": items_per_s,
        "steady_items_per_s": steady,
        "concurrency": concurrency,
        "instances": instances,
        "jobs": jobs,
        "offered_in_flight": min(concurrency, jobs) if jobs else concurrency,
        "service_time_ms": _num(row, "service_mean_ms"),
        "littles_bound_items_per_s": _num(row, "littles_bound_items_per_s"),
        "of_littles_bound": _ratio(items_per_s, _num(row, "littles_bound_items_per_s")),
        "capacity": spec.capacity if spec is not None else math.nan,
        "capacity_bound_items_per_s": _num(row, "capacity_bound_items_per_s"),
        "max_in_flight": _num(row, "service_max_in_flight", 0),
        "max_queue_depth": _num(row, "service_max_queue_depth", 0),
        "utilization": _num(row, "service_utilization"),
        "requests": requests,
        "rejected": _num(row, "service_rejected", 0),
        "queue_full": queue_full,
        "rate_limit_per_s": limit,
        "rate_limited": rate_limited,
        "accepted_per_s": steady_accepted,
        "of_rate_limit": _ratio(steady_accepted, limit or math.nan),
        "rate_limit_items_per_s": limit * items_per_request if limit else math.nan,
        "connection_limit": spec.connection_limit if spec is not None else None,
        "max_connections": _num(row, "service_max_connections", 0),
        "connections_refused": _num(row, "service_connections_refused", 0),
        "attempts": _num(row, "attempts", 0),
        "retry_share": _ratio(_num(row, "retries", 0), _num(row, "attempts", 0)),
        "rejected_share": waves.rejected_share if waves.attempts else math.nan,
        "waves": waves.waves,
        "wave_spacing_s": waves.spacing_s,
        "wave_strength": waves.strength,
        "error_share": _ratio(_num(row, "service_errors", 0), requests),
        "max_error_rate": ctx.max_error_rate,
        "worker_cores": worker_cores,
        "worker_cpu_demand": worker_demand,
        "cpu_bound_items_per_s": cpu_bound,
        "lab_component": _LAB_CORES[busiest],
        "lab_cores": lab[busiest],
        "harness_saturated": bool(row.get("harness_saturated", False)),
        "machine_saturated": bool(row.get("machine_saturated", False)),
        "open_loop_s": ctx.open_loop_s,
        "offered_items_per_s": _ratio(_num(row, "items_enqueued", 0), ctx.open_loop_s or math.nan),
        "drain_tail_s": tail,
        "kept_up_tail_s": max(KEPT_UP_TAIL_S, 3 * _num(row, "service_p99_ms", 0) / 1000),
        "unfinished": _num(row, "unfinished_jobs", 0) + _num(row, "dead_letters", 0),
    }
    ev |= _next_bound(ev)
    return ev


def _next_bound(ev: Mapping[str, Any]) -> dict[str, Any]:
    """The ceiling past concurrency: the tightest of the service's capacity, its rate limit, its
    connection limit and the workers' CPU, in items/s."""
    per_slot = _ratio(ev["items_per_s"], ev["offered_in_flight"])
    candidates = {
        "the rate limit": ev["rate_limit_items_per_s"],
        "the service's capacity": ev["capacity_bound_items_per_s"],
        "the workers' CPU": ev["cpu_bound_items_per_s"],
    }
    if ev["connection_limit"]:
        candidates["the connection limit"] = ev["connection_limit"] * per_slot
    known = {k: v for k, v in candidates.items() if isinstance(v, float) and math.isfinite(v)}
    if not known:
        return {
            "next_bound": None,
            "next_bound_items_per_s": math.nan,
            "slots_for_next_bound": math.nan,
        }
    name = min(known, key=lambda k: known[k])
    return {
        "next_bound": name,
        "next_bound_items_per_s": known[name],
        "slots_for_next_bound": _ratio(known[name], per_slot),
    }


def decide(ev: Mapping[str, Any]) -> str:
    """The first constraint the evidence shows, in the order of the module docstring."""
    if ev["error_share"] > ev["max_error_rate"]:
        return "errors"
    kept_up = ev["drain_tail_s"] <= ev["kept_up_tail_s"] and ev["unfinished"] == 0
    if ev["open_loop_s"] and kept_up:
        return "arrivals"
    limit = _service_limit(ev)
    if limit is not None:
        return limit
    if ev["harness_saturated"]:
        return "broker" if ev["lab_component"] == "redis-server" else "harness"
    if max(ev["worker_cores"], ev["worker_cpu_demand"]) >= WORKER_FULL_CORE:
        return "worker_cpu"
    if ev["machine_saturated"]:
        return "harness"
    if ev["retry_share"] >= RETRY_WASTE_SHARE:
        return "retry_waste"
    if not ev["open_loop_s"] and 0 < ev["jobs"] <= ev["concurrency"]:
        return "arrivals"
    return "concurrency"


def _service_limit(ev: Mapping[str, Any]) -> str | None:
    """A limit of the service that was reached: its rate limit, capacity or connection limit."""
    if ev["rate_limited"] > 0:
        heavy = ev["rejected_share"] >= RETRY_WASTE_SHARE
        if heavy and ev["waves"] and not ev["of_rate_limit"] >= RATE_LIMIT_REACHED:
            return "retry_waste"  # the tokens went unused between the waves
        if heavy or ev["of_rate_limit"] >= RATE_LIMIT_REACHED:
            return "rate_limit"
    if (
        ev["offered_in_flight"] >= ev["capacity"]
        and ev["max_in_flight"] >= ev["capacity"]
        and (ev["max_queue_depth"] > 0 or ev["queue_full"] > 0)
        and not ev["utilization"] < CAPACITY_BUSY  # unknown (an old run) does not rule it out
    ):
        return "service_capacity"
    limit = ev["connection_limit"]
    if (
        limit
        and ev["offered_in_flight"] > limit
        and (ev["connections_refused"] > 0 or ev["max_connections"] > limit)
    ):
        return "connection_limit"
    return None


# -- words --------------------------------------------------------------------------------------


def _rate(v: float) -> str:
    return f"{v:,.0f}/s"


def _slots(n: float) -> str:
    return f"{n:,.0f} slot{'' if n == 1 else 's'}"


def describe(bottleneck: str, ev: Mapping[str, Any]) -> str:
    """The constraint and its evidence in one plain sentence (no subject: 'nw16-in1-bs1: ...')."""
    if bottleneck == "errors":
        return (
            f"errors: the service failed {ev['error_share']:.1%} of its requests with 5xx, over "
            f"the SLO's {ev['max_error_rate']:.1%}"
        )
    if bottleneck == "arrivals" and ev["open_loop_s"]:
        return (
            f"the arrivals: {_rate(ev['offered_items_per_s'])} offered and the workers kept up "
            f"(the last job ended {max(ev['drain_tail_s'], 0):.2f} s after the last arrival)"
        )
    if bottleneck == "arrivals":
        return (
            f"the work itself: only {ev['jobs']:,.0f} job{'' if ev['jobs'] == 1 else 's'} for "
            f"{_slots(ev['concurrency'])}, "
            "so more slots have nothing to run"
        )
    if bottleneck == "rate_limit":
        cost = (
            " (the rest of the limit went unused while rejected jobs sat out their Retry-After)"
            if ev["of_rate_limit"] < RATE_LIMIT_REACHED
            else ""
        )
        return (
            f"the rate limit ({_rate(ev['rate_limit_per_s'])}): {_rate(ev['accepted_per_s'])} "
            f"accepted in the steady part ({ev['of_rate_limit']:.0%} of the limit{cost}); "
            f"{_429s(ev)}"
        )
    if bottleneck == "retry_waste":
        limit = (
            f"; only {ev['of_rate_limit']:.0%} of the rate limit ({_rate(ev['rate_limit_per_s'])}) "
            "got through in the steady part"
            if ev["rate_limit_per_s"]
            else ""
        )
        share = ev["rejected_share"]
        rejected = f" ({share:.0%} of all attempts were 429s)" if share > 0 else ""
        return (
            f"retries: {ev['retry_share']:.0%} of attempts failed and were retried{rejected}; "
            f"{_wave_words(ev)}{limit}"
        )
    if bottleneck == "service_capacity":
        queued = (
            f"up to {ev['max_queue_depth']:,.0f} more queued"
            if ev["max_queue_depth"] > 0
            else f"{ev['queue_full']:,.0f} turned away as queue full (429)"
        )
        busy = ev["utilization"]
        rest = (
            f"; it was busy {busy:.0%} of the run, the rest is start-up and the drain's tail"
            if math.isfinite(busy) and busy < 0.9
            else (f"; busy {busy:.0%} of the run" if math.isfinite(busy) else "")
        )
        return (
            f"the service's capacity: it serves {ev['capacity']:,.0f} requests at once, had "
            f"{ev['max_in_flight']:,.0f} in flight and {queued}{rest}"
        )
    if bottleneck == "connection_limit":
        return (
            f"the service's connection limit ({ev['connection_limit']:,}): the slots wanted "
            f"{ev['offered_in_flight']:,.0f} connections; {ev['connections_refused']:,.0f} were "
            f"refused, up to {ev['max_connections']:,.0f} open at once"
        )
    if bottleneck == "worker_cpu":
        starved = (
            f" and wanted one {ev['worker_cpu_demand']:.0%} of the time (the machine was busy: "
            "it waited for the rest)"
            if ev["worker_cpu_demand"] - ev["worker_cores"] > 0.1
            else ""
        )
        return (
            f"the workers' CPU: the busiest instance used {ev['worker_cores']:.2f} of a core in "
            f"the steady part{starved}; one process runs Python on one core"
        )
    if bottleneck == "broker":
        return f"the broker: redis-server used {ev['lab_cores']:.2f} cores, the figure measures the lab"
    if bottleneck == "harness":
        if ev["harness_saturated"]:
            return (
                f"the lab itself: {ev['lab_component']} used {ev['lab_cores']:.2f} cores, so the "
                "figure measures the lab, not the configuration"
            )
        return "the machine: every core was busy, so workers and lab competed for CPU"
    busy = ev["utilization"]
    room = f"the service was busy {busy:.0%} of the run" if math.isfinite(busy) else "the service"
    return (
        f"concurrency: {_slots(ev['concurrency'])} at {ev['service_time_ms']:,.0f} ms a job "
        f"allow {_rate(ev['littles_bound_items_per_s'])} (Little's law) and it reached "
        f"{ev['of_littles_bound']:.0%} of that; {room} (at most {ev['max_in_flight']:,.0f} of "
        f"{ev['capacity']:,.0f} in flight, nothing queued) and rejected {ev['rejected']:,.0f}"
    )


def _wave_words(ev: Mapping[str, Any]) -> str:
    if ev["waves"]:
        return f"the retries came back in waves {ev['wave_spacing_s']:.1f} s apart"
    if ev["wave_strength"] is None:
        return "too few retries to tell whether they came in waves"
    return "the retries spread over time, not in waves"


def _429s(ev: Mapping[str, Any]) -> str:
    share = ev["rejected_share"]
    head = f"{share:.0%} of attempts were 429s" if math.isfinite(share) else "some requests got 429"
    if ev["waves"]:
        return f"{head}, returned in waves {ev['wave_spacing_s']:.1f} s apart"
    if ev["wave_strength"] is None:
        return head
    return f"{head}, their retries spread over time (no waves)"


def more_slots(ev: Mapping[str, Any]) -> str:
    """For a concurrency-bound point: how much more slots would buy, up to the next bound."""
    bound, at = ev["next_bound"], ev["next_bound_items_per_s"]
    if bound is None or not math.isfinite(at) or not ev["items_per_s"] > 0:
        return "more slots would help; no other bound is known to say how far"
    return (
        f"more slots would help, up to about {_rate(at)} ({bound}, "
        f"{at / ev['items_per_s']:,.1f}× this) at about {_slots(ev['slots_for_next_bound'])}"
    )


# -- per trial and per configuration ------------------------------------------------------------

#: Evidence worth showing per word (beside throughput and concurrency).
_SHOWN = {
    "errors": ("error_share", "max_error_rate", "requests"),
    "arrivals": ("offered_items_per_s", "drain_tail_s", "jobs"),
    "rate_limit": ("rate_limit_per_s", "accepted_per_s", "of_rate_limit", "rate_limited",
                   "rejected_share", "retry_share", "waves", "wave_spacing_s"),
    "retry_waste": ("retry_share", "rejected_share", "waves", "wave_spacing_s", "wave_strength",
                    "rate_limit_per_s", "of_rate_limit", "accepted_per_s"),
    "service_capacity": ("capacity", "offered_in_flight", "max_in_flight", "max_queue_depth",
                         "queue_full", "utilization", "capacity_bound_items_per_s"),
    "connection_limit": ("connection_limit", "offered_in_flight", "max_connections",
                         "connections_refused"),
    "worker_cpu": ("worker_cores", "worker_cpu_demand", "instances", "cpu_bound_items_per_s"),
    "broker": ("lab_component", "lab_cores"),
    "harness": ("lab_component", "lab_cores", "harness_saturated", "machine_saturated"),
    "concurrency": ("service_time_ms", "littles_bound_items_per_s", "of_littles_bound",
                    "max_in_flight", "capacity", "utilization", "rejected", "next_bound",
                    "next_bound_items_per_s", "slots_for_next_bound"),
}  # fmt: skip


def shown(bottleneck: str, ev: Mapping[str, Any]) -> dict[str, Any]:
    """The evidence that decided `bottleneck`, for recommendation.json."""
    keys = ("items_per_s", "steady_items_per_s", "concurrency", *_SHOWN[bottleneck])
    return {k: ev[k] for k in keys}


def trial_bottleneck(row: Mapping[str, Any], ctx: Context, events: Sequence[JobEvent]) -> str:
    """The word for a trials.csv row, as the sweep writes it."""
    return decide(evidence(row, ctx, waves_of_events(events)))


_MEAN_OVER_REPEATS = (
    "items_per_s", "steady_items_per_s", "makespan_s", "jobs_enqueued", "items_enqueued",
    "items_done", "attempts", "retries", "service_mean_ms", "service_p99_ms",
    "littles_bound_items_per_s", "capacity_bound_items_per_s", "service_requests",
    "service_rejected", "service_errors", "service_rate_limited", "service_queue_full",
    "service_connections_refused", "service_utilization", "workers_cores", "worker_steady_cores",
    "worker_cpu_demand",
    "mock_cores", "producer_cores", "web_cores", "locust_cores", "redis_cores",
    "unfinished_jobs", "dead_letters",
)  # fmt: skip
_MAX_OVER_REPEATS = ("service_max_in_flight", "service_max_queue_depth", "service_max_connections")
_ANY_OVER_REPEATS = ("harness_saturated", "machine_saturated")


def attribute_configs(
    trials: pd.DataFrame, jobs: pd.DataFrame | None, ctx: Context, keys: Sequence[str]
) -> pd.DataFrame:
    """Per configuration (`keys`, repeats aggregated): `bottleneck`, `evidence`, `why`, and the
    words of its repeats (`trial_bottlenecks`). The evidence is taken over the repeats' means
    (maxima for the peaks), so the word is decided once, the same way as for one trial."""
    out = []
    by_trial = dict(iter(jobs.groupby("trial_id"))) if jobs is not None and not jobs.empty else {}
    for config, part in trials.groupby(list(keys), sort=True):
        waves = [
            waves_of_jobs(by_trial[t]) if t in by_trial else Waves(0, 0, math.nan, None, None)
            for t in part["trial_id"]
        ]
        row: dict[str, Any] = {k: v for k, v in zip(keys, config, strict=True)}
        row |= {"concurrency": part["concurrency"].iloc[0], "instances": part["instances"].iloc[0]}
        row |= {c: part[c].mean() for c in _MEAN_OVER_REPEATS if c in part}
        row |= {c: part[c].max() for c in _MAX_OVER_REPEATS if c in part}
        row |= {c: bool(part[c].astype(bool).any()) for c in _ANY_OVER_REPEATS if c in part}
        ev = evidence(row, ctx, mean_waves(waves))
        word = decide(ev)
        words = [
            decide(evidence(r, ctx, w)) for r, w in zip(part.to_dict("records"), waves, strict=True)
        ]
        out.append(
            {k: v for k, v in zip(keys, config, strict=True)}
            | {"bottleneck": word, "evidence": shown(word, ev), "why": describe(word, ev),
               "trial_bottlenecks": words, "_evidence": ev}
        )  # fmt: skip
    columns = [*keys, "bottleneck", "evidence", "why", "trial_bottlenecks", "_evidence"]
    return pd.DataFrame(out, columns=columns)


def attribute_trials(trials: pd.DataFrame, jobs: pd.DataFrame | None, ctx: Context) -> pd.Series:
    """The word of every trial (trials.csv's `bottleneck`, for runs written before it existed)."""
    by_trial = dict(iter(jobs.groupby("trial_id"))) if jobs is not None and not jobs.empty else {}
    none = Waves(0, 0, math.nan, None, None)
    return pd.Series(
        [
            decide(
                evidence(
                    r,
                    ctx,
                    waves_of_jobs(by_trial[r["trial_id"]]) if r["trial_id"] in by_trial else none,
                )
            )
            for r in trials.to_dict("records")
        ],
        index=trials.index,
        dtype=object,
    )


def fill_older_layout(
    trials: pd.DataFrame,
    jobs: pd.DataFrame,
    services: Callable[[str], Mapping[str, Any]],
    target: str,
    ctx: Context,
) -> pd.DataFrame:
    """A run written before results layout 3 lacks the columns attribution reads: fill them from
    each trial's services/<trial>.json (`services(trial_id)`) and its jobs. Rows that have them
    are left as they are."""
    trials = trials.copy()
    missing = trials["service_utilization"].isna() & trials["service_rate_limited"].isna()
    by_trial = dict(iter(jobs.groupby("trial_id"))) if not jobs.empty else {}
    for i in trials.index[missing]:
        trial_id = str(trials.at[i, "trial_id"])
        stats = services(trial_id).get(target)
        if stats is not None and ctx.service is not None:
            for column, value in service_columns(
                stats, ctx.service, trials.at[i, "makespan_s"]
            ).items():
                trials.at[i, column] = value
        if trial_id in by_trial and pd.isna(trials.at[i, "steady_items_per_s"]):
            ok = by_trial[trial_id]
            ok = ok[ok["outcome"] == OK].sort_values("finished_at").drop_duplicates("job_id")
            trials.at[i, "steady_items_per_s"] = steady_items_per_s(
                ok["finished_at"].to_numpy(), ok["items"].to_numpy()
            )
    trials["bottleneck"] = trials["bottleneck"].astype(object)
    unknown = trials["bottleneck"].isna()
    if unknown.any():
        trials.loc[unknown, "bottleneck"] = attribute_trials(trials[unknown], jobs, ctx)
    return trials
