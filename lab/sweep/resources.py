"""CPU and memory of every process of a trial, sampled while it runs.

A figure means something only if the configuration under test, not the lab, was the limit. The
mock, Redis and the producer are each one thread of Python or C: when one of them used most of a
core, the trial measured the lab (`harness_saturated`).
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import psutil

#: The processes that are the lab, not the system under test ("web": the app under test when
#: the job slots run elsewhere, since then it only produces work).
HARNESS_ROLES = ("mock", "redis", "producer", "web", "locust")

#: Mean cores above which a single-threaded harness component is taken as the limit.
SATURATED_CORES = 0.85


@dataclass
class Usage:
    """One process over the trial: mean, peak and steady cores, peak resident memory."""

    role: str  # "worker", "mock", "redis", "producer", "web" or "locust"
    cpu_s: float = 0.0
    cores: float = 0.0
    peak_cores: float = 0.0
    rss_max_mb: float = 0.0
    window_cores: list[float] = field(default_factory=list)  # one per sampling window
    window_demand: list[float] = field(default_factory=list)  # share of a window wanting a core

    @property
    def steady_cores(self) -> float:
        """The median over the sampling windows: the steady part, which start-up and the drain's
        tail barely move (the mean over the trial when it had under three windows)."""
        if len(self.window_cores) < 3:
            return self.cores
        return float(statistics.median(self.window_cores))

    @property
    def steady_demand(self) -> float:
        """The median share of a window the process ran on OR waited for a core (Linux
        schedstat): 1.0 is a process that always wanted a core, even on a machine too busy to
        give it one. Its steady cores where schedstat is not available."""
        if len(self.window_demand) < 3:
            return self.steady_cores
        return float(statistics.median(self.window_demand))


class ResourceSampler:
    """Samples the named processes in a background thread; `usage` is read after the block."""

    def __init__(self, pids: Mapping[str, tuple[str, int]], *, interval_s: float = 0.25) -> None:
        """`pids`: component name -> (role, pid)."""
        self.interval_s = interval_s
        self._procs: dict[str, psutil.Process] = {}
        self.usage: dict[str, Usage] = {}
        for name, (role, pid) in pids.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                self._procs[name] = psutil.Process(pid)
                self.usage[name] = Usage(role=role)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._first: dict[str, float | None] = {}
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)

    def add(self, name: str, role: str, pid: int) -> None:
        """Sample one more process from now on (a child started after the clock, like Locust)."""
        with self._lock, contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            self._first[name] = self._cpu(proc)
            self._procs[name] = proc
            self.usage[name] = Usage(role=role)

    def _cpu(self, proc: psutil.Process) -> float | None:
        try:
            t = proc.cpu_times()
            return float(t.user + t.system)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return None

    def _wanted_s(self, proc: psutil.Process) -> float | None:
        """Seconds the process's main thread ran or sat runnable, waiting for a core."""
        try:
            with open(f"/proc/{proc.pid}/schedstat") as f:
                run_ns, wait_ns, _ = f.read().split()
        except (OSError, ValueError):
            return None
        return (int(run_ns) + int(wait_ns)) / 1e9

    def _rss_mb(self, proc: psutil.Process) -> float:
        try:
            return float(proc.memory_info().rss) / 2**20
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return 0.0

    def _run(self) -> None:
        start = time.monotonic()
        with self._lock:
            self._first |= {n: self._cpu(p) for n, p in self._procs.items()}
        last, last_t = dict(self._first), start
        wanted: dict[str, float | None] = {n: self._wanted_s(p) for n, p in self._procs.items()}
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            with self._lock:
                procs = list(self._procs.items())
            for name, proc in procs:
                cpu = self._cpu(proc)
                usage = self.usage[name]
                usage.rss_max_mb = max(usage.rss_max_mb, self._rss_mb(proc))
                before = last.get(name, self._first.get(name))
                if cpu is not None and before is not None:
                    window = (cpu - before) / (now - last_t)
                    usage.window_cores.append(window)
                    usage.peak_cores = max(usage.peak_cores, window)
                    usage.cpu_s = cpu - (self._first.get(name) or 0.0)
                last[name] = cpu
                want, want_before = self._wanted_s(proc), wanted.get(name)
                if want is not None and want_before is not None:
                    usage.window_demand.append((want - want_before) / (now - last_t))
                wanted[name] = want
            last_t = now
        wall = max(time.monotonic() - start, 1e-9)
        for name, proc in list(self._procs.items()):
            cpu, first = self._cpu(proc), self._first.get(name)
            usage = self.usage[name]
            # a trial shorter than one interval has no other sample
            usage.rss_max_mb = max(usage.rss_max_mb, self._rss_mb(proc))
            if cpu is not None and first is not None:
                usage.cpu_s = cpu - first
            usage.cores = usage.cpu_s / wall

    @contextlib.contextmanager
    def running(self) -> Iterator[ResourceSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def saturation(usage: Mapping[str, Usage], *, cpu_count: int) -> tuple[bool, bool, str]:
    """(harness_saturated, machine_saturated, why) from the usage of a trial's processes.

    The harness (a mock, Redis, the producer) saturated: the figure measures the lab. The
    machine saturated: every core was busy, so workers and services competed for CPU; the figure
    holds for this machine only.
    """
    reasons = harness_busy(usage)
    harness = bool(reasons)
    busy = machine_busy(usage, cpu_count=cpu_count)
    if busy:
        reasons.append(busy)
    return harness, bool(busy), "; ".join(reasons)


def harness_busy(usage: Mapping[str, Usage]) -> list[str]:
    """The harness components (a mock, Redis, the producer...) that used most of a core."""
    return [
        f"{name} used {u.cores:.2f} cores"
        for name, u in usage.items()
        if u.role in HARNESS_ROLES and u.cores >= SATURATED_CORES
    ]


def machine_busy(usage: Mapping[str, Usage], *, cpu_count: int) -> str:
    """Why every core of a host was busy ("" when they were not): `usage` is all of that host's
    processes."""
    total = sum(u.cores for u in usage.values())
    return (
        f"all {cpu_count} cores were busy ({total:.2f} used)" if total >= 0.95 * cpu_count else ""
    )
