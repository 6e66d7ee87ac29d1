"""The calibrator, a sweep of its twin and --verify against nginx: a real server no one here wrote.

nginx (Debian's nginx-light, with libnginx-mod-http-echo) runs as a child of the test, on
127.0.0.1, with a config written here: `echo_sleep 0.05` for 50 ms of latency, `limit_req` at
200 requests/s (burst 20, nodelay, 429) on `/`, and `limit_conn` 5 (503) on `/conn/`. Its own
pid file, logs and temp paths live under the test's tmp_path. `.ci/run` installs the packages
when missing; without them these tests are skipped, saying why.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lab.calibrate import Calibration, calibrate
from lab.infra.procs import spawn, wait_for
from lab.sweep.runner import run_sweep

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if Path(p).exists()), None
)
pytestmark = pytest.mark.skipif(
    NGINX is None or not ECHO_MODULE.exists(),
    reason="needs nginx and its echo module: apt-get install -y nginx-light libnginx-mod-http-echo",
)

CONFIG = """\
load_module {echo};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_processes 1;
daemon off;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    limit_req_zone $server_addr zone=per_server:1m rate=200r/s;
    limit_conn_zone $server_addr zone=conns:1m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            limit_req zone=per_server burst=20 nodelay;
            limit_req_status 429;
            echo_sleep 0.05;
            echo ok;
        }}
        location /conn/ {{
            limit_conn conns 5;
            limit_conn_status 503;
            echo_sleep 0.05;
            echo ok;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, folder with access.log) of a running nginx; stopped when the module ends."""
    assert NGINX is not None
    folder = tmp_path_factory.mktemp("nginx")
    port = _free_port()
    conf = folder / "nginx.conf"
    conf.write_text(CONFIG.format(echo=ECHO_MODULE, dir=folder, port=port))
    argv = [NGINX, "-c", str(conf), "-p", str(folder), "-e", str(folder / "error.log")]
    with spawn(argv, name="nginx", log_path=folder / "stdout.log") as child:
        wait_for(lambda: _listening(port), what="nginx", timeout_s=20, children=[child])
        yield f"http://127.0.0.1:{port}", folder


@pytest.fixture(scope="module")
def fitted(nginx: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Calibration:
    url, _ = nginx
    return calibrate(
        url, "http_api", max_in_flight=32, max_requests_per_s=400, budget_s=12, batch_sizes=(1, 20),
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
