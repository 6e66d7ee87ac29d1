"""Scenarios: the shipped files load, defaults fill in, and every user mistake gets one clear
message naming the file, the line, the field path, the bad value and what is allowed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from lab.errors import ConfigError
from lab.infra.procs import env_with_pythonpath
from lab.mocks.spec import LognormalLatency, RateLimit, ServiceSpec
from lab.runtime.retry import RetryPolicy
from lab.scenario.spec import (
    QUICK_DURATION_MAX_S,
    QUICK_ITEMS_MAX,
    Backlog,
    Poisson,
    Scenario,
    import_job,
    load_scenario,
    main,
)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml"))

MINIMAL = """\
name: tiny
services:
  search: {kind: opensearch}
workload:
  job: opensearch.bulk
  service: search
  items: 10
"""

GOOD = """\
name: good
services:
  search:
    kind: opensearch
    capacity: 4
workload:
  job: opensearch.bulk
  service: search
  items: 100
  arrival: {kind: backlog}
sweep:
  num_workers: [1, 4, 16]
  instances: [1, 2]
  batch_size: [1, 50]
  repeats: 2
"""


def write(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert info.value.exit_code == 2
    return str(info.value)


def test_the_five_shipped_scenarios_are_there() -> None:
    names = {p.stem for p in SHIPPED}
    assert names >= {
        "quickstart",
        "opensearch_index",
        "opensearch_delete",
        "rate_limited_api",
        "mixed_cpu_io",
    }


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_scenario_loads_and_says_what_it_teaches(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert path.read_text().startswith("# ")  # the comment block comes first
    assert scenario.quick_variant().sweep.first_repeats >= 1
    assert Scenario.model_validate_json(scenario.model_dump_json()) == scenario


def test_quickstart_matches_its_brief() -> None:
    s = load_scenario(ROOT / "scenarios" / "quickstart.yaml")
    spec = s.services[s.workload.service]
    assert isinstance(spec, ServiceSpec)
    assert (spec.kind, spec.capacity, spec.queue, spec.per_item_ms) == ("opensearch", 4, 100, 0.2)
    assert spec.latency == LognormalLatency(median_ms=10, p99_ms=40)
    assert (s.workload.job, s.workload.items, s.workload.arrival) == (
        "opensearch.bulk",
        400,
        Backlog(),
    )
    assert (s.sweep.num_workers, s.sweep.instances, s.sweep.batch_size) == (
        (1, 4, 16),
        (1, 2),
        (1, 50),
    )
    assert s.sweep.repeats == 1


def test_rate_limited_api_drains_a_burst_through_the_limit() -> None:
    s = load_scenario(ROOT / "scenarios" / "rate_limited_api.yaml")
    spec = s.services["payments"]
    assert isinstance(spec, ServiceSpec) and spec.rate_limit == RateLimit(per_s=200, burst=20)
    assert (s.workload.arrival, s.workload.items) == (Backlog(), 1000)
    assert s.workload.retry.after_floor == "jittered"


def test_retry_storm_is_the_rate_limited_api_with_retries_at_the_exact_floor() -> None:
    storm = load_scenario(ROOT / "scenarios" / "retry_storm.yaml")
    api = load_scenario(ROOT / "scenarios" / "rate_limited_api.yaml")
    assert storm.workload.retry.after_floor == "exact"
    same_retries = storm.workload.retry.model_copy(update={"after_floor": "jittered"})
    assert same_retries == api.workload.retry
    assert (storm.services, storm.sweep, storm.objective) == (
        api.services,
        api.sweep,
        api.objective,
    )


def test_after_floor_is_checked_and_defaults_to_jittered(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, MINIMAL))
    assert s.workload.retry.after_floor == "jittered"
    assert s.workload.retry.policy().after_floor == "jittered"
    bad = MINIMAL.replace("items: 10", "items: 10\n  retry: {after_floor: exactly}")
    message = error_of(write(tmp_path, bad, "bad.yaml"))
    assert "workload.retry.after_floor" in message and "exactly" in message


def test_arrivals_derive_their_item_count(tmp_path: Path) -> None:
    text = MINIMAL.replace("items: 10", "arrival: {kind: poisson, rate_per_s: 80, duration_s: 10}")
    s = load_scenario(write(tmp_path, text))
    assert s.workload.arrival == Poisson(rate_per_s=80, duration_s=10)
    assert s.workload.items is None and s.workload.expected_items == 800


def test_defaults_fill_in(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, MINIMAL))
    assert (s.description, s.seed, s.broker.url) == ("", 0, None)
    w = s.workload
    assert (w.arrival, w.cpu_ms_per_item, w.index, w.job_timeout_s) == (Backlog(), 0, "lab", 30)
    assert w.retry.policy() == RetryPolicy(
        max_attempts=5, backoff_ms=50, max_backoff_ms=30_000, jitter="full", after_floor="jittered"
    )
    sw = s.sweep
    assert (sw.num_workers, sw.instances, sw.batch_size, sw.repeats) == ((1,), (1,), (1,), 1)
    assert (sw.trial_timeout_s, sw.quick) == (120, None)
    o = s.objective
    assert (o.maximize, o.slo.p99_latency_ms, o.slo.max_error_rate) == ("items_per_s", None, 0.01)
    assert o.prefer == ("fewer_instances", "fewer_num_workers")
    spec = s.services["search"]
    assert isinstance(spec, ServiceSpec) and spec.capacity == 8  # ServiceSpec's own defaults


def test_the_design_sketch_loads(tmp_path: Path) -> None:
    sketch = MINIMAL.replace("items: 10", "items: 2500\n  cpu_ms_per_item: 0.2") + (
        "  retry: {max_attempts: 5, backoff_ms: 50, jitter: full}\n"
        "sweep: {num_workers: [1, 2, 4, 8, 16, 32, 64], instances: [1, 2, 4], "
        "batch_size: [1, 50, 500], repeats: 3}\n"
        "objective:\n  maximize: items_per_s\n"
        "  slo: {p99_latency_ms: 2000, max_error_rate: 0.01}\n"
        "  prefer: [fewer_instances, fewer_num_workers]\n"
    )
    s = load_scenario(write(tmp_path, sketch))
    assert s.sweep.num_workers[-1] == 64 and s.objective.slo.p99_latency_ms == 2000


def test_a_user_job_module_is_looked_up_at_load_time_and_imported_by_the_sweep(
    tmp_path: Path,
) -> None:
    ok = write(tmp_path, MINIMAL.replace("opensearch.bulk", "tests.handlers:sleep"))
    assert load_scenario(ok).workload.job == "tests.handlers:sleep"
    gone = write(tmp_path, MINIMAL.replace("opensearch.bulk", "tests.nothere:run"), "a.yaml")
    message = error_of(gone)
    assert message.startswith(f"{gone}:5: workload.job: no module 'tests.nothere' can be found")
    assert load_scenario(gone, check_job=False).workload.job == "tests.nothere:run"
    # the function itself can only be seen by importing: the sweep does, before any trial
    nope = write(tmp_path, MINIMAL.replace("opensearch.bulk", "tests.handlers:nope"), "b.yaml")
    scenario = load_scenario(nope)
    with pytest.raises(ConfigError, match=r"b.yaml: workload.job: .*has no attribute 'nope'"):
        import_job(scenario, nope)


def test_a_user_module_that_fails_to_import_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "broken_jobs.py").write_text("def oops(:\n")
    text = MINIMAL.replace("opensearch.bulk", "broken_jobs:run")
    sys.path.insert(0, str(tmp_path))
    try:
        path = write(tmp_path, text)
        scenario = load_scenario(path)  # found, not imported: no SyntaxError yet
        with pytest.raises(ConfigError) as info:
            import_job(scenario, path)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("broken_jobs", None)
    assert f"{path}: workload.job: importing it failed: SyntaxError" in str(info.value)


# (yaml, line, fragments the message must hold: path, bad value, what is allowed)
BAD: dict[str, tuple[str, int, list[str]]] = {
    "malformed yaml": (
        GOOD.replace("[1, 4, 16]", "[1, 4, 16"),
        13,
        ["invalid YAML", "expected ',' or ']'", "flow sequence"],
    ),
    "wrong type": (
        GOOD.replace("repeats: 2", "repeats: many"),
        15,
        ["sweep.repeats: ", "'many'", "an integer in [1, 100]"],
    ),
    "unknown field": (
        GOOD.replace("num_workers:", "num_workes:"),
        12,
        [
            "sweep.num_workes: ",
            "unknown key 'num_workes'",
            "did you mean 'num_workers'?",
            "allowed: batch_size, instances, max_repeats, num_workers, quick, repeats, search, trial_timeout_s",
        ],
    ),
    "unknown service": (
        GOOD.replace("service: search", "service: serach"),
        8,
        ["workload.service: ", "'serach'", "did you mean 'search'?", "known: search"],
    ),
    "unknown service kind": (
        GOOD.replace("kind: opensearch", "kind: elastic"),
        4,
        ["services.search.kind: ", "'elastic'", "'database', 'external', 'http_api', 'opensearch'"],
    ),
    "unknown job": (
        GOOD.replace("opensearch.bulk", "opensearch.blk"),
        7,
        [
            "workload.job: ",
            "'opensearch.blk'",
            "did you mean 'opensearch.bulk'?",
            "http.call",
            "'package.module:function'",
        ],
    ),
    "empty axis": (
        GOOD.replace("num_workers: [1, 4, 16]", "num_workers: []"),
        12,
        [
            "sweep.num_workers: ",
            "got []",
            "a non-empty list of at most 64 values, each an integer in [1, 4,096]",
        ],
    ),
    "negative rate": (
        GOOD.replace("  items: 100\n", "").replace(
            "{kind: backlog}", "{kind: poisson, rate_per_s: -5, duration_s: 10}"
        ),
        9,
        ["workload.arrival.rate_per_s: ", "got -5", "a number in (0, 100,000]"],
    ),
    "duplicate in axis": (
        GOOD.replace("[1, 2]", "[1, 2, 2]"),
        13,
        ["sweep.instances[2]: ", "duplicate value 2", "list each value once"],
    ),
    "zero in axis": (
        GOOD.replace("[1, 50]", "[1, 0]"),
        14,
        ["sweep.batch_size[1]: must be an integer in [1, 100,000] (a bulk of", "got 0"],
    ),
    "bad arrival kind": (
        GOOD.replace("{kind: backlog}", "{kind: poison}"),
        10,
        [
            "workload.arrival.kind: ",
            "'poison'",
            "did you mean 'poisson'?",
            "'backlog', 'bursts', 'locust', 'poisson', 'ramp', 'step'",
        ],
    ),
    "items with arrivals": (
        GOOD.replace("{kind: backlog}", "{kind: poisson, rate_per_s: 50, duration_s: 4}"),
        9,
        ["workload.items: ", "omit it for poisson", "~200", "got 100"],
    ),
    "quick items with arrivals": (
        GOOD.replace("  items: 100\n", "").replace(
            "{kind: backlog}", "{kind: ramp, from_per_s: 0, to_per_s: 50, duration_s: 4}"
        )
        + "  quick: {items: 50}\n",
        15,
        ["sweep.quick.items: ", "for arrivals use duration_s"],
    ),
    "duplicate key": (
        GOOD + "sweep: {repeats: 1}\n",
        16,
        ["duplicate key 'sweep'", "first at line 11"],
    ),
    "bad latency in a service": (
        GOOD.replace("capacity: 4", "latency: {dist: lognormal, median_ms: 10, p99ms: 40}"),
        5,
        ["services.search.latency.p99ms: ", "did you mean 'p99_ms'?"],
    ),
}


@pytest.mark.parametrize(("text", "line", "fragments"), BAD.values(), ids=BAD.keys())
def test_bad_input_is_one_clear_message(
    tmp_path: Path, text: str, line: int, fragments: list[str]
) -> None:
    path = write(tmp_path, text)
    message = error_of(path)
    first = message.splitlines()[0]
    assert first.startswith(f"{path}:{line}:"), message
    for fragment in fragments:
        assert fragment in first, f"{fragment!r} not in {first!r}"


def test_several_problems_come_in_one_message_misspelt_keys_first(tmp_path: Path) -> None:
    text = GOOD.replace("repeats: 2", "repeats: 0").replace("  items: 100", "  itmes: 100")
    lines = error_of(write(tmp_path, text)).splitlines()
    assert "workload.itmes: unknown key 'itmes' (did you mean 'items'?)" in lines[0]
    assert any("sweep.repeats: must be an integer in [1, 100] or 'auto', got 0" in x for x in lines)
    assert all(x.startswith(str(tmp_path)) for x in lines)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such scenario file"),
        ("", ":1: the file is empty"),
        ("- 1\n", "must be a mapping"),
    ],
)
def test_missing_empty_or_not_a_mapping(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "x.yaml"
    if content is not None:
        path.write_text(content)
    assert expected in error_of(path)


def test_unsafe_yaml_tags_are_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace("name: tiny", "name: !!python/object/apply:os.getcwd []")
    assert "invalid YAML" in error_of(write(tmp_path, text))


def test_quick_variant_uses_the_quick_section(tmp_path: Path) -> None:
    text = GOOD + "  quick: {num_workers: [4], items: 20}\n"
    q = load_scenario(write(tmp_path, text)).quick_variant()
    assert (q.sweep.num_workers, q.sweep.instances, q.sweep.batch_size) == ((4,), (1, 2), (1, 50))
    assert (q.sweep.repeats, q.workload.items) == (1, 20)
    assert q.quick_variant() == q  # idempotent


def test_quick_variant_without_a_quick_section_shrinks_the_grid(tmp_path: Path) -> None:
    text = GOOD.replace("[1, 4, 16]", "[64, 1, 4, 16, 2]").replace("items: 100", "items: 9000")
    q = load_scenario(write(tmp_path, text)).quick_variant()
    assert q.sweep.num_workers == (1, 4, 64)  # smallest, middle, largest
    assert (q.sweep.repeats, q.workload.items) == (1, QUICK_ITEMS_MAX)
    arrivals = MINIMAL.replace(
        "items: 10", "arrival: {kind: poisson, rate_per_s: 5, duration_s: 60}"
    )
    a = load_scenario(write(tmp_path, arrivals, "a.yaml")).quick_variant().workload.arrival
    assert a == Poisson(rate_per_s=5, duration_s=QUICK_DURATION_MAX_S)


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for f in model.model_fields.values():
        args: list[Any] = [f.annotation]
        while args:
            a = args.pop()
            if isinstance(a, type) and issubclass(a, BaseModel):
                found += [m for m in _models(a) if m not in found]
            args += list(getattr(a, "__args__", ()))
    return found


def test_every_field_is_documented() -> None:
    undocumented = [
        f"{m.__name__}.{n}"
        for m in _models(Scenario)
        if m.__module__ == "lab.scenario.spec"  # ServiceSpec has its own test
        for n, f in m.model_fields.items()
        if not f.description
    ]
    assert undocumented == []


def test_the_cli_prints_the_json_schema_with_descriptions() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lab.scenario", "--schema"],
        capture_output=True, text=True, check=True, env=env_with_pythonpath(), cwd=ROOT,
    ).stdout  # fmt: skip
    schema = json.loads(out)
    assert out == json.dumps(schema, sort_keys=True, indent=2) + "\n"
    sweep = schema["$defs"]["Sweep"]["properties"]
    assert "FIRST item's scheduled arrival" in sweep["batch_size"]["description"]
    assert schema["properties"]["services"]["description"].startswith("Services by name")
    assert set(schema["required"]) == {"name", "services", "workload"}


def test_the_cli_exits_2_without_a_traceback(tmp_path: Path) -> None:
    bad = write(tmp_path, GOOD.replace("repeats: 2", "repeats: many"), "bad.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "lab.scenario", str(bad)],
        capture_output=True, text=True, env=env_with_pythonpath(), cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(
        f"{bad}:15: sweep.repeats: must be an integer in [1, 100] or 'auto', got 'many'"
    )


def test_cli_main_checks_several_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = write(tmp_path, GOOD, "good.yaml"), write(tmp_path, "name: [\n", "bad.yaml")
    assert main([str(good), str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == f"ok: {good}\n"
    assert err.startswith(f"{bad}:2:1: invalid YAML")
    assert main([str(p) for p in SHIPPED]) == 0
