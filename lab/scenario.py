"""The scenario: what to run, against which mock services, and what "best" means.

A scenario file is a user-facing contract (design.md): field names are stable and new fields
come only with defaults. Loading is strict on purpose: an unknown key is an error with a
did-you-mean, never a silently ignored setting, and every error names the file, the YAML line,
the field path, the bad value and what is allowed, all in ONE `ConfigError` (exit code 2).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sized
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from lab.errors import ConfigError
from lab.mocks.spec import ServiceSpec
from lab.runtime.jobs import BUILTINS, resolve
from lab.runtime.retry import RetryPolicy

QUICK_ITEMS_MAX = 500  # automatic --quick: a backlog of at most this many items
QUICK_DURATION_MAX_S = 5.0  # automatic --quick: arrivals for at most this long
_AUTO = "the smallest, middle and largest value of sweep."
SLUG = r"^[A-Za-z0-9_.-]+$"
_USER_JOB = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
Loc = tuple[str | int, ...]
T = TypeVar("T")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Problems(ValueError):
    """Cross-field problems, each at a path relative to the model that found them."""

    def __init__(self, *problems: tuple[Loc, str]) -> None:
        super().__init__("; ".join(f"{_dotted(loc)}: {msg}" for loc, msg in problems))
        self.problems = problems


def _unique(values: tuple[T, ...]) -> tuple[T, ...]:
    first: dict[T, int] = {}
    dupes = [i for i, v in enumerate(values) if first.setdefault(v, i) != i]
    if dupes:
        raise _Problems(
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


Arrival = Annotated[Backlog | Poisson | Ramp, Field(discriminator="kind")]


class Retry(_Strict):
    """How a failed attempt is retried: see lab.runtime.retry.RetryPolicy."""

    max_attempts: PosInt = Field(default=5, description="Attempts before dead-lettering.")
    backoff_ms: NonNegFloat = Field(default=50.0, description="First backoff in ms; doubles.")
    max_backoff_ms: NonNegFloat = Field(default=30_000.0, description="Backoff ceiling, in ms.")
    jitter: Literal["full", "none"] = Field(
        default="full", description="full: wait uniform in [0, backoff]; none: exactly backoff."
    )

    def policy(self) -> RetryPolicy:
        """The runtime's policy with these settings."""
        return RetryPolicy(**self.model_dump())


def _job_name(name: str) -> str:
    if name in BUILTINS or _USER_JOB.fullmatch(name):
        return name  # a user handler is imported by load_scenario, not by the model
    allowed = f"a built-in ({', '.join(sorted(BUILTINS))}) or 'package.module:function'"
    raise ValueError(f"unknown job {name!r}{_hint(name, BUILTINS)}; allowed: {allowed}")


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
    job_timeout_s: PosFloat = Field(default=30.0, description="Time limit of one attempt, in s.")

    @property
    def expected_items(self) -> int:
        """Items one trial produces: the backlog, or mean rate x duration for arrivals."""
        a = self.arrival
        if isinstance(a, Backlog):
            return self.items or 0
        mean_per_s = a.rate_per_s if isinstance(a, Poisson) else (a.from_per_s + a.to_per_s) / 2
        return round(mean_per_s * a.duration_s)

    @model_validator(mode="after")
    def _items_fit_arrival(self) -> Workload:
        backlog = isinstance(self.arrival, Backlog)
        if backlog and self.items is None:
            raise _Problems((("items",), "required for arrival kind backlog (the backlog size)"))
        if not backlog and self.items is not None:
            why = f"the count follows from rate x duration_s (~{self.expected_items})"
            raise _Problems(
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
    repeats: PosInt = Field(default=1, description="Runs of each configuration (for intervals).")
    trial_timeout_s: PosFloat = Field(
        default=120.0, description="A trial not drained by then is stopped, marked timed out."
    )
    quick: Quick | None = Field(default=None, description="The small grid `--quick` runs.")


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
            raise _Problems((("prefer", i), "contradicts smaller_batch_size: keep one"))
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
    sweep: Sweep = Field(default_factory=Sweep, description="The configurations to try.")
    objective: Objective = Field(default_factory=Objective, description="What best means.")

    @model_validator(mode="after")
    def _cross_checks(self) -> Scenario:
        problems: list[tuple[Loc, str]] = []
        job, name, quick = self.workload.job, self.workload.service, self.sweep.quick or Quick()
        if name not in self.services:
            known = f"{_hint(name, self.services)}; known: {', '.join(sorted(self.services))}"
            problems.append((("workload", "service"), f"unknown service {name!r}{known}"))
        elif job.startswith("opensearch.") and self.services[name].kind != "opensearch":
            kind = self.services[name].kind
            problems.append((("workload", "job"), f"{job} needs an opensearch service, not {kind}"))
        if isinstance(self.workload.arrival, Backlog) and quick.duration_s is not None:
            problems.append(
                (("sweep", "quick", "duration_s"), "poisson/ramp only; for a backlog use items")
            )
        elif not isinstance(self.workload.arrival, Backlog) and quick.items is not None:
            problems.append(
                (("sweep", "quick", "items"), "a backlog only; for arrivals use duration_s")
            )
        if problems:
            raise _Problems(*problems)
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


_schema = functools.cache(scenario_json_schema)  # read only: for wording error messages


def load_scenario(path: str | Path, *, resolve_job: bool = True) -> Scenario:
    """Read and validate a scenario file; ConfigError (one line per problem) if it is wrong.

    `resolve_job=False` skips importing a user job module (to read a run made elsewhere).
    """
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read the scenario: {exc}") from None
    node, data = _parse_yaml(text, where)
    if data is None:
        raise ConfigError(f"{where}:1: the file is empty; expected name, services, workload")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        issues = [(rank, _clean(loc, data), msg) for rank, loc, msg in _issues(exc)]
        lines = [(rank, _line(node, loc), f"{_dotted(loc)}: {msg}") for rank, loc, msg in issues]
        lines.sort(key=lambda x: x[:2])  # stable: pydantic's order within a line
        raise ConfigError("\n".join(f"{where}:{line}: {msg}" for _, line, msg in lines)) from None
    if resolve_job:
        at = f"{where}:{_line(node, ('workload', 'job'))}: workload.job"
        try:
            resolve(scenario.workload.job)
        except ConfigError as exc:
            raise ConfigError(f"{at}: {exc}") from None
        except Exception as exc:  # the user's module failed on import: their error, not ours
            raise ConfigError(f"{at}: importing it failed: {type(exc).__name__}: {exc}") from None
    return scenario


def _parse_yaml(text: str, where: str) -> tuple[yaml.Node | None, Any]:
    """Safe YAML (SafeLoader) in one parse: the node tree for line numbers, and the data."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        _no_duplicate_keys(node, where)
        return node, (loader.construct_document(node) if node is not None else None)
    except yaml.MarkedYAMLError as exc:
        mark, ctx = exc.problem_mark or exc.context_mark, exc.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        context = f" ({exc.context} at line {ctx.line + 1})" if exc.context and ctx else ""
        raise ConfigError(f"{where}{at}: invalid YAML: {exc.problem}{context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def _no_duplicate_keys(root: yaml.Node | None, where: str) -> None:
    """YAML keeps the last of two equal keys without a word; a config must not."""
    todo, done = [root], set()
    while todo:
        node = todo.pop()
        if id(node) in done or not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            continue
        done.add(id(node))
        pairs = (
            node.value if isinstance(node, yaml.MappingNode) else [(None, v) for v in node.value]
        )
        first: dict[str, int] = {}
        for key, value in pairs:
            if isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                if key.value in first:
                    msg = f"duplicate key {key.value!r} (first at line {first[key.value]})"
                    raise ConfigError(f"{where}:{line}: {msg}")
                first[key.value] = line
            todo.append(value)


def _issues(exc: ValidationError) -> Iterator[tuple[int, Loc, str]]:
    """(rank, loc, message) per problem; rank 0 first: a misspelt key explains a missing one."""
    for e in exc.errors():
        loc, kind, value, ctx = tuple(e["loc"]), e["type"], e.get("input"), e.get("ctx", {})
        if isinstance(ctx.get("error"), _Problems):
            yield from ((2, loc + sub, msg) for sub, msg in ctx["error"].problems)
        elif kind == "too_short" and isinstance(value, Sized) and len(value) >= ctx["min_length"]:
            continue  # pydantic repeats it after item errors, though the input was long enough
        elif kind == "extra_forbidden":
            known = sorted(_schema_at(loc[:-1]).get("properties", {}))
            hint = _hint(str(loc[-1]), known)
            yield 0, loc, f"unknown key {loc[-1]!r}{hint}; allowed: {', '.join(known)}"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            key, tag = ctx["discriminator"].strip("'"), str(ctx.get("tag", ""))
            tags = list(_schema_at(loc).get("discriminator", {}).get("mapping", {}))
            allowed = f"one of {', '.join(map(repr, tags))}"
            msg = f"unknown {key} {tag!r}{_hint(tag, tags)}; allowed: {allowed}"
            yield 1, (*loc, key), msg if tag else f"required: {allowed}"
        elif kind == "missing":
            yield 3, loc, f"required: {_allowed(_schema_at(loc)) or 'a value'}"
        elif kind == "value_error":
            yield 2, loc, str(e["msg"]).removeprefix("Value error, ")
        else:
            node = _schema_at(loc)
            allowed = _allowed(node)
            said = (
                f"must be {allowed}" if allowed else str(e["msg"]).replace("Input should", "must")
            )
            hint = _hint(value, node.get("enum", [])) if isinstance(value, str) else ""
            yield 2, loc, f"{said}, got {_show(value)}{hint}"


def _hint(value: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show(value: Any) -> str:
    text = json.dumps(value) if value is None or isinstance(value, bool) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _dotted(loc: Loc) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return text or "(top level)"


def _clean(loc: Loc, data: Any) -> Loc:
    """Drop pydantic's union tags and `[key]` markers: the path as the user wrote it."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(data, dict):
            if part not in data and (
                part == "[key]" or part in (data.get("kind"), data.get("dist"))
            ):
                continue  # pydantic names the union member (or the key) it validated
            data = data.get(part)
        else:
            ok = isinstance(data, list) and isinstance(part, int) and part < len(data)
            data = data[part] if ok else None
        out.append(part)
    return tuple(out)


def _line(node: yaml.Node | None, loc: Loc) -> int:
    """1-based line of the node at `loc`, or of the deepest ancestor the file has."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _schema_at(loc: Loc) -> dict[str, Any]:
    """The JSON Schema of the value at a pydantic `loc` ({} when the walk gets lost)."""
    node: dict[str, Any] = _schema()
    for i, part in enumerate(loc):
        node = _deref(node)
        patterns = node.get("patternProperties", {})  # dict[Name, X] gives {SLUG: X}
        extra = next(iter(patterns.values()), node.get("additionalProperties"))
        tags = node.get("discriminator", {}).get("mapping", {})
        if loc[i + 1 : i + 2] == ("[key]",):
            return {"type": "string", "pattern": next(iter(patterns), ".*")}
        if isinstance(part, int) and "items" in node:
            node = node["items"]
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif part in tags:
            node = {"$ref": tags[part]}
        elif isinstance(extra, dict):
            node = extra
        else:
            return {}
    return _deref(node)


def _deref(node: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref`, and unwrap `X | None` into X marked nullable."""
    while True:
        if "$ref" in node:
            target = _schema()["$defs"][node["$ref"].rsplit("/", 1)[-1]]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        elif len(real := [b for b in node.get("anyOf", []) if b != {"type": "null"}]) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            node = {**real[0], **rest, "nullable": True}
        else:
            return node


def _allowed(node: dict[str, Any]) -> str:
    """What a schema accepts, in words: 'an integer >= 1', "one of 'full', 'none'"."""
    kind, text = node.get("type"), ""
    if "discriminator" in node:
        tags = ", ".join(map(repr, node["discriminator"]["mapping"]))
        text = f"a mapping with {node['discriminator']['propertyName']}: one of {tags}"
    elif "enum" in node or "const" in node:
        text = "one of " + ", ".join(map(repr, node.get("enum", [node.get("const")])))
    elif kind in ("integer", "number"):
        ops = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
        bounds = [f"{op} {node[k]:g}" for k, op in ops.items() if k in node]
        if "minimum" in node and "maximum" in node:
            bounds = [f"in [{node['minimum']:g}, {node['maximum']:g}]"]
        text = " ".join(["an integer" if kind == "integer" else "a number", *bounds])
    elif kind == "array":
        items = _allowed(_deref(node.get("items", {})))
        text = ("a non-empty list" if node.get("minItems") else "a list") + f", each {items}"
    elif kind == "string":
        text = "a string" + (f" matching {node['pattern']}" if "pattern" in node else "")
    elif kind == "object":
        required = " with " + ", ".join(node["required"]) if node.get("required") else ""
        text = ("a non-empty mapping" if node.get("minProperties") else "a mapping") + required
    return f"{text} or null" if text and node.get("nullable") else text


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


if __name__ == "__main__":
    sys.exit(main())
