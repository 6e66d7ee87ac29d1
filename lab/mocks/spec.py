"""The load model's parameters: `ServiceSpec` is the type of a scenario's `services.<name>`.

The field names are a user-facing contract: rename nothing, add with defaults.
Every model forbids unknown keys, so a typo is an error, not a silently ignored setting.
Realistic ranges cited in the descriptions come from `docs/services-under-load.md`.
"""

from __future__ import annotations

import difflib
import json
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lab.errors import ConfigError
from lab.external import ExternalService

Kind = Literal["opensearch", "http_api", "database"]
KINDS: tuple[Kind, ...] = ("opensearch", "http_api", "database")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConstantLatency(_Strict):
    """Every request takes the same time: useful for overhead checks, unrealistic otherwise."""

    dist: Literal["constant"] = "constant"
    ms: float = Field(ge=0, description="Service time of every request, in milliseconds.")


class ExponentialLatency(_Strict):
    """The M/M/c textbook shape: handy for analytic checks, too light-tailed for realism."""

    dist: Literal["exponential"] = "exponential"
    mean_ms: float = Field(gt=0, description="Mean service time, in milliseconds.")


class LognormalLatency(_Strict):
    """The usual fit for server response times, given by two percentiles users can read."""

    dist: Literal["lognormal"] = "lognormal"
    median_ms: float = Field(gt=0, description="Median (p50) service time, in milliseconds.")
    p99_ms: float = Field(
        gt=0, description="99th percentile service time, in milliseconds; at least median_ms."
    )

    @model_validator(mode="after")
    def _p99_above_median(self) -> LognormalLatency:
        if self.p99_ms < self.median_ms:
            raise ValueError(f"p99_ms ({self.p99_ms}) must be >= median_ms ({self.median_ms})")
        return self


class ParetoLatency(_Strict):
    """A heavy tail, x_min * U^(-1/alpha): median = min_ms * 2^(1/alpha), p99 = 100^(1/alpha)x."""

    dist: Literal["pareto"] = "pareto"
    min_ms: float = Field(gt=0, description="Scale: the smallest service time, in milliseconds.")
    alpha: float = Field(
        gt=0, description="Tail index: smaller is heavier; below 2 the variance is infinite."
    )
    max_ms: float | None = Field(
        default=None, gt=0, description="Optional cap on one draw, in milliseconds."
    )


SimpleLatency = Annotated[
    ConstantLatency | ExponentialLatency | LognormalLatency | ParetoLatency,
    Field(discriminator="dist"),
]


class BimodalLatency(_Strict):
    """A fast path and a slow path (cache hit/miss): each a constant or a nested distribution."""

    dist: Literal["bimodal"] = "bimodal"
    hit_ratio: float = Field(ge=0, le=1, description="Fraction of requests on the fast path.")
    hit_ms: float | None = Field(
        default=None, ge=0, description="Constant fast-path time in ms (or give `hit`)."
    )
    miss_ms: float | None = Field(
        default=None, ge=0, description="Constant slow-path time in ms (or give `miss`)."
    )
    hit: SimpleLatency | None = Field(
        default=None, description="Fast-path distribution (instead of hit_ms)."
    )
    miss: SimpleLatency | None = Field(
        default=None, description="Slow-path distribution (instead of miss_ms)."
    )

    @model_validator(mode="after")
    def _one_of_each(self) -> BimodalLatency:
        for name in ("hit", "miss"):
            given = [k for k in (f"{name}_ms", name) if getattr(self, k) is not None]
            if len(given) != 1:
                raise ValueError(f"give exactly one of {name}_ms or {name}, got {given or 'none'}")
        return self


Latency = Annotated[
    ConstantLatency | ExponentialLatency | LognormalLatency | ParetoLatency | BimodalLatency,
    Field(discriminator="dist"),
]


class RateLimit(_Strict):
    """A token bucket shared by every client (limits are per account, not per worker)."""

    per_s: float = Field(gt=0, description="Steady refill rate, in requests per second.")
    burst: int | None = Field(
        default=None, ge=1, description="Bucket size in requests; default: per_s rounded up."
    )
    retry_after: bool = Field(
        default=True,
        description="Send Retry-After (whole seconds until a token) with the 429; false: none, "
        "as nginx's limit_req answers.",
    )

    @property
    def burst_requests(self) -> int:
        return self.burst if self.burst is not None else max(1, int(-(-self.per_s // 1)))


class Brownout(_Strict):
    """A window where the service is slow and/or failing, optionally repeating."""

    start_s: float = Field(ge=0, description="Start, in seconds after the mock's epoch.")
    duration_s: float = Field(gt=0, description="Length of the window, in seconds.")
    every_s: float | None = Field(
        default=None, gt=0, description="Repeat period in seconds; None means once."
    )
    latency_x: float = Field(
        default=1.0, gt=0, description="Multiplier on service time during the window."
    )
    error_rate: float | None = Field(
        default=None, ge=0, le=1, description="Error rate during the window; None keeps the base."
    )

    @model_validator(mode="after")
    def _fits_period(self) -> Brownout:
        if self.every_s is not None and self.duration_s > self.every_s:
            raise ValueError(f"duration_s ({self.duration_s}) must be <= every_s ({self.every_s})")
        return self


class ServiceSpec(_Strict):
    """One mock service and its load model: capacity, queue, latency, limits and failures."""

    kind: Kind = Field(description="Which protocol the mock speaks.")
    capacity: int = Field(
        default=8,
        ge=1,
        description="Requests served at once, like a write thread pool (OpenSearch: one per core).",
    )
    queue: int = Field(
        default=200,
        ge=0,
        description="Requests that may wait for a free slot (FIFO); beyond it: 429. "
        "0 = busy means 429 at once. OpenSearch write queue: 200 on many managed domains.",
    )
    latency: Latency = Field(
        default_factory=lambda: LognormalLatency(median_ms=5.0, p99_ms=40.0),
        description="Distribution of one request's service time (queue wait excluded).",
    )
    per_item_ms: float = Field(
        default=0.0,
        ge=0,
        description="Extra service time per item of a request (documents in a bulk); "
        "real OpenSearch: ~0.03-0.25 ms per small document.",
    )
    shards: int = Field(
        default=1,
        ge=1,
        description="opensearch only: primary shards; a bulk is split per shard and each part "
        "is admitted or rejected on its own, as on a real node.",
    )
    rate_limit: RateLimit | None = Field(
        default=None, description="Token bucket; when empty: 429 with Retry-After."
    )
    error_rate: float = Field(
        default=0.0, ge=0, le=1, description="Probability that a served request fails with 5xx."
    )
    error_status: int = Field(
        default=500, ge=500, le=599, description="HTTP status of an injected error."
    )
    brownouts: list[Brownout] = Field(
        default_factory=list, description="Slow or failing windows, timed from the mock's epoch."
    )
    connection_limit: int | None = Field(
        default=None,
        ge=1,
        description="Most TCP connections held at once (Postgres max_connections: 100); "
        "None = unlimited.",
    )
    connection_overflow: Literal["refuse", "wait"] = Field(
        default="refuse",
        description="A connection past the limit: refuse (503, like Postgres FATAL 53300) or "
        "wait until a held connection closes (like a session pooler).",
    )
    connection_wait_timeout_ms: float | None = Field(
        default=None, gt=0, description="wait mode: give up (503) after this long; None = never."
    )
    seed: int = Field(
        default=0, description="Seed of every random draw, so a trial can be repeated."
    )
    stats_interval_ms: float = Field(
        default=100.0, gt=0, description="Sampling period of the in-flight/queue time series."
    )
    samples_cap: int = Field(
        default=10_000, ge=1, description="Service-time samples kept (a uniform reservoir)."
    )
    calibrated_from: ExternalService | None = Field(
        default=None,
        description="The real service this mock was fitted to (written by python -m "
        "lab.calibrate); `python -m lab.sweep --verify` reruns the best configurations on it.",
    )

    @model_validator(mode="after")
    def _kind_specific(self) -> ServiceSpec:
        if self.shards != 1 and self.kind != "opensearch":
            raise ValueError(f"shards applies only to kind opensearch, not {self.kind}")
        if self.connection_wait_timeout_ms is not None and self.connection_overflow != "wait":
            raise ValueError("connection_wait_timeout_ms needs connection_overflow: wait")
        return self


def spec_to_json(spec: ServiceSpec) -> str:
    """The spec as compact JSON with sorted keys, e.g. for `--spec-json` in a child process."""
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def spec_from_json(text: str, *, where: str = "--spec-json") -> ServiceSpec:
    """Parse `spec_to_json` output (or any JSON object); ConfigError names the bad key."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON: {exc}") from None
    return parse_spec(data, where=where)


def parse_spec(data: Any, *, where: str = "service") -> ServiceSpec:
    """Validate a mapping into a ServiceSpec; one ConfigError listing every problem."""
    try:
        return ServiceSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: " + "; ".join(_describe(e) for e in exc.errors())) from None


def _describe(error: Any) -> str:
    path = ".".join(str(p) for p in error["loc"])
    if error["type"] == "missing":
        return f"{path}: required"
    if error["type"] == "extra_forbidden":
        known = _known_keys(error["loc"][:-1])
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(known)}"
        return f"{path}: unknown key, {hint}"
    msg = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "value_error":
        return f"{path}: {msg}" if path else msg
    return f"{path}: {msg}, got {error.get('input')!r}"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at `loc`, for the did-you-mean hint."""
    models: list[type[BaseModel]] = [ServiceSpec]
    for part in loc:
        if isinstance(part, int):
            continue  # a list index
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        if fields:
            models = _models_in(fields[0].annotation)
        else:  # a discriminated-union tag such as "lognormal" names the member
            models = [
                m
                for m in models
                if m.model_fields.get("dist", None) is not None
                and m.model_fields["dist"].default == part
            ] or models
    return sorted({name for m in models for name in m.model_fields})
