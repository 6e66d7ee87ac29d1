"""One trial: one point of the grid, measured once, from fresh state to collected figures.

1. fresh queue state; the scenario's mock services started, each in its own process;
2. the job slots started: `instances` worker processes, or (co-located) `instances` web app
   processes with the slots inside; with Locust arrivals, the web app too; ALL ready before the
   clock starts;
3. the work produced (a backlog, open-loop arrivals, or Locust users posting to the web app)
   while CPU and RSS are sampled;
4. wait until drained (or the trial's timeout); stop the slots, then read the job events and the
   services' statistics; stop the services.
Every child process lives in a context manager: any exit from here stops it. Faults, injected or
not, are `lab.sweep.faults`'s: an instance that dies is measured, a broken harness stops the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.configuration import COLOCATED, Configuration
from lab.errors import HarnessError
from lab.external import ExternalService
from lab.infra.broker import Broker
from lab.infra.procs import Child, check_stop, python_module_argv, spawn, wait_for
from lab.infra.sockets import listening_socket, url_of
from lab.mocks.control import MockControl, new_token
from lab.mocks.spec import ServiceSpec
from lab.producers.arrivals import Job, ProducerReport, arrival_offsets, group_into_jobs, produce
from lab.producers.locust_runner import LOCUST_COLUMNS, locust_argv, read_locust_stats
from lab.runtime.jobs import job_type
from lab.runtime.limits import read_limit_events
from lab.runtime.queue import JobEvent, Queue
from lab.scenario.spec import AUTO, LocustArrival, Placement, Scenario
from lab.sweep import external
from lab.sweep.autoscale import AutoscaleHook, read_load
from lab.sweep.dynamics import record
from lab.sweep.faults import BROKER_ANSWER_S, BROKER_ERRORS, TrialFaults, broker_lost
from lab.sweep.harness import Harness
from lab.sweep.placement import LocalPlacement, Processes, TrialPlacement, open_placement
from lab.sweep.resources import ResourceSampler, Usage
from lab.sweep.trial_row import trial_row

Progress = Callable[[int, int, float], None]  # (items done, items expected, seconds elapsed)

#: How long children may take to announce they are ready before the trial fails.
READY_TIMEOUT_S = 60.0

#: How often the trial polls the queue while it drains.
POLL_S = 0.02


@dataclass
class DrainProgress:
    """How far a trial got, as a stop rule sees it while the trial drains."""

    elapsed_s: float
    items_done: int  # jobs done x batch_size (the last job of a backlog may hold fewer)
    items_planned: int
    jobs_settled: int  # done or dead
    jobs_dead: int
    arrivals_s: list[float]  # each planned job's scheduled arrival, s after the clock, sorted
    new_events: Callable[[], list[JobEvent]]  # attempts finished since the last call


#: Decides, while a trial drains, to stop it: the reason, or None to go on.
StopRule = Callable[[DrainProgress], str | None]


def instance_id(plan: TrialPlan, i: int) -> str:
    """Worker instance `i` of a trial, as the queue's heartbeats name it."""
    return f"{plan.trial_id}-i{i}"


@dataclass(frozen=True)
class TrialPlan:
    """A grid point and a repeat; `index` is its place in the run's (shuffled) order."""

    index: int
    num_workers: int | str  # or `auto`
    instances: int | str  # or `autoscale`
    batch_size: int
    repeat: int
    placement: Placement = "separate"
    length_x: int = 1  # the backlog multiplied, to measure a steady rate (backlogs only)

    @property
    def configuration(self) -> Configuration:
        return Configuration(self.num_workers, self.instances, self.batch_size, self.placement)

    @property
    def trial_id(self) -> str:
        return f"{self.configuration.label}-r{self.repeat}"

    @property
    def concurrency(self) -> int | None:
        return self.configuration.concurrency

    def initial_instances(self, scenario: Scenario) -> int:
        """Instances started before the clock: all of them, or the autoscaler's minimum."""
        if isinstance(self.instances, int):
            return self.instances
        return scenario.sweep.autoscale.min

    def most_instances(self, scenario: Scenario) -> int:
        """Instances that may run at once: all of them, or the autoscaler's maximum."""
        if isinstance(self.instances, int):
            return self.instances
        return scenario.sweep.autoscale.max

    def config(self) -> dict[str, Any]:
        """The trial's identity columns, in trials.csv order."""
        return {
            "trial_id": self.trial_id, "order": self.index, "num_workers": self.num_workers,
            "instances": self.instances, "batch_size": self.batch_size, "placement": self.placement,
            "repeat": self.repeat, "concurrency": self.concurrency, "length_x": self.length_x,
        }  # fmt: skip


@dataclass(frozen=True)
class TrialOptions:
    """Harness settings that are not part of the scenario."""

    grace_s: float = 5.0
    on_progress: Progress | None = None
    stop_rule: StopRule | None = None  # early stop (lab.sweep.search)


@dataclass
class TrialOutcome:
    row: dict[str, Any]  # one row of trials.csv
    events: list[JobEvent]
    services: dict[str, dict[str, Any]] = field(default_factory=dict)  # mock stats by name
    usage: dict[str, Usage] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)  # FaultRecord.to_json() each
    placement: dict[str, Any] | None = None  # what ran where, with a cluster (placement.record)
    timeline: dict[str, Any] | None = None  # limits and instances over time (dynamic only)


def _worker_flags(
    scenario: Scenario, plan: TrialPlan, urls: dict[str, str], i: int, options: TrialOptions
) -> list[str]:
    """The worker settings of instance `i` (broker, queue and job are added by the caller)."""
    w = scenario.workload
    flags = [
        "--num-workers", str(plan.num_workers), *_auto_flags(scenario, plan),
        "--instance-id", instance_id(plan, i),
        "--max-attempts", str(w.retry.max_attempts), "--backoff-ms", str(w.retry.backoff_ms),
        "--max-backoff-ms", str(w.retry.max_backoff_ms), "--jitter", w.retry.jitter,
        "--after-floor", w.retry.after_floor, "--job-timeout-s", str(w.job_timeout_s),
        "--heartbeat-ttl-s", str(scenario.workers.heartbeat_ttl_s),
        "--grace-s", str(options.grace_s), "--seed", str(derive_seed(scenario.seed, plan.repeat, "worker", i)),
    ]  # fmt: skip
    for name, url in urls.items():
        flags += ["--service", f"{name}={url}"]
    # an autoscaled trial paces each instance for the most it may run: the caps hold at any count
    return flags + external.worker_flags(scenario, plan.most_instances(scenario))


def _auto_flags(scenario: Scenario, plan: TrialPlan) -> list[str]:
    if plan.num_workers != AUTO:
        return []
    a = scenario.sweep.auto_limit
    return ["--auto-min", str(a.min), "--auto-max", str(a.max), "--auto-initial", str(a.initial),
            "--auto-algorithm", a.algorithm]  # fmt: skip


def _base_args(scenario: Scenario) -> dict[str, Any]:
    """What every job of the trial carries besides its items."""
    w = scenario.workload
    args: dict[str, Any] = {"service": w.service, "index": w.index}
    if w.cpu_ms_per_item:
        args["cpu_ms_per_item"] = w.cpu_ms_per_item
    return args


def _start_slots(
    place: TrialPlacement,
    scenario: Scenario,
    plan: TrialPlan,
    broker: Broker,
    queue: str,
    urls: dict[str, str],
    options: TrialOptions,
) -> str | None:
    """Start the job slots (and the web app when there is one); returns the web app's URL."""
    w = scenario.workload
    colocated = plan.placement == COLOCATED
    needs_web = colocated or isinstance(w.arrival, LocustArrival)
    common = ["--queue", queue, "--job", w.job]
    env = broker.child_env()  # the broker URL (and any password in it) never goes on argv
    grace = options.grace_s + 5
    instances = plan.initial_instances(scenario)
    if not colocated:
        place.start_workers(
            {
                instance_id(plan, i): [*common, *_worker_flags(scenario, plan, urls, i, options)]
                for i in range(instances)
            },
            grace_s=grace,
            env=broker.child_env(base={}),
        )
    if not needs_web:
        return None
    actors = place.driver
    sock = actors.stack.enter_context(listening_socket())
    jobs_per_request = w.arrival.jobs_per_request if isinstance(w.arrival, LocustArrival) else 1
    for i in range(instances if colocated else 1):
        ready = actors.logs / f"web-{i}.ready.json"
        argv = python_module_argv(
            "lab.producers.webapp", *common, "--base-args", json.dumps(_base_args(scenario)),
            "--batch-size", str(plan.batch_size), "--jobs-per-request", str(jobs_per_request),
            "--index", str(i), "--listen-fd", str(sock.fileno()), "--ready-file", str(ready),
        )  # fmt: skip
        if colocated:
            argv += ["--colocated", *_worker_flags(scenario, plan, urls, i, options)]
        actors.start(
            f"web-{i}",
            "worker" if colocated else "web",
            argv,
            ready=ready,
            pass_fds=(sock.fileno(),),
            grace_s=grace,
            env=env,
        )
    return url_of(sock)


def _prepare_services(scenario: Scenario, mocks: dict[str, MockControl], items: int) -> None:
    """Before the clock: documents in place for a job type that acts on existing ids (deletes),
    every counter at zero. `mocks` are the mocks only: an external service is prepared by
    `external.prepare`, with its own protocol (never a /_lab/ route)."""
    w = scenario.workload
    external.prepare(scenario, items)
    if job_type(w.job).seeds_ids and w.service in mocks:
        mocks[w.service].seed(w.index, [str(i) for i in range(items)])
    for mock in mocks.values():
        mock.reset()


def derive_seed(scenario_seed: int, *parts: object) -> int:
    """One seed per (scenario seed, repeat, role, index...): distinct for every combination,
    stable across runs and Python versions (unlike `hash`), never colliding like sums do."""
    digest = hashlib.blake2b(repr((scenario_seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # a non-negative 63-bit integer


@dataclass
class _Measured:
    """What the measured part of a trial leaves behind."""

    clock_start: float  # epoch seconds, as the job events are stamped
    wall_s: float
    timed_out: bool
    failure: str | None  # why the work could not finish (a timeout, every instance gone)
    stop_reason: str | None  # why a stop rule ended the trial early, if one did
    report: ProducerReport
    usage: dict[str, Usage]
    faults: TrialFaults
    autoscaled: dict[str, Any] | None  # AutoscaleHook.finish, when instances were autoscaled


class _Trial:
    """One trial's steps, in order: services, slots, ready, measure, collect."""

    def __init__(
        self, scenario: Scenario, plan: TrialPlan, broker: Broker, logs: Path,
        options: TrialOptions, harness: Harness | None = None,
    ) -> None:  # fmt: skip
        self.asked = plan  # its id and order name the trial; `plan` is what runs
        self.clipped = ""  # a dynamic policy fits the caps at its max (checked at load)
        if isinstance(plan.num_workers, int) and isinstance(plan.instances, int):
            num_workers, instances, self.clipped = external.clip(
                scenario, plan.num_workers, plan.instances
            )
            plan = dataclasses.replace(plan, num_workers=num_workers, instances=instances)
        scenario = external.with_trial_index(scenario, plan.trial_id, secrets.token_hex(3))
        self.scenario, self.plan, self.broker, self.logs = scenario, plan, broker, logs
        self.options = options
        # on this host the sweep's mocks serve trial after trial (LocalPlacement); a cluster's
        # trials start their own (open_placement leaves the harness out)
        self.harness = harness if scenario.cluster is None else None
        w = scenario.workload
        self.locust = w.arrival if isinstance(w.arrival, LocustArrival) else None
        rng = random.Random(derive_seed(scenario.seed, plan.repeat, "arrivals"))
        self.jobs = (
            []
            if self.locust is not None
            else group_into_jobs(
                arrival_offsets(w.arrival, items=(w.items or 0) * plan.length_x, rng=rng),
                plan.batch_size,
            )
        )
        self.items_planned = (
            sum(len(j.items) for j in self.jobs) or w.expected_items * plan.batch_size
        )
        # the mocks' /_lab/ routes answer only to this trial (or to this sweep's, when shared)
        self.token = self.harness.services.token if self.harness is not None else new_token()

    def run(self) -> TrialOutcome:
        try:
            return self._run()
        except BROKER_ERRORS as exc:  # the children are stopped by now
            raise broker_lost(self.broker, self.plan.trial_id, exc) from None

    def _run(self) -> TrialOutcome:
        pauses = [f.for_s or 0.0 for f in self.scenario.faults if f.pause]
        timeout_s = BROKER_ANSWER_S + max(pauses, default=0.0)
        with (
            self.broker.client(socket_timeout=timeout_s) as client,
            open_placement(self.scenario.cluster, self.broker, self.logs, self.harness) as place,
        ):
            queue = Queue(client, f"trial-{self.plan.trial_id}-{secrets.token_hex(3)}")
            queue.purge()
            restarted = {f.name for f in self.scenario.faults if f.restart and f.name}
            mocks = place.start_services(
                self._seeded_services(), token=self.token, restartable=restarted
            )
            urls = mocks | {
                name: spec.url for name, spec in external.externals(self.scenario).items()
            }
            web_url = _start_slots(
                place, self.scenario, self.plan, self.broker, queue.name, urls, self.options
            )
            self._wait_ready(queue, place, mocks)
            measured = self._measure(queue, place, web_url, urls)
            place.stop_workers()
            # the slots are stopped: every ack is written; the services are still up
            service_stats = {name: self._stats(name, url) for name, url in mocks.items()}
            for name in external.externals(self.scenario):
                service_stats[name] = external.collect(self.scenario, name)
            return self._collect(queue, service_stats, measured, place)  # the client still open

    def _mock(self, url: str) -> MockControl:
        return MockControl(url, self.token)

    def _stats(self, name: str, url: str) -> dict[str, Any]:
        try:
            return self._mock(url).stats()
        except OSError as exc:
            raise HarnessError(
                f"the mock service {name} did not answer after trial {self.plan.trial_id}: {exc}"
            ) from None

    def _seeded_services(self) -> dict[str, ServiceSpec]:
        """The scenario's mock services (not its external ones), each with the trial's own seed."""
        return {
            name: spec.model_copy(
                update={
                    "seed": derive_seed(
                        self.scenario.seed, self.plan.repeat, "mock", name, spec.seed
                    )
                }
            )
            for name, spec in self.scenario.services.items()
            if not isinstance(spec, ExternalService)
        }

    def _wait_ready(self, queue: Queue, place: TrialPlacement, urls: dict[str, str]) -> None:
        """Every service and slot up, the services seeded and zeroed: the clock may start."""
        everyone = place.watched()
        wait_for(
            place.started,
            what="the mock services and web app",
            timeout_s=READY_TIMEOUT_S,
            children=everyone,
        )
        instances = self.plan.initial_instances(self.scenario)
        expected = {instance_id(self.plan, i) for i in range(instances)}

        def instances_up() -> bool:
            place.check()
            return queue.live_instances() >= expected

        wait_for(
            instances_up,
            what=f"{instances} job instances to be ready",
            timeout_s=READY_TIMEOUT_S,
            children=everyone,
        )
        # last, so the services' epoch (their statistics, brown-outs) is the clock's start
        mocks = {name: self._mock(url) for name, url in urls.items()}
        _prepare_services(self.scenario, mocks, self.items_planned)

    def _measure(
        self, queue: Queue, place: TrialPlacement, web_url: str | None, urls: dict[str, str]
    ) -> _Measured:
        """Start the clock, produce the work, wait until it drained, sampling CPU and RSS."""
        pids = place.local_pids()
        pids["producer"] = ("producer", os.getpid())
        if self.broker.child is not None:
            pids["redis"] = ("redis", self.broker.child.pid)
        sampler = ResourceSampler(pids)
        with sampler.running(), place.sampling() as remote_usage:
            clock_start, started = time.time(), time.monotonic()
            faults = self._faults(queue, place, sampler, started)
            if self.locust is not None:
                assert web_url is not None
                drive = _drive_with_locust(
                    queue, self.locust, web_url, place.driver, sampler, self.plan.batch_size
                )
            else:
                drive = _drive_with_producer(
                    queue, self.scenario.workload.job, self.jobs, _base_args(self.scenario),
                    clock_start,
                )  # fmt: skip
            hook = self._autoscale_hook(queue, place, sampler, faults, urls)
            with drive as (sent, report), faults:
                drain = _Drain(
                    queue=queue,
                    sent=sent,
                    started=started,
                    timeout_s=self.scenario.sweep.trial_timeout_s,
                    faults=faults,
                    options=self.options,
                    items_planned=self.items_planned,
                    batch_size=self.plan.batch_size,
                    tick=hook.tick if hook else None,
                    arrivals_s=sorted(j.arrive_s for j in self.jobs),
                )
                timed_out, failure = drain.wait()
            wall_s = time.monotonic() - started
        usage = sampler.usage | remote_usage
        autoscaled = hook.finish(wall_s) if hook else None
        return _Measured(
            clock_start,
            wall_s,
            timed_out,
            failure,
            drain.stopped,
            report,
            usage,
            faults,
            autoscaled,
        )

    def _autoscale_hook(
        self,
        queue: Queue,
        place: TrialPlacement,
        sampler: ResourceSampler,
        faults: TrialFaults,
        urls: dict[str, str],
    ) -> AutoscaleHook | None:
        """With `instances: autoscale`: what starts (and samples) more worker instances through
        the placement, each watched by the faults like the first ones, and retires them."""
        if isinstance(self.plan.instances, int):
            return None
        assert isinstance(place, LocalPlacement)  # the scenario refuses autoscale + cluster
        common = ["--queue", queue.name, "--job", self.scenario.workload.job]
        env = self.broker.child_env(base={})

        def start(i: int) -> Child:
            flags = _worker_flags(self.scenario, self.plan, urls, i, self.options)
            child = place.start_worker(
                i, [*common, *flags], grace_s=self.options.grace_s + 5, env=env
            )
            sampler.add(child.name, "worker", child.pid)
            faults.add_instance(instance_id(self.plan, i), child)
            return child

        def stop(i: int, child: Child) -> None:
            faults.retire_instance(instance_id(self.plan, i))  # its exit is no crash
            place.stop_worker(child)

        return AutoscaleHook(
            self.scenario.sweep.autoscale,
            start=start,
            stop=stop,
            load=lambda running: read_load(
                queue.client, queue.keys, [instance_id(self.plan, i) for i in running]
            ),
            initial=place.driver.of_role("worker"),
            slots=self.plan.num_workers if isinstance(self.plan.num_workers, int) else None,
        )

    def _faults(
        self, queue: Queue, place: TrialPlacement, sampler: ResourceSampler, started: float
    ) -> TrialFaults:
        """The trial's fault schedule and watch over its instances, services and broker."""
        instances, services = place.fault_targets(sampler)
        return TrialFaults(
            self.scenario.faults,
            trial_id=self.plan.trial_id,
            queue=queue,
            broker=self.broker,
            instances={instance_id(self.plan, i): c for i, c in enumerate(instances)},
            services=services,
            rng=random.Random(derive_seed(self.scenario.seed, self.plan.repeat, "faults")),
            heartbeat_ttl_s=self.scenario.workers.heartbeat_ttl_s,
            started=started,
        )

    def _collect(
        self,
        queue: Queue,
        service_stats: dict[str, Any],
        measured: _Measured,
        place: TrialPlacement,
    ) -> TrialOutcome:
        """The job events (on one clock) and queue counters, then the queue's keys removed; the
        row. A node lost mid-trial fails the trial, whatever the survivors achieved."""
        events, clock_start = place.on_one_clock(queue.events(), measured.clock_start)
        limits = read_limit_events(queue.client, queue.name)
        failure = measured.failure or place.failure()
        recovered = queue.stats().get("recovered", 0)
        runtime = queue.runtime_stats()
        with self.broker.client() as client:
            Queue(client, queue.name).purge()
        web = (
            read_locust_stats(self.logs / "locust")
            if self.locust
            else dict.fromkeys(LOCUST_COLUMNS, math.nan)
        )
        identity = {"trial_id": self.asked.trial_id, "order": self.asked.index}
        p, m = self.plan, measured
        dynamics = record(
            num_workers=p.num_workers if isinstance(p.num_workers, int) else None,
            instances=p.instances if isinstance(p.instances, int) else None,
            wall_s=m.wall_s, clock_start=clock_start, limits=limits, autoscaled=m.autoscaled,
        )  # fmt: skip
        row = trial_row(
            p.config() | identity | {"clipped": self.clipped}, self.scenario, events,
            service_stats, m.usage, m.report, clock_start=clock_start,
            wall_s=m.wall_s, timed_out=m.timed_out, failure=failure,
            recovered=recovered, faults=m.faults.figures(events, clock_start=clock_start),
            web=web, cost=dynamics.cost,
            runtime=runtime, stop_reason=m.stop_reason,
        )  # fmt: skip
        row |= place.saturation(m.usage)
        return TrialOutcome(
            row=row, events=events, services=service_stats, usage=m.usage,
            faults=[r.to_json() for r in m.faults.records], placement=place.record(),
            timeline=dynamics.timeline,
        )  # fmt: skip


def run_trial(
    scenario: Scenario,
    plan: TrialPlan,
    *,
    broker: Broker,
    logs: Path,
    options: TrialOptions | None = None,
    harness: Harness | None = None,
) -> TrialOutcome:
    """Run one trial and return its row, events and service statistics; `logs` gets the
    children's logs (the run folder's `RunFolder.trial_logs`). With a `harness` (a sweep's
    `start_harness`) the mocks and the workers' fork server are shared across trials on this
    host (not on a cluster)."""
    logs.mkdir(parents=True, exist_ok=True)
    return _Trial(scenario, plan, broker, logs, options or TrialOptions(), harness).run()


@contextlib.contextmanager
def _drive_with_producer(
    queue: Queue, job: str, jobs: list[Job], base_args: dict[str, Any], clock_start: float
) -> Iterator[tuple[Callable[[], int | None], ProducerReport]]:
    """Send `jobs` on schedule from a thread; yields (jobs sent once all are, else None; report)."""
    stop = threading.Event()
    report = ProducerReport()
    failed: list[Exception] = []  # what stopped the producer early (a lost broker), for `sent`

    def _run() -> None:
        try:
            done = produce(
                queue, job, jobs, base_args=base_args, clock_start=clock_start, stop=stop
            )
        except Exception as exc:
            failed.append(exc)
            return
        report.jobs_sent, report.items_sent, report.max_lag_s = (
            done.jobs_sent,
            done.items_sent,
            done.max_lag_s,
        )

    def sent() -> int | None:
        if failed:
            raise failed[0]
        return None if producer.is_alive() else report.jobs_sent

    producer = threading.Thread(target=_run, name="producer", daemon=True)
    producer.start()
    try:
        yield sent, report
    finally:
        stop.set()
        producer.join()


@contextlib.contextmanager
def _drive_with_locust(
    queue: Queue,
    arrival: LocustArrival,
    web_url: str,
    slots: Processes,
    sampler: ResourceSampler,
    batch_size: int,
) -> Iterator[tuple[Callable[[], int | None], ProducerReport]]:
    """Run Locust headless against the web app; yields (jobs enqueued once it is done; report)."""
    env = dict(
        os.environ, LAB_WAIT_MIN_S=str(arrival.wait_min_s), LAB_WAIT_MAX_S=str(arrival.wait_max_s)
    )
    argv = locust_argv(
        host=web_url,
        users=arrival.users,
        spawn_rate=arrival.spawn_rate,
        duration_s=arrival.duration_s,
        csv_prefix=slots.logs / "locust",
    )
    report = ProducerReport()
    with spawn(argv, name="locust", log_path=slots.logs / "locust.log", env=env) as child:
        sampler.add("locust", "locust", child.pid)

        def sent() -> int | None:
            if child.alive():
                return None
            report.jobs_sent = queue.stats().get("enqueued", 0)
            report.items_sent = report.jobs_sent * batch_size
            return report.jobs_sent

        yield sent, report


@dataclass
class _Drain:
    """Polls until production ended and every job settled (or the trial's timeout)."""

    queue: Queue
    sent: Callable[[], int | None]  # jobs sent once production ended, else None
    started: float  # time.monotonic() at the clock's start
    timeout_s: float
    faults: TrialFaults
    options: TrialOptions
    items_planned: int
    batch_size: int
    tick: Callable[[float], None] | None = None  # called every poll (the autoscaler)
    arrivals_s: list[float] = field(default_factory=list)
    stopped: str | None = None  # why the stop rule ended the trial, if it did
    _events_read: int = 0

    def _new_events(self) -> list[JobEvent]:
        events = self.queue.events(self._events_read)
        self._events_read += len(events)
        return events

    def _stop_early(self, stats: dict[str, int], elapsed: float) -> bool:
        rule = self.options.stop_rule
        if rule is None:
            return False
        done, dead = stats.get("done", 0), stats.get("dead", 0)
        self.stopped = rule(
            DrainProgress(
                elapsed, min(self.items_planned, done * self.batch_size), self.items_planned,
                done + dead, dead, self.arrivals_s, self._new_events,
            )
        )  # fmt: skip
        return self.stopped is not None

    def wait(self) -> tuple[bool, str | None]:
        """(timed out, why the work could not finish); (False, None) once drained or stopped by
        the stop rule (`stopped` says why)."""
        while True:
            elapsed = time.monotonic() - self.started
            if self.tick is not None:
                self.tick(elapsed)
            self.faults.poll(elapsed)
            stats = self.queue.stats()
            if self.options.on_progress is not None:
                items_done = min(self.items_planned, stats.get("done", 0) * self.batch_size)
                self.options.on_progress(items_done, self.items_planned, elapsed)
            jobs = self.sent()
            if (
                jobs is not None
                and stats.get("done", 0) + stats.get("dead", 0) >= jobs
                and self.queue.outstanding() == 0
            ):
                return False, None
            if elapsed > self.timeout_s:
                return True, f"timed out after {self.timeout_s:g} s before draining"
            if (gone := self.faults.every_instance_gone()) is not None:
                return False, gone
            if self._stop_early(stats, elapsed):
                return False, None
            check_stop()
            time.sleep(POLL_S)
