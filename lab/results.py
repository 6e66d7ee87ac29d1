"""The results folder: the one place that knows its layout. Write, resume, read.

results/<scenario>/<YYYYmmdd-HHMMSS>/
    scenario.yaml          the exact scenario file the run used (a resume reads it back)
    manifest.json          lab version, machine, start/end, seed, plan, status
    trials.csv             one row per trial (columns: TRIAL_COLUMNS)
    jobs.parquet/          per-job events, one parquet file per trial (read it as one dataset)
    services/<trial>.json  each mock service's statistics for the trial
    dynamics/<trial>.json  num_workers auto / autoscaled instances: limits and instances over
                           time (lab.sweep.dynamics)
    search.jsonl           the search's decisions: what it ran and why (lab.sweep.search)
    faults/<trial>.json    what went wrong in the trial, when, and how long recovery took
                           (only for trials with a fault or an instance exit)
    placement/<trial>.json with a cluster: which node ran what, clock offsets, per-node CPU
    recommendation.json    the chosen configuration, its figures and the reasons (lab.analysis.configs)
    report.html            the self-contained report (lab.report)
    verification.json      with --verify: predicted (mock) vs real (lab.sweep.verify)
    verify/                with --verify: the real trials (trials.csv, jobs.parquet/, services/)
    logs/<trial>/          worker and mock logs

A run folder is never overwritten: a name already taken gets a suffix. A trial counts as done
when its row is in trials.csv; the row is written last, after its events and statistics, so an
interrupted run resumes without redoing or double-counting a trial.

A run folder may come from someone else (`lab.report RUN_DIR`, `--resume`), so opening one
checks it first: a symbolic link, a FIFO or a device anywhere inside is refused (exit status 2),
the manifest is validated by a model, and every file is written through `lab.infra.files`
(no link followed, atomic replace, temporary names created exclusively) and read back with a
size limit and checked types. Problems are one ConfigError naming the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import socket
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field

from lab import bounds as L
from lab.errors import ConfigError
from lab.infra.files import Dir, directory, refuse_links
from lab.runtime.queue import JobEvent
from lab.runtime.telemetry import RUNTIME_COLUMNS
from lab.scenario.spec import AUTO, AUTOSCALE, Scenario, load_scenario
from lab.strict import Strict, show, validate

#: Layout history: 1 = the first layout (this docstring); 2 = trials.csv gains `placement` and
#: the web (Locust) columns; 3 = trials.csv gains `steady_items_per_s`, the service's rejections
#: by kind, connections and utilization, `worker_steady_cores`, `worker_cpu_demand`,
#: `bottleneck` and the runtime's own columns (`slot_gap_*`, `exchange_*`); 4 = trials.csv gains
#: `failed`, `failure_reason`, `instance_crashes`, `faults_injected`, `recovery_s` and
#: `dip_ratio`, and `faults/<trial>.json` appears; 5 = trials.csv gains `clipped` (a real
#: service's caps), and a run may hold `verify/` and `verification.json` (`lab.sweep --verify`);
#: 6 = trials.csv gains `length_x`, `too_short`, `stopped_early` and `stop_reason`, and
#: `search.jsonl` holds the search's decisions; 7 = dynamic configurations: `num_workers` may
#: read `auto` and `instances` `autoscale` (`concurrency` is then empty), trials.csv gains
#: `timeouts` and the cost columns (instance_seconds, instances_max, slots_mean, slots_max),
#: and dynamics/<trial>.json appears. Readers accept older layouts and fill the columns they
#: lack.
SCHEMA_VERSION = 7

STATUS_RUNNING, STATUS_COMPLETE, STATUS_INTERRUPTED, STATUS_FAILED = (
    "running",
    "complete",
    "interrupted",
    "failed",
)

#: trials.csv columns, in order, with their meaning. The sweep writes exactly these.
TRIAL_COLUMNS: dict[str, str] = {
    "trial_id": "grid point and repeat, e.g. nw16-in2-bs50-r0",
    "order": "position in the run's shuffled order",
    "num_workers": "jobs one instance runs at once",
    "instances": "worker processes",
    "batch_size": "items per job",
    "placement": "separate: worker processes; colocated: the slots run inside the web app's processes",
    "repeat": "repeat number, from 0",
    "concurrency": "num_workers x instances",
    "length_x": "the backlog multiplied by this (1: the scenario's items), to measure a steady rate",
    "clipped": "what a real service's caps changed in the configuration asked for (empty: nothing)",
    "started_at": "clock start, epoch seconds (all instances ready)",
    "wall_s": "clock start to drained (or timed out), seconds",
    "timed_out": "true when the trial hit sweep.trial_timeout_s before draining",
    "failed": "true when the work could not finish: timed out, or every instance exited",
    "failure_reason": "why it failed, in words (empty when it did not)",
    "stopped_early": "true when the search stopped the trial: it could not come within noise of the best",
    "stop_reason": "why it was stopped early (projected makespan, or the SLO already broken)",
    "jobs_enqueued": "jobs the producer sent",
    "items_enqueued": "items the producer sent",
    "jobs_done": "jobs that succeeded (each counted once)",
    "items_done": "items of the jobs that succeeded",
    "makespan_s": "clock start to the last job's end, seconds",
    "items_per_s": "items_done / makespan_s: the throughput",
    "jobs_per_s": "jobs_done / makespan_s",
    "steady_items_per_s": "items/s between the 10th and 90th percentile of the items done (the steady part: no start-up, no drain tail)",
    "too_short": "the steady part lasted under 0.5 s or held under 10 job completions: too short to measure a steady rate",
    "attempts": "job attempts, retries included",
    "retries": "failed attempts that were retried",
    "timeouts": "attempts that hit workload.job_timeout_s",
    "dead_letters": "jobs that used up their attempts",
    "duplicate_jobs": "extra successful runs of a job (at-least-once after a crash)",
    "unfinished_jobs": "jobs neither done nor dead when the trial ended",
    "error_rate": "(dead + unfinished jobs) / jobs enqueued (a trial stopped early: dead / enqueued)",
    "retry_rate": "retries / attempts",
    "not_found": "deletes of ids the service did not hold",
    **{
        f"{m}_{s}_ms": f"{what}, {s}, ms"
        for m, what in (
            ("latency", "enqueue (or scheduled arrival) to the end of the successful attempt"),
            ("queue_wait", "enqueue to the first attempt's start"),
            ("service", "the successful attempt's duration"),
        )
        for s in ("p50", "p90", "p99", "max", "mean")
    },
    "littles_bound_items_per_s": "concurrency x items per job / mean service time",
    "capacity_bound_items_per_s": "service capacity x items per request / its mean service time (and its rate limit)",
    "bound_items_per_s": "the tighter of the two bounds",
    "bound_ratio": "items_per_s / bound_items_per_s",
    "lost_items": "items the service never received (by id; empty when it cannot tell)",
    "duplicate_items": "items the service received more than once (by id)",
    "recovered_jobs": "jobs put back after an instance's heartbeat expired",
    "instance_crashes": "worker instances that exited during the trial: any signal or exit code, injected or not",
    "faults_injected": "faults of the scenario's `faults` applied (one that fell due after the trial drained is not)",
    "recovery_s": "the longest recovery, s: an exit until its jobs were back in the queue; a restart until the service was up; a pause until the broker answered",
    "dip_ratio": "items/s while faults lasted (each until its recovery) over items/s before the first one: 1 no dip, 0 a standstill, above 1 catching up on a backlog",
    "service_requests": "requests the target service received",
    "service_rejected": "rejected requests and connections (429: queue full, rate limit; 503: connection limit)",
    "service_errors": "of them, failed with 5xx",
    "service_max_in_flight": "most requests the service served at once",
    "service_max_queue_depth": "most requests waiting in the service's queue",
    "service_rate_limited": "of the rejected, 429s of the rate limit (token bucket empty, with Retry-After)",
    "service_queue_full": "of the rejected, 429s because every slot was busy and the waiting room full",
    "service_connections_refused": "connections refused (or given up waiting) at the service's connection limit (503)",
    "service_max_connections": "most TCP connections open at the service at once",
    "service_utilization": "how busy the service was: served x mean service time / (capacity x makespan)",
    "producer_max_lag_s": "how late the producer sent a job, at worst",
    "instance_seconds": "worker instances x seconds each existed, clock start to the end (autoscaled: from each scale-up decision, start-up delay included, to its exit): the cost",
    "instances_max": "most worker instances at once (autoscaled: running, starting or stopping)",
    "slots_mean": "job slots summed over the instances, time-weighted mean (num_workers auto: each instance's limit)",
    "slots_max": "most job slots at once, summed over the instances",
    "workers_cores": "mean cores used by all worker instances",
    "worker_peak_cores": "highest cores of one instance over a 0.25 s window",
    "worker_steady_cores": "the busiest instance's median cores over 0.25 s windows (the steady part)",
    "worker_cpu_demand": "the busiest instance's median share of a 0.25 s window spent on or waiting for a core (1.0: it always wanted one, even if a busy machine did not give it)",
    "worker_rss_max_mb": "largest resident memory of one instance, MiB",
    **RUNTIME_COLUMNS,
    "mock_cores": "mean cores of the busiest mock service",
    "redis_cores": "mean cores of the embedded redis-server (0 with broker.url)",
    "producer_cores": "mean cores of the lab's own process (producer, polling)",
    "web_cores": "mean cores of the web app processes when they only produce work (separate placement)",
    "locust_cores": "mean cores of the Locust process",
    "web_requests": "requests Locust sent to the web app (empty without Locust)",
    "web_failures": "of them, failed",
    "web_requests_per_s": "Locust's request rate over its run",
    "web_p50_ms": "web response time, median, ms",
    "web_p90_ms": "web response time, p90, ms",
    "web_p99_ms": "web response time, p99, ms",
    "web_max_ms": "web response time, max, ms",
    "harness_saturated": "a mock, Redis or the producer was near a full core: the figure measures the lab",
    "machine_saturated": "every core was busy: the figure holds for this machine only",
    "saturation_reason": "which component, and how busy",
    "bottleneck": "what held the throughput, one word (lab.analysis.attribution): concurrency, service_capacity, rate_limit, connection_limit, worker_cpu, broker, harness, retry_waste, arrivals or errors",
}


def _dump(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()


def machine_metadata() -> dict[str, Any]:
    """What a reader needs to judge the numbers: where and on what they were measured."""
    from lab import __version__

    return {
        "lab_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "hostname": socket.gethostname(),
    }


def new_folder(parent: Path) -> Path:
    """A new, empty `parent/<YYYYmmdd-HHMMSS>` folder; a taken name gets a suffix (-1, -2...)."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = parent / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"{parent}: 1000 folders named {stamp}: clean it up")


_Text = Annotated[str, Field(max_length=1_000)]


class Manifest(Strict):
    """manifest.json as read back: the keys the lab relies on, typed; keys it does not know are
    kept and ignored (a later lab may add some within one layout version)."""

    model_config = ConfigDict(extra="allow")

    schema_version: Annotated[int, Field(ge=1)]
    status: Literal["running", "complete", "interrupted", "failed"]
    quick: bool = False
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    trials_planned: Annotated[list[_Text], Field(max_length=L.TRIALS_MAX)] = Field(
        default_factory=list
    )
    trials_completed: Annotated[int, Field(ge=0, le=L.TRIALS_MAX)] = 0
    cpu_count: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    lab_version: _Text | None = None
    python: _Text | None = None
    platform: _Text | None = None
    hostname: _Text | None = None
    broker: _Text | None = None
    started_at: _Text | None = None
    finished_at: _Text | None = None
    updated_at: float | None = None
    command: Annotated[list[Annotated[str, Field(max_length=10_000)]], Field(max_length=1_000)] = (
        Field(default_factory=list)
    )


_Count = Annotated[int, Field(ge=0, le=10**15)]


class _Samples(Strict):
    model_config = ConfigDict(extra="allow")
    service_ms: Annotated[
        list[Annotated[float, Field(ge=0, le=1e15)]], Field(max_length=L.SAMPLES_CAP_MAX)
    ] = Field(default_factory=list)


class _Maxima(Strict):
    model_config = ConfigDict(extra="allow")
    connections: _Count = 0


class ServiceStats(Strict):
    """One mock's `/_lab/stats` document as read back from services/<trial>.json: the keys the
    analysis reads, typed; the rest kept as is."""

    model_config = ConfigDict(extra="allow")

    served: _Count = 0
    served_items: _Count = 0
    requests: _Count = 0
    rejected: _Count = 0
    errors: _Count = 0
    rejections: Annotated[
        dict[Annotated[str, Field(max_length=100)], _Count], Field(max_length=64)
    ] = Field(default_factory=dict)
    samples: _Samples = Field(default_factory=_Samples)
    max: _Maxima = Field(default_factory=_Maxima)


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, 5,000-digit ints, [[[[...
        raise ConfigError(f"{where}: not valid JSON: {str(exc)[:200]}") from None


_INT_COLUMNS = {  # (least, most): what the scenario's bounds let a run write
    "order": (0, L.TRIALS_MAX), "num_workers": (1, L.NUM_WORKERS_MAX),
    "instances": (1, L.INSTANCES_MAX), "batch_size": (1, L.BATCH_SIZE_MAX),
    "repeat": (0, L.REPEATS_MAX), "concurrency": (1, L.CONCURRENCY_MAX),
    "instance_crashes": (0, L.INSTANCES_MAX), "faults_injected": (0, L.FAULTS_MAX),
    "length_x": (1, L.ITEMS_MAX),
}  # fmt: skip
#: The knobs that may name a dynamic policy instead of a number (layout 6).
_POLICIES = {"num_workers": AUTO, "instances": AUTOSCALE}
_FIGURE_MAX = 1e15
_TRIAL_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
_BOOL_COLUMNS = (
    "timed_out", "failed", "harness_saturated", "machine_saturated", "too_short", "stopped_early",
)  # fmt: skip
_TEXT_COLUMNS = (
    "trial_id", "placement", "saturation_reason", "bottleneck", "failure_reason", "clipped",
    "stop_reason",
)  # fmt: skip

#: The search's decisions (lab.sweep.search.Decision): one JSON object a line.
SEARCH_LOG = "search.jsonl"
_DECISION_KEYS = {"step": int, "action": str, "reason": str, "configs": list, "trials": list}


class RunFolder:
    """One run's folder, and the one owner of its paths. Create it with `create`, reopen it
    with `open`; every write goes through `lab.infra.files` (no link followed, atomic)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(
        cls, out_dir: Path, scenario_name: str, scenario_text: str, manifest: Mapping[str, Any]
    ) -> RunFolder:
        """A new, empty run folder; a taken name gets a suffix, so no run is ever overwritten."""
        path = new_folder(out_dir / scenario_name)
        run = cls(path)
        with run._dir() as d:  # 0600: it may hold a broker password
            d.write("scenario.yaml", scenario_text.encode(), mode=0o600)
        started = datetime.now(UTC).isoformat(timespec="seconds")
        run.write_manifest(
            {
                "schema_version": SCHEMA_VERSION,
                **machine_metadata(),
                **manifest,
                "status": STATUS_RUNNING,
                "started_at": started,
            }
        )
        return run

    @classmethod
    def open(cls, path: Path) -> RunFolder:
        """An existing run folder, checked: no link, FIFO or device inside, a valid manifest of
        a layout this lab reads. ConfigError (exit status 2) otherwise."""
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"{path}: not a run folder (no such directory)")
        run = cls(path)
        with run._dir() as d:
            if not d.exists("manifest.json"):
                raise ConfigError(f"{path}: not a run folder (no manifest.json)")
        refuse_links(path)
        version = run.manifest["schema_version"]
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{path}: results layout version {version}, this lab reads up to "
                f"{SCHEMA_VERSION}; use the lab version that wrote it"
            )
        return run

    def _dir(self, *parts: str, create: bool = False) -> Any:
        return directory(self.path, *parts, create=create)

    # -- manifest ---------------------------------------------------------------------------------

    @property
    def manifest(self) -> dict[str, Any]:
        """manifest.json, validated (`Manifest`); ConfigError naming the key if it is wrong."""
        where = str(self.path / "manifest.json")
        with self._dir() as d:
            data = _parse_json(d.read("manifest.json", limit=L.JSON_BYTES_MAX), where)
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a JSON object, got {show(data)}")
        return validate(Manifest, data, where=where).model_dump(exclude_unset=True)

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        self.write_json("manifest.json", manifest)

    def update_manifest(self, **changes: Any) -> None:
        self.write_manifest(self.manifest | changes)

    def mark(self, status: str) -> None:
        self.update_manifest(
            status=status, finished_at=datetime.now(UTC).isoformat(timespec="seconds")
        )

    # -- trials -------------------------------------------------------------------------------------

    @property
    def trials_csv(self) -> Path:
        return self.path / "trials.csv"

    def _trials_text(self) -> str:
        with self._dir() as d:
            if not d.exists("trials.csv"):
                return ""
            raw = d.read("trials.csv", limit=L.CSV_BYTES_MAX)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{self.trials_csv}: not UTF-8 text") from None

    def completed_trials(self) -> list[str]:
        """Trial ids with a row in trials.csv (a torn last line, from a crash, is dropped)."""
        text = self._trials_text()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
            self.write_text("trials.csv", text)
        try:
            return [row["trial_id"] for row in csv.DictReader(io.StringIO(text))]
        except (csv.Error, KeyError) as exc:
            raise ConfigError(f"{self.trials_csv}: not a trials table ({exc})") from None

    def add_trial(
        self,
        row: Mapping[str, Any],
        events: list[JobEvent],
        services: Mapping[str, Any],
        faults: list[dict[str, Any]] | None = None,
        placement: Mapping[str, Any] | None = None,
        timeline: Mapping[str, Any] | None = None,
    ) -> None:
        """Store one finished trial: events, service stats, faults (and, with a cluster, what
        ran where; with a dynamic configuration, its timeline) first, its row last."""
        if list(row) != list(TRIAL_COLUMNS):
            missing, extra = set(TRIAL_COLUMNS) - set(row), set(row) - set(TRIAL_COLUMNS)
            raise ValueError(
                f"trial row does not match TRIAL_COLUMNS (missing {missing}, extra {extra})"
            )
        trial_id = str(row["trial_id"])
        with self._dir("jobs.parquet", create=True) as d, d.writer(f"{trial_id}.parquet") as f:
            events_frame(events, trial_id).to_parquet(f, index=False)
        with self._dir("services", create=True) as d:
            d.write(f"{trial_id}.json", _dump(services))
        if faults:
            with self._dir("faults", create=True) as d:
                d.write(f"{trial_id}.json", _dump(faults))
        if placement is not None:
            with self._dir("placement", create=True) as d:
                d.write(f"{trial_id}.json", _dump(placement))
        if timeline is not None:
            with self._dir("dynamics", create=True) as d:
                d.write(f"{trial_id}.json", _dump(timeline))
        buffer = io.StringIO()
        with self._dir() as d:
            new_file = not d.exists("trials.csv")
            fields = list(TRIAL_COLUMNS)
            if not new_file:  # a run resumed from an older layout keeps its own header
                head = d.read("trials.csv", limit=L.CSV_BYTES_MAX).split(b"\n", 1)[0]
                fields = next(csv.reader([head.decode()]), fields)
            writer = csv.DictWriter(
                buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore"
            )
            if new_file:
                writer.writeheader()
            writer.writerow(row)
            d.append("trials.csv", buffer.getvalue().encode())  # a whole row, or a torn one
        self.update_manifest(trials_completed=len(self.completed_trials()), updated_at=time.time())

    @property
    def search_log(self) -> Path:
        """`search.jsonl`: the search's decisions, one JSON object a line (lab.sweep.search)."""
        return self.path / SEARCH_LOG

    def add_decision(self, decision: Mapping[str, Any]) -> None:
        """Append one decision of the search (a whole line per write, like a trial's row)."""
        with self._dir() as d:
            if d.exists(SEARCH_LOG):  # a torn last line, from a crash, is dropped first
                text = d.read(SEARCH_LOG, limit=L.CSV_BYTES_MAX)
                if text and not text.endswith(b"\n"):
                    d.write(SEARCH_LOG, text[: text.rfind(b"\n") + 1])
            line = json.dumps(decision, sort_keys=True, default=str) + "\n"
            d.append(SEARCH_LOG, line.encode())

    def decisions(self) -> list[dict[str, Any]]:
        """The search's decisions so far, each checked (ConfigError naming the line); a torn
        last line, from a crash, is dropped."""
        with self._dir() as d:
            if not d.exists(SEARCH_LOG):
                return []
            text = d.read(SEARCH_LOG, limit=L.CSV_BYTES_MAX).decode("utf-8", "replace")
        lines = text.split("\n")
        out = []
        for number, line in enumerate(lines[:-1], start=1):  # the last piece: torn, or empty
            where = f"{self.search_log}: line {number}"
            data = _parse_json(line.encode(), where)
            if not isinstance(data, dict) or not _DECISION_KEYS.items() <= {
                (k, type(v)) for k, v in data.items() if k in _DECISION_KEYS
            }:
                fields = ", ".join(f"{k} ({t.__name__})" for k, t in _DECISION_KEYS.items())
                raise ConfigError(f"{where}: must be a decision with {fields}, got {show(data)}")
            out.append(data)
        return out

    def service_stats(self) -> dict[str, dict[str, Any]]:
        """Every finished trial's services statistics (`services`), by trial id."""
        return {trial_id: self.services(trial_id) for trial_id in self.completed_trials()}

    def write_json(self, name: str, data: Any) -> Path:
        """Write `name` (in the folder) as sorted JSON, atomically."""
        with self._dir() as d:
            d.write(name, _dump(data))
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        """Write `name` (in the folder) atomically, never through a link."""
        with self._dir() as d:
            d.write(name, text.encode("utf-8"))
        return self.path / name

    # -- reading ------------------------------------------------------------------------------------

    def trials(self) -> pd.DataFrame:
        """trials.csv as a table, each column's type checked (ConfigError naming row and column).
        `num_workers` and `instances` hold integers, or (layout 4) a dynamic policy's name in
        an object column."""
        text = self._trials_text()
        dtype = {"num_workers": str, "instances": str}
        try:
            frame = (
                pd.read_csv(io.StringIO(text), dtype=dtype)
                if text
                else pd.DataFrame(columns=["trial_id"])
            )
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise ConfigError(f"{self.trials_csv}: not a trials table: {str(exc)[:200]}") from None
        if "trial_id" not in frame.columns:
            raise ConfigError(f"{self.trials_csv}: not a trials table (no trial_id column)")
        frame = frame.reindex(columns=list(TRIAL_COLUMNS))  # an older layout lacks newer columns
        # ...but layout 1 had one placement (cast first: an all-empty column reads as float)
        frame["placement"] = frame["placement"].astype(object).fillna("separate").astype(str)
        # ...and before layout 4 only a timeout failed a trial, and no instance crashed
        frame["failed"] = frame["failed"].astype(object).fillna(frame["timed_out"])
        frame["failure_reason"] = frame["failure_reason"].astype(object).fillna("")
        frame[["instance_crashes", "faults_injected"]] = frame[
            ["instance_crashes", "faults_injected"]
        ].fillna(0)
        # ...and before layout 6 every trial ran the scenario's own backlog to its end
        frame["length_x"] = frame["length_x"].fillna(1)
        frame["stopped_early"] = frame["stopped_early"].astype(object).fillna(False)
        frame["stop_reason"] = frame["stop_reason"].astype(object).fillna("")
        _check_trials(frame, self.trials_csv)
        frame["failed"] = frame["failed"].astype(bool)
        return frame

    def faults(self, trial_id: str) -> list[dict[str, Any]]:
        """What went wrong in one trial (`lab.sweep.faults.FaultRecord` fields); [] if nothing."""
        return self._document("faults", f"{trial_id}.json", list) or []

    def timeline(self, trial_id: str) -> dict[str, Any] | None:
        """A dynamic trial's dynamics/<trial>.json (`lab.sweep.dynamics`), or None (a fixed
        configuration has none)."""
        return self._document("dynamics", f"{trial_id}.json", dict)

    def scenario(self) -> Scenario:
        """The scenario the run used, from its own copy (a user job module is not looked up)."""
        return load_scenario(self.path / "scenario.yaml", check_job=False)

    @property
    def scenario_path(self) -> Path:
        return self.path / "scenario.yaml"

    def scenario_text(self) -> str:
        """The exact scenario file the run used ("" if absent), as text."""
        with self._dir() as d:
            if not d.exists("scenario.yaml"):
                return ""
            return d.read("scenario.yaml", limit=L.SCENARIO_BYTES_MAX).decode("utf-8", "replace")

    def placement(self, trial_id: str) -> dict[str, Any] | None:
        """Which node ran what in a trial placed on a cluster (None for a trial on this host)."""
        return self._document("placement", f"{trial_id}.json", dict)

    def verification(self) -> dict[str, Any] | None:
        """verification.json: predicted (mock) vs real (`lab.sweep.verify`), or None (the run
        was not verified)."""
        return self._document(None, "verification.json", dict)

    def _document(
        self, folder: str | None, name: str, kind: type, *, limit: int = L.JSON_BYTES_MAX
    ) -> Any:
        """The JSON document `[folder/]name` of the run, read within `limit` bytes, or None when
        it is absent; ConfigError when it is not of `kind` (dict: an object, list: a list)."""
        if folder is not None:
            with self._dir() as root:
                if not root.exists(folder):
                    return None
        with self._dir(*([folder] if folder else [])) as d:
            if not d.exists(name):
                return None
            where = str(d.path / name)
            data = _parse_json(d.read(name, limit=limit), where)
        if not isinstance(data, kind):
            what = "object" if kind is dict else "list"
            raise ConfigError(f"{where}: must be a JSON {what}, got {show(data)}")
        return data

    def trial_logs(self, trial_id: str) -> Path:
        """A new, empty folder for one trial's child-process logs (an earlier attempt's, from an
        interrupted run, is moved aside): nothing planted in it can be written through."""
        with self._dir("logs", create=True) as d:
            return d.fresh_subdir(trial_id)

    @property
    def report_html(self) -> Path:
        """Where `lab.report` writes the run's self-contained report."""
        return self.path / "report.html"

    def services(self, trial_id: str) -> dict[str, Any]:
        """The mock services' statistics of one trial, by service name (empty when absent);
        the parts the analysis reads are type-checked (`ServiceStats`)."""
        name = f"{trial_id}.json"
        data = self._document("services", name, dict, limit=L.SERVICES_JSON_BYTES_MAX) or {}
        where = self.path / "services" / name
        for service, stats in data.items():
            validate(ServiceStats, stats, where=f"{where}: {show(service)}")
        return data

    def jobs(self) -> pd.DataFrame:
        """Every job attempt of every trial (jobs.parquet/*.parquet), read without following links."""
        frames = []
        with self._dir() as root:
            present = root.exists("jobs.parquet")
        if present:
            with self._dir("jobs.parquet") as d:
                frames = [_read_parquet(d, n) for n in d.names() if n.endswith(".parquet")]
        return pd.concat(frames, ignore_index=True) if frames else events_frame([], "")


def _read_parquet(d: Dir, name: str) -> pd.DataFrame:
    where = d.path / name
    try:
        frame = pd.read_parquet(io.BytesIO(d.read(name, limit=L.PARQUET_BYTES_MAX)))
    except (OSError, ValueError, TypeError) as exc:  # pyarrow's errors derive from these
        raise ConfigError(f"{where}: not a jobs table: {str(exc)[:200]}") from None
    missing = sorted(set(_EVENT_COLUMNS) - set(frame.columns))
    if missing:
        raise ConfigError(f"{where}: not a jobs table (no column {', '.join(missing)})")
    return frame


def _check_trials(frame: pd.DataFrame, where: Path) -> None:
    """Every column holds what the analysis expects (ConfigError at the first cell that does
    not); numeric columns are converted in place, so a number too long for int64 is a float."""

    def fail(column: str, rows: pd.Series, what: str) -> None:
        i = int(rows.to_numpy().nonzero()[0][0])
        value = frame[column].iloc[i]
        raise ConfigError(
            f"{where}: row {i + 2}, column {column}: must be {what}, got {show(value)}"
        )

    dynamic = pd.Series(False, index=frame.index)
    for knob, name in _POLICIES.items():
        dynamic |= frame[knob] == name
    for column in frame.columns:
        values = frame[column]
        if column == "trial_id":  # it names files: services/<trial_id>.json, logs/<trial_id>/
            ok = values.map(lambda v: isinstance(v, str) and _TRIAL_ID.fullmatch(v) is not None)
            if not ok.all():
                fail(column, ~ok, "a trial id (letters, digits, _ . -, not starting with . or -)")
        elif column in _TEXT_COLUMNS:
            empty_ok = column != "placement"
            allowed = ("separate", "colocated") if column == "placement" else None
            ok = values.map(
                lambda v, empty_ok=empty_ok, allowed=allowed: (
                    (isinstance(v, str) and (allowed is None or v in allowed))
                    or (empty_ok and v != v)
                )
            )
            if not ok.all():
                fail(column, ~ok, "one of " + ", ".join(allowed) if allowed else "text")
        elif column in _BOOL_COLUMNS:
            ok = values.map(lambda v: isinstance(v, bool | np.bool_) or v != v)
            if not ok.all():
                fail(column, ~ok, "True or False")
        else:
            bad, what, frame[column] = _numbers(str(column), values, dynamic)
            if bad.any():
                fail(column, bad, what)
    if frame["trial_id"].duplicated().any():
        fail("trial_id", frame["trial_id"].duplicated(), "listed once")


def _numbers(
    column: str, values: pd.Series, dynamic: pd.Series
) -> tuple[pd.Series, str, pd.Series]:
    """A numeric column's bad cells, what it must hold, and its values converted: int64 when
    whole, floats when a cell may be empty (`concurrency` of a dynamic configuration), and a
    knob's policy name (`auto`, `autoscale`) kept as text beside its integers."""
    named = values == _POLICIES.get(column)
    numbers = pd.to_numeric(values.mask(named), errors="coerce").astype(float)
    bad = (values.notna() & ~named & numbers.isna()) | np.isinf(numbers.fillna(0))
    if column not in _INT_COLUMNS:  # no figure the lab writes comes near; squares stay finite
        bad |= numbers.abs() > _FIGURE_MAX
        return bad, f"a number of magnitude at most {_FIGURE_MAX:g}, or empty", numbers
    least, most = _INT_COLUMNS[column]
    empty_ok = dynamic if column == "concurrency" else named
    bad |= (numbers.isna() & ~empty_ok) | (numbers.notna() & (numbers % 1 != 0))
    bad |= (numbers < least) | (numbers > most)
    what = f"an integer in [{least}, {most:,}]"
    if column in _POLICIES:
        what += f" or {_POLICIES[column]}"
    if bad.any():
        return bad, what, values
    if named.any():
        mixed = [
            v if is_name else int(n) for v, n, is_name in zip(values, numbers, named, strict=True)
        ]
        return bad, what, pd.Series(mixed, index=values.index, dtype=object)
    return bad, what, numbers if numbers.isna().any() else numbers.astype("int64")


def events_frame(events: list[JobEvent], trial_id: str) -> pd.DataFrame:
    """Job events as a table: one row per attempt, times in epoch seconds."""
    frame = pd.DataFrame(
        {
            "trial_id": [trial_id] * len(events),
            "job_id": [e.job_id for e in events],
            "job": [e.job for e in events],
            "instance": [e.instance for e in events],
            "enqueued_at": pd.Series([e.enqueued_at for e in events], dtype="float64"),
            "started_at": pd.Series([e.started_at for e in events], dtype="float64"),
            "finished_at": pd.Series([e.finished_at for e in events], dtype="float64"),
            "attempt": pd.Series([e.attempt for e in events], dtype="int64"),
            "outcome": [e.outcome for e in events],
            "items": pd.Series([e.items for e in events], dtype="int64"),
            "error": [e.error for e in events],
            "extra": [json.dumps(e.extra) if e.extra else None for e in events],
        }
    )
    return frame


_EVENT_COLUMNS = tuple(events_frame([], "").columns)
