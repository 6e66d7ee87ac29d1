"""The calibrator, a sweep of its twin and --verify against nginx: a real server no one here wrote.

nginx (Debian's nginx-light, with libnginx-mod-http-echo; `lab.bench.nginx`) runs as a child of
the test on 127.0.0.1 with a config written under tmp_path: `echo_sleep 0.05` for 50 ms of
latency, `limit_req` at 200 requests/s (burst 20, nodelay, 429) on `/`, `limit_conn` 5 (503) on
`/conn/`. `.ci/run` installs the packages when missing; without them these tests are skipped,
saying why.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lab.bench.nginx import nginx_binary, nginx_server
from lab.calibrate import Calibration, calibrate
from lab.sweep.runner import run_sweep

pytestmark = pytest.mark.skipif(
    nginx_binary() is None,
    reason="needs nginx and its echo module: apt-get install -y nginx-light libnginx-mod-http-echo",
)


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, folder with access.log) of a running nginx; stopped when the module ends."""
    folder = tmp_path_factory.mktemp("nginx")
    with nginx_server(folder, sleep_s=0.05, rate_per_s=200, burst=20, connections=5) as url:
        yield url, folder


@pytest.fixture(scope="module")
def fitted(nginx: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Calibration:
    url, _ = nginx
    return calibrate(
        url, "http_api", max_in_flight=32, max_requests_per_s=400, budget_s=10, batch_sizes=(1, 20),
        out_dir=tmp_path_factory.mktemp("calibrations"), stream=io.StringIO(), check=False,
    )  # fmt: skip


@pytest.mark.timeout(120)
def test_finds_the_rate_limit_and_the_latency(fitted: Calibration) -> None:
    limit, latency = fitted.spec.rate_limit, fitted.fit.latency
    assert limit is not None and abs(limit.per_s - 200) <= 20, fitted.fit.findings
    assert not limit.retry_after  # nginx's limit_req answers 429 without Retry-After
    assert abs(latency.median_ms - 50) <= 5, fitted.fit.findings["latency"]


@pytest.mark.timeout(60)
def test_finds_the_connection_limit(nginx: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = nginx
    result = calibrate(
        f"{url}/conn", "http_api", max_in_flight=16, max_requests_per_s=400, budget_s=4,
        batch_sizes=(1,), out_dir=tmp_path, stream=io.StringIO(), check=False,
    )  # fmt: skip
    assert result.spec.connection_limit == 5, result.fit.findings


@pytest.mark.timeout(300)
def test_a_sweep_of_the_twin_verified_on_nginx(
    nginx: tuple[str, Path], fitted: Calibration, tmp_path: Path
) -> None:
    url, folder = nginx
    block = yaml.safe_load(fitted.paths["yaml"].read_text())
    scenario = {
        **block, "name": "nginx-twin", "seed": 1,
        "workload": {"job": "http.call", "service": "api", "items": 80},
        "sweep": {"num_workers": [2, 4, 64], "instances": [1], "batch_size": [1]},
    }  # fmt: skip
    path = tmp_path / "twin.yaml"
    path.write_text(yaml.safe_dump(scenario))
    run = run_sweep(path, out_dir=tmp_path / "results", verify=True, stream=io.StringIO())
    assert run is not None
    doc = json.loads((run.path / "verification.json").read_text())
    assert doc["real"]["url"] == url and 1 <= len(doc["configs"]) <= 3
    picked = doc["configs"][0]
    rec = json.loads((run.path / "recommendation.json").read_text())
    assert picked["config"] == rec["config"]
    assert picked["real"]["items_per_s"] > 0 and picked["error"]["items_per_s"] is not None
    real_rows = (run.path / "verify" / "trials.csv").read_text()
    assert real_rows.count("\n") == len(doc["configs"]) + 1
    report = (run.path / "report.html").read_text()
    assert "Predicted (mock) vs real" in report
    assert "/_lab/" not in (folder / "access.log").read_text()  # nginx saw no lab route
