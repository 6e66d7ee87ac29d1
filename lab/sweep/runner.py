"""`python -m lab.sweep SCENARIO`: run every trial of a scenario's grid and recommend a configuration.

    python -m lab.sweep scenarios/quickstart.yaml              # the whole grid
    python -m lab.sweep scenarios/opensearch_index.yaml --quick  # the scenario's small grid
    python -m lab.sweep scenarios/x.yaml --dry-run             # the plan and an estimate only
    python -m lab.sweep --resume results/x/20261128-101500     # finish an interrupted run

Trials run in a shuffled order (seeded), so slow drift of the machine does not favour one
configuration. Ctrl-C (or SIGTERM) stops within seconds, stops every child process, marks the
run interrupted and prints the command that resumes it. Bad input exits with status 2 and
writes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from lab.analysis.configs import analyze
from lab.errors import ConfigError, LabError
from lab.infra.broker import start_broker
from lab.infra.procs import check_stop, stop_on_signals
from lab.mocks.distributions import mean_ms
from lab.producers.arrivals import expected_duration_s
from lab.results import STATUS_COMPLETE, STATUS_FAILED, STATUS_INTERRUPTED, RunFolder
from lab.runtime.jobs import job_type
from lab.scenario.spec import Scenario, load_scenario
from lab.sweep.harness import start_harness
from lab.sweep.trial import TrialOptions, TrialPlan, run_trial

#: Seconds a trial costs beyond its drain: workers forked, ready checks, stop, mocks reset.
TRIAL_OVERHEAD_S = 0.3


def plan_trials(scenario: Scenario) -> list[TrialPlan]:
    """Every grid point x repeat (x placement), in an order shuffled by the scenario's seed."""
    s = scenario.sweep
    axes = (s.num_workers, s.instances, s.batch_size, range(s.repeats), scenario.workers.placements)
    grid = list(itertools.product(*axes))
    random.Random(scenario.seed).shuffle(grid)
    return [
        TrialPlan(i, nw, inst, bs, rep, where) for i, (nw, inst, bs, rep, where) in enumerate(grid)
    ]


def estimate_trial_s(scenario: Scenario, plan: TrialPlan) -> float:
    """A rough duration: start-up, plus the drain at the tighter of the two throughput bounds.

    A user handler's requests are unknown to the lab: the estimate assumes one per item."""
    w = scenario.workload
    spec = scenario.services[w.service]
    kind = job_type(w.job)
    requests_per_job = kind.requests_per_job(plan.batch_size)
    per_request_ms = mean_ms(spec.latency) + spec.per_item_ms * kind.items_per_request(
        plan.batch_size
    )
    job_s = per_request_ms / 1000 * requests_per_job + w.cpu_ms_per_item * plan.batch_size / 1000
    jobs = math.ceil(w.expected_items / plan.batch_size)
    slots = min(plan.concurrency, spec.capacity * plan.batch_size // max(1, requests_per_job) or 1)
    drain_s = jobs * job_s / max(1, slots)
    if spec.rate_limit is not None:
        drain_s = max(drain_s, jobs * requests_per_job / spec.rate_limit.per_s)
    drain_s = min(max(drain_s, expected_duration_s(w.arrival)), scenario.sweep.trial_timeout_s)
    return TRIAL_OVERHEAD_S + 0.02 * plan.instances + drain_s


class ProgressLine:
    """Trial i of N, elapsed, ETA and the current trial's throughput; one line, redrawn on a TTY."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream, self.total = stream, total
        self.tty = stream.isatty()
        self.start = time.monotonic()
        self.done = 0
        self.trial_times: list[float] = []
        self._last_draw = 0.0
        self.label = ""

    def _eta(self, remaining: int) -> str:
        if not self.trial_times:
            return "?"
        return f"{sum(self.trial_times) / len(self.trial_times) * remaining:.0f}s"

    def begin(self, plan: TrialPlan, position: int) -> None:
        self.label = (
            f"trial {position}/{self.total} {plan.trial_id:22s} "
            f"[{time.monotonic() - self.start:5.0f}s elapsed, ETA {self._eta(self.total - position + 1)}]"
        )
        self._trial_start = time.monotonic()

    def update(self, items_done: int, items_expected: int, elapsed_s: float) -> None:
        now = time.monotonic()
        if not self.tty or now - self._last_draw < 0.2:
            return
        self._last_draw = now
        rate = items_done / elapsed_s if elapsed_s > 0 else 0.0
        self.stream.write(
            f"\r{self.label} {items_done}/{items_expected} items, {rate:,.0f} items/s   "
        )
        self.stream.flush()

    def end(self, row: dict[str, object]) -> None:
        self.trial_times.append(time.monotonic() - self._trial_start)
        flags = " TIMED OUT" if row["timed_out"] else ""
        flags += " harness-saturated" if row["harness_saturated"] else ""
        line = (
            f"{self.label} {row['items_per_s']:>9,.0f} items/s  p99 {row['latency_p99_ms']:>7,.0f} ms  "
            f"errors {row['error_rate']:.1%}{flags}"
        )
        self.stream.write(("\r" if self.tty else "") + line + "\n")
        self.stream.flush()


def run_sweep(
    scenario_path: Path | None = None,
    *,
    out_dir: Path = Path("results"),
    quick: bool = False,
    dry_run: bool = False,
    resume: Path | None = None,
    options: TrialOptions | None = None,
    stream: TextIO | None = None,
) -> RunFolder | None:
    """Run (or resume) a sweep; returns its folder (None for a dry run). Raises LabError on bad input."""
    stream = stream or sys.stdout
    if resume is not None:
        run = RunFolder.open(resume)
        scenario = load_scenario(run.path / "scenario.yaml")
        quick = bool(run.manifest.get("quick", False))
    elif scenario_path is not None:
        scenario = load_scenario(scenario_path)
    else:
        raise ConfigError("give a scenario file, or --resume RUN_DIR")
    if quick:
        scenario = scenario.quick_variant()
    plan = plan_trials(scenario)
    if dry_run:
        _print_plan(scenario, plan, stream)
        return None
    if resume is None:
        assert scenario_path is not None
        run = RunFolder.create(
            out_dir, scenario.name, Path(scenario_path).read_text(),
            {"seed": scenario.seed, "quick": quick, "command": sys.argv, "trials_planned": [p.trial_id for p in plan]},
        )  # fmt: skip
    done = set(run.completed_trials())
    todo = [p for p in plan if p.trial_id not in done]
    stream.write(f"{scenario.name}: {len(todo)} trials to run ({len(done)} done) -> {run.path}\n")
    progress = ProgressLine(stream, len(plan))
    trial_options = options or TrialOptions()
    try:
        with (
            stop_on_signals(),
            start_broker(scenario.broker.url) as broker,
            start_harness(run.path / "logs" / "shared") as harness,
        ):
            run.update_manifest(
                status="running", broker="embedded" if broker.embedded else "broker.url"
            )
            for position, trial in enumerate(todo, start=len(done) + 1):
                check_stop()
                progress.begin(trial, position)
                opts = dataclasses.replace(trial_options, on_progress=progress.update)
                outcome = run_trial(
                    scenario,
                    trial,
                    broker=broker,
                    logs=run.trial_logs(trial.trial_id),
                    options=opts,
                    harness=harness,
                )
                run.add_trial(outcome.row, outcome.events, outcome.services)
                progress.end(outcome.row)
    except (KeyboardInterrupt, SystemExit):
        run.mark(STATUS_INTERRUPTED)
        stream.write(
            f"\ninterrupted: the run is marked incomplete. Resume it with:\n  python -m lab.sweep --resume {run.path}\n"
        )
        raise
    except BaseException:
        run.mark(STATUS_FAILED)
        raise
    run.mark(STATUS_COMPLETE)
    report = _recommend_and_report(run, stream)
    stream.write(f"report: {report}\nrun: {run.path}\n")
    return run


def _recommend_and_report(run: RunFolder, stream: TextIO) -> Path:
    """The end of every run: recommendation.json, report.html, the one-line verdict."""
    from lab.report.html import write_report  # matplotlib: loaded only when a run ends

    analysis = analyze(run.path)
    run.write_json("recommendation.json", analysis.recommendation.to_json())
    stream.write(analysis.recommendation.describe() + "\n")
    return write_report(run.path, analysis=analysis)


def _print_plan(scenario: Scenario, plan: list[TrialPlan], stream: TextIO) -> None:
    total = 0.0
    stream.write(f"{scenario.name}: {len(plan)} trials, in this order:\n")
    for p in plan:
        est = estimate_trial_s(scenario, p)
        total += est
        stream.write(
            f"  {p.index + 1:3d}. {p.trial_id:24s} concurrency {p.concurrency:5d}  ~{est:5.1f}s\n"
        )
    caveat = (
        ""
        if job_type(scenario.workload.job).known
        else f"; {scenario.workload.job} is a user handler, assumed to send one request per item"
    )
    stream.write(f"estimated duration: {total:.0f}s (nothing was run{caveat})\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab.sweep", description=__doc__.split("\n")[0])
    p.add_argument("scenario", nargs="?", type=Path, help="a scenario YAML file")
    p.add_argument(
        "--out", type=Path, default=Path("results"), help="results root (default: results/)"
    )
    p.add_argument("--quick", action="store_true", help="the scenario's small grid (sweep.quick)")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan and an estimate; run nothing"
    )
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="finish an interrupted run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.scenario is not None and ns.resume is not None:
        print("lab.sweep: give a scenario or --resume, not both", file=sys.stderr)
        return 2
    try:
        run_sweep(ns.scenario, out_dir=ns.out, quick=ns.quick, dry_run=ns.dry_run, resume=ns.resume)
    except LabError as exc:
        print(f"lab.sweep: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:  # SIGTERM, turned into SystemExit so every child was stopped
        return int(exc.code or 0)
    return 0
