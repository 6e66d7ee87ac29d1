"""The scenario: what to run, against which mock services, and what "best" means.

A scenario file is a user-facing contract (design.md): field names are stable and new fields
come only with defaults. Loading is strict on purpose: an unknown key is an error with a
did-you-mean, never a silently ignored setting, and every error names the file, the YAML line,
the field path, the bad value and what is allowed, all in ONE `ConfigError` (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from lab.errors import ConfigError
from lab.mocks.spec import ServiceSpec
from lab.runtime.jobs import BUILTINS, job_type, resolve
from lab.runtime.retry import DEFAULT_JOB_TIMEOUT_S, DEFAULT_RETRY, RetryPolicy
from lab.scenario.loader import Loc, Problems, hint, line_of, load_yaml_model

QUICK_ITEMS_MAX = 500  # automatic --quick: a backlog of at most this many items
QUICK_DURATION_MAX_S = 5.0  # automatic --quick: arrivals for at most this long
_AUTO = "the smallest, middle and largest value of sweep."
SLUG = r"^[A-Za-z0-9_.-]+$"
_USER_JOB = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
T = TypeVar("T")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _unique(values: tuple[T, ...]) -> tuple[T, ...]:
    first: dict[T, int] = {}
    dupes = [i for i, v in enumerate(values) if first.setdefault(v, i) != i]
    if dupes:
        raise Problems(
            *(((i,), f"duplicate value {values[i]!r}, list each value once") for i in dupes)
        )
    return values


# Strict numbers: YAML gives real ints and floats, so `true` or "3" is a slip, not a 1 or a 3.
PosInt = Annotated[StrictInt, Field(ge=1)]
PosFloat = Annotated[StrictFloat, Field(gt=0)]
NonNegFloat = Annotated[StrictFloat, Field(ge=0)]
Axis = Annotated[tuple[PosInt, ...], Field(min_length=1), AfterValidator(_unique)]
Name = Annotated[str, Field(pattern=SLUG)]
Preference = Literal[
    "fewer_instances", "fewer_num_workers", "smaller_batch_size", "larger_batch_size"
]


class Broker(_Strict):
    """Where the job queue lives: the lab's private Redis unless a URL is given."""

    url: str | None = Field(
        default=None,
        description="redis://, rediss:// or unix:// URL; null = the lab's private Redis.",
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str | None) -> str | None:
        if url is None or re.match(r"(rediss?://[^/]|unix:///?[^/])", url):
            return url
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL or null, got {url!r}")


class Backlog(_Strict):
    """Every item enqueued at once, like a bulk import: the figures are makespan and items/s."""

    kind: Literal["backlog"] = Field(default="backlog", description="Arrival mode.")


class Poisson(_Strict):
    """Open-loop arrivals at a steady mean rate, whatever the workers' speed."""

    kind: Literal["poisson"] = Field(default="poisson", description="Arrival mode.")
    rate_per_s: PosFloat = Field(description="Mean arrival rate, in items per second.")
    duration_s: PosFloat = Field(description="How long items keep arriving, in seconds.")


class Ramp(_Strict):
    """Open-loop arrivals at a linearly changing rate, to find where the system tips over."""

    kind: Literal["ramp"] = Field(default="ramp", description="Arrival mode.")
    from_per_s: NonNegFloat = Field(description="Arrival rate at the start, in items per second.")
    to_per_s: PosFloat = Field(description="Arrival rate at the end, in items per second.")
    duration_s: PosFloat = Field(description="Length of the ramp, in seconds.")


class LocustArrival(_Strict):
    """Web traffic: Locust users post to the app under test, whose endpoint enqueues jobs."""

    kind: Literal["locust"] = Field(default="locust", description="Arrival mode.")
    users: PosInt = Field(description="Concurrent Locust users.")
    spawn_rate: PosFloat = Field(description="Users started per second until all run.")
    duration_s: PosFloat = Field(description="How long Locust runs, in seconds.")
    wait_min_s: NonNegFloat = Field(
        default=0.5, description="A user's shortest think time between requests, in s."
    )
    wait_max_s: NonNegFloat = Field(
        default=1.5, description="A user's longest think time between requests, in s."
    )
    jobs_per_request: PosInt = Field(
        default=1, description="Jobs one web request enqueues (each of batch_size items)."
    )

    @model_validator(mode="after")
    def _waits_ordered(self) -> LocustArrival:
        if self.wait_max_s < self.wait_min_s:
            raise Problems(
                (
                    ("wait_max_s",),
                    f"must be >= wait_min_s ({self.wait_min_s:g}), got {self.wait_max_s:g}",
                )
            )
        return self

    @property
    def requests_per_s(self) -> float:
        """Roughly, once all users run: users / (mean think time + a few ms of response)."""
        return self.users / ((self.wait_min_s + self.wait_max_s) / 2 + 0.005)


Arrival = Annotated[Backlog | Poisson | Ramp | LocustArrival, Field(discriminator="kind")]

Placement = Literal["separate", "colocated"]


class Workers(_Strict):
    """Where the job slots run: their own processes, or inside the web app's processes."""

    placement: (
        Placement | Annotated[tuple[Placement, ...], Field(min_length=1), AfterValidator(_unique)]
    ) = Field(
        default="separate",
        description="separate: `instances` worker processes; colocated: the slots run inside the "
        "web app's processes (Loco's same-process mode), one instance per web process. "
        "A list sweeps both.",
    )

    @property
    def placements(self) -> tuple[Placement, ...]:
        return (self.placement,) if isinstance(self.placement, str) else self.placement


class Retry(_Strict):
    """How a failed attempt is retried: see lab.runtime.retry.RetryPolicy."""

    max_attempts: PosInt = Field(
        default=DEFAULT_RETRY.max_attempts, description="Attempts before dead-lettering."
    )
    backoff_ms: NonNegFloat = Field(
        default=DEFAULT_RETRY.backoff_ms, description="First backoff in ms; doubles."
    )
    max_backoff_ms: NonNegFloat = Field(
        default=DEFAULT_RETRY.max_backoff_ms, description="Backoff ceiling, in ms."
    )
    jitter: Literal["full", "none"] = Field(
        default=DEFAULT_RETRY.jitter,
        description="full: wait uniform in [0, backoff]; none: exactly backoff.",
    )

    def policy(self) -> RetryPolicy:
        """The runtime's policy with these settings."""
        return RetryPolicy(**self.model_dump())


def _job_name(name: str) -> str:
    if name in BUILTINS or _USER_JOB.fullmatch(name):
        return name  # a user handler is imported by load_scenario, not by the model
    allowed = f"a built-in ({', '.join(sorted(BUILTINS))}) or 'package.module:function'"
    raise ValueError(f"unknown job {name!r}{hint(name, BUILTINS)}; allowed: {allowed}")


class Workload(_Strict):
    """What one item of work is, where it goes, and how items arrive."""

    job: Annotated[str, AfterValidator(_job_name)] = Field(
        description="Job handler: a built-in (opensearch.index, opensearch.bulk, "
        "opensearch.delete, http.call, cpu.burn) or 'package.module:function'."
    )
    service: str = Field(description="The key of `services` the job talks to.")
    items: PosInt | None = Field(
        default=None,
        description="Backlog size: required for a backlog, omitted for poisson and ramp "
        "(their count follows from rate x duration_s).",
    )
    arrival: Arrival = Field(
        default_factory=Backlog,
        description="How items arrive: backlog (all at once), or open-loop poisson or ramp.",
    )
    cpu_ms_per_item: NonNegFloat = Field(
        default=0.0, description="CPU work added to every job, in ms per item it carries."
    )
    index: str = Field(default="lab", min_length=1, description="Index of opensearch.* jobs.")
    retry: Retry = Field(default_factory=Retry, description="Retry and backoff of failed jobs.")
    job_timeout_s: PosFloat = Field(
        default=DEFAULT_JOB_TIMEOUT_S, description="Time limit of one attempt, in s."
    )

    @property
    def expected_items(self) -> int:
        """Items one trial produces: the backlog, or mean rate x duration for arrivals."""
        a = self.arrival
        if isinstance(a, Backlog):
            return self.items or 0
        if isinstance(a, LocustArrival):  # at batch_size 1
            return round(a.requests_per_s * a.duration_s * a.jobs_per_request)
        mean_per_s = a.rate_per_s if isinstance(a, Poisson) else (a.from_per_s + a.to_per_s) / 2
        return round(mean_per_s * a.duration_s)

    @model_validator(mode="after")
    def _items_fit_arrival(self) -> Workload:
        backlog = isinstance(self.arrival, Backlog)
        if backlog and self.items is None:
            raise Problems((("items",), "required for arrival kind backlog (the backlog size)"))
        if not backlog and self.items is not None:
            why = f"the count follows from the arrivals (~{self.expected_items})"
            raise Problems(
                (("items",), f"omit it for {self.arrival.kind}: {why}, got {self.items}")
            )
        return self


class Quick(_Strict):
    """What `--quick` runs instead; a field left out takes its automatic small value."""

    num_workers: Axis | None = Field(default=None, description=f"Default: {_AUTO}num_workers.")
    instances: Axis | None = Field(default=None, description=f"Default: {_AUTO}instances.")
    batch_size: Axis | None = Field(default=None, description=f"Default: {_AUTO}batch_size.")
    repeats: PosInt | None = Field(default=None, description="Default: 1.")
    items: PosInt | None = Field(
        default=None, description=f"Backlog only. Default: items, at most {QUICK_ITEMS_MAX}."
    )
    duration_s: PosFloat | None = Field(
        default=None,
        description=f"Arrivals only, in s. Default: duration_s, at most {QUICK_DURATION_MAX_S:g}.",
    )


def _repeats(value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"must be an integer >= 1 or 'auto', got {value!r}")


Repeats = Annotated[int | Literal["auto"], BeforeValidator(_repeats)]


class GridSearch(_Strict):
    """Every combination of the three axes, `repeats` times each (racing with `repeats: auto`)."""

    kind: Literal["grid"] = Field(default="grid", description="Search mode.")


class AdaptiveSearch(_Strict):
    """Start from the grid, then measure where the answer lies (lab.sweep.search): racing
    repeats, early stops, and refinement between grid points guided by a queueing model."""

    kind: Literal["adaptive"] = Field(default="adaptive", description="Search mode.")
    budget_trials: PosInt | None = Field(
        default=None, description="Most trials to run, starting grid included; null = no limit."
    )
    budget_s: PosFloat | None = Field(
        default=None, description="Most seconds of sweep (wall time) to spend; null = no limit."
    )


Search = Annotated[GridSearch | AdaptiveSearch, Field(discriminator="kind")]


class Sweep(_Strict):
    """The grid: every combination of the three axes is one trial, run `repeats` times."""

    num_workers: Axis = Field(default=(1,), description="Async job slots per worker process.")
    instances: Axis = Field(default=(1,), description="Worker processes.")
    batch_size: Axis = Field(
        default=(1,),
        description="Items per job. With poisson/ramp the producer groups consecutive arrivals "
        "into jobs; latency counts from the FIRST item's scheduled arrival, so batching "
        "cannot hide waiting.",
    )
    repeats: Repeats = Field(
        default=1,
        description="Runs of each configuration (for intervals). auto: racing, as many as it "
        "takes to tell a configuration from the best, up to max_repeats (with search "
        "adaptive, a number is where racing starts).",
    )
    max_repeats: PosInt = Field(
        default=5, description="Racing: most runs of one configuration (repeats auto, adaptive)."
    )
    search: Search = Field(
        default_factory=GridSearch,
        description="grid: every combination (the default); adaptive: start from the grid and "
        "measure where the answer lies, within budget_trials / budget_s.",
    )
    trial_timeout_s: PosFloat = Field(
        default=120.0, description="A trial not drained by then is stopped, marked timed out."
    )
    quick: Quick | None = Field(default=None, description="The small grid `--quick` runs.")

    @model_validator(mode="after")
    def _repeats_fit(self) -> Sweep:
        if isinstance(self.repeats, int) and self.repeats > self.max_repeats:
            if "max_repeats" in self.model_fields_set:
                raise Problems(
                    (
                        ("max_repeats",),
                        f"must be >= repeats ({self.repeats}), got {self.max_repeats}",
                    )
                )
            object.__setattr__(self, "max_repeats", self.repeats)  # frozen; set while validating
        return self

    @property
    def racing(self) -> bool:
        """Repeats are added where a configuration is not yet told apart from the best."""
        return self.repeats == "auto" or self.search.kind == "adaptive"

    @property
    def first_repeats(self) -> int:
        """Runs of each configuration before any racing: `repeats`, or 1 for auto."""
        return 1 if self.repeats == "auto" else self.repeats


class Slo(_Strict):
    """What a configuration must meet to be recommended."""

    p99_latency_ms: PosFloat | None = Field(
        default=None, description="Ceiling on p99 item latency, in ms; null = no latency SLO."
    )
    max_error_rate: Annotated[StrictFloat, Field(ge=0, le=1)] = Field(
        default=0.01, description="Ceiling on the fraction of items that fail for good."
    )


class Objective(_Strict):
    """How configurations are ranked."""

    maximize: Literal["items_per_s", "jobs_per_s"] = Field(
        default="items_per_s", description="The figure to maximize (backlog: min makespan)."
    )
    slo: Slo = Field(default_factory=Slo, description="Limits a recommendation must meet.")
    prefer: Annotated[tuple[Preference, ...], AfterValidator(_unique)] = Field(
        default=("fewer_instances", "fewer_num_workers"),
        description="Tie-breakers, in order, among configurations within noise of the best.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Objective:
        if {"smaller_batch_size", "larger_batch_size"} <= set(self.prefer):
            i = self.prefer.index("larger_batch_size")
            raise Problems((("prefer", i), "contradicts smaller_batch_size: keep one"))
        return self


class Scenario(_Strict):
    """One experiment: the services, the workload, the grid to sweep and the objective."""

    name: Name = Field(description="Letters, digits, _ . - only: it names the results folder.")
    description: str = Field(default="", description="What this scenario is about.")
    seed: StrictInt = Field(default=0, description="Seed of the trials' random draws.")
    broker: Broker = Field(default_factory=Broker, description="Where the job queue lives.")
    services: dict[Name, ServiceSpec] = Field(
        min_length=1, description="Mock services by name (at least one); see lab.mocks.spec."
    )
    workload: Workload = Field(description="The job, its service and how items arrive.")
    workers: Workers = Field(default_factory=Workers, description="Where the job slots run.")
    sweep: Sweep = Field(default_factory=Sweep, description="The configurations to try.")
    objective: Objective = Field(default_factory=Objective, description="What best means.")

    @model_validator(mode="after")
    def _cross_checks(self) -> Scenario:
        problems: list[tuple[Loc, str]] = []
        job, name, quick = self.workload.job, self.workload.service, self.sweep.quick or Quick()
        if name not in self.services:
            known = f"{hint(name, self.services)}; known: {', '.join(sorted(self.services))}"
            problems.append((("workload", "service"), f"unknown service {name!r}{known}"))
        elif (need := job_type(job).service_kind) and self.services[name].kind != need:
            kind = self.services[name].kind
            problems.append((("workload", "job"), f"{job} needs an {need} service, not {kind}"))
        if isinstance(self.workload.arrival, Backlog) and quick.duration_s is not None:
            problems.append(
                (("sweep", "quick", "duration_s"), "poisson/ramp only; for a backlog use items")
            )
        elif not isinstance(self.workload.arrival, Backlog) and quick.items is not None:
            problems.append(
                (("sweep", "quick", "items"), "a backlog only; for arrivals use duration_s")
            )
        if problems:
            raise Problems(*problems)
        return self

    def quick_variant(self) -> Scenario:
        """The small grid `--quick` runs: `sweep.quick` where given, else min/middle/max of each
        axis, 1 repeat, and at most QUICK_ITEMS_MAX items or QUICK_DURATION_MAX_S of arrivals."""
        s, q, w = self.sweep, self.sweep.quick or Quick(), self.workload
        sweep = {
            "num_workers": q.num_workers or _ends_and_middle(s.num_workers),
            "instances": q.instances or _ends_and_middle(s.instances),
            "batch_size": q.batch_size or _ends_and_middle(s.batch_size),
            "repeats": q.repeats or 1,
        }
        if isinstance(w.arrival, Backlog):
            workload: dict[str, Any] = {"items": q.items or min(w.items or 1, QUICK_ITEMS_MAX)}
        else:
            duration_s = q.duration_s or min(w.arrival.duration_s, QUICK_DURATION_MAX_S)
            workload = {"arrival": w.arrival.model_copy(update={"duration_s": duration_s})}
        return self.model_copy(
            update={"sweep": s.model_copy(update=sweep), "workload": w.model_copy(update=workload)}
        )


def _ends_and_middle(axis: tuple[int, ...]) -> tuple[int, ...]:
    ordered = sorted(axis)
    return tuple(sorted({ordered[0], ordered[len(ordered) // 2], ordered[-1]}))


def scenario_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a scenario file, with every field's description."""
    return {
        **Scenario.model_json_schema(),
        "$schema": "https://json-schema.org/draft/2020-12/schema",
    }


def load_scenario(path: str | Path, *, resolve_job: bool = True) -> Scenario:
    """Read and validate a scenario file; ConfigError (one line per problem) if it is wrong.

    `resolve_job=False` skips importing a user job module (to read a run made elsewhere).
    """
    scenario, node = load_yaml_model(path, Scenario, what="scenario")
    if resolve_job:
        at = f"{path}:{line_of(node, ('workload', 'job'))}: workload.job"
        try:
            resolve(scenario.workload.job)
        except ConfigError as exc:
            raise ConfigError(f"{at}: {exc}") from None
        except Exception as exc:  # the user's module failed on import: their error, not ours
            raise ConfigError(f"{at}: importing it failed: {type(exc).__name__}: {exc}") from None
    return scenario


def main(argv: list[str] | None = None) -> int:
    """Check scenario files (`ok: FILE` or the errors, exit 2), or print the JSON Schema."""
    parser = argparse.ArgumentParser(prog="python -m lab.scenario", description=main.__doc__)
    parser.add_argument("files", nargs="*", metavar="FILE", help="scenario YAML files to check")
    parser.add_argument("--schema", action="store_true", help="print the JSON Schema and exit")
    args = parser.parse_args(argv)
    if args.schema:
        print(json.dumps(scenario_json_schema(), sort_keys=True, indent=2))
        return 0
    if not args.files:
        parser.error("give scenario files to check, or --schema")
    status = 0
    for file in args.files:
        try:
            load_scenario(file)
            print(f"ok: {file}")
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            status = exc.exit_code
    return status
