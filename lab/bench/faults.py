"""`python -m lab.bench faults`: crashes from OUTSIDE the lab, as the OOM killer would make them.

Method:
1. Instance crashes. A sweep of `--trials` repeats of one configuration (3 instances x 16 slots,
   a backlog of `--items` items into a mock OpenSearch, the default heartbeat TTL) runs as its
   own process (`python -m lab.sweep`). This process watches it from outside: for each trial it
   draws a moment (a fraction of the backlog done, uniform in [0.1, 0.7], seeded) and when the
   trial's queue gets there it sends SIGKILL to one of the trial's worker processes, chosen at
   random. Nothing in the sweep knows. Afterwards: trials.csv and the run's status.
2. Broker loss. A second sweep of 2 trials; mid-way through the second, the private
   redis-server gets SIGKILL. Measured: the sweep's exit status and how long after the kill it
   came, its stderr, which of its processes outlived it, the run's status; then `--resume`
   (a new private broker) and the status again.

Tests use `OutsideKiller` and `sweep_processes` too (tests/test_faults.py).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil
import redis

from lab.infra.broker import BROKER_URL_ENV
from lab.infra.procs import env_with_pythonpath, python_module_argv
from lab.results import RunFolder
from lab.runtime.queue import Queue


def sweep_processes(sweep: psutil.Process, module: str) -> list[psutil.Process]:
    """The sweep's descendants running `python -m module` (or that binary, e.g. redis-server).

    A worker forked from the sweep's fork server (`lab.infra.zygote`, which preloads the module)
    shows the server's command line: its children count, the server itself does not."""
    out = []
    for proc in sweep.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            line = " ".join(proc.cmdline())
            if module not in line:
                continue
            parent = proc.parent()
            if _ZYGOTE in line and (parent is None or _ZYGOTE not in " ".join(parent.cmdline())):
                continue  # the fork server, not one of its children
            out.append(proc)
    return out


_ZYGOTE = "lab.infra.zygote"


def _instances(client: redis.Redis) -> dict[int, str]:
    """pid -> instance id of every live worker instance, from the trial queues' heartbeats (a
    forked worker's command line is its fork server's: no --instance-id there)."""
    out: dict[int, str] = {}
    for key in client.scan_iter(match="lab:{trial-*}:hb:*", count=1000):
        with contextlib.suppress(redis.RedisError, TypeError, ValueError):
            pid = int(client.get(key))  # type: ignore[arg-type]
            out[pid] = bytes(key).decode().rsplit(":hb:", 1)[1]
    return out


def broker_url(sweep: psutil.Process) -> str | None:
    """The sweep's broker URL, password included, as its worker processes got it (from their
    environment: this process runs as the same user); None while no worker runs."""
    for proc in sweep_processes(sweep, "lab.runtime.worker"):
        with contextlib.suppress(psutil.Error):
            url = proc.environ().get(BROKER_URL_ENV)
            if url:
                return url
    return None


@dataclass
class Kill:
    trial_id: str
    target: str  # the instance id killed
    fraction: float  # of the backlog done when it was killed


@dataclass
class OutsideKiller:
    """Kills one worker instance of each trial of a running sweep, from outside it."""

    sweep: psutil.Process
    instances: int
    rng: random.Random
    low: float = 0.1
    high: float = 0.7
    kills: list[Kill] = field(default_factory=list)
    _aim: dict[str, float] = field(default_factory=dict)  # trial -> fraction to kill at
    _hit: set[str] = field(default_factory=set)

    def poll(self, client: redis.Redis) -> None:
        """One look: kill in every trial that reached its drawn moment and lost no one yet."""
        by_trial: dict[str, list[tuple[psutil.Process, str]]] = {}
        instances = _instances(client)
        for proc in sweep_processes(self.sweep, "lab.runtime.worker"):
            instance = instances.get(proc.pid)
            if instance is not None:
                by_trial.setdefault(instance.rsplit("-i", 1)[0], []).append((proc, instance))
        for trial_id, procs in by_trial.items():
            if trial_id in self._hit or len(procs) < self.instances:
                continue  # already hit, or not every instance started yet
            done, enqueued = _progress(client, trial_id)
            if enqueued == 0:
                continue
            aim = self._aim.setdefault(trial_id, self.rng.uniform(self.low, self.high))
            if done / enqueued >= aim:
                victim, target = self.rng.choice(sorted(procs, key=lambda p: p[0].pid))
                with contextlib.suppress(psutil.Error):
                    victim.send_signal(signal.SIGKILL)
                    self.kills.append(Kill(trial_id, target, done / enqueued))
                self._hit.add(trial_id)


def _progress(client: redis.Redis, trial_id: str) -> tuple[int, int]:
    """(jobs done, jobs enqueued) of the trial's queue, as the sweep's own polling reads them."""
    for key in client.scan_iter(match=f"lab:{{trial-{trial_id}-*}}:stats", count=1000):
        name = bytes(key).decode()[len("lab:{") : -len("}:stats")]
        stats = Queue(client, name).stats()
        return stats.get("done", 0), stats.get("enqueued", 0)
    return 0, 0


SCENARIO = """\
name: {name}
seed: {seed}
services:
  search:
    kind: opensearch
    capacity: 64
    queue: 500
    latency: {{dist: lognormal, median_ms: 40, p99_ms: 150}}
    per_item_ms: 0.2
workload:
  job: opensearch.bulk
  service: search
  items: {items}
sweep:
  num_workers: [16]
  instances: [3]
  batch_size: [{batch_size}]
  repeats: {trials}
  trial_timeout_s: 120
"""


def write_scenario(
    root: Path, name: str, *, seed: int, items: int, batch_size: int, trials: int
) -> Path:
    """The benchmark's scenario file: 3 instances x 16 slots, a backlog into a mock OpenSearch."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.yaml"
    path.write_text(
        SCENARIO.format(name=name, seed=seed, items=items, batch_size=batch_size, trials=trials)
    )
    return path


@contextlib.contextmanager
def running_sweep(*args: str) -> Iterator[subprocess.Popen[str]]:
    """`python -m lab.sweep ARGS` as a child of this process (outside the lab), output captured;
    interrupted (SIGINT, as Ctrl-C) if still running when the block ends."""
    proc = subprocess.Popen(
        python_module_argv("lab.sweep", *args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_with_pythonpath(),
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def outside_kills(trials: int, items: int, batch_size: int, seed: int, root: Path) -> int:
    """Part 1 (see the module docstring); returns 0 when every expectation held."""
    scenario = write_scenario(
        root, "outside-kills", seed=seed, items=items, batch_size=batch_size, trials=trials
    )
    with running_sweep(str(scenario), "--out", str(root / "results")) as sweep:
        me = psutil.Process(sweep.pid)
        killer = OutsideKiller(me, instances=3, rng=random.Random(seed))
        client = None
        while sweep.poll() is None:
            url = broker_url(me)
            if url is not None and client is None:
                client = redis.Redis.from_url(url)
            if client is not None:
                with contextlib.suppress(redis.RedisError, OSError):
                    killer.poll(client)
            time.sleep(0.02)
        _, err = sweep.communicate()
    [run_dir] = (root / "results" / "outside-kills").iterdir()
    run = RunFolder.open(run_dir)
    frame = run.trials().set_index("trial_id")
    cols = ["instance_crashes", "failed", "items_done", "lost_items", "duplicate_items",
            "duplicate_jobs", "recovered_jobs", "recovery_s", "dip_ratio", "items_per_s"]  # fmt: skip
    kills = pd.DataFrame([vars(k) for k in killer.kills]).set_index("trial_id")
    table = kills.join(frame[cols], how="outer")
    print(f"exit status {sweep.returncode}; run status {run.manifest['status']}; {run.path}")
    if err.strip():
        print(f"stderr: {err.strip()}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string())
    done = frame["items_done"] == items
    print(
        f"\n{len(kills)} kills, {len(frame)} of {trials} trials in trials.csv; "
        f"{int(done.sum())} drained every item; lost_items {sorted(set(frame['lost_items']))}; "
        f"failed {int(frame['failed'].sum())}; duplicate_items total "
        f"{int(frame['duplicate_items'].sum())} (max {int(frame['duplicate_items'].max())}); "
        f"recovery_s median {frame['recovery_s'].median():.2f}, max {frame['recovery_s'].max():.2f}"
    )
    ok = (
        sweep.returncode == 0 and run.manifest["status"] == "complete" and len(frame) == trials
        and bool(done.all()) and bool((frame["lost_items"] == 0).all())
        and bool((frame["instance_crashes"] == 1).all())
    )  # fmt: skip
    return 0 if ok else 1


def broker_loss(seed: int, root: Path) -> int:
    """Part 2 (see the module docstring); returns 0 when every expectation held."""
    scenario = write_scenario(root, "broker-loss", seed=seed, items=6000, batch_size=5, trials=2)
    with running_sweep(str(scenario), "--out", str(root / "results")) as sweep:
        me = psutil.Process(sweep.pid)
        seen: set[int] = set()
        killed_at = None
        while sweep.poll() is None and killed_at is None:
            seen |= {p.pid for p in me.children(recursive=True)}
            runs = list((root / "results" / "broker-loss").glob("*/trials.csv"))
            second = bool(runs) and len(runs[0].read_text().splitlines()) >= 2
            if second and len(sweep_processes(me, "lab.runtime.worker")) >= 3:
                time.sleep(0.5)  # well inside the second trial
                seen |= {p.pid for p in me.children(recursive=True)}
                for proc in sweep_processes(me, "redis-server"):
                    proc.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
            time.sleep(0.02)
        _, err = sweep.communicate(timeout=60)
        exited_after_s = time.monotonic() - (killed_at or time.monotonic())
    time.sleep(0.5)  # a child caught mid-exit gets its parent-death signal by now
    left = [p for p in seen if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    [run_dir] = (root / "results" / "broker-loss").iterdir()
    status = RunFolder.open(run_dir).manifest["status"]
    print(
        f"exit status {sweep.returncode}, {exited_after_s:.2f} s after the kill "
        f"({exited_after_s / 10:.2f} of the 10 s bound); run status {status}; "
        f"processes left {left}; stderr ({len(err.strip().splitlines())} lines):\n{err.strip()}"
    )
    with running_sweep("--resume", str(run_dir)) as resumed:
        resumed.communicate(timeout=300)
    status_after = RunFolder.open(run_dir).manifest["status"]
    print(f"--resume: exit status {resumed.returncode}, run status {status_after}")
    ok = sweep.returncode == 2 and not left and status == "failed" and status_after == "complete"
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lab.bench faults", description=__doc__.split("\n")[0]
    )
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--items", type=int, default=15000)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--skip-broker", action="store_true", help="only the instance crashes")
    ns = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lab-bench-faults-") as tmp:
        status = outside_kills(ns.trials, ns.items, ns.batch_size, ns.seed, Path(tmp))
        if not ns.skip_broker:
            print()
            status |= broker_loss(ns.seed, Path(tmp) / "broker")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
