"""The calibrator against the lab's own mock, started with parameters the calibrator is not told.

Each test runs one real mock process on loopback and one bounded calibration (a few seconds of
probing). The tolerances are the issue's: capacity and queue exact, median within 10 %, p99
within 25 %, rate limit and per-item cost within 10 % and 20 %, connection limit exact.
"""

from __future__ import annotations

import io
import json
import math
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from lab.calibrate import Calibration, calibrate
from lab.errors import ConfigError
from lab.infra.procs import env_with_pythonpath, python_module_argv, spawn, wait_for
from lab.mocks.distributions import quantile
from lab.mocks.process import mock_process
from lab.mocks.spec import ServiceSpec, parse_spec
from lab.scenario.spec import Scenario


def run(tmp_path: Path, spec: dict[str, Any], **kw: Any) -> tuple[Calibration, str]:
    """Calibrate a fresh mock of `spec`; returns the calibration and the mock's URL."""
    with mock_process(parse_spec(spec), workdir=tmp_path / "mock") as mock:
        kw.setdefault("check", False)
        result = calibrate(
            mock.url, spec["kind"], out_dir=tmp_path / "out", stream=io.StringIO(), **kw
        )
    return result, mock.url


def within(value: float, truth: float, share: float) -> bool:
    return abs(value - truth) <= share * truth


@pytest.mark.timeout(120)
def test_recovers_capacity_queue_latency_and_per_item_cost(tmp_path: Path) -> None:
    truth = parse_spec(
        {
            "kind": "http_api",
            "capacity": 4,
            "queue": 6,
            "latency": {"dist": "lognormal", "median_ms": 100, "p99_ms": 150},
            "per_item_ms": 1.0,
        }
    )
    result, _ = run(
        tmp_path, truth.model_dump(mode="json"), max_in_flight=32, max_requests_per_s=1000,
        batch_sizes=(1, 50, 100), budget_s=16,
    )  # fmt: skip
    spec, best = result.spec, result.fit.latency
    assert (spec.capacity, spec.queue) == (4, 6), result.fit.findings
    assert within(best.median_ms, 100, 0.10), result.fit.findings["latency"]
    assert within(best.p99_ms, quantile(truth.latency, 0.99), 0.25), result.fit.findings["latency"]
    assert within(spec.per_item_ms, 1.0, 0.20), result.fit.findings["per_item_ms"]
    assert spec.rate_limit is None and spec.connection_limit is None


@pytest.mark.timeout(60)
def test_finds_a_rate_limit_and_its_retry_after(tmp_path: Path) -> None:
    result, url = run(
        tmp_path,
        {
            "kind": "http_api",
            "capacity": 64,
            "queue": 0,
            "latency": {"dist": "lognormal", "median_ms": 20, "p99_ms": 40},
            "rate_limit": {"per_s": 80, "burst": 20},
        },
        max_in_flight=32, max_requests_per_s=400, budget_s=8, batch_sizes=(1,),
    )  # fmt: skip
    limit = result.spec.rate_limit
    assert limit is not None and within(limit.per_s, 80, 0.10), result.fit.findings
    assert limit.retry_after  # the mock sends Retry-After, so the twin does
    assert "Retry-After 1 s" in result.fit.findings["rate_limit"]
    assert result.spec.calibrated_from is not None and result.spec.calibrated_from.url == url


@pytest.mark.timeout(60)
def test_finds_a_connection_limit(tmp_path: Path) -> None:
    result, _ = run(
        tmp_path,
        {
            "kind": "database",
            "capacity": 32,
            "connection_limit": 5,
            "latency": {"dist": "constant", "ms": 20},
        },
        max_in_flight=16, max_requests_per_s=500, budget_s=5, batch_sizes=(1,),
    )  # fmt: skip
    assert result.spec.connection_limit == 5, result.fit.findings


def max_requests_in_a_second(stats: dict[str, Any]) -> float:
    """From the mock's own series: the most requests it received in any window of <= 1 s."""
    t, n = stats["series"]["t_s"], stats["series"]["requests"]
    best = 0
    for i in range(len(t)):
        for j in range(i + 1, len(t)):
            if t[j] - t[i] > 1.0:
                break
            best = max(best, n[j] - n[i])
    return best


@pytest.mark.timeout(60)
def test_a_calibration_never_exceeds_its_caps(tmp_path: Path) -> None:
    """Six clients of a 40 ms service would send 150 requests/s: the caps hold it to 6 and 120/s,
    as the mock itself counted them."""
    spec = parse_spec(
        {"kind": "http_api", "capacity": 64, "latency": {"dist": "constant", "ms": 40}}
    )
    with mock_process(spec, workdir=tmp_path / "mock") as mock:
        result = calibrate(
            mock.url, "http_api", max_in_flight=6, max_requests_per_s=120, budget_s=8,
            batch_sizes=(1, 10), out_dir=tmp_path / "out", stream=io.StringIO(), check=False,
        )  # fmt: skip
        stats = mock.stats()
    assert stats["max"]["in_flight"] <= 6 and stats["max"]["connections"] <= 6
    assert max_requests_in_a_second(stats) <= 120 + 3  # + the series' sampling edges
    probe = result.measured
    assert probe.max_in_flight_seen == 6 and probe.max_requests_in_1s <= 120
    assert "the rate cap (120/s) bounds it" in " ".join(probe.notes)


@pytest.mark.timeout(120)
def test_writes_a_pasteable_block_the_raw_data_and_a_report_with_the_twin(tmp_path: Path) -> None:
    result, url = run(
        tmp_path,
        {"kind": "opensearch", "capacity": 4, "queue": 4, "latency": {"dist": "constant", "ms": 20}},
        max_in_flight=16, max_requests_per_s=500, budget_s=4, batch_sizes=(1, 20), check=True,
    )  # fmt: skip
    paths = result.paths
    assert set(paths) == {"yaml", "json", "steps", "requests", "report"}
    block = yaml.safe_load(paths["yaml"].read_text())
    [(name, service)] = block["services"].items()
    assert name == "search" and ServiceSpec.model_validate(service) == result.spec
    scenario = Scenario.model_validate(
        {
            **block,
            "name": "twin",
            "workload": {"job": "opensearch.bulk", "service": "search", "items": 10},
        }
    )
    assert scenario.services["search"] == result.spec
    doc = json.loads(paths["json"].read_text())
    assert doc["schema_version"] == 1 and doc["url"] == url and doc["twin_steps"]
    assert doc["fit"]["latency_families"][0]["dist"] == result.fit.latency.dist
    rows = paths["requests"].read_text().splitlines()
    assert len(rows) > 100 and rows[0].startswith("service,phase,step")
    report = paths["report"].read_text()
    assert report.count("data:image/png;base64,") >= 3 and "<script" not in report
    assert "The twin" in report and "KS" in report
    again, _ = run(
        tmp_path,
        {"kind": "http_api", "latency": {"dist": "constant", "ms": 1}},
        budget_s=1,
        batch_sizes=(1,),
    )
    assert again.folder != result.folder  # a second run never overwrites the first


def _cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        python_module_argv("lab.calibrate", *args), capture_output=True, text=True,
        env=env_with_pythonpath(), timeout=timeout_s,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("url", "settings", "fragment"),
    [
        ("ftp://example.org", {}, "http:// or https://"),
        ("http://127.0.0.1:9/_lab/stats", {}, "/_lab/ routes"),
        ("http://127.0.0.1:9?x=1", {}, "without a query"),
        ("http://127.0.0.1:9", {"protocol": "smtp"}, "allowed: opensearch, http_api, database"),
        ("http://127.0.0.1:9", {"batch_sizes": (1, 0)}, "--batch-sizes"),
        ("http://127.0.0.1:9", {"max_in_flight": 0}, "--max-in-flight"),
        ("http://127.0.0.1:9", {"budget_s": 0}, "--budget-s"),
        ("http://127.0.0.1:9", {"max_requests_per_s": -1}, "--max-requests-per-s"),
        ("http://127.0.0.1:9", {"name": "a b"}, "--name"),
    ],
)
def test_bad_input_names_what_is_wrong(
    tmp_path: Path, url: str, settings: dict[str, Any], fragment: str
) -> None:
    protocol = settings.pop("protocol", "http_api")
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        calibrate(url, protocol, out_dir=tmp_path, stream=io.StringIO(), **settings)
    assert list(tmp_path.iterdir()) == []  # nothing sent, nothing written


def test_the_cli_exits_2_on_bad_input_without_a_traceback() -> None:
    proc = _cli("http://127.0.0.1:9", "--protocol", "http_api", "--batch-sizes", "1,x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("lab.calibrate: --batch-sizes '1,x': expected integers")


def test_a_service_that_does_not_answer_is_an_error_not_a_fit(tmp_path: Path) -> None:
    proc = _cli("http://127.0.0.1:9", "--protocol", "http_api", "--out", str(tmp_path))
    assert proc.returncode == 1 and "no answer" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def slow_mock(tmp_path: Path) -> Iterator[str]:
    spec = parse_spec(
        {"kind": "http_api", "capacity": 64, "latency": {"dist": "constant", "ms": 200}}
    )
    with mock_process(spec, workdir=tmp_path / "mock") as mock:
        yield mock.url


@pytest.mark.timeout(60)
@pytest.mark.parametrize("during", ["probe", "twin"])
def test_ctrl_c_stops_it_and_leaves_nothing_running(
    tmp_path: Path, slow_mock: str, during: str
) -> None:
    out = tmp_path / "out"
    argv = python_module_argv(
        "lab.calibrate", slow_mock, "--protocol", "http_api", "--budget-s", "3", "--out", str(out),
        "--batch-sizes", "1",
    )  # fmt: skip
    log = tmp_path / "calibrate.log"
    with spawn(argv, name="calibrate", log_path=log, env=env_with_pythonpath()) as child:
        marker = "service ladder" if during == "probe" else "twin    ladder"
        wait_for(lambda: marker in log.read_text(), what=marker, timeout_s=45, children=[child])
        kids = psutil.Process(child.pid).children(recursive=True)
        assert (len(kids) == 1) == (during == "twin")  # the twin mock, a child the lab owns
        child.signal(signal.SIGINT)
        code = child.popen.wait(timeout=20)
    assert code == 130 and "interrupted; nothing written" in log.read_text()
    gone = psutil.wait_procs(kids, timeout=5)[1] == []
    assert gone and not out.exists()


def test_fit_rate_reads_the_accepted_rate_once_429s_start() -> None:
    """Pure logic: a token bucket of 10 refilled at 50/s, offered 100/s for 2 s."""
    from lab.calibrate.fit import fit_rate
    from lab.calibrate.probe import Sample, Step

    step, tokens, last = Step("rate", 0, 8, started_s=0.0), 10.0, 0.0
    for k in range(200):
        t = k / 100
        tokens, last = min(10.0, tokens + (t - last) * 50), t
        ok = tokens >= 1
        tokens -= ok
        step.samples.append(Sample(t, 5.0, 200 if ok else 429, None if ok else 1.0))
    step.issue_end_s = 2.0
    found = fit_rate(step)
    assert found is not None and math.isclose(found.per_s, 50, rel_tol=0.05)
    assert abs(found.burst - 10) <= 1 and found.retry_after_s == 1.0
