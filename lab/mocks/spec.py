"""The load model's parameters: `ServiceSpec` is the type of a scenario's `services.<name>`.

The field names are a user-facing contract: rename nothing, add with defaults.
Every model forbids unknown keys, so a typo is an error, not a silently ignored setting.
Realistic ranges cited in the descriptions come from `docs/services-under-load.md`.
"""

from __future__ import annotations

import json
import math
from statistics import NormalDist
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from lab import limits as L
from lab.errors import ConfigError
from lab.external import ExternalService
from lab.strict import Strict, validate, why

Kind = Literal["opensearch", "http_api", "database"]
KINDS: tuple[Kind, ...] = ("opensearch", "http_api", "database")

Z_P99 = NormalDist().inv_cdf(0.99)  # 2.326...: lognormal sigma = ln(p99 / median) / Z_P99

_Strict = Strict  # the lab's one strict base: unknown keys, coercions, inf and NaN are errors

# Bounded, finite numbers (lab.limits says why each bound is what it is).
Ms = Annotated[float, Field(ge=0, le=L.LATENCY_MS_MAX), why(L.LATENCY_WHY)]
PosMs = Annotated[float, Field(gt=0, le=L.LATENCY_MS_MAX), why(L.LATENCY_WHY)]
Seconds = Annotated[float, Field(ge=0, le=L.WINDOW_S_MAX)]
PosSeconds = Annotated[float, Field(gt=0, le=L.WINDOW_S_MAX)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class ConstantLatency(_Strict):
    """Every request takes the same time: useful for overhead checks, unrealistic otherwise."""

    dist: Literal["constant"] = "constant"
    ms: Ms = Field(description="Service time of every request, in milliseconds.")


class ExponentialLatency(_Strict):
    """The M/M/c textbook shape: handy for analytic checks, too light-tailed for realism."""

    dist: Literal["exponential"] = "exponential"
    mean_ms: PosMs = Field(description="Mean service time, in milliseconds.")


class LognormalLatency(_Strict):
    """The usual fit for server response times, given by two percentiles users can read."""

    dist: Literal["lognormal"] = "lognormal"
    median_ms: PosMs = Field(description="Median (p50) service time, in milliseconds.")
    p99_ms: PosMs = Field(
        description="99th percentile service time, in milliseconds; at least median_ms."
    )

    @model_validator(mode="after")
    def _p99_above_median(self) -> LognormalLatency:
        if self.p99_ms < self.median_ms:
            raise ValueError(f"p99_ms ({self.p99_ms}) must be >= median_ms ({self.median_ms})")
        # the mean is median * exp(sigma^2 / 2): a wide ratio makes it overflow a float
        sigma = math.log(self.p99_ms / self.median_ms) / Z_P99
        log_mean = math.log(self.median_ms) + sigma * sigma / 2
        if log_mean > math.log(L.LATENCY_MS_MAX):
            raise ValueError(
                f"p99_ms / median_ms = {self.p99_ms / self.median_ms:.3g} is too wide: the mean "
                f"service time would be e^{log_mean:.1f} ms, over {L.LATENCY_MS_MAX:,.0f} ms "
                f"({L.LATENCY_WHY}); bring p99_ms closer to median_ms"
            )
        return self


class ParetoLatency(_Strict):
    """A heavy tail, x_min * U^(-1/alpha): median = min_ms * 2^(1/alpha), p99 = 100^(1/alpha)x."""

    dist: Literal["pareto"] = "pareto"
    min_ms: PosMs = Field(description="Scale: the smallest service time, in milliseconds.")
    alpha: Annotated[float, Field(ge=L.PARETO_ALPHA_MIN, le=100), why(L.PARETO_ALPHA_WHY)] = Field(
        description="Tail index: smaller is heavier; below 2 the variance is infinite, at or "
        "below 1 the mean too (then give max_ms)."
    )
    max_ms: PosMs | None = Field(
        default=None, description="Optional cap on one draw, in milliseconds."
    )

    @model_validator(mode="after")
    def _finite_mean(self) -> ParetoLatency:
        if self.alpha <= 1 and self.max_ms is None:
            raise ValueError(
                f"alpha {self.alpha:g} <= 1 has an infinite mean service time: give max_ms"
            )
        return self


SimpleLatency = Annotated[
    ConstantLatency | ExponentialLatency | LognormalLatency | ParetoLatency,
    Field(discriminator="dist"),
]


class BimodalLatency(_Strict):
    """A fast path and a slow path (cache hit/miss): each a constant or a nested distribution."""

    dist: Literal["bimodal"] = "bimodal"
    hit_ratio: Fraction = Field(description="Fraction of requests on the fast path.")
    hit_ms: Ms | None = Field(
        default=None, description="Constant fast-path time in ms (or give `hit`)."
    )
    miss_ms: Ms | None = Field(
        default=None, description="Constant slow-path time in ms (or give `miss`)."
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

    per_s: Annotated[float, Field(gt=0, le=L.RATE_LIMIT_MAX)] = Field(
        description="Steady refill rate, in requests per second."
    )
    burst: Annotated[int, Field(ge=1, le=int(L.RATE_LIMIT_MAX))] | None = Field(
        default=None, description="Bucket size in requests; default: per_s rounded up."
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

    start_s: Seconds = Field(description="Start, in seconds after the mock's epoch.")
    duration_s: PosSeconds = Field(description="Length of the window, in seconds.")
    every_s: PosSeconds | None = Field(
        default=None, description="Repeat period in seconds; None means once."
    )
    latency_x: Annotated[float, Field(gt=0, le=L.LATENCY_X_MAX)] = Field(
        default=1.0, description="Multiplier on service time during the window."
    )
    error_rate: Fraction | None = Field(
        default=None, description="Error rate during the window; None keeps the base."
    )

    @model_validator(mode="after")
    def _fits_period(self) -> Brownout:
        if self.every_s is not None and self.duration_s > self.every_s:
            raise ValueError(f"duration_s ({self.duration_s}) must be <= every_s ({self.every_s})")
        return self


class ServiceSpec(_Strict):
    """One mock service and its load model: capacity, queue, latency, limits and failures."""

    kind: Kind = Field(description="Which protocol the mock speaks.")
    capacity: Annotated[int, Field(ge=1, le=L.CAPACITY_MAX), why(L.CAPACITY_WHY)] = Field(
        default=8,
        description="Requests served at once, like a write thread pool (OpenSearch: one per core).",
    )
    queue: Annotated[int, Field(ge=0, le=L.QUEUE_MAX)] = Field(
        default=200,
        description="Requests that may wait for a free slot (FIFO); beyond it: 429. "
        "0 = busy means 429 at once. OpenSearch write queue: 200 on many managed domains.",
    )
    latency: Latency = Field(
        default_factory=lambda: LognormalLatency(median_ms=5.0, p99_ms=40.0),
        description="Distribution of one request's service time (queue wait excluded).",
    )
    per_item_ms: Annotated[float, Field(ge=0, le=L.PER_ITEM_MS_MAX)] = Field(
        default=0.0,
        description="Extra service time per item of a request (documents in a bulk); "
        "real OpenSearch: ~0.03-0.25 ms per small document.",
    )
    shards: Annotated[int, Field(ge=1, le=L.SHARDS_MAX)] = Field(
        default=1,
        description="opensearch only: primary shards; a bulk is split per shard and each part "
        "is admitted or rejected on its own, as on a real node.",
    )
    rate_limit: RateLimit | None = Field(
        default=None, description="Token bucket; when empty: 429 with Retry-After."
    )
    error_rate: Fraction = Field(
        default=0.0, description="Probability that a served request fails with 5xx."
    )
    error_status: Annotated[int, Field(ge=500, le=599)] = Field(
        default=500, description="HTTP status of an injected error."
    )
    brownouts: Annotated[
        list[Brownout], Field(max_length=L.BROWNOUTS_MAX), why(L.BROWNOUTS_WHY)
    ] = Field(
        default_factory=list, description="Slow or failing windows, timed from the mock's epoch."
    )
    connection_limit: Annotated[int, Field(ge=1, le=L.CONNECTIONS_MAX)] | None = Field(
        default=None,
        description="Most TCP connections held at once (Postgres max_connections: 100); "
        "None = unlimited.",
    )
    connection_overflow: Literal["refuse", "wait"] = Field(
        default="refuse",
        description="A connection past the limit: refuse (503, like Postgres FATAL 53300) or "
        "wait until a held connection closes (like a session pooler).",
    )
    connection_wait_timeout_ms: PosMs | None = Field(
        default=None, description="wait mode: give up (503) after this long; None = never."
    )
    seed: Annotated[int, Field(ge=0, le=L.SPEC_SEED_MAX)] = Field(
        default=0, description="Seed of every random draw, so a trial can be repeated."
    )
    stats_interval_ms: Annotated[
        float,
        Field(ge=L.STATS_INTERVAL_MS_MIN, le=L.STATS_INTERVAL_MS_MAX),
        why(L.STATS_INTERVAL_WHY),
    ] = Field(default=100.0, description="Sampling period of the in-flight/queue time series.")
    samples_cap: Annotated[int, Field(ge=1, le=L.SAMPLES_CAP_MAX)] = Field(
        default=10_000, description="Service-time samples kept (a uniform reservoir)."
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


def spec_from_json(text: str | bytes, *, where: str = "--spec-json") -> ServiceSpec:
    """Parse `spec_to_json` output (or any JSON object); ConfigError names the bad key."""
    return parse_spec(json_object(text, where=where), where=where)


def json_object(text: str | bytes, *, where: str) -> dict[str, Any]:
    """A JSON object of at most SPEC_BYTES_MAX; one ConfigError for anything else."""
    if len(text) > L.SPEC_BYTES_MAX:
        raise ConfigError(f"{where}: larger than {L.SPEC_BYTES_MAX // 1024} KiB; a spec is small")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, 5,000-digit ints, [[[...
        raise ConfigError(f"{where}: not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    return data


def parse_spec(data: Any, *, where: str = "service") -> ServiceSpec:
    """Validate a mapping into a ServiceSpec; one ConfigError listing every problem, worded as
    a scenario's are (`lab.strict`)."""
    return validate(ServiceSpec, data, where=where)
