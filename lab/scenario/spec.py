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

from pydantic import AfterValidator, Field, field_validator, model_validator

from lab import limits as L
from lab.errors import ConfigError
from lab.external import ExternalService, speaks
from lab.infra.broker import redact_url
from lab.mocks.spec import ServiceSpec
from lab.runtime.jobs import BUILTINS, find_job_module, job_type, resolve
from lab.runtime.retry import DEFAULT_JOB_TIMEOUT_S, DEFAULT_RETRY, AfterFloor, RetryPolicy
from lab.scenario.faults import Fault, fault_problems
from lab.scenario.loader import line_of, load_yaml_model
from lab.strict import Loc, Problems, Strict, hint, show, why

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
# or a 3), finite, and bounded by what one machine can run (lab.limits, reason in the message).
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
NumWorkersAxis = Annotated[tuple[NumWorkers, ...], _AXIS, AfterValidator(_unique)]
InstancesAxis = Annotated[tuple[Instances, ...], _AXIS, AfterValidator(_unique)]
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
    address: str = Field(
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


Arrival = Annotated[Backlog | Poisson | Ramp | LocustArrival, Field(discriminator="kind")]

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
        description="How items arrive: backlog (all at once), or open-loop poisson or ramp.",
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
        default=None, description=f"Default: {_AUTO}num_workers."
    )
    instances: InstancesAxis | None = Field(default=None, description=f"Default: {_AUTO}instances.")
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


class Sweep(_Strict):
    """The grid: every combination of the three axes is one trial, run `repeats` times."""

    num_workers: NumWorkersAxis = Field(
        default=(1,), description="Async job slots per worker process."
    )
    instances: InstancesAxis = Field(default=(1,), description="Worker processes.")
    batch_size: BatchSizeAxis = Field(
        default=(1,),
        description="Items per job. With poisson/ramp the producer groups consecutive arrivals "
        "into jobs; latency counts from the FIRST item's scheduled arrival, so batching "
        "cannot hide waiting.",
    )
    repeats: Repeats = Field(default=1, description="Runs of each configuration (for intervals).")
    trial_timeout_s: Timeout = Field(
        default=120.0, description="A trial not drained by then is stopped, marked timed out."
    )
    quick: Quick | None = Field(default=None, description="The small grid `--quick` runs.")


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
            duration_s = q.duration_s or min(w.arrival.duration_s, QUICK_DURATION_MAX_S)
            workload = {"arrival": w.arrival.model_copy(update={"duration_s": duration_s})}
        return self.model_copy(
            update={"sweep": s.model_copy(update=sweep), "workload": w.model_copy(update=workload)}
        )


def _grid_problems(s: Scenario, loc: Loc) -> list[tuple[Loc, str]]:
    """What one machine cannot run: too many trials, too much concurrency, too many items."""
    sw, problems = s.sweep, []
    sizes = (len(sw.num_workers), len(sw.instances), len(sw.batch_size), sw.repeats)
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
    concurrency = max(sw.num_workers) * max(sw.instances)
    if concurrency > L.CONCURRENCY_MAX:
        problems.append(
            (
                (*loc, "num_workers"),
                f"num_workers {max(sw.num_workers)} x instances {max(sw.instances)} = "
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


def _ends_and_middle(axis: tuple[int, ...]) -> tuple[int, ...]:
    ordered = sorted(axis)
    return tuple(sorted({ordered[0], ordered[len(ordered) // 2], ordered[-1]}))


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
