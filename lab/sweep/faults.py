"""Faults during a trial: the ones the scenario injects (`faults:`) and the ones that just happen.

- A worker instance that exits (any signal, any exit code, whoever did it) is part of the
  experiment: the trial goes on, a survivor puts its jobs back once its heartbeat expires, and
  the trial row says what that cost (`instance_crashes`, `recovery_s`, `recovered_jobs`, lost and
  duplicate items, `dip_ratio`). When every instance is gone the work cannot finish: the trial
  fails with its reason, and the sweep goes on.
- The harness failing (the broker gone, a mock service that exits unplanned) stops the run with
  a `HarnessError`: its figures would measure the lab.

`TrialFaults` is polled by the trial's drain loop: it applies the faults that fell due, notices
exits, and times each recovery. Nothing here blocks for long, except a paused broker, which
blocks every client, the lab's too, until it answers again.
"""

from __future__ import annotations

import math
import random
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import redis

from lab.errors import HarnessError
from lab.infra.broker import Broker
from lab.runtime.queue import OK, JobEvent, Queue
from lab.scenario.faults import Fault

#: How long the lab waits for one broker reply beyond any scheduled pause, in seconds: past it,
#: the broker is lost.
BROKER_ANSWER_S = 5.0

#: What a broker that cannot be reached, or did not answer in time, raises (not a bad command).
BROKER_ERRORS = (redis.ConnectionError, redis.TimeoutError)

#: trials.csv columns this module fills, in order (see lab.results.TRIAL_COLUMNS).
FAULT_COLUMNS = ("instance_crashes", "faults_injected", "recovery_s", "dip_ratio")


@dataclass
class FaultRecord:
    """One thing that went wrong during a trial, and how long the system took to get over it."""

    at_s: float  # after the clock start
    action: str  # kill, stall, restart, pause; or exit: an instance exit nobody scheduled
    target: str  # worker-1, mock-search, broker
    detail: str  # the signal, how the process ended, the duration
    injected: bool
    recovered_s: float | None = None  # at_s to recovery (see `recovery`); None: never
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ProcessLike(Protocol):
    """What this module needs of a process: a local `Child`, or one a placement runs elsewhere
    (`lab.sweep.ray_placement`)."""

    name: str

    def alive(self) -> bool: ...

    def signal(self, signum: int) -> None: ...

    def exit_description(self) -> str: ...

    def last_words(self, lines: int = 12) -> str: ...


@dataclass
class ServiceHandle:
    """A mock service's process, and how the trial starts it again on the same address."""

    child: ProcessLike
    start_again: Callable[[], ProcessLike]  # the old process has exited; returns the new one
    ready: Callable[[], bool]  # the new process announced it is up


def broker_lost(broker: Broker, trial_id: str, exc: BaseException) -> HarnessError:
    """The one message for a broker that stopped answering during a trial."""
    said = str(exc).rstrip(". ") or type(exc).__name__
    text = f"the broker at {broker.display_url} stopped answering during trial {trial_id}: {said}"
    if broker.child is not None:
        how = broker.child.exit_description() if not broker.child.alive() else "stopped answering"
        text += (
            f". It was the lab's private redis-server, which {how}; it kept nothing on disk "
            "(persistence off), so the trial's queued jobs were lost with it"
        )
    return HarnessError(text)


@dataclass
class _Exit:
    """An instance that exited (or was told to), waiting for its jobs to be put back."""

    record: FaultRecord
    instance: str


class TrialFaults:
    """Applies a trial's fault schedule and watches its processes; `poll` it from the drain loop."""

    def __init__(
        self,
        schedule: Sequence[Fault],
        *,
        trial_id: str,
        queue: Queue,
        broker: Broker,
        instances: Mapping[str, ProcessLike],  # queue instance id -> its process
        services: Mapping[str, ServiceHandle],  # service name -> its process
        rng: random.Random,
        heartbeat_ttl_s: float,
        started: float,  # time.monotonic() at the clock start
    ) -> None:
        self.trial_id, self.queue, self.broker, self.rng = trial_id, queue, broker, rng
        self.started = started
        self.instances, self.services = dict(instances), dict(services)
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.todo = sorted(schedule, key=lambda f: f.at_s)
        self.records: list[FaultRecord] = []
        self.applied = 0
        self.exits: list[FaultRecord] = []  # one per instance seen to exit, in order
        self._seen_exit: set[str] = set()
        self._retired: set[str] = set()  # instances stopped on purpose (the autoscaler's)
        self._killed: dict[str, FaultRecord] = {}  # instance -> the kill that should end it
        self._recovering: list[_Exit] = []
        self._stalled: dict[str, tuple[float, FaultRecord]] = {}  # instance -> (resume at, record)
        self._restarting: dict[str, tuple[str, FaultRecord]] = {}  # service -> (phase, record)
        self._paused: FaultRecord | None = None

    # -- the drain loop's side ---------------------------------------------------------------------

    def poll(self, elapsed_s: float) -> None:
        """Apply what fell due, notice exits, time recoveries. HarnessError if the lab broke."""
        self._check_harness()
        while self.todo and self.todo[0].at_s <= elapsed_s:
            self._apply(self.todo.pop(0), elapsed_s)
        self._resume_stalled(elapsed_s)
        self._watch_instances(elapsed_s)
        self._watch_restarts(elapsed_s)
        if self._paused is not None:
            self.queue.client.ping()  # returns once the broker answers again
            self._paused.recovered_s = round(self._now_s() - self._paused.at_s, 3)
            self._paused = None
        if self._recovering or self._stalled:
            self._watch_recovery(self._now_s())

    def add_instance(self, instance: str, child: ProcessLike) -> None:
        """An instance started during the trial (the autoscaler's): watched like the others."""
        self.instances[instance] = child

    def retire_instance(self, instance: str) -> None:
        """An instance about to be stopped on purpose: its exit is no crash, no fault hits it."""
        self._retired.add(instance)

    def every_instance_gone(self) -> str | None:
        """Why the work cannot finish, when no instance is left; None while one runs."""
        if any(c.alive() for i, c in self.instances.items() if i not in self._retired):
            return None
        said = "; ".join(f"{r.target} {r.detail} at {r.at_s:.1f} s" for r in self.exits)
        return f"every instance exited ({said})"

    def __enter__(self) -> TrialFaults:
        return self

    def __exit__(self, *exc: object) -> None:
        """However the trial ends, no instance stays frozen."""
        for instance in self._stalled:
            self.instances[instance].signal(signal.SIGCONT)
        self._stalled.clear()

    def _now_s(self) -> float:
        return time.monotonic() - self.started

    # -- applying --------------------------------------------------------------------------------

    def _apply(self, fault: Fault, elapsed_s: float) -> None:
        self.applied += 1
        if fault.kill or fault.stall:
            alive = [
                i
                for i, c in self.instances.items()
                if c.alive() and i not in self._stalled and i not in self._retired
            ]
            chosen = self.rng.sample(sorted(alive), min(fault.count, len(alive)))
            for instance in chosen:
                child = self.instances[instance]
                if fault.kill:
                    record = self._record(elapsed_s, "kill", child.name, fault.signal)
                    self._killed[instance] = record
                    child.signal(signal.Signals[fault.signal])
                else:
                    assert fault.for_s is not None
                    record = self._record(elapsed_s, "stall", child.name, f"for {fault.for_s:g} s")
                    child.signal(signal.SIGSTOP)
                    self._stalled[instance] = (elapsed_s + fault.for_s, record)
            if not chosen:  # every instance is frozen: nothing to do, nothing to recover from
                record = self._record(elapsed_s, fault.action, "-", "no instance left to hit")
                record.recovered_s = 0.0
        elif fault.restart:
            assert fault.name is not None
            handle = self.services[fault.name]
            record = self._record(elapsed_s, "restart", handle.child.name, "SIGTERM, then started")
            handle.child.signal(signal.SIGTERM)
            self._restarting[fault.name] = ("stopping", record)
        else:
            assert fault.for_s is not None
            self._paused = self._record(elapsed_s, "pause", "broker", f"for {fault.for_s:g} s")
            self.queue.client.execute_command("CLIENT", "PAUSE", int(fault.for_s * 1000), "ALL")

    def _record(
        self, at_s: float, action: str, target: str, detail: str, *, injected: bool = True
    ) -> FaultRecord:
        record = FaultRecord(round(at_s, 3), action, target, detail, injected)
        self.records.append(record)
        return record

    # -- watching --------------------------------------------------------------------------------

    def _check_harness(self) -> None:
        """The broker and the mocks must be up (bar a restart the schedule asked for)."""
        if self.broker.child is not None and not self.broker.child.alive():
            raise broker_lost(self.broker, self.trial_id, ConnectionError("its process is gone"))
        for name, handle in self.services.items():
            if name not in self._restarting and not handle.child.alive():
                raise HarnessError(
                    f"the mock service {name} {handle.child.exit_description()} during trial "
                    f"{self.trial_id}: {handle.child.last_words()}"
                )

    def _watch_instances(self, elapsed_s: float) -> None:
        for instance, child in self.instances.items():
            if instance in self._seen_exit or instance in self._retired or child.alive():
                continue
            self._seen_exit.add(instance)
            how = child.exit_description()
            record = self._killed.get(instance)
            if record is None:  # nobody here scheduled it: the kernel, a user, a bug
                words = child.last_words(lines=3).splitlines()[0]
                record = self._record(elapsed_s, "exit", child.name, how, injected=False)
                record.note = words
            else:
                record.detail = how
            self.exits.append(record)
            self._recovering.append(_Exit(record, instance))

    def _watch_recovery(self, now_s: float) -> None:
        """An exited instance recovered once it left the queue's instances (jobs put back)."""
        registered = self.queue.registered_instances()
        for gone in [e for e in self._recovering if e.instance not in registered]:
            gone.record.recovered_s = round(now_s - gone.record.at_s, 3)
            self._recovering.remove(gone)
        for instance, (_, record) in self._stalled.items():
            if instance not in registered and not record.note:
                record.note = (
                    f"its jobs were put back while it was frozen (heartbeat TTL "
                    f"{self.heartbeat_ttl_s:g} s): they ran again elsewhere"
                )

    def _resume_stalled(self, elapsed_s: float) -> None:
        for instance, (resume_at, record) in list(self._stalled.items()):
            if elapsed_s >= resume_at:
                self.instances[instance].signal(signal.SIGCONT)
                record.recovered_s = round(elapsed_s - record.at_s, 3)
                del self._stalled[instance]

    def _watch_restarts(self, elapsed_s: float) -> None:
        for name, (phase, record) in list(self._restarting.items()):
            handle = self.services[name]
            if phase == "stopping" and not handle.child.alive():
                handle.child = handle.start_again()
                self._restarting[name] = ("starting", record)
            elif phase == "starting":
                if not handle.child.alive():
                    del self._restarting[name]  # _check_harness reports it on the next poll
                elif handle.ready():
                    record.recovered_s = round(elapsed_s - record.at_s, 3)
                    del self._restarting[name]

    # -- what it cost ----------------------------------------------------------------------------

    def figures(self, events: Sequence[JobEvent], *, clock_start: float) -> dict[str, Any]:
        """The trial row's fault columns (FAULT_COLUMNS)."""
        return fault_figures(
            self.records,
            events,
            clock_start=clock_start,
            applied=self.applied,
            exits=len(self.exits),
        )


def fault_summary(row: Mapping[str, Any]) -> str:
    """The fault columns of a trial row, for its progress line ('' when nothing happened)."""
    if not (row["instance_crashes"] or row["faults_injected"]):
        return ""
    recovery = row["recovery_s"]
    lost, dup = row["lost_items"], row["duplicate_items"]
    return (
        f" [faults {row['faults_injected']}, instance exits {row['instance_crashes']}, "
        f"recovery {'-' if math.isnan(recovery) else f'{recovery:.1f} s'}, "
        f"lost {'?' if lost is None else lost}, duplicates {'?' if dup is None else dup}]"
    )


def fault_figures(
    records: Sequence[FaultRecord],
    events: Sequence[JobEvent],
    *,
    clock_start: float,
    applied: int,
    exits: int,
) -> dict[str, Any]:
    """`instance_crashes` (`exits`), `faults_injected` (`applied`), `recovery_s` (the longest
    recovery of an exit, a restart or a pause) and `dip_ratio` (items/s inside the fault
    windows over items/s before the first fault)."""
    recoveries = [
        r.recovered_s for r in records if r.action != "stall" and r.recovered_s is not None
    ]
    return {
        "instance_crashes": exits,
        "faults_injected": applied,
        "recovery_s": max(recoveries) if recoveries else math.nan,
        "dip_ratio": dip_ratio(records, events, clock_start=clock_start),
    }


def dip_ratio(
    records: Sequence[FaultRecord], events: Sequence[JobEvent], *, clock_start: float
) -> float:
    """Throughput while faults lasted (each from its start to its recovery, or to the end),
    over throughput before the first one: 1 is no dip, 0 a standstill. NaN without a fault or
    without work done before it."""
    done: dict[str, JobEvent] = {}
    for e in events:
        if e.outcome == OK and (e.job_id not in done or e.finished_at < done[e.job_id].finished_at):
            done[e.job_id] = e
    if not records or not done:
        return math.nan
    finished = sorted((e.finished_at - clock_start, e.items) for e in done.values())
    end_s = finished[-1][0]
    windows = sorted(
        (r.at_s, r.at_s + r.recovered_s if r.recovered_s is not None else end_s) for r in records
    )
    merged: list[list[float]] = []
    for start, stop in windows:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    first = merged[0][0]
    before = sum(items for t, items in finished if t <= first)
    inside = sum(items for t, items in finished if any(a < t <= b for a, b in merged))
    span = sum(min(b, end_s) - a for a, b in merged if a < end_s)
    if first <= 0 or before == 0 or span <= 0:
        return math.nan
    return round((inside / span) / (before / first), 4)
