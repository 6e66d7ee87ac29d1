"""`python -m lab.bench peers`: the lab's runtime beside a bare event loop, measured in one run.

The lab's runtime stands in for the user's own; whatever it adds between one job's end and the
next one's start shows in every curve the lab draws. This benchmark measures that cost against
the smallest possible runtime: a bare event loop running the same job bodies with no queue
(`lab.bench.peer_bare`), so whatever the lab loses beside it is the lab's.

Rows (`--runtimes`, default all four; `--peers dramatiq` adds Dramatiq, installed from PyPI
into a temporary venv, thread per slot):
- `bare`: C coroutines run the N job bodies; nothing is claimed or acknowledged. On the lab
  worker's own event loop (`--loop`, uvloop by default), so the difference is the runtime's.
- `bare-asyncio`: the same on asyncio's default loop, the reference of the usual peers
  benchmark of Python job runtimes (its bodies cost more there, so ratios against it are kinder).
- `lab`: one `lab.runtime.worker` process, `--num-workers C`, default semantics (a job is
  claimed only for a free slot).
- `lab-pf1`: the same with `--prefetch 1`.

Method, per cell (runtime x scenario x concurrency C); each repeat runs every cell, the
runtimes of a cell back to back in an order rotated per repeat, so that a drifting load on the
machine hits them alike:
1. A private redis-server on loopback TCP (flushed per cell) and a bare loopback HTTP server
   that answers `GET /sleep?ms=50` after 50 ms (`lab.bench.sleep_server`), both started here.
2. The N jobs enqueued BEFORE the worker starts (not timed).
3. One worker process started; every job body INCRs a counter key as its last action
   (`lab.bench.peer_jobs`); the harness polls it every 5 ms and samples the CPU time of the
   worker's process tree at 10 % and 90 % of N.
4. steady jobs/s = jobs done between those samples / the time between them; CPU µs per job over
   the same window. The lab rows also report the worker's own slot gap and exchange round trip
   (`lab.runtime.telemetry`), read back after its graceful stop.

Scenarios: `noop` (N no-op jobs at C=50: the runtime's cost per job) and `io` (each job one GET
answered after 50 ms, C = 1, 10, 50, 200; efficiency = steady jobs/s / (C / 0.050 s), the
Little's-law bound). Everything it creates lives in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import redis

from lab.bench.harness import cpu_seconds, sleep_server
from lab.bench.peer_jobs import COUNTER_KEY
from lab.infra.broker import BROKER_URL_ENV, start_broker
from lab.infra.procs import Child, env_with_pythonpath, python_module_argv, spawn
from lab.runtime.queue import Queue
from lab.runtime.telemetry import runtime_figures

QUEUE = "peers"
RUNTIMES = ("bare", "bare-asyncio", "lab", "lab-pf1")
IO_LEVELS = (1, 10, 50, 200)
#: Dramatiq's version range for `--peers dramatiq` (the one the first peers table measured).
DRAMATIQ_REQUIREMENT = "dramatiq[redis]>=2.0,<3"


@dataclass(frozen=True)
class Runtime:
    """One row of the comparison: how to enqueue its jobs and start its worker."""

    name: str
    argv: Callable[[int], list[str]]  # concurrency -> the worker's command line
    enqueue: Callable[[str, str, int, float], None]  # (redis url, kind, n, ms)
    env: dict[str, str] = field(default_factory=dict)
    reports_runtime_stats: bool = False  # the lab worker writes slot gap / exchange figures


@dataclass
class Row:
    """One measured cell."""

    repeat: int
    runtime: str
    scenario: str
    conc: int
    jobs: int
    completed: int
    timed_out: bool
    rate_steady: float
    bound: float | None
    efficiency: float | None
    cpu_us_per_job: float
    worker_cores: float
    mock_max_in_flight: int | None
    mock_cores: float
    redis_cores: float
    load_1m: float  # the machine's 1-minute load average at the cell's end (others' work too)
    slot_gap_p50_ms: float = math.nan
    slot_gap_p99_ms: float = math.nan
    exchange_rtt_p50_ms: float = math.nan
    exchange_batch_mean: float = math.nan


def _lab_enqueue(url: str, kind: str, n: int, ms: float) -> None:
    with redis.Redis.from_url(url) as client:
        job = f"lab.bench.peer_jobs:{kind}"
        Queue(client, QUEUE).enqueue_many(
            job, ({} if kind == "noop" else {"ms": ms} for _ in range(n))
        )


def lab_runtime(name: str, *, prefetch: int, loop: str) -> Runtime:
    def argv(conc: int) -> list[str]:
        return python_module_argv(
            "lab.runtime.worker", "--queue", QUEUE,  # the broker: $LAB_BROKER_URL (a password)
            "--num-workers", str(conc), "--prefetch", str(prefetch), "--loop", loop,
            "--job", "lab.bench.peer_jobs:noop", "--job", "lab.bench.peer_jobs:io",
        )  # fmt: skip

    return Runtime(name, argv, _lab_enqueue, reports_runtime_stats=True)


def bare_runtime(loop: str, name: str = "bare") -> Runtime:
    return Runtime(
        name,
        lambda conc: python_module_argv("lab.bench.peer_bare", "--loop", loop),
        lambda url, kind, n, ms: None,  # no queue: the worker runs N bodies by itself
    )


def dramatiq_runtime(workdir: Path) -> Runtime:
    """Dramatiq in a venv of its own under `workdir` (pip install from PyPI, once per run)."""
    venv = workdir / "venv-dramatiq"
    print(f"installing {DRAMATIQ_REQUIREMENT} into a temporary venv...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    subprocess.run([*pip, DRAMATIQ_REQUIREMENT], check=True)
    module = workdir / "rt_dramatiq.py"
    shutil.copy(Path(__file__).with_name("peer_dramatiq.py"), module)
    python = str(venv / "bin" / "python")
    env = {"PYTHONPATH": str(workdir)}

    def enqueue(url: str, kind: str, n: int, ms: float) -> None:
        run_env = dict(os.environ, **env, LAB_PEERS_REDIS_URL=url)
        argv = [python, str(module), "enqueue", kind, str(n), str(ms)]
        subprocess.run(argv, check=True, env=run_env, cwd=workdir)

    def argv(conc: int) -> list[str]:
        return [
            str(venv / "bin" / "dramatiq"),
            "rt_dramatiq",
            "--processes",
            "1",
            "--threads",
            str(conc),
        ]

    return Runtime("dramatiq", argv, enqueue, env=env)


def _http_json(url: str, *, post: bool = False) -> dict[str, int]:
    req = urllib.request.Request(url, method="POST" if post else "GET")
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, int] = json.load(resp)
        return result


def measure(
    rt: Runtime,
    *,
    redis_url: str,
    redis_pid: int,
    mock_url: str,
    mock_pid: int,
    workdir: Path,
    scenario: str,
    conc: int,
    jobs: int,
    repeat: int,
    ms: float = 50.0,
    deadline_s: float = 60.0,
) -> Row:
    """One cell: enqueue, start the worker, sample the counter and CPU, stop, read figures."""
    kind = "noop" if scenario == "noop" else "io"
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
        _http_json(f"{mock_url}/reset", post=True)
        rt.enqueue(redis_url, kind, jobs, ms)
        env = env_with_pythonpath() | {
            "LAB_PEERS_REDIS_URL": redis_url, BROKER_URL_ENV: redis_url, "LAB_PEERS_MOCK_URL": mock_url,
            "LAB_PEERS_CONC": str(conc), "LAB_PEERS_N": str(jobs), "LAB_PEERS_KIND": kind,
            "LAB_PEERS_MS": str(ms), "PYTHONUNBUFFERED": "1",
        }  # fmt: skip
        for key, value in rt.env.items():
            env[key] = os.pathsep.join([value, env[key]]) if key == "PYTHONPATH" else value
        lo, hi = max(1, math.ceil(0.1 * jobs)), max(1, math.floor(0.9 * jobs))
        samples: dict[str, tuple[float, int, float]] = {}
        log_path = workdir / "logs" / f"{rt.name}-{scenario}-c{conc}-r{repeat}.log"
        others0 = cpu_seconds(mock_pid), cpu_seconds(redis_pid)
        with spawn(rt.argv(conc), name=rt.name, log_path=log_path, env=env) as child:
            t0 = time.perf_counter()
            count, timed_out = 0, False
            while True:
                now = time.perf_counter()
                count = int(client.get(COUNTER_KEY) or 0)
                for label, mark in (("lo", lo), ("hi", hi)):
                    if label not in samples and count >= mark:
                        samples[label] = (now, count, cpu_seconds(child.pid, tree=True))
                if count >= jobs:
                    break
                if now - t0 > deadline_s:
                    timed_out = True
                    break
                _check_alive(child)
                time.sleep(0.005)
            end = (now, count, cpu_seconds(child.pid, tree=True))
            mock_cores, redis_cores = (
                (cpu_seconds(pid) - before) / (now - t0)
                for pid, before in zip((mock_pid, redis_pid), others0, strict=True)
            )
            mock = _http_json(f"{mock_url}/stats")
            child.stop(grace_s=15)
        figures = (
            runtime_figures(Queue(client, QUEUE).runtime_stats())
            if rt.reports_runtime_stats
            else {}
        )
    a, b = samples.get("lo"), samples.get("hi", end)
    if a is not None and b[1] > a[1] and b[0] > a[0]:
        rate = (b[1] - a[1]) / (b[0] - a[0])
        cpu_us = (b[2] - a[2]) / (b[1] - a[1]) * 1e6
        cores = (b[2] - a[2]) / (b[0] - a[0])
    else:
        rate = cpu_us = cores = math.nan
    bound = conc / (ms / 1000) if kind == "io" else None
    return Row(
        repeat=repeat, runtime=rt.name, scenario=scenario, conc=conc, jobs=jobs, completed=count,
        timed_out=timed_out, rate_steady=rate, bound=bound,
        efficiency=rate / bound if bound else None, cpu_us_per_job=cpu_us, worker_cores=cores,
        mock_max_in_flight=mock["max_in_flight"] if kind == "io" else None,
        mock_cores=mock_cores, redis_cores=redis_cores, load_1m=os.getloadavg()[0],
        **{k: v for k, v in figures.items() if k in _FIGURE_FIELDS},
    )  # fmt: skip


_FIGURE_FIELDS = {
    "slot_gap_p50_ms",
    "slot_gap_p99_ms",
    "exchange_rtt_p50_ms",
    "exchange_batch_mean",
}


def _check_alive(child: Child) -> None:
    if not child.alive():
        raise RuntimeError(f"{child.name} exited early: {child.log_tail()}")


def run_benchmark(ns: argparse.Namespace, workdir: Path) -> list[Row]:
    rows: list[Row] = []
    with start_broker(transport="tcp") as broker, sleep_server(workdir) as (mock_url, mock_pid):
        assert broker.child is not None
        runtimes = {
            "bare": bare_runtime(ns.loop),
            "bare-asyncio": bare_runtime("asyncio", "bare-asyncio"),
            "lab": lab_runtime("lab", prefetch=0, loop=ns.loop),
            "lab-pf1": lab_runtime("lab-pf1", prefetch=1, loop=ns.loop),
        }
        chosen = [runtimes[name] for name in ns.runtimes]
        if "dramatiq" in ns.peers:
            chosen.append(dramatiq_runtime(workdir))
        cells = [("noop", ns.noop_conc, ns.noop_jobs)] if "noop" in ns.scenarios else []
        if "io" in ns.scenarios:
            cells += [("io", c, max(ns.min_jobs, ns.jobs_per_slot * c)) for c in ns.io_levels]
        for repeat in range(ns.repeats):
            for scenario, conc, jobs in cells:  # the runtimes of one cell back to back,
                shift = repeat % len(chosen)  # in an order rotated per repeat
                for rt in chosen[shift:] + chosen[:shift]:
                    row = measure(
                        rt, redis_url=broker.url, redis_pid=broker.child.pid, mock_url=mock_url,
                        mock_pid=mock_pid, workdir=workdir,
                        scenario=scenario, conc=conc, jobs=jobs, repeat=repeat,
                    )  # fmt: skip
                    rows.append(row)
                    print(_describe(row), flush=True)
    return rows


def _describe(r: Row) -> str:
    eff = f"eff {r.efficiency:.3f}" if r.efficiency is not None else "         "
    gap = (
        f"  gap p50/p99 {r.slot_gap_p50_ms:.2f}/{r.slot_gap_p99_ms:.2f} ms"
        f"  rtt p50 {r.exchange_rtt_p50_ms:.2f} ms  batch {r.exchange_batch_mean:.1f}"
        if not math.isnan(r.slot_gap_p99_ms)
        else ""
    )
    return (
        f"[r{r.repeat}] {r.runtime:9s} {r.scenario:4s} C={r.conc:<4d} {r.rate_steady:8.0f} jobs/s "
        f"{eff}  cpu {r.cpu_us_per_job:5.0f} µs/job  cores {r.worker_cores:.2f}"
        f" (mock {r.mock_cores:.2f}, redis {r.redis_cores:.2f}, in flight {r.mock_max_in_flight},"
        f" load {r.load_1m:.1f})"
        f"{'  TIMED OUT' if r.timed_out else ''}{gap}"
    )


def _median(rows: Sequence[Row], attr: str) -> float:
    values = [float(v) for r in rows if (v := getattr(r, attr)) is not None and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def machine() -> str:
    """The date and the machine, for the table's heading."""
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{datetime.date.today().isoformat()}, {os.cpu_count()} CPUs (nproc), {model}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def format_table(rows: Sequence[Row], levels: Sequence[int], noop_conc: int) -> str:
    """Markdown: medians over repeats per runtime, then each runtime as a ratio of each bare
    reference's (ratios of the medians)."""

    def cell(rt: str, scenario: str, conc: int) -> list[Row]:
        return [r for r in rows if (r.runtime, r.scenario, r.conc) == (rt, scenario, conc)]

    names = list(dict.fromkeys(r.runtime for r in rows))
    top = max(levels) if levels else 0
    gap_at = 50 if 50 in levels else top
    head = (
        ["runtime", f"no-op jobs/s (C={noop_conc})"]
        + [f"eff C={c}" for c in levels]
        + [f"CPU µs/job at C={top}", f"slot gap p50 / p99 at C={gap_at} (ms)"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rt in names:
        gap = cell(rt, "io", gap_at)
        p50, p99 = _median(gap, "slot_gap_p50_ms"), _median(gap, "slot_gap_p99_ms")
        values = (
            [f"{_median(cell(rt, 'noop', noop_conc), 'rate_steady'):,.0f}"]
            + [f"{_median(cell(rt, 'io', c), 'efficiency'):.3f}" for c in levels]
            + [f"{_median(cell(rt, 'io', top), 'cpu_us_per_job'):.0f}"]
            + [f"{p50:.2f} / {p99:.2f}" if not math.isnan(p99) else "-"]
        )
        lines.append("| " + " | ".join([rt, *values]) + " |")
    references = [rt for rt in names if rt.startswith("bare")]
    others = [rt for rt in names if not rt.startswith("bare")]
    if references and others:
        lines += [
            "",
            "| runtime / reference | no-op jobs/s | " + " | ".join(f"C={c}" for c in levels) + " |",
        ]
        lines.append("|" + "---|" * (len(levels) + 2))
        for rt in others:
            for ref in references:
                noop = _median(cell(rt, "noop", noop_conc), "rate_steady") / _median(
                    cell(ref, "noop", noop_conc), "rate_steady"
                )
                ratios = [
                    _median(cell(rt, "io", c), "efficiency")
                    / _median(cell(ref, "io", c), "efficiency")
                    for c in levels
                ]
                cells = " | ".join(f"{x:.3f}" for x in ratios)
                lines.append(f"| {rt} / {ref} | {noop:.3f} | {cells} |")
    return "\n".join(lines)


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[f.name for f in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 1,10,50,200, got {text!r}"
        ) from None
    if any(c < 1 for c in levels):
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1, got {text!r}")
    return levels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lab.bench peers", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats; the table shows medians"
    )
    p.add_argument(
        "--runtimes", type=lambda s: s.split(","), default=list(RUNTIMES),
        help=f"comma-separated, of: {', '.join(RUNTIMES)} (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--peers", type=lambda s: s.split(","), default=[],
        help="optional peers installed from PyPI into a temporary venv: dramatiq",
    )  # fmt: skip
    p.add_argument("--scenarios", type=lambda s: s.split(","), default=["noop", "io"])
    p.add_argument("--io-levels", type=_levels, default=IO_LEVELS, help="default 1,10,50,200")
    p.add_argument("--jobs-per-slot", type=int, default=40, help="IO jobs per unit of C")
    p.add_argument("--min-jobs", type=int, default=100, help="fewest IO jobs per cell")
    p.add_argument("--noop-jobs", type=int, default=20_000)
    p.add_argument("--noop-conc", type=int, default=50)
    p.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop",
        help="event loop of the bare peer AND the lab worker (default: the worker's default)",
    )  # fmt: skip
    p.add_argument("--csv", type=Path, help="also write every measured cell here")
    return p


def main(argv: list[str]) -> int:
    p = build_parser()
    ns = p.parse_args(argv)
    unknown = [n for n in ns.runtimes if n not in RUNTIMES]
    unknown += [n for n in ns.peers if n != "dramatiq"]
    unknown += [n for n in ns.scenarios if n not in ("noop", "io")]
    if unknown or ns.repeats < 1:
        p.error(
            f"unknown runtime, peer or scenario: {', '.join(unknown)}"
            if unknown
            else "--repeats >= 1"
        )
    with tempfile.TemporaryDirectory(prefix="lab-peers-") as tmp:
        workdir = Path(tmp)
        (workdir / "logs").mkdir()
        rows = run_benchmark(ns, workdir)
    if ns.csv:
        write_csv(rows, ns.csv)
    print()
    loads = sorted(r.load_1m for r in rows)
    print(
        f"{machine()}; median of {ns.repeats} repeats; loop: {ns.loop}; machine load (1-minute"
        f" average) {loads[0]:.1f} to {loads[-1]:.1f}, median {statistics.median(loads):.1f}"
    )
    print()
    print(format_table(rows, ns.io_levels, ns.noop_conc))
    return 0
