"""`python -m lab.sweep SCENARIO`: run a scenario's trials (its grid, or an adaptive search) and recommend.

    python -m lab.sweep scenarios/quickstart.yaml              # the whole grid
    python -m lab.sweep scenarios/opensearch_index.yaml --quick  # the scenario's small grid
    python -m lab.sweep scenarios/x.yaml --dry-run             # the plan and an estimate only
    python -m lab.sweep --resume results/x/20261128-101500     # finish an interrupted run
    python -m lab.sweep scenarios/twin.yaml --verify           # then the best on the real service

Grid trials run in a shuffled order (seeded), so slow drift of the machine does not favour one
configuration; `sweep.search: {kind: adaptive}` or `sweep.repeats: auto` let the search
(lab.sweep.search) decide the trials as the outcomes come in, and write down why. Ctrl-C (or SIGTERM) stops within seconds, stops every child process, marks the
run interrupted and prints the command that resumes it. Bad input exits with status 2 and
writes nothing. A worker instance that dies is part of a trial's figures and a trial that could
not finish is recorded as failed; only a broken harness (the broker, a mock) stops the run: one
message, exit status 2, the run marked failed and resumable.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from lab.analysis.recommendation import Recommendation
from lab.errors import ConfigError, HarnessError, LabError
from lab.infra.broker import Broker, start_broker
from lab.infra.procs import check_stop, stop_on_signals
from lab.results import STATUS_COMPLETE, STATUS_FAILED, STATUS_INTERRUPTED, RunFolder
from lab.runtime.jobs import job_type
from lab.scenario.loader import read_text
from lab.scenario.spec import Scenario, import_job, load_scenario
from lab.sweep.faults import fault_summary
from lab.sweep.harness import Harness, start_harness
from lab.sweep.placement import connect_cluster, with_cluster
from lab.sweep.plan import estimate_trial_s, plan_trials
from lab.sweep.trial import TrialOptions, TrialPlan, run_trial
from lab.sweep.verify import real_service
from lab.sweep.verify import verify as verify_on_real

if TYPE_CHECKING:
    from lab.sweep.search import Decision, Search

__all__ = ["estimate_trial_s", "main", "plan_trials", "run_sweep"]


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
        flags = f" FAILED: {row['failure_reason']}" if row["failed"] else ""
        flags += " stopped early" if row["stopped_early"] else ""
        flags += fault_summary(row)
        flags += " harness-saturated" if row["harness_saturated"] else ""
        line = (
            f"{self.label} {row['items_per_s']:>9,.0f} items/s  p99 {row['latency_p99_ms']:>7,.0f} ms  "
            f"errors {row['error_rate']:.1%}{flags}"
        )
        self.stream.write(("\r" if self.tty else "") + line + "\n")
        self.stream.flush()


@contextlib.contextmanager
def _shared_processes(scenario: Scenario, logs: Path, broker: Broker) -> Iterator[Harness | None]:
    """The mocks and the workers' fork server that trials on this host share (`start_harness`).
    None with a cluster: its trials start their own mocks and instances on its nodes, where
    neither a mock on this host nor a fork server here could serve them."""
    if scenario.cluster is not None:
        yield None
        return
    with start_harness(logs, env=broker.child_env()) as harness:
        yield harness


def _scenario(
    scenario_path: Path | None, resume: Path | None, quick: bool, cluster: str | None
) -> tuple[RunFolder | None, Path, Scenario, bool, str | None]:
    """The run folder being resumed (or None), the scenario's file, the scenario as it will run
    (quick variant, cluster override), and the quick and cluster settings a resume keeps."""
    run = None
    if resume is not None:
        run = RunFolder.open(resume)
        source = run.scenario_path
        quick = bool(run.manifest.get("quick", False))
        cluster = cluster or run.manifest.get("cluster_flag")
    elif scenario_path is not None:
        source = Path(scenario_path)
    else:
        raise ConfigError("give a scenario file, or --resume RUN_DIR")
    scenario = load_scenario(source)
    if quick:
        scenario = scenario.quick_variant()
    if cluster is not None:
        scenario = with_cluster(scenario, cluster)
    return run, source, scenario, quick, cluster


def run_sweep(
    scenario_path: Path | None = None,
    *,
    out_dir: Path = Path("results"),
    quick: bool = False,
    dry_run: bool = False,
    resume: Path | None = None,
    options: TrialOptions | None = None,
    stream: TextIO | None = None,
    cluster: str | None = None,
    verify: bool = False,
) -> RunFolder | None:
    """Run (or resume) a sweep; returns its folder (None for a dry run). Raises LabError on bad input.

    `verify`: the workload's service is a mock fitted to a real one (`calibrated_from`); the
    recommendation and its runners-up are then rerun on the real service (`lab.sweep.verify`)."""
    stream = stream or sys.stdout
    resumed, source, scenario, quick, cluster = _scenario(scenario_path, resume, quick, cluster)
    if verify:
        real_service(scenario)  # bad input stops here, before anything is written
    from lab.sweep.search import Search  # pandas, scipy: only once the arguments hold

    search = Search(scenario, cpu_count=os.cpu_count())
    if dry_run:
        _print_plan(scenario, search, stream)
        return None
    import_job(scenario, source)  # the user's module runs only now, when trials will run
    if resumed is not None:
        run = resumed
    else:
        run = RunFolder.create(
            out_dir, scenario.name, read_text(source, what="scenario"),
            {"seed": scenario.seed, "quick": quick, "command": ["python", "-m", "lab.sweep", *sys.argv[1:]], "search": search.budget_words(), "cluster_flag": cluster},
        )  # fmt: skip

    def log(decision: Decision) -> None:
        run.add_decision(decision.to_json())
        run.update_manifest(trials_planned=[p.trial_id for p in search.planned])

    search.on_decision = log
    if resume is None:
        search.start()
    else:
        search.replay(run.trials().to_dict("records"), run.service_stats(), run.decisions())
    done = len(search.rows)
    stream.write(
        f"{scenario.name}: {len(search.pending)} trials to run ({done} done; {search.budget_words()}) -> {run.path}\n"
    )
    progress = ProgressLine(stream, len(search.planned))
    trial_options = options or TrialOptions()
    try:
        with (
            connect_cluster(scenario.cluster),
            stop_on_signals(),
            start_broker(scenario.broker.url) as broker,
            _shared_processes(scenario, run.path / "logs" / "shared", broker) as harness,
        ):
            run.update_manifest(
                status="running", broker="embedded" if broker.embedded else "broker.url"
            )
            while (trial := search.next_trial()) is not None:
                check_stop()
                progress.total = len(search.planned)
                progress.begin(trial, len(search.rows) + 1)
                opts = dataclasses.replace(
                    trial_options, on_progress=progress.update, stop_rule=search.stop_rule(trial)
                )
                outcome = run_trial(
                    scenario,
                    trial,
                    broker=broker,
                    logs=run.trial_logs(trial.trial_id),
                    options=opts,
                    harness=harness,
                )
                run.add_trial(
                    outcome.row, outcome.events, outcome.services, outcome.faults,
                    outcome.placement, outcome.timeline,
                )  # fmt: skip
                search.record(outcome.row, outcome.services)
                progress.end(outcome.row)
    except (KeyboardInterrupt, SystemExit):
        run.mark(STATUS_INTERRUPTED)
        stream.write(
            f"\ninterrupted: the run is marked incomplete. Resume it with:\n  python -m lab.sweep --resume {run.path}\n"
        )
        raise
    except HarnessError as exc:
        run.mark(STATUS_FAILED)
        again = "" if scenario.broker.url is None else " once the broker answers again"
        raise HarnessError(
            f"{exc}\nThe run is marked failed; finished trials are kept. Resume it{again} with:\n"
            f"  python -m lab.sweep --resume {run.path}"
        ) from None
    except BaseException:
        run.mark(STATUS_FAILED)
        raise
    run.mark(STATUS_COMPLETE)

    def check_on_the_real_service(recommendation: Recommendation) -> None:
        with stop_on_signals(), start_broker(scenario.broker.url) as broker:
            verify_on_real(
                run, scenario, recommendation, broker=broker, options=trial_options, stream=stream
            )

    report = _recommend_and_report(
        run, stream, verify=check_on_the_real_service if verify else None
    )
    stream.write(f"report: {report}\nrun: {run.path}\n")
    return run


def _recommend_and_report(
    run: RunFolder, stream: TextIO, *, verify: Callable[[Recommendation], None] | None = None
) -> Path:
    """The end of every run: recommendation.json, the one-line verdict, the check on the real
    service when asked (`verify`), report.html."""
    from lab.analysis.configs import analyze  # pandas, scipy: loaded only when a run ends
    from lab.report.html import write_report  # matplotlib: likewise

    analysis = analyze(run.path)
    run.write_json("recommendation.json", analysis.recommendation.to_json())
    stream.write(analysis.recommendation.describe() + "\n")
    if verify is not None:
        verify(analysis.recommendation)
    return write_report(run.path, analysis=analysis)


def _print_plan(scenario: Scenario, search: Search, stream: TextIO) -> None:
    total = 0.0
    plan = search.starting_plan()
    more = "" if not search.racing else " to start with; then what the outcomes call for"
    stream.write(f"{scenario.name}: {len(plan)} trials{more}, in this order:\n")
    for p in plan:
        est = estimate_trial_s(scenario, p)
        total += est
        stream.write(
            f"  {p.index + 1:3d}. {p.trial_id:24s} concurrency {p.concurrency or 'dynamic':>7}  ~{est:5.1f}s\n"
        )
    caveat = (
        ""
        if job_type(scenario.workload.job).known
        else f"; {scenario.workload.job} is a user handler, assumed to send one request per item"
    )
    stream.write(f"{search.budget_words()}\n")
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
    p.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="place the trials on a Ray cluster: auto, local or ray://host:port (overrides the "
        "scenario's cluster); none: this host only",
    )
    p.add_argument(
        "--verify", action="store_true",
        help="then rerun the best configurations on the real service the mock was fitted to",
    )  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.scenario is not None and ns.resume is not None:
        print("lab.sweep: give a scenario or --resume, not both", file=sys.stderr)
        return 2
    try:
        run_sweep(
            ns.scenario, out_dir=ns.out, quick=ns.quick, dry_run=ns.dry_run, resume=ns.resume,
            cluster=ns.cluster, verify=ns.verify,
        )  # fmt: skip
    except LabError as exc:
        print(f"lab.sweep: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:  # SIGTERM, turned into SystemExit so every child was stopped
        return int(exc.code or 0)
    return 0
