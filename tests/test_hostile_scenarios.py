"""Hostile scenario files: every class of bad input is one ConfigError (exit 2) naming the file,
the field and what is allowed; loading never hangs, crashes, builds an unbounded value or runs
a user's module. One test per class, and general rules over the models for files not seen here.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from lab import limits
from lab.errors import ConfigError
from lab.infra.procs import env_with_pythonpath
from lab.mocks.spec import ServiceSpec, parse_spec
from lab.runtime.retry import RetryPolicy
from lab.scenario.spec import Scenario, import_job, load_scenario, main
from lab.sweep.runner import main as sweep_main
from lab.sweep.runner import run_sweep

ROOT = Path(__file__).resolve().parent.parent

BASE = """\
name: tiny
services:
  search: {kind: opensearch}
workload:
  job: opensearch.bulk
  service: search
  items: 10
"""


def write(tmp_path: Path, text: str | bytes, name: str = "hostile.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def rejected(path: Path) -> str:
    """The one message a hostile file gets: a ConfigError (exit 2) that starts with the file."""
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert message.startswith(str(path)), message
    return message


def _laughs(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


# -- YAML bombs and loader errors ---------------------------------------------------------------

# (text, fragments of the message): each is refused before any large value is built
SHAPES: dict[str, tuple[str | bytes, list[str]]] = {
    "billion laughs": (_laughs(9) + BASE, ["more than 20,000 values once aliases are expanded"]),
    "aliases inside aliases, few nodes each": (
        "".join(f"x{i}: &x{i} [*x{i - 1}, *x{i - 1}]\n" for i in range(1, 40)).replace(
            "*x0, *x0", "1, 2"
        )
        + BASE,
        ["more than 20,000 values"],
    ),
    "deep flow nesting": (BASE.replace("name: tiny", "name: " + "[" * 5000 + "]" * 5000), []),
    "deep block nesting": (
        BASE.replace("name: tiny", "name: " + "{a: " * 2000 + "1" + "}" * 2000),
        ["nested more than 32 levels deep"],
    ),
    "nesting through aliases": (
        "d: &d " + "[" * 20 + "]" * 20 + "\n" + "e: " + "[" * 20 + "*d" + "]" * 20 + "\n" + BASE,
        ["nested more than 32 levels deep (aliases included)"],
    ),
    "an alias inside its own anchor": (
        BASE.replace("name: tiny", "name: &a [1, *a]"),
        ["alias *a refers to a node that contains it"],
    ),
    "a 5,000-digit integer": (
        BASE.replace("items: 10", "items: " + "9" * 5000),
        [":7:10: cannot read", "as int"],
    ),
    "an impossible date": (
        BASE + "description: 2024-02-30\n",
        [":8:14: cannot read '2024-02-30' as timestamp: day is out of range for month"],
    ),
    "an unhashable key": (BASE + "? [a, b]\n: 1\n", ["invalid YAML", "unhashable key"]),
    "a key that is not a string": (BASE + "1: 2\n", ["key 1: keys must be strings"]),
    "a python tag": (
        BASE.replace("tiny", "!!python/object/apply:os.system [id]"),
        ["invalid YAML"],
    ),
    "two documents": (BASE + "---\n" + BASE, ["invalid YAML", "single document"]),
    "a control character": (BASE.replace("tiny", "ti\x07ny"), ["invalid YAML"]),
    "not UTF-8": (b"name: \xff\xfe\n" + BASE.encode(), [":1: not UTF-8 text (byte 0xff)"]),
    "too large": (BASE + "#" + "x" * limits.SCENARIO_BYTES_MAX + "\n", ["larger than 256 KiB"]),
}


@pytest.mark.parametrize(("text", "fragments"), SHAPES.values(), ids=SHAPES.keys())
def test_bombs_deep_nesting_and_unreadable_values_are_one_message(
    tmp_path: Path, text: str | bytes, fragments: list[str]
) -> None:
    message = rejected(write(tmp_path, text))
    assert len(message) < 1000 and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_a_fifo_or_a_directory_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "scenario.yaml"
    os.mkfifo(fifo)
    assert "not a regular file" in rejected(fifo)  # opened non-blocking: no writer needed
    assert "is a directory" in rejected(tmp_path)


# -- upper bounds: every number finite and bounded, with the reason ------------------------------

BOUNDS: dict[str, tuple[str, list[str]]] = {
    "10^5 instances": (
        BASE + "sweep: {instances: [100000]}\n",
        ["sweep.instances[0]", "[1, 256]", "worker processes on one host", "got 100000"],
    ),
    "10^6 slots": (
        BASE + "sweep: {num_workers: [1000000]}\n",
        ["sweep.num_workers[0]", "[1, 4,096]", "file descriptor"],
    ),
    "10^12 items": (
        BASE.replace("items: 10", "items: 1000000000000"),
        ["workload.items", "[1, 1,000,000]", "hold every item in memory"],
    ),
    "10^9 repeats": (BASE + "sweep: {repeats: 1000000000}\n", ["sweep.repeats", "[1, 100]"]),
    "a 1000 x 1000 grid": (
        BASE
        + f"sweep: {{num_workers: {list(range(1, 1001))}, instances: {list(range(1, 257))}}}\n",
        ["sweep.num_workers", "at most 64 values"],
    ),
    "too many trials": (
        BASE
        + f"sweep: {{num_workers: {list(range(1, 41))}, batch_size: {list(range(1, 41))}, "
        + "repeats: 10}\n",
        ["sweep: 16,000 trials (40 x 1 x 40 x 10 repeats); at most 10,000"],
    ),
    "too much concurrency": (
        BASE + "sweep: {num_workers: [4096], instances: [256]}\n",
        ["sweep.num_workers: num_workers 4096 x instances 256 = 1,048,576 slots; at most 65,536"],
    ),
    "an infinite timeout": (
        BASE.replace("items: 10", "items: 10\n  job_timeout_s: .inf"),
        ["workload.job_timeout_s", "(0, 86,400]", "got inf"],
    ),
    "a NaN timeout": (BASE + "sweep: {trial_timeout_s: .nan}\n", ["sweep.trial_timeout_s", "nan"]),
    "an infinite rate": (
        BASE.replace("items: 10", "arrival: {kind: poisson, rate_per_s: .inf, duration_s: 1}"),
        ["workload.arrival.rate_per_s", "got inf"],
    ),
    "an infinite duration": (
        BASE.replace("items: 10", "arrival: {kind: poisson, rate_per_s: 1, duration_s: .inf}"),
        ["workload.arrival.duration_s", "(0, 3,600]"],
    ),
    "arrivals that make too many items": (
        BASE.replace("items: 10", "arrival: {kind: poisson, rate_per_s: 100000, duration_s: 3600}"),
        ["workload.arrival: these arrivals make ~360,000,000 items; at most 1,000,000"],
    ),
    "Locust that makes too many items at the largest batch": (
        BASE.replace(
            "items: 10",
            "arrival: {kind: locust, users: 100, spawn_rate: 10, duration_s: 3600, "
            "wait_min_s: 1, wait_max_s: 1}",
        )
        + "sweep: {batch_size: [1, 100]}\n",
        ["workload.arrival: Locust would make ~35,820,900 items at batch_size 100"],
    ),
    "a lognormal whose mean overflows": (
        BASE.replace(
            "{kind: opensearch}",
            "{kind: opensearch, latency: {dist: lognormal, median_ms: 1.0e-300, p99_ms: 3600000}}",
        ),
        ["services.search.latency: p99_ms / median_ms", "is too wide"],
    ),
    "a pareto without a finite mean": (
        BASE.replace(
            "{kind: opensearch}", "{kind: opensearch, latency: {dist: pareto, min_ms: 1, alpha: 1}}"
        ),
        ["services.search.latency: alpha 1 <= 1 has an infinite mean", "give max_ms"],
    ),
    "a pareto whose draws overflow": (
        BASE.replace(
            "{kind: opensearch}",
            "{kind: opensearch, latency: {dist: pareto, min_ms: 1, alpha: 0.001, max_ms: 5}}",
        ),
        ["services.search.latency.alpha", "[0.1, 100]", "overflows a float"],
    ),
    "max_attempts that overflow the backoff": (
        BASE.replace("items: 10", "items: 10\n  retry: {max_attempts: 100000}"),
        ["workload.retry.max_attempts", "[1, 100]"],
    ),
    "a huge service capacity": (
        BASE.replace("{kind: opensearch}", "{kind: opensearch, capacity: 1.0e+300}"),
        ["services.search.capacity", "an integer in [1, 1,000,000]"],
    ),
    "many brown-outs": (
        BASE.replace(
            "{kind: opensearch}",
            "{kind: opensearch, brownouts: ["
            + ", ".join(["{start_s: 1, duration_s: 1}"] * 100)
            + "]}",
        ),
        ["services.search.brownouts", "at most 32 values"],
    ),
    "a sampling period that would busy the mock": (
        BASE.replace("{kind: opensearch}", "{kind: opensearch, stats_interval_ms: 0.0001}"),
        ["services.search.stats_interval_ms", "[1, 60,000]"],
    ),
    "a negative seed": (BASE + "seed: -1\n", ["seed", "[0, 4,294,967,295]"]),
}


@pytest.mark.parametrize(("text", "fragments"), BOUNDS.values(), ids=BOUNDS.keys())
def test_every_bound_names_the_field_the_range_and_why(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    message = rejected(write(tmp_path, text))
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def _schema_nodes(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found += _schema_nodes(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _schema_nodes(value, f"{path}/{i}")
    return found


@pytest.mark.parametrize("model", [Scenario, ServiceSpec])
def test_general_rule_every_number_list_text_and_mapping_has_an_upper_bound(
    model: type[BaseModel],
) -> None:
    """What a file not seen here could hold: nothing unbounded passes the models."""
    unbounded = []
    for path, node in _schema_nodes(model.model_json_schema()):
        kind = node.get("type")
        if (
            (kind in ("integer", "number") and not {"maximum", "exclusiveMaximum"} & set(node))
            or (kind == "array" and "maxItems" not in node)
            or (kind == "string" and not {"maxLength", "enum", "const"} & set(node))
        ):
            unbounded.append(path)
        elif kind == "object" and node.get("additionalProperties") not in (False, None):
            unbounded.append(path)  # a mapping of user keys must cap them (maxProperties)
        elif kind == "object" and "patternProperties" in node and "maxProperties" not in node:
            unbounded.append(path)
    assert unbounded == []
    assert model.model_config.get("strict") and model.model_config.get("allow_inf_nan") is False


HOSTILE_VALUES: list[Any] = [
    True, "100", "", 1e308, float("inf"), float("nan"), -1, 10**30, "x" * 500,
    [1, [2, [3]]], {"a": {"b": {}}}, None, "2024-02-30", 0,
]  # fmt: skip


def _leaves(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _leaves(v, (*path, k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _leaves(v, (*path, i))]
    return [path]


def _replace(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[path[0]] = _replace(data[path[0]], path[1:], value)
    return copy


def test_general_rule_any_value_anywhere_loads_or_is_one_config_error(tmp_path: Path) -> None:
    """Every leaf of a shipped scenario, replaced by each hostile value: a Scenario or a
    ConfigError naming the file, never another exception."""
    source = ROOT / "scenarios" / "quickstart.yaml"
    data = yaml.safe_load(source.read_text())
    path = tmp_path / "mutant.yaml"
    outcomes = {"ok": 0, "refused": 0}
    for leaf in _leaves(data):
        for value in HOSTILE_VALUES:
            path.write_text(yaml.safe_dump(_replace(data, leaf, value)))
            try:
                scenario = load_scenario(path)
            except ConfigError as exc:
                assert str(exc).startswith(str(path)) and "Traceback" not in str(exc)
                outcomes["refused"] += 1
            else:
                assert math.isfinite(scenario.sweep.trial_timeout_s)
                outcomes["ok"] += 1
    assert outcomes["refused"] > outcomes["ok"] > 0


# -- lax types in service specs: one strict base, one formatter ---------------------------------


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [("capacity", True, "true"), ("queue", "100", "'100'"), ("per_item_ms", "0.3", "'0.3'"),
     ("error_rate", float("nan"), "nan"), ("seed", 1.0, "1.0")],
)  # fmt: skip
def test_service_specs_are_as_strict_as_scenarios(
    tmp_path: Path, field: str, value: Any, shown: str
) -> None:
    data = {"kind": "opensearch", field: value}
    with pytest.raises(ConfigError) as direct:
        parse_spec(data, where="svc")
    text = BASE.replace(
        "search: {kind: opensearch}",
        f"search: {yaml.safe_dump(data, default_flow_style=True).strip()}",
    )
    in_scenario = rejected(write(tmp_path, text))
    # the same words from the same formatter, only the location differs
    expected = str(direct.value).removeprefix("svc: ")
    assert expected.startswith(f"{field}: must be ") and f", got {shown}" in expected
    assert f"services.search.{expected}" in in_scenario


# -- names: safe slugs, OpenSearch index names --------------------------------------------------

NAMES: dict[str, tuple[str, str]] = {
    "a run folder above --out": (BASE.replace("name: tiny", 'name: ".."'), "name: must be"),
    "a hidden folder": (BASE.replace("name: tiny", "name: .tiny"), "name: must be"),
    "a name that fails later with ENAMETOOLONG": (
        BASE.replace("name: tiny", "name: " + "a" * 300),
        "at most 64 characters",
    ),
    "a slash": (BASE.replace("name: tiny", "name: a/b"), "name: must be"),
    "a service that is a flag": (
        BASE.replace("search:", "--grace-s:").replace("service: search", "service: --grace-s"),
        "services.--grace-s: must be a string of at most 64 characters matching",
    ),
    "an index that reaches the control routes": (
        BASE.replace("items: 10", "items: 10\n  index: _lab/reset"),
        "workload.index: '_lab/reset' is not an OpenSearch index name",
    ),
    "an upper-case index": (
        BASE.replace("items: 10", "items: 10\n  index: Logs"),
        "is not an OpenSearch index name: lowercase only",
    ),
    "an index with a query": (BASE.replace("items: 10", "items: 10\n  index: a?b"), "found '?'"),
    "an index of dots": (BASE.replace("items: 10", "items: 10\n  index: '..'"), "not . or .."),
}


@pytest.mark.parametrize(("text", "fragment"), NAMES.values(), ids=NAMES.keys())
def test_names_are_safe_slugs_and_indexes_follow_opensearch(
    tmp_path: Path, text: str, fragment: str
) -> None:
    assert fragment in rejected(write(tmp_path, text))


def test_a_good_index_and_name_still_load(tmp_path: Path) -> None:
    text = BASE.replace("name: tiny", "name: my_run-2.v1").replace(
        "items: 10", "items: 10\n  index: logs-2026.11"
    )
    assert load_scenario(write(tmp_path, text)).workload.index == "logs-2026.11"


# -- duplicate keys through merge keys -----------------------------------------------------------

MERGES: dict[str, str] = {
    "a key beside a merge": "base: &b {kind: opensearch, capacity: 4}\n"
    + BASE.replace("{kind: opensearch}", "{<<: *b, capacity: 8}"),
    "the same key from two merged maps": BASE.replace(
        "search: {kind: opensearch}",
        "search: {<<: [{capacity: 1}, {capacity: 2}], kind: opensearch}",
    ),
    "two merge keys": BASE.replace(
        "search: {kind: opensearch}",
        "search: {<<: {queue: 1}, <<: {capacity: 2}, kind: opensearch}",
    ),
}


@pytest.mark.parametrize("text", MERGES.values(), ids=MERGES.keys())
def test_duplicate_keys_through_merge_keys_are_errors(tmp_path: Path, text: str) -> None:
    message = rejected(write(tmp_path, text))
    assert "duplicate key" in message and "give each key once" in message


def test_a_merge_without_duplicates_is_fine(tmp_path: Path) -> None:
    text = "base: &b {kind: opensearch, capacity: 4}\n" + BASE.replace(
        "search: {kind: opensearch}", "search: {<<: *b, queue: 9}"
    )
    with pytest.raises(ConfigError, match="unknown key 'base'"):  # merged fine; `base` is extra
        load_scenario(write(tmp_path, text))


# -- validation runs no user code ----------------------------------------------------------------

EVIL = "import pathlib, os\npathlib.Path(os.environ['LAB_TEST_MARKER']).write_text('ran')\n" + (
    "async def run(ctx, args):\n    return None\n"
)


def test_validation_and_dry_run_never_import_the_users_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "evilpkg"
    package.mkdir()
    (package / "__init__.py").write_text(EVIL)  # even the package's __init__ must not run
    (package / "jobs.py").write_text(EVIL)
    marker = tmp_path / "marker"
    monkeypatch.setenv("LAB_TEST_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(tmp_path, BASE.replace("opensearch.bulk", "evilpkg.jobs:run"))
    assert load_scenario(path).workload.job == "evilpkg.jobs:run"
    assert main([str(path)]) == 0
    assert run_sweep(path, out_dir=tmp_path / "out", dry_run=True) is None
    paths = f"{tmp_path}{os.pathsep}{env_with_pythonpath()['PYTHONPATH']}"
    done = subprocess.run(  # a fresh interpreter, as a user runs it
        [sys.executable, "-m", "lab.sweep", str(path), "--dry-run"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=env_with_pythonpath() | {"PYTHONPATH": paths},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
    try:
        import_job(load_scenario(path), path)  # what the sweep does before its first trial
        assert marker.read_text() == "ran"  # the check above could have failed
    finally:
        for name in ("evilpkg", "evilpkg.jobs"):
            sys.modules.pop(name, None)


# -- the command line: exit 2, one message, nothing written, within seconds ---------------------


def test_the_sweep_refuses_a_hostile_file_with_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    for case in ("deep flow nesting", "a 5,000-digit integer", "an impossible date"):
        path = write(tmp_path, SHAPES[case][0], f"{len(case)}.yaml")
        assert sweep_main([str(path), "--out", str(out)]) == 2
        assert sweep_main([str(path), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"lab.sweep: {path}") and err.count("\n") == 2
    path = write(tmp_path, SHAPES["billion laughs"][0])  # and once as a user runs it
    done = subprocess.run(
        [sys.executable, "-m", "lab.sweep", str(path), "--out", str(out)],
        capture_output=True, text=True, env=env_with_pythonpath(), timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(f"lab.sweep: {path}") and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stdout == ""
    assert not out.exists()


def test_a_bomb_is_refused_without_building_it(tmp_path: Path) -> None:
    """The loader stops at the first excess: a bomb of 9^30 nodes returns, and fast enough that
    a thread given a generous deadline is done (a bound on work, not a timing assertion)."""
    path = write(tmp_path, _laughs(30) + BASE)
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _catch(errors, path), daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and isinstance(errors[0], ConfigError)


def _catch(errors: list[BaseException], path: Path) -> None:
    try:
        load_scenario(path)
    except BaseException as exc:
        errors.append(exc)


def test_backoff_never_overflows_whatever_the_attempt() -> None:
    import random

    policy = RetryPolicy(max_attempts=100_000, backoff_ms=50, max_backoff_ms=1_000)
    assert policy.delay_s(5_000, random.Random(1)) <= 1.0
    assert RetryPolicy(jitter="none", max_backoff_ms=2_000).delay_s(10_000, random.Random(1)) == 2.0
    with pytest.raises(ValueError, match="finite"):
        RetryPolicy(backoff_ms=math.inf)
