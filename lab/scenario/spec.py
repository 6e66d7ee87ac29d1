"""The scenario: what to run, against which mock services, and what "best" means.

A scenario file is a user-facing contract: field names are stable and new fields
come only with defaults. Loading is strict on purpose: an unknown key is an error with a
did-you-mean, never a silently ignored setting, and every error names the file, the YAML line,
the field path, the bad value and what is allowed, all in ONE `ConfigError` (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from lab import bounds as L
from lab.configuration import COLOCATED
from lab.errors import ConfigError
from lab.external import ExternalService, speaks
from lab.infra.broker import redact_url
from lab.mocks.spec import ServiceSpec
from lab.runtime.jobs import BUILTINS, find_job_module, job_type, resolve
from lab.runtime.limits import ALGORITHMS, LimitSettings
from lab.runtime.retry import DEFAULT_JOB_TIMEOUT_S, DEFAULT_RETRY, AfterFloor, RetryPolicy
from lab.scenario.faults import Fault, fault_problems
from lab.scenario.loader import line_of, load_yaml_model
from lab.strict import (
    INTEGER,
    MAPPING,
    NAME,
    Loc,
    Problems,
    Strict,
    by_input_type,
    hint,
    show,
    why,
)

QUICK_ITEMS_MAX = 500  # automatic --quick: a backlog of at most this many items
QUICK_DURATION_MAX_S = 5.0  # automatic --quick: arrivals for at most this long
_AUTO = "the smallest, middle and largest value of sweep."
SLUG = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
_USER_JOB = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
T = TypeVar("T")

_Strict = Strict  # every scenario model: unknown keys, coercions, inf and NaN are errors


def _unique(values: tuple[T, ...]) -> tuple[T, ...]:
    first: dict[T, int] = {}
    dupes = [i for i, v in enumerate(values) if first.setdefault(v, i) != i]
    if dupes:
        raise Problems(
            *(((i,), f"duplicate value {values[i]!r}, list each value once") for i in dupes)
        )
    return values


# Every number is strict (YAML gives real ints and floats, so `true` or "3" is a slip, not a 1
# or a 3), finite, and bounded by what one machine can run (lab.bounds, reason in the message).
Items = Annotated[int, Field(ge=1, le=L.ITEMS_MAX), why(L.ITEMS_WHY)]
NumWorkers = Annotated[int, Field(ge=1, le=L.NUM_WORKERS_MAX), why(L.NUM_WORKERS_WHY)]
Instances = Annotated[int, Field(ge=1, le=L.INSTANCES_MAX), why(L.INSTANCES_WHY)]
BatchSize = Annotated[int, Field(ge=1, le=L.BATCH_SIZE_MAX), why(L.BATCH_SIZE_WHY)]
Repeats = Annotated[int, Field(ge=1, le=L.REPEATS_MAX)]
Rate = Annotated[float, Field(gt=0, le=L.RATE_PER_S_MAX), why(L.RATE_WHY)]
StartRate = Annotated[float, Field(ge=0, le=L.RATE_PER_S_MAX), why(L.RATE_WHY)]
Duration = Annotated[float, Field(gt=0, le=L.DURATION_S_MAX), why(L.DURATION_WHY)]
WaitS = Annotated[float, Field(ge=0, le=L.DURATION_S_MAX)]
Timeout = Annotated[float, Field(gt=0, le=L.TIMEOUT_S_MAX), why(L.TIMEOUT_WHY)]
Users = Annotated[int, Field(ge=1, le=L.USERS_MAX), why(L.USERS_WHY)]
SpawnRate = Annotated[float, Field(gt=0, le=L.USERS_MAX)]
CpuMs = Annotated[float, Field(ge=0, le=L.CPU_MS_PER_ITEM_MAX)]
BackoffMs = Annotated[float, Field(ge=0, le=L.BACKOFF_MS_MAX), why(L.BACKOFF_WHY)]
Fraction = Annotated[float, Field(ge=0, le=1)]


# A sweep axis: a non-empty list of distinct values (a tuple inside; its items stay strict).
_AXIS = Field(min_length=1, max_length=L.AXIS_VALUES_MAX, strict=False)
BatchSizeAxis = Annotated[tuple[BatchSize, ...], _AXIS, AfterValidator(_unique)]
Name = Annotated[str, Field(pattern=SLUG, max_length=L.NAME_CHARS_MAX), why(L.NAME_WHY)]
Preference = Literal[
    "fewer_instances", "fewer_num_workers", "smaller_batch_size", "larger_batch_size"
]

_INDEX_FORBIDDEN = '\\/*?"<>| ,#:%'
_INDEX_FORBIDDEN_WORDS = '\\ / * ? " < > | , # : % or a space'


def _index_name(name: str) -> str:
    """OpenSearch's index naming rules (and no `%`: the lab writes the name into URLs as is)."""
    problems = []
    if name != name.lower():
        problems.append("lowercase only")
    if bad := sorted(set(name) & set(_INDEX_FORBIDDEN)):
        problems.append(f"none of {_INDEX_FORBIDDEN_WORDS} (found {''.join(bad)!r})")
    if not name.isprintable():
        problems.append("printable characters only")
    if name.startswith(("_", "-", "+")) or name in (".", ".."):
        problems.append("not starting with _ - or +, not . or ..")
    if len(name.encode()) > L.INDEX_BYTES_MAX:
        problems.append(f"at most {L.INDEX_BYTES_MAX} bytes")
    if problems:
        raise ValueError(f"{show(name)} is not an OpenSearch index name: {'; '.join(problems)}")
    return name


class Broker(_Strict):
    """Where the job queue lives: the lab's private Redis unless a URL is given."""

    url: Annotated[str, Field(max_length=L.URL_CHARS_MAX)] | None = Field(
        default=None,
        description="redis://, rediss:// or unix:// URL; null = the lab's private Redis. A "
        "password in it never reaches a command line or a message.",
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str | None) -> str | None:
        if url is None or re.match(r"(rediss?://[^/]|unix:///?[^/])", url):
            return url
        raise ValueError(
            f"must be a redis://, rediss:// or unix:// URL or null, got {show(redact_url(url))}"
        )


class Cluster(_Strict):
    """Where a trial runs when one host is not enough: a Ray cluster (docs/ray.md).

    The producer and the clock stay on this host (the driver); each mock service gets a node of
    its own where the cluster has room, and the worker instances spread over the other nodes.
    """

    engine: Literal["ray"] = Field(description="The cluster engine; only ray today.")
    address: Annotated[str, Field(max_length=L.URL_CHARS_MAX)] = Field(
        default="auto",
        description="auto: the running cluster RAY_ADDRESS or `ray start` names; "
        "ray://host:port: a remote cluster through Ray Client; local: a one-node Ray on this "
        "host, on loopback.",
    )
    workers_resource: Name | None = Field(
        default=None,
        description="Only nodes offering this custom Ray resource host worker instances; "
        "null = any node.",
    )
    services_resource: Name | None = Field(
        default=None,
        description="Only nodes offering this custom Ray resource host mock services; "
        "null = any node.",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, address: str) -> str:
        if address in ("auto", "local") or re.fullmatch(r"ray://[^/:\s]+:\d+", address):
            return address
        raise ValueError(f"must be auto, local or ray://host:port, got {address!r}")


class Backlog(_Strict):
    """Every item enqueued at once, like a bulk import: the figures are makespan and items/s."""

    kind: Literal["backlog"] = Field(default="backlog", description="Arrival mode.")


class Poisson(_Strict):
    """Open-loop arrivals at a steady mean rate, whatever the workers' speed."""

    kind: Literal["poisson"] = Field(default="poisson", description="Arrival mode.")
    rate_per_s: Rate = Field(description="Mean arrival rate, in items per second.")
    duration_s: Duration = Field(description="How long items keep arriving, in seconds.")


class Ramp(_Strict):
    """Open-loop arrivals at a linearly changing rate, to find where the system tips over."""

    kind: Literal["ramp"] = Field(default="ramp", description="Arrival mode.")
    from_per_s: StartRate = Field(description="Arrival rate at the start, in items per second.")
    to_per_s: Rate = Field(description="Arrival rate at the end, in items per second.")
    duration_s: Duration = Field(description="Length of the ramp, in seconds.")


class Phase(_Strict):
    """One step of a `step` arrival: a steady Poisson rate for a while."""

    rate_per_s: StartRate = Field(description="Mean arrival rate, in items per second.")
    duration_s: Duration = Field(description="How long this rate lasts, in seconds.")


class Step(_Strict):
    """Open-loop arrivals whose rate changes at once, e.g. 100/s for 10 s then 600/s for 10 s:
    what a fixed configuration sized for the first rate does at the second."""

    kind: Literal["step"] = Field(default="step", description="Arrival mode.")
    steps: Annotated[
        tuple[Phase, ...], Field(min_length=1, max_length=L.AXIS_VALUES_MAX, strict=False)
    ] = Field(description="The rates in order, each with its duration.")

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.steps)

    def scaled_to(self, duration_s: float) -> Step:
        """The same shape, every step shortened in proportion (for --quick)."""
        f = duration_s / self.duration_s
        steps = tuple(p.model_copy(update={"duration_s": p.duration_s * f}) for p in self.steps)
        return self.model_copy(update={"steps": steps})


class Bursts(_Strict):
    """Open-loop arrivals at a base rate, with a burst of `burst_s` every `every_s`."""

    kind: Literal["bursts"] = Field(default="bursts", description="Arrival mode.")
    base_per_s: StartRate = Field(description="Rate between bursts, in items per second.")
    burst_per_s: Rate = Field(description="Rate during a burst, in items per second.")
    burst_s: Duration = Field(description="Length of one burst, in seconds.")
    every_s: Duration = Field(description="A burst starts every this many seconds.")
    first_s: WaitS = Field(default=1.0, description="When the first burst starts, in s.")
    duration_s: Duration = Field(description="How long items keep arriving, in seconds.")

    @model_validator(mode="after")
    def _fits(self) -> Bursts:
        if self.burst_s > self.every_s:
            raise Problems(
                (("burst_s",), f"must be <= every_s ({self.every_s:g}), got {self.burst_s:g}")
            )
        return self

    def in_burst(self, t_s: float) -> bool:
        return t_s >= self.first_s and (t_s - self.first_s) % self.every_s < self.burst_s

    @property
    def mean_per_s(self) -> float:
        """The mean rate over `duration_s` (numerically: bursts may be cut by the end)."""
        n = 1000
        dt = self.duration_s / n
        inside = sum(self.in_burst((i + 0.5) * dt) for i in range(n)) / n
        return inside * self.burst_per_s + (1 - inside) * self.base_per_s

    def scaled_to(self, duration_s: float) -> Bursts:
        """Shorter: fewer bursts of the same shape (for --quick)."""
        return self.model_copy(update={"duration_s": duration_s})


class LocustArrival(_Strict):
    """Web traffic: Locust users post to the app under test, whose endpoint enqueues jobs."""

    kind: Literal["locust"] = Field(default="locust", description="Arrival mode.")
    users: Users = Field(description="Concurrent Locust users.")
    spawn_rate: SpawnRate = Field(description="Users started per second until all run.")
    duration_s: Duration = Field(description="How long Locust runs, in seconds.")
    wait_min_s: WaitS = Field(
        default=0.5, description="A user's shortest think time between requests, in s."
    )
    wait_max_s: WaitS = Field(
        default=1.5, description="A user's longest think time between requests, in s."
    )
    jobs_per_request: Annotated[int, Field(ge=1, le=L.JOBS_PER_REQUEST_MAX)] = Field(
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


Arrival = Annotated[
    Backlog | Poisson | Ramp | Step | Bursts | LocustArrival, Field(discriminator="kind")
]

Placement = Literal["separate", "colocated"]
Service = Annotated[ServiceSpec | ExternalService, Field(discriminator="kind")]


class Workers(_Strict):
    """Where the job slots run: their own processes, or inside the web app's processes."""

    placement: (
        Placement
        | Annotated[
            tuple[Placement, ...],
            Field(min_length=1, max_length=2, strict=False),
            AfterValidator(_unique),
        ]
    ) = Field(
        default="separate",
        description="separate: `instances` worker processes; colocated: the slots run inside the "
        "web app's processes (Loco's same-process mode), one instance per web process. "
        "A list sweeps both.",
    )

    heartbeat_ttl_s: Annotated[
        float, Field(ge=L.HEARTBEAT_TTL_S_MIN, le=L.DURATION_S_MAX), why(L.HEARTBEAT_TTL_WHY)
    ] = Field(
        default=3.0,
        description="A worker instance that stops beating for this long (a crash, a stall) "
        "has its jobs put back for others: shorter recovers faster after a crash, but a stall "
        "longer than it makes that work run twice. Survivors look every TTL, so recovery takes "
        "one to two TTLs.",
    )

    @property
    def placements(self) -> tuple[Placement, ...]:
        return (self.placement,) if isinstance(self.placement, str) else self.placement


# -- dynamic configurations: num_workers `auto`, instances `autoscale` --------------------------

AUTO, AUTOSCALE = "auto", "autoscale"


class AutoLimit(_Strict):
    """`num_workers: {auto: {...}}`: each instance adapts its own slot limit (lab.runtime.limits)."""

    min: NumWorkers = Field(
        default=LimitSettings.min, description="Fewest slots an instance keeps."
    )
    max: NumWorkers = Field(
        default=LimitSettings.max, description="Most slots an instance may fill."
    )
    initial: NumWorkers = Field(default=LimitSettings.initial, description="Slots at the start.")
    algorithm: Literal[ALGORITHMS] = Field(  # type: ignore[valid-type]
        default=LimitSettings.algorithm,
        description="gradient: job latency against the no-load latency, and backs off on "
        "429/503/timeouts; aimd: +1 per window until a 429/503/timeout, then x0.9.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoLimit:
        if not self.min <= self.initial <= self.max:
            raise Problems(
                (
                    ("initial",),
                    f"must be in [min, max] = [{self.min}, {self.max}], got {self.initial}",
                )
            )
        return self

    def settings(self) -> LimitSettings:
        """The runtime's settings."""
        return LimitSettings(self.min, self.max, self.initial, self.algorithm)


class AutoWorkers(_Strict):
    """A `num_workers` entry `{auto: {min, max, initial, algorithm}}`; the string `auto` alone
    takes the defaults."""

    auto: AutoLimit = Field(default_factory=AutoLimit, description="The adaptive limit.")


class Autoscale(_Strict):
    """Instances that follow the load, like KEDA's Redis list scaler on a Kubernetes HPA:
    desired = ceil(pending jobs / target_backlog_per_instance), or with a fixed num_workers
    ceil(jobs in flight / (num_workers x target_utilization)) if more, within [min, max];
    scaled down only to the highest desired count of the last `cooldown_s` (the HPA's
    stabilisation window)."""

    min: Instances = Field(default=1, description="Fewest instances (started before the clock).")
    max: Instances = Field(default=4, description="Most instances at once.")
    target_backlog_per_instance: Items = Field(
        default=100, description="Pending jobs one instance is meant to face (KEDA listLength)."
    )
    cooldown_s: WaitS = Field(
        default=5.0, description="Scale-down stabilisation window, in s (HPA: 300 by default)."
    )
    start_delay_s: WaitS = Field(
        default=0.0,
        description="A new instance takes this long before it starts (a pod's scheduling and "
        "image pull), in s; it costs instance-seconds meanwhile.",
    )
    poll_s: Annotated[float, Field(gt=0, le=60)] = Field(
        default=0.5, description="How often the backlog is read and a decision made, in s."
    )
    target_utilization: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=0.7,
        description="Share of the instances' slots meant to be busy (the HPA's CPU-style "
        "averageUtilization), a second metric beside the backlog: enough instances that the "
        "jobs in flight fill this share of num_workers each; it keeps the instances a steady "
        "load needs once the pending list reads 0. Ignored with num_workers auto (its slots "
        "move); null: the backlog alone (KEDA's list length).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Autoscale:
        if self.max < self.min:
            raise Problems((("max",), f"must be >= min ({self.min}), got {self.max}"))
        return self


class AutoscaleInstances(_Strict):
    """An `instances` entry `{autoscale: {...}}`; the string `autoscale` alone takes defaults."""

    autoscale: Autoscale = Field(default_factory=Autoscale, description="The autoscaler.")


def _one_policy(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Integers listed once, and at most one dynamic entry (its label is its name alone)."""
    _unique(tuple(v for v in values if isinstance(v, int)))
    dynamic = [i for i, v in enumerate(values) if not isinstance(v, int)]
    if len(dynamic) > 1:
        raise Problems(*(((i,), "one dynamic entry per axis; list it once") for i in dynamic[1:]))
    return values


WorkersEntry = Annotated[
    Annotated[NumWorkers, Tag(INTEGER)]
    | Annotated[Literal["auto"], Tag(NAME)]
    | Annotated[AutoWorkers, Tag(MAPPING)],
    Discriminator(
        by_input_type,
        custom_error_type="num_workers",
        custom_error_message="must be an integer >= 1, 'auto' or {auto: {min, max, initial, "
        "algorithm}}",
    ),
]
InstancesEntry = Annotated[
    Annotated[Instances, Tag(INTEGER)]
    | Annotated[Literal["autoscale"], Tag(NAME)]
    | Annotated[AutoscaleInstances, Tag(MAPPING)],
    Discriminator(
        by_input_type,
        custom_error_type="instances",
        custom_error_message="must be an integer >= 1, 'autoscale' or {autoscale: {min, max, "
        "target_backlog_per_instance, cooldown_s, start_delay_s, poll_s, target_utilization}}",
    ),
]
NumWorkersAxis = Annotated[tuple[WorkersEntry, ...], _AXIS, AfterValidator(_one_policy)]
InstancesAxis = Annotated[tuple[InstancesEntry, ...], _AXIS, AfterValidator(_one_policy)]


def axis_values(axis: tuple[Any, ...]) -> tuple[int | str, ...]:
    """An axis as the plan and trials.csv hold it: integers, and `auto` or `autoscale`."""
    return tuple(
        v if isinstance(v, int | str) else AUTO if isinstance(v, AutoWorkers) else AUTOSCALE
        for v in axis
    )


def fixed_values(axis: tuple[Any, ...]) -> tuple[int, ...]:
    """An axis's integers, its dynamic entry left out ((1,) when it has no integer): what the
    model and the search, which step integer axes, work with."""
    return tuple(v for v in axis if isinstance(v, int)) or (1,)


class Retry(_Strict):
    """How a failed attempt is retried: see lab.runtime.retry.RetryPolicy."""

    max_attempts: Annotated[int, Field(ge=1, le=L.MAX_ATTEMPTS_MAX)] = Field(
        default=DEFAULT_RETRY.max_attempts, description="Attempts before dead-lettering."
    )
    backoff_ms: BackoffMs = Field(
        default=DEFAULT_RETRY.backoff_ms, description="First backoff in ms; doubles."
    )
    max_backoff_ms: BackoffMs = Field(
        default=DEFAULT_RETRY.max_backoff_ms, description="Backoff ceiling, in ms."
    )
    jitter: Literal["full", "none"] = Field(
        default=DEFAULT_RETRY.jitter,
        description="full: wait uniform in [0, backoff]; none: exactly backoff.",
    )
    after_floor: AfterFloor = Field(
        default=DEFAULT_RETRY.after_floor,
        description="How a server's Retry-After (a floor, in whole seconds) is honoured. "
        "jittered: wait the floor plus the backoff draw, so jobs rejected together come back "
        "spread over the backoff window; exact: wait the floor itself (when the backoff is "
        "shorter), so they come back together in one wave, a retry storm.",
    )

    def policy(self) -> RetryPolicy:
        """The runtime's policy with these settings."""
        return RetryPolicy(**self.model_dump())


def _job_name(name: str) -> str:
    if name in BUILTINS or _USER_JOB.fullmatch(name):
        return name  # a user handler is looked up by load_scenario, imported by the sweep only
    allowed = f"a built-in ({', '.join(sorted(BUILTINS))}) or 'package.module:function'"
    raise ValueError(f"unknown job {name!r}{hint(name, BUILTINS)}; allowed: {allowed}")


class Workload(_Strict):
    """What one item of work is, where it goes, and how items arrive."""

    job: Annotated[str, Field(max_length=L.JOB_NAME_CHARS_MAX), AfterValidator(_job_name)] = Field(
        description="Job handler: a built-in (opensearch.index, opensearch.bulk, "
        "opensearch.delete, http.call, cpu.burn) or 'package.module:function'."
    )
    service: Name = Field(description="The key of `services` the job talks to.")
    items: Items | None = Field(
        default=None,
        description="Backlog size: required for a backlog, omitted for poisson and ramp "
        "(their count follows from rate x duration_s).",
    )
    arrival: Arrival = Field(
        default_factory=Backlog,
        description="How items arrive: backlog (all at once), or open-loop poisson, ramp, step "
        "or bursts, or web traffic (locust).",
    )
    cpu_ms_per_item: CpuMs = Field(
        default=0.0, description="CPU work added to every job, in ms per item it carries."
    )
    index: Annotated[
        str, Field(min_length=1, max_length=L.INDEX_BYTES_MAX), AfterValidator(_index_name)
    ] = Field(
        default="lab",
        description="Index of opensearch.* jobs; OpenSearch's naming rules (lowercase; none of "
        '\\ / * ? " < > | space , # :; not starting with _ - +), and no %.',
    )
    retry: Retry = Field(default_factory=Retry, description="Retry and backoff of failed jobs.")
    job_timeout_s: Timeout = Field(
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
        if isinstance(a, Step):
            return round(sum(p.rate_per_s * p.duration_s for p in a.steps))
        if isinstance(a, Bursts):
            return round(a.mean_per_s * a.duration_s)
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
        if self.expected_items > L.ITEMS_MAX:
            raise Problems(
                (
                    ("arrival",),
                    f"these arrivals make ~{self.expected_items:,} items; at most "
                    f"{L.ITEMS_MAX:,} ({L.ITEMS_WHY}): lower the rate or duration_s",
                )
            )
        return self


class Quick(_Strict):
    """What `--quick` runs instead; a field left out takes its automatic small value."""

    num_workers: NumWorkersAxis | None = Field(
        default=None, description=f"Default: {_AUTO}num_workers, and its dynamic entry."
    )
    instances: InstancesAxis | None = Field(
        default=None, description=f"Default: {_AUTO}instances, and its dynamic entry."
    )
    batch_size: BatchSizeAxis | None = Field(
        default=None, description=f"Default: {_AUTO}batch_size."
    )
    repeats: Repeats | None = Field(default=None, description="Default: 1.")
    items: Items | None = Field(
        default=None, description=f"Backlog only. Default: items, at most {QUICK_ITEMS_MAX}."
    )
    duration_s: Duration | None = Field(
        default=None,
        description=f"Arrivals only, in s. Default: duration_s, at most {QUICK_DURATION_MAX_S:g}.",
    )


def _repeats_or_auto(value: Any) -> Any:
    if value == "auto" or (
        isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= L.REPEATS_MAX
    ):
        return value
    raise ValueError(f"must be an integer in [1, {L.REPEATS_MAX}] or 'auto', got {value!r}")


RepeatsOrAuto = Annotated[Repeats | Literal["auto"], BeforeValidator(_repeats_or_auto)]


class GridSearch(_Strict):
    """Every combination of the three axes, `repeats` times each (racing with `repeats: auto`)."""

    kind: Literal["grid"] = Field(default="grid", description="Search mode.")


class AdaptiveSearch(_Strict):
    """Start from the grid, then measure where the answer lies (lab.sweep.search): racing
    repeats, early stops, and refinement between grid points guided by a queueing model."""

    kind: Literal["adaptive"] = Field(default="adaptive", description="Search mode.")
    budget_trials: Annotated[int, Field(ge=1, le=L.TRIALS_MAX), why(L.TRIALS_WHY)] | None = Field(
        default=None, description="Most trials to run, starting grid included; null = no limit."
    )
    budget_s: Timeout | None = Field(
        default=None, description="Most seconds of sweep (wall time) to spend; null = no limit."
    )


Search = Annotated[GridSearch | AdaptiveSearch, Field(discriminator="kind")]


class Sweep(_Strict):
    """The grid: every combination of the three axes is one trial, run `repeats` times."""

    num_workers: NumWorkersAxis = Field(
        default=(1,),
        description="Async job slots per worker process; `auto` (or {auto: {min, max, initial, "
        "algorithm}}) lets each instance adapt its own limit.",
    )
    instances: InstancesAxis = Field(
        default=(1,),
        description="Worker processes; {autoscale: {min, max, target_backlog_per_instance, "
        "cooldown_s, start_delay_s, poll_s, target_utilization}} (or `autoscale`) follows the "
        "backlog and the busy slots.",
    )
    batch_size: BatchSizeAxis = Field(
        default=(1,),
        description="Items per job. With poisson/ramp the producer groups consecutive arrivals "
        "into jobs; latency counts from the FIRST item's scheduled arrival, so batching "
        "cannot hide waiting.",
    )
    repeats: RepeatsOrAuto = Field(
        default=1,
        description="Runs of each configuration (for intervals). auto: racing, as many as it "
        "takes to tell a configuration from the best, up to max_repeats (with search "
        "adaptive, a number is where racing starts).",
    )
    max_repeats: Repeats = Field(
        default=5, description="Racing: most runs of one configuration (repeats auto, adaptive)."
    )
    search: Search = Field(
        default_factory=GridSearch,
        description="grid: every combination (the default); adaptive: start from the grid and "
        "measure where the answer lies, within budget_trials / budget_s.",
    )
    trial_timeout_s: Timeout = Field(
        default=120.0, description="A trial not drained by then is stopped, marked timed out."
    )
    quick: Quick | None = Field(default=None, description="The small grid `--quick` runs.")

    @property
    def auto_limit(self) -> AutoLimit:
        """The settings of `num_workers: auto` (the defaults when given as the bare string)."""
        found = [v.auto for v in self.num_workers if isinstance(v, AutoWorkers)]
        return found[0] if found else AutoLimit()

    @property
    def autoscale(self) -> Autoscale:
        """The settings of `instances: autoscale` (the defaults when given as the bare string)."""
        found = [v.autoscale for v in self.instances if isinstance(v, AutoscaleInstances)]
        return found[0] if found else Autoscale()

    @property
    def most_slots(self) -> tuple[int, int]:
        """The most num_workers and instances a trial may run (a dynamic entry: its max)."""
        nw = [v for v in self.num_workers if isinstance(v, int)]
        inst = [v for v in self.instances if isinstance(v, int)]
        nw += [self.auto_limit.max] if len(nw) < len(self.num_workers) else []
        inst += [self.autoscale.max] if len(inst) < len(self.instances) else []
        return max(nw), max(inst)

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

    p99_latency_ms: Annotated[float, Field(gt=0, le=L.SLO_MS_MAX)] | None = Field(
        default=None, description="Ceiling on p99 item latency, in ms; null = no latency SLO."
    )
    max_error_rate: Fraction = Field(
        default=0.01, description="Ceiling on the fraction of items that fail for good."
    )


class Objective(_Strict):
    """How configurations are ranked."""

    maximize: Literal["items_per_s", "jobs_per_s"] = Field(
        default="items_per_s", description="The figure to maximize (backlog: min makespan)."
    )
    slo: Slo = Field(default_factory=Slo, description="Limits a recommendation must meet.")
    prefer: Annotated[
        tuple[Preference, ...], Field(max_length=4, strict=False), AfterValidator(_unique)
    ] = Field(
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

    name: Name = Field(
        description="Letters, digits, _ . - only, not starting with . or -, at most "
        f"{L.NAME_CHARS_MAX} characters: it names the results folder."
    )
    description: Annotated[str, Field(max_length=L.TEXT_CHARS_MAX)] = Field(
        default="", description="What this scenario is about."
    )
    seed: Annotated[int, Field(ge=0, le=L.SEED_MAX)] = Field(
        default=0, description="Seed of the trials' random draws."
    )
    broker: Broker = Field(default_factory=Broker, description="Where the job queue lives.")
    services: Annotated[
        dict[Name, Service], Field(max_length=L.SERVICES_MAX), why(L.SERVICES_WHY)
    ] = Field(
        min_length=1,
        description="Services by name (at least one; names as for `name`): mocks (kind "
        "opensearch, http_api, database; see lab.mocks.spec) or real ones (kind external; "
        "see lab.external).",
    )
    workload: Workload = Field(description="The job, its service and how items arrive.")
    workers: Workers = Field(default_factory=Workers, description="Where the job slots run.")
    cluster: Cluster | None = Field(
        default=None, description="A Ray cluster to place trials on; null = this host only."
    )
    sweep: Sweep = Field(default_factory=Sweep, description="The configurations to try.")
    objective: Objective = Field(default_factory=Objective, description="What best means.")
    faults: tuple[Fault, ...] = Field(
        default=(),
        max_length=L.FAULTS_MAX,
        strict=False,
        description="Faults injected into every trial (kill, stall, restart, pause), each at "
        "its at_s; see lab.scenario.faults.",
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> Scenario:
        problems: list[tuple[Loc, str]] = []
        job, name, quick = self.workload.job, self.workload.service, self.sweep.quick or Quick()
        if name not in self.services:
            known = f"{hint(name, self.services)}; known: {', '.join(sorted(self.services))}"
            problems.append((("workload", "service"), f"unknown service {name!r}{known}"))
        elif (need := job_type(job).service_kind) and speaks(self.services[name]) != need:
            kind = speaks(self.services[name])
            problems.append((("workload", "job"), f"{job} needs an {need} service, not {kind}"))
        autoscaled = any(not isinstance(v, int) for v in self.sweep.instances)
        if autoscaled and COLOCATED in self.workers.placements:
            problems.append(
                (("sweep", "instances"), "autoscale needs workers.placement separate: co-located "
                 "instances are the web app's processes")
            )  # fmt: skip
        if self.cluster is not None and "colocated" in self.workers.placements:
            problems.append(
                (("workers", "placement"), "colocated slots run in the web app on this host; "
                 "with a cluster use separate")
            )  # fmt: skip
        if self.cluster is not None:
            problems += [
                (("faults", i, "restart"), "restarting a mock service is for this host only, "
                 "not with a cluster")
                for i, f in enumerate(self.faults)
                if f.restart
            ]  # fmt: skip
        problems += fault_problems(
            self.faults,
            self.services,
            broker_url=self.broker.url,
            timeout_s=self.sweep.trial_timeout_s,
        )
        problems += [
            (("faults", i, "name"), f"{f.name!r} is a real service (kind external): the lab "
             "starts and stops only its mocks")
            for i, f in enumerate(self.faults)
            if isinstance(self.services.get(f.name or ""), ExternalService)
        ]  # fmt: skip
        if autoscaled and self.cluster is not None:
            problems.append(
                (("sweep", "instances"), "autoscale starts and stops worker processes on this "
                 "host; with a cluster list instance counts")
            )  # fmt: skip
        problems += _dynamic_external_problems(self)
        dynamic = any(
            not isinstance(v, int) for v in (*self.sweep.num_workers, *self.sweep.instances)
        )
        if dynamic and self.sweep.racing:
            problems.append(
                (("sweep",), "auto or autoscale runs as listed: with it use a number of repeats "
                 "and search kind grid (racing and the adaptive search step integer axes)")
            )  # fmt: skip
        if isinstance(self.workload.arrival, Backlog) and quick.duration_s is not None:
            problems.append(
                (("sweep", "quick", "duration_s"), "poisson/ramp only; for a backlog use items")
            )
        elif not isinstance(self.workload.arrival, Backlog) and quick.items is not None:
            problems.append(
                (("sweep", "quick", "items"), "a backlog only; for arrivals use duration_s")
            )
        problems += _grid_problems(self, ("sweep",))
        if not problems and self.sweep.quick is not None:
            problems += _grid_problems(self.quick_variant(), ("sweep", "quick"))
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
            a = w.arrival
            duration_s = q.duration_s or min(a.duration_s, QUICK_DURATION_MAX_S)
            shorter = (
                a.scaled_to(duration_s)
                if isinstance(a, Step | Bursts)
                else a.model_copy(update={"duration_s": duration_s})
            )
            workload = {"arrival": shorter}
        return self.model_copy(
            update={"sweep": s.model_copy(update=sweep), "workload": w.model_copy(update=workload)}
        )


def _dynamic_external_problems(s: Scenario) -> list[tuple[Loc, str]]:
    """A dynamic entry beside an external service must fit its caps at its max: the sweep clips
    fixed counts before a trial, but cannot clip counts that change during one."""
    caps = [v for v in s.services.values() if isinstance(v, ExternalService)]
    sw = s.sweep
    dynamic = [not isinstance(v, int) for v in (*sw.num_workers, *sw.instances)]
    if not caps or not any(dynamic):
        return []
    slots = min(c.max_in_flight for c in caps)
    per_s = min(c.max_requests_per_s for c in caps)
    nw, inst = sw.most_slots
    problems: list[tuple[Loc, str]] = []
    if nw * inst > slots:
        problems.append(
            (("sweep",), f"a dynamic entry may reach {nw} x {inst} slots, over an external "
             f"service's max_in_flight {slots}: lower its max")
        )  # fmt: skip
    if any(not isinstance(v, int) for v in sw.instances) and sw.autoscale.max > max(1, per_s):
        problems.append(
            (("sweep", "instances"), f"autoscale's max {sw.autoscale.max} is over an external "
             f"service's max_requests_per_s {per_s:g} (each instance paces at least 1/s)")
        )  # fmt: skip
    return problems


def _grid_problems(s: Scenario, loc: Loc) -> list[tuple[Loc, str]]:
    """What one machine cannot run: too many trials, too much concurrency, too many items."""
    sw, problems = s.sweep, []
    sizes = (len(sw.num_workers), len(sw.instances), len(sw.batch_size), sw.first_repeats)
    trials = math.prod(sizes) * len(s.workers.placements)
    if trials > L.TRIALS_MAX:
        shape = (
            " x ".join(map(str, sizes))
            + " repeats"
            + (
                f" x {len(s.workers.placements)} placements"
                if len(s.workers.placements) > 1
                else ""
            )
        )
        problems.append(
            (loc, f"{trials:,} trials ({shape}); at most {L.TRIALS_MAX:,} ({L.TRIALS_WHY})")
        )
    most_nw, most_inst = sw.most_slots
    concurrency = most_nw * most_inst
    if concurrency > L.CONCURRENCY_MAX:
        problems.append(
            (
                (*loc, "num_workers"),
                f"num_workers {most_nw} x instances {most_inst} = "
                f"{concurrency:,} slots; at most {L.CONCURRENCY_MAX:,} ({L.CONCURRENCY_WHY})",
            )
        )
    a = s.workload.arrival
    if isinstance(a, LocustArrival):
        items = s.workload.expected_items * max(sw.batch_size)
        if items > L.ITEMS_MAX:
            problems.append(
                (
                    ("workload", "arrival"),
                    f"Locust would make ~{items:,} items at batch_size {max(sw.batch_size)}; "
                    f"at most {L.ITEMS_MAX:,} ({L.ITEMS_WHY})",
                )
            )
    return problems


def _ends_and_middle(axis: tuple[Any, ...]) -> tuple[Any, ...]:
    """The smallest, middle and largest integer, and the dynamic entry if there is one."""
    ordered = sorted(v for v in axis if isinstance(v, int))
    ends = sorted({ordered[0], ordered[len(ordered) // 2], ordered[-1]}) if ordered else []
    return (*ends, *(v for v in axis if not isinstance(v, int)))


def scenario_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a scenario file, with every field's description."""
    return {
        **Scenario.model_json_schema(),
        "$schema": "https://json-schema.org/draft/2020-12/schema",
    }


def load_scenario(path: str | Path, *, check_job: bool = True) -> Scenario:
    """Read and validate a scenario file; ConfigError (one line per problem) if it is wrong.

    Validation runs no user code: a user job's module is only looked up (importlib's finders,
    no import); `check_job=False` skips even that (to read a run made elsewhere). The sweep
    imports it, with `import_job`, only when it really runs trials.
    """
    scenario, node = load_yaml_model(path, Scenario, what="scenario")
    job = scenario.workload.job
    if check_job and job not in BUILTINS:
        module = job.partition(":")[0]
        if find_job_module(module) is None:
            at = f"{path}:{line_of(node, ('workload', 'job'))}: workload.job"
            raise ConfigError(
                f"{at}: no module {module!r} can be found (on sys.path, PYTHONPATH or installed); "
                "check its spelling, or install the package that holds it"
            )
    return scenario


def import_job(scenario: Scenario, where: str | Path) -> None:
    """Import the scenario's job handler now (the sweep, just before running trials); a user's
    module that fails on import or lacks the function is a ConfigError naming the field."""
    at = f"{where}: workload.job"
    try:
        resolve(scenario.workload.job)
    except ConfigError as exc:
        raise ConfigError(f"{at}: {exc}") from None
    except Exception as exc:  # the user's module failed on import: their error, not ours
        reason = f"{type(exc).__name__}: {exc}"[:300]
        raise ConfigError(f"{at}: importing it failed: {reason}") from None


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
