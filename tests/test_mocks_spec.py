"""ServiceSpec: the `services.<name>` contract, its errors, JSON round trip, CLI flags."""

from __future__ import annotations

import pytest

from lab.errors import ConfigError
from lab.mocks import ServiceSpec, parse_spec, spec_from_json, spec_to_json
from lab.mocks.__main__ import build_parser, parse_value, spec_from_args
from lab.mocks.spec import BimodalLatency, LognormalLatency

DESIGN_SKETCH = {
    "kind": "opensearch",
    "capacity": 8,
    "queue": 200,
    "latency": {"dist": "lognormal", "median_ms": 15, "p99_ms": 60},
    "per_item_ms": 0.3,
}
DESIGN_HTTP = {
    "kind": "http_api",
    "capacity": 100,
    "queue": 0,
    "latency": {"dist": "lognormal", "median_ms": 120, "p99_ms": 900},
    "rate_limit": {"per_s": 100, "burst": 100},
    "error_rate": 0.002,
}


@pytest.mark.parametrize("data", [DESIGN_SKETCH, DESIGN_HTTP])
def test_design_examples_validate_and_round_trip(data: dict[str, object]) -> None:
    spec = parse_spec(data)
    assert spec_from_json(spec_to_json(spec)) == spec
    assert ServiceSpec.model_validate_json(spec.model_dump_json()) == spec


def test_defaults_are_a_loaded_service_not_a_constant_one() -> None:
    spec = parse_spec({"kind": "database"})
    assert (spec.capacity, spec.queue) == (8, 200)
    assert spec.latency == LognormalLatency(median_ms=5, p99_ms=40)
    assert spec.rate_limit is None and spec.connection_limit is None


def test_every_field_is_documented() -> None:
    undocumented = [n for n, f in ServiceSpec.model_fields.items() if not f.description]
    assert undocumented == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"kind": "opensearch", "capacty": 3},
            "capacty: unknown key 'capacty' (did you mean 'capacity'?); allowed: brownouts,",
        ),
        (
            {"kind": "http_api", "latency": {"dist": "lognormal", "median_ms": 2, "p99ms": 9}},
            "latency.p99ms: unknown key 'p99ms' (did you mean 'p99_ms'?)",
        ),
        ({"kind": "http_api", "rate_limit": {"per_s": 1, "brust": 2}}, "did you mean 'burst'?"),
        (
            {"kind": "http_api", "capacity": 0},
            "capacity: must be an integer in [1, 1,000,000] (requests one mock process serves "
            "at once), got 0",
        ),
        ({"kind": "ftp"}, "kind: must be one of 'opensearch', 'http_api', 'database', got 'ftp'"),
        (
            {"kind": "http_api", "latency": {"dist": "lognormal", "median_ms": 9, "p99_ms": 2}},
            "p99_ms (2.0) must be >= median_ms (9.0)",
        ),
        (
            {"kind": "http_api", "latency": {"dist": "bimodal", "hit_ratio": 0.9, "hit_ms": 1}},
            "give exactly one of miss_ms or miss",
        ),
        ({"kind": "database", "shards": 2}, "shards applies only to kind opensearch"),
        (
            {"kind": "database", "connection_wait_timeout_ms": 5},
            "connection_wait_timeout_ms needs connection_overflow: wait",
        ),
        (
            {"kind": "http_api", "brownouts": [{"start_s": 0, "duration_s": 5, "every_s": 2}]},
            "duration_s (5.0) must be <= every_s (2.0)",
        ),
    ],
)
def test_bad_specs_name_the_key_and_what_is_allowed(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^svc: ") as info:
        parse_spec(data, where="svc")
    assert message in str(info.value)


def test_bimodal_takes_constants_or_nested_distributions() -> None:
    spec = parse_spec(
        {
            "kind": "http_api",
            "latency": {
                "dist": "bimodal",
                "hit_ratio": 0.9,
                "hit_ms": 2,
                "miss": {"dist": "lognormal", "median_ms": 40, "p99_ms": 200},
            },
        }
    )
    assert isinstance(spec.latency, BimodalLatency)
    assert spec.latency.miss == LognormalLatency(median_ms=40, p99_ms=200)


def test_rate_limit_burst_defaults_to_one_second_of_rate() -> None:
    spec = parse_spec({"kind": "http_api", "rate_limit": {"per_s": 2.5}})
    assert spec.rate_limit is not None and spec.rate_limit.burst_requests == 3


def test_cli_flags_override_spec_json() -> None:
    args = build_parser().parse_args(
        [
            "opensearch",
            "--spec-json",
            spec_to_json(parse_spec(DESIGN_SKETCH)),
            "--capacity",
            "4",
            "--latency",
            "lognormal:median_ms=2,p99_ms=9",
            "--rate-limit",
            "per_s=50,burst=10",
            "--brownouts",
            "start_s=5,duration_s=2,latency_x=4",
            "--brownouts",
            '[{"start_s": 30, "duration_s": 1, "error_rate": 1}]',
            "--connection-overflow",
            "wait",
        ]
    )
    spec = spec_from_args(args)
    assert spec.capacity == 4 and spec.queue == 200 and spec.per_item_ms == 0.3
    assert spec.latency == LognormalLatency(median_ms=2, p99_ms=9)
    assert spec.rate_limit is not None and spec.rate_limit.per_s == 50
    assert [b.start_s for b in spec.brownouts] == [5, 30]
    assert spec.connection_overflow == "wait"


def test_cli_rejects_a_kind_mismatch() -> None:
    args = build_parser().parse_args(["database", "--spec-json", '{"kind": "http_api"}'])
    with pytest.raises(ConfigError, match="kind is 'http_api' but the command says 'database'"):
        spec_from_args(args)


def test_parse_value_forms() -> None:
    assert parse_value("8") == 8
    assert parse_value("wait") == "wait"
    assert parse_value("constant:ms=0") == {"dist": "constant", "ms": 0}
    assert parse_value('{"per_s": 1}') == {"per_s": 1}
