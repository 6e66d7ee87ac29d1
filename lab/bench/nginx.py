"""nginx as a real service no one here wrote: latency, a rate limit and a connection limit.

Debian's `nginx-light` with `libnginx-mod-http-echo`, run as a child process the lab owns, on
127.0.0.1, with a config written into a folder of its own (pid, logs, temp paths):
  `/`       `echo_sleep` (the latency), `limit_req` at `rate_per_s` with `burst` and `nodelay`,
            answering 429 past it (no Retry-After: that is nginx's way)
  `/conn/`  `echo_sleep`, `limit_conn` at `connections`, answering 503 past it
Used by the calibrator's tests and by `python -m lab.bench.calibrate`.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from lab.infra.procs import spawn, wait_for

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")

CONFIG = """\
load_module {echo};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
master_process off;  # one process, the lab's own child: nothing is left if it is killed
daemon off;
events {{ worker_connections 512; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    limit_req_zone $server_addr zone=per_server:1m rate={rate_per_s}r/s;
    limit_conn_zone $server_addr zone=conns:1m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            limit_req zone=per_server burst={burst} nodelay;
            limit_req_status 429;
            echo_sleep {sleep_s};
            echo ok;
        }}
        location /conn/ {{
            limit_conn conns {connections};
            limit_conn_status 503;
            echo_sleep {sleep_s};
            echo ok;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """The nginx executable, when nginx and its echo module are installed; else None."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if Path(p).exists()), None
    )
    return found if found is not None and ECHO_MODULE.exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def nginx_server(
    folder: Path,
    *,
    sleep_s: float = 0.05,
    rate_per_s: int = 200,
    burst: int = 20,
    connections: int = 5,
) -> Iterator[str]:
    """Run nginx with this config; yields its base URL (`/` limited by rate, `/conn/` by
    connections); stopped when the block ends. RuntimeError when nginx is not installed."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx with its echo module is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    conf = folder / "nginx.conf"
    conf.write_text(
        CONFIG.format(
            echo=ECHO_MODULE,
            dir=folder,
            port=port,
            sleep_s=sleep_s,
            rate_per_s=rate_per_s,
            burst=burst,
            connections=connections,
        )
    )
    argv = [binary, "-c", str(conf), "-p", str(folder), "-e", str(folder / "error.log")]
    with spawn(argv, name="nginx", log_path=folder / "stdout.log") as child:
        wait_for(lambda: _listening(port), what="nginx", timeout_s=20, children=[child])
        yield f"http://127.0.0.1:{port}"
