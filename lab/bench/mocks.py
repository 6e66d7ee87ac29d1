"""`python -m lab.bench mocks`: requests/s of one mock process next to a bare aiohttp server.

The mock must not become a trial's bottleneck by accident, so its per-request overhead is
measured against a bare aiohttp "hello" app (same event loop, uvloop; no access log) with the
same load generator, in the same run, in interleaved repeats. Service time is zero and capacity
large, so only the mock's own code is measured. Targets run in their own processes; with two or
more CPUs, servers are pinned to CPU 0 and the load generator to the others (taskset). The load
generator is wrk when installed (it needs far less CPU per request than any Python server), else
aiohttp clients in separate processes. Each row reports the server's CPU share during the
measurement: near 100% means the server was the bottleneck, as intended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from lab.infra.procs import Child, env_with_pythonpath, python_module_argv, spawn, wait_for
from lab.infra.sockets import LISTEN_BACKLOG
from lab.mocks.control import MockControl

RATIO_GOAL = 0.75
"""The mock's requests/s over bare aiohttp's must stay above this (overhead within 25%)."""


MOCK_FLAGS = ("--capacity", "1000000", "--queue", "0", "--latency", "constant:ms=0")
SERVERS: dict[str, tuple[str, ...]] = {  # name -> `python -m` arguments
    "bare": ("lab.bench.mocks", "--serve-bare"),
    "bare-lowlevel": ("lab.bench.mocks", "--serve-bare", "--low-level"),
    "http_api": ("lab.mocks", "http_api", *MOCK_FLAGS),
    "opensearch": ("lab.mocks", "opensearch", *MOCK_FLAGS),
}
DOC = '{"n": 1}'


@dataclass(frozen=True)
class Target:
    """One measured row: a request shape sent to one server, compared with a baseline row."""

    name: str
    server: str
    method: str
    path: str
    body: str | None = None
    baseline: str | None = None


BARE_GET, BARE_PUT, MOCK_HTTP = "bare aiohttp GET", "bare aiohttp PUT doc", "mock http_api GET"
TARGETS = (
    Target(BARE_GET, "bare", "GET", "/"),
    Target("bare low-level GET", "bare-lowlevel", "GET", "/", baseline=BARE_GET),
    Target(BARE_PUT, "bare", "PUT", "/", DOC),
    Target(MOCK_HTTP, "http_api", "GET", "/call", baseline=BARE_GET),
    Target("mock opensearch index", "opensearch", "PUT", "/b/_doc/1", DOC, baseline=BARE_PUT),
)


def _pin(cpus: str | None, argv: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", cpus, *argv] if cpus and taskset else argv


@contextlib.contextmanager
def _start(name: str, workdir: Path, cpus: str | None) -> Iterator[tuple[Child, str, str]]:
    """One server process, owned by the benchmark; yields it, its URL and control token once
    it listens."""
    ready = workdir / f"{name}.ready.json"
    argv = _pin(cpus, python_module_argv(*SERVERS[name], "--ready-file", str(ready)))
    log_path = workdir / f"{name}.log"
    with spawn(argv, name=name, log_path=log_path, env=env_with_pythonpath()) as child:
        wait_for(ready.exists, what=f"{name} to listen", timeout_s=30, children=[child])
        info = json.loads(ready.read_text())
        yield child, info["url"], info.get("token", "")


def _wrk(url: str, target: Target, duration_s: float, connections: int, cpus: str | None) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f"wrk.method = {json.dumps(target.method)}\n")
        if target.body is not None:
            script.write(f"wrk.body = {json.dumps(target.body)}\n")
            script.write('wrk.headers["Content-Type"] = "application/json"\n')
    try:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "-s", script.name, url]
        out = subprocess.run(_pin(cpus, argv), capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"{target.name}: failed requests under load:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    return float(match.group(1))


def _python_loadgen(
    url: str, target: Target, duration_s: float, connections: int, cpus: str | None
) -> float:
    procs = max(1, (os.cpu_count() or 2) - 1)
    per_proc = max(1, connections // procs)
    args = [url, target.method, target.body or "", str(duration_s), str(per_proc)]
    argv = _pin(cpus, python_module_argv("lab.bench.mocks", "--loadgen-child", *args))
    children = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    outputs = [json.loads(c.communicate()[0]) for c in children]
    return sum(o["requests"] for o in outputs) / max(o["elapsed_s"] for o in outputs)


def _measure(
    child: Child, url: str, target: Target, args: argparse.Namespace, load_cpus: str | None
) -> tuple[float, float]:
    """(requests/s, server CPU share) over one timed window, after a warm-up run."""
    run = _wrk if args.loadgen == "wrk" else _python_loadgen
    full = url + target.path
    run(full, target, args.warmup_s, args.connections, load_cpus)
    proc = psutil.Process(child.pid)
    cpu0, wall0 = sum(proc.cpu_times()[:2]), time.monotonic()
    rps = run(full, target, args.duration_s, args.connections, load_cpus)
    share = (sum(proc.cpu_times()[:2]) - cpu0) / (time.monotonic() - wall0)
    return rps, share


def run_benchmark(args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    """Start every target once, then measure them in turn, `repeats` times, rotating the order."""
    multi = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    server_cpus = "0" if multi else None
    load_cpus = f"1-{(os.cpu_count() or 2) - 1}" if multi else None
    results: dict[str, list[tuple[float, float]]] = {t.name: [] for t in TARGETS}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        running = {
            name: stack.enter_context(_start(name, Path(tmp), server_cpus)) for name in SERVERS
        }
        for rep in range(args.repeats):
            order = TARGETS[rep % len(TARGETS) :] + TARGETS[: rep % len(TARGETS)]
            for target in order:
                child, url, _ = running[target.server]
                results[target.name].append(_measure(child, url, target, args, load_cpus))
        for name in ("http_api", "opensearch"):
            _, url, token = running[name]
            stats = MockControl(url, token).stats()
            if stats["rejected"] or stats["errors"]:
                raise RuntimeError(f"{name} rejected or failed requests: {stats['rejections']}")
    return results


def format_table(results: dict[str, list[tuple[float, float]]]) -> str:
    """One row per target: median and range of req/s, server CPU share, ratio to its baseline."""
    medians = {name: statistics.median(r for r, _ in rows) for name, rows in results.items()}
    head = f"{'target':<22} {'req/s median':>12} {'min-max':>13} {'server CPU':>10}  ratio"
    lines = [head]
    for target in TARGETS:
        rows = results[target.name]
        rps = [r for r, _ in rows]
        cpu = statistics.median(c for _, c in rows)
        span = f"{min(rps):.0f}-{max(rps):.0f}"
        ratio = ""
        if target.baseline is not None:
            ratio = f"{medians[target.name] / medians[target.baseline]:.2f} vs {target.baseline}"
        med = medians[target.name]
        lines.append(f"{target.name:<22} {med:>12.0f} {span:>13} {cpu:>10.0%}  {ratio}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.bench mocks", description=__doc__)
    parser.add_argument("--duration-s", type=float, default=3.0, help="timed window per run")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="untimed run before each")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per target")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--low-level", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--loadgen-child", nargs=5, dest="loadgen_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        return _serve_bare(args.ready_file, low_level=args.low_level)
    if args.loadgen_child:
        return _loadgen_child(args.loadgen_child)
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
    results = run_benchmark(args)
    ratio = statistics.median(r for r, _ in results[MOCK_HTTP]) / statistics.median(
        r for r, _ in results[BARE_GET]
    )
    print(
        f"load generator: {args.loadgen} ({args.connections} connections), "
        f"{args.repeats} x {args.duration_s:g}s interleaved, CPUs: {os.cpu_count()}, "
        f"Python {sys.version.split()[0]}"
    )
    print(format_table(results))
    verdict = "OK" if ratio >= RATIO_GOAL else "TOO SLOW"
    print(f"mock http_api / bare aiohttp = {ratio:.2f} (goal >= {RATIO_GOAL}): {verdict}")
    return 0 if ratio >= RATIO_GOAL else 1


def _serve_bare(ready_file: Path | None, *, low_level: bool) -> int:
    """The baseline: the smallest aiohttp app, on the same loop and settings as the mocks.

    `low_level` serves the same handler with aiohttp's router-less `web.Server`, the flavour the
    mocks use, so the table also shows the load model's own cost apart from the server's.
    """
    from aiohttp import web

    from lab.infra.aio import write_ready_file

    async def hello(request: web.BaseRequest) -> web.Response:
        return web.Response(text="hello")

    async def serve() -> None:
        runner: web.BaseRunner
        if low_level:
            runner = web.ServerRunner(web.Server(hello, access_log=None))
        else:
            app = web.Application()
            app.router.add_route("*", "/", hello)
            runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=LISTEN_BACKLOG).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        if ready_file is not None:
            write_ready_file(ready_file, {"url": url, "pid": os.getpid()})
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await stop.wait()
        await runner.cleanup()

    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())
    return 0


def _loadgen_child(args: list[str]) -> int:
    """One Python load-generator process: `connections` closed loops for `duration_s`."""
    import aiohttp

    url, method, body = args[0], args[1], args[2]
    duration_s, connections = float(args[3]), int(args[4])
    headers = {"Content-Type": "application/json"} if body else None

    async def drive() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as session:
            started = loop.time()
            deadline = started + duration_s

            async def one_loop() -> int:
                done = 0
                while loop.time() < deadline:
                    async with session.request(
                        method, url, data=body or None, headers=headers
                    ) as r:
                        await r.read()
                    done += 1
                return done

            counts = await asyncio.gather(*(one_loop() for _ in range(connections)))
            return sum(counts), loop.time() - started

    requests, elapsed_s = asyncio.run(drive())
    print(json.dumps({"requests": requests, "elapsed_s": elapsed_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
