"""The results folder: the one place that knows its layout. Write, resume, read.

results/<scenario>/<YYYYmmdd-HHMMSS>/
    scenario.yaml          the exact scenario file the run used (a resume reads it back)
    manifest.json          lab version, machine, start/end, seed, plan, status
    trials.csv             one row per trial (columns: TRIAL_COLUMNS)
    jobs.parquet/          per-job events, one parquet file per trial (read it as one dataset)
    services/<trial>.json  each mock service's statistics for the trial
    search.jsonl           the search's decisions: what it ran and why (lab.sweep.search)
    recommendation.json    the chosen configuration, its figures and the reasons (lab.analysis.configs)
    report.html            the self-contained report (lab.report)
    logs/<trial>/          worker and mock logs

A run folder is never overwritten: a name already taken gets a suffix. A trial counts as done
when its row is in trials.csv; the row is written last, after its events and statistics, so an
interrupted run resumes without redoing or double-counting a trial.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from lab.errors import ConfigError
from lab.runtime.queue import JobEvent
from lab.scenario.spec import Scenario, load_scenario

#: Layout history: 1 = the first layout (this docstring); 2 = trials.csv gains `placement` and
#: the web (Locust) columns; 3 = trials.csv gains `length_x`, the steady-window figures
#: (`items_per_s_steady`, `jobs_per_s_steady`, `steady_s`, `too_short`) and `stopped_early`,
#: `stop_reason`; `search.jsonl` holds the search's decisions. Readers accept older layouts and
#: fill the columns they lack.
SCHEMA_VERSION = 3

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
    "started_at": "clock start, epoch seconds (all instances ready)",
    "wall_s": "clock start to drained (or timed out), seconds",
    "timed_out": "true when the trial hit sweep.trial_timeout_s before draining",
    "stopped_early": "true when the search stopped the trial: it could not come within noise of the best",
    "stop_reason": "why it was stopped early (projected makespan, or the SLO already broken)",
    "jobs_enqueued": "jobs the producer sent",
    "items_enqueued": "items the producer sent",
    "jobs_done": "jobs that succeeded (each counted once)",
    "items_done": "items of the jobs that succeeded",
    "makespan_s": "clock start to the last job's end, seconds",
    "items_per_s": "items_done / makespan_s: the throughput",
    "jobs_per_s": "jobs_done / makespan_s",
    "items_per_s_steady": "items/s over the steady window: between the completions at 10 % and 90 % of the items done",
    "jobs_per_s_steady": "jobs/s over the same steady window",
    "steady_s": "length of the steady window, seconds",
    "too_short": "the steady window lasted under 0.5 s or held under 10 job completions: no steady rate",
    "attempts": "job attempts, retries included",
    "retries": "failed attempts that were retried",
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
    "service_requests": "requests the target service received",
    "service_rejected": "of them, rejected (429: queue full, rate limit)",
    "service_errors": "of them, failed with 5xx",
    "service_max_in_flight": "most requests the service served at once",
    "service_max_queue_depth": "most requests waiting in the service's queue",
    "producer_max_lag_s": "how late the producer sent a job, at worst",
    "workers_cores": "mean cores used by all worker instances",
    "worker_peak_cores": "highest cores of one instance over a 0.25 s window",
    "worker_rss_max_mb": "largest resident memory of one instance, MiB",
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
}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


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


class RunFolder:
    """One run's folder. Create it with `create`, reopen it with `open`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(
        cls, out_dir: Path, scenario_name: str, scenario_text: str, manifest: Mapping[str, Any]
    ) -> RunFolder:
        """A new, empty run folder; a taken name gets a suffix, so no run is ever overwritten."""
        parent = out_dir / scenario_name
        parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for n in range(1000):
            path = parent / (stamp if n == 0 else f"{stamp}-{n}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        run = cls(path)
        (path / "scenario.yaml").write_text(scenario_text)
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
        """An existing run folder; refuses a layout it does not understand."""
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise ConfigError(f"{path}: not a run folder (no manifest.json)")
        version = json.loads(manifest_path.read_text()).get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ConfigError(
                f"{path}: results layout version {version}, this lab reads {SCHEMA_VERSION}; use the lab version that wrote it"
            )
        return cls(path)

    # -- manifest ---------------------------------------------------------------------------------

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "manifest.json").read_text()))

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        _atomic_write(self.path / "manifest.json", _dump(manifest))

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

    def completed_trials(self) -> list[str]:
        """Trial ids with a row in trials.csv (a torn last line, from a crash, is dropped)."""
        if not self.trials_csv.exists():
            return []
        text = self.trials_csv.read_text()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
            _atomic_write(self.trials_csv, text)
        return [row["trial_id"] for row in csv.DictReader(io.StringIO(text))]

    def add_trial(
        self, row: Mapping[str, Any], events: list[JobEvent], services: Mapping[str, Any]
    ) -> None:
        """Store one finished trial: events and service stats first, its trials.csv row last."""
        if list(row) != list(TRIAL_COLUMNS):
            missing, extra = set(TRIAL_COLUMNS) - set(row), set(row) - set(TRIAL_COLUMNS)
            raise ValueError(
                f"trial row does not match TRIAL_COLUMNS (missing {missing}, extra {extra})"
            )
        trial_id = str(row["trial_id"])
        jobs_dir = self.path / "jobs.parquet"
        jobs_dir.mkdir(exist_ok=True)
        events_frame(events, trial_id).to_parquet(jobs_dir / f"{trial_id}.parquet", index=False)
        services_dir = self.path / "services"
        services_dir.mkdir(exist_ok=True)
        _atomic_write(services_dir / f"{trial_id}.json", _dump(services))
        new_file = not self.trials_csv.exists()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(TRIAL_COLUMNS), lineterminator="\n")
        if new_file:
            writer.writeheader()
        writer.writerow(row)
        with self.trials_csv.open("a") as f:  # one write: a crash leaves a whole row or a torn one
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        self.update_manifest(trials_completed=len(self.completed_trials()), updated_at=time.time())

    @property
    def search_log(self) -> Path:
        """`search.jsonl`: the search's decisions, one JSON object a line (lab.sweep.search)."""
        return self.path / "search.jsonl"

    def add_decision(self, decision: Mapping[str, Any]) -> None:
        """Append one decision of the search (a whole line per write, like a trial's row)."""
        if self.search_log.exists():  # a torn last line, from a crash, is dropped first
            text = self.search_log.read_text()
            if text and not text.endswith("\n"):
                _atomic_write(self.search_log, text[: text.rfind("\n") + 1])
        with self.search_log.open("a") as f:
            f.write(json.dumps(decision, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def decisions(self) -> list[dict[str, Any]]:
        """The search's decisions so far (a torn last line, from a crash, is dropped)."""
        if not self.search_log.exists():
            return []
        out = []
        for line in self.search_log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def service_stats(self) -> dict[str, dict[str, Any]]:
        """Each trial's services statistics (services/<trial>.json), by trial id."""
        folder = self.path / "services"
        files = sorted(folder.glob("*.json")) if folder.exists() else []
        return {f.stem: json.loads(f.read_text()) for f in files}

    def write_json(self, name: str, data: Any) -> Path:
        path = self.path / name
        _atomic_write(path, _dump(data))
        return path

    # -- reading ------------------------------------------------------------------------------------

    def trials(self) -> pd.DataFrame:
        frame = (
            pd.read_csv(self.trials_csv)
            if self.trials_csv.exists()
            else pd.DataFrame(columns=list(TRIAL_COLUMNS))
        ).reindex(columns=list(TRIAL_COLUMNS))  # an older layout lacks newer columns: NaN...
        # ...but layout 1 had one placement (cast first: an all-empty column reads as float)
        frame["placement"] = frame["placement"].astype(object).fillna("separate").astype(str)
        return frame

    def scenario(self) -> Scenario:
        """The scenario the run used, from its own copy (a user job module is not imported)."""
        return load_scenario(self.path / "scenario.yaml", resolve_job=False)

    def trial_logs(self, trial_id: str) -> Path:
        """The folder of one trial's child-process logs."""
        return self.path / "logs" / trial_id

    @property
    def report_html(self) -> Path:
        """Where `lab.report` writes the run's self-contained report."""
        return self.path / "report.html"

    def jobs(self) -> pd.DataFrame:
        jobs_dir = self.path / "jobs.parquet"
        parts = sorted(jobs_dir.glob("*.parquet")) if jobs_dir.exists() else []
        return (
            pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
            if parts
            else events_frame([], "")
        )


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
