"""From a run folder to a recommendation with its reasons. Reads only what the results folder holds.

    run = load_run("results/quickstart/20261128-101500")
    analysis = analyze(run)
    analysis.recommendation["config"], analysis.recommendation["reasons"]

Repeats of a configuration are aggregated into a mean and a Student-t confidence interval. The
recommendation drops what breaks the scenario's SLO (p99 latency, error rate), lost items or
timed out; takes the best by the objective; and among the configurations that the best does not
beat beyond the noise, chooses the cheapest by the scenario's `prefer` order. "Beyond the noise"
follows asv's `_is_result_better`: better only if the intervals are apart AND the gain beats
NOISE_MARGIN; with one repeat there is no interval, so the margin alone decides.

The ranking uses the STEADY-PART throughput (`rank_metric`: steady_items_per_s, from the
repeats long enough to measure it), not items/s over the whole trial: the whole-trial figure of a
short trial mixes start-up and the tail into the rate and swings by 20-35 % from repeat to
repeat, so a configuration could win or lose by chance. Where no repeat was long enough, the
whole-trial figure stands in and `too_short` says so. Lengthened repeats (`length_x` > 1) count
only for the steady figure: a bigger backlog waits longer, so its latency is not the scenario's.
A configuration with a trial stopped early (it could not come within noise of the best) is
never recommended.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab.analysis.attribution import Context, attribute_configs, fill_older_layout
from lab.analysis.explain import bottleneck_reason, explain, trial_warnings, unstable
from lab.analysis.faults import fault_warnings
from lab.analysis.recommendation import Candidate, Recommendation
from lab.analysis.usl import UslFit, fit_usl
from lab.configuration import SEPARATE, Configuration, label
from lab.mocks.spec import ServiceSpec
from lab.results import STATUS_COMPLETE, RunFolder
from lab.scenario.faults import Fault
from lab.scenario.spec import Objective, Scenario, Slo

CONFIG = ["num_workers", "instances", "batch_size"]

#: Where the slots run (results layout 2): a configuration axis only when a run swept it.
PLACEMENT = "placement"

#: A configuration must beat another by more than this fraction to count as better.
NOISE_MARGIN = 0.05

#: Two-sided level of the Student-t interval over repeats.
CONFIDENCE = 0.95

_PREFER_KEYS = {
    "fewer_instances": ("instances", True),
    "fewer_num_workers": ("num_workers", True),
    "smaller_batch_size": ("batch_size", True),
    "larger_batch_size": ("batch_size", False),
}


def preference_key(config: Configuration, prefer: Sequence[str]) -> tuple[int, ...]:
    """Sorts configurations cheapest first by an objective's `prefer` order."""
    return tuple(
        int(getattr(config, column)) * (1 if ascending else -1)
        for column, ascending in (_PREFER_KEYS[p] for p in prefer)
    )


@dataclass(frozen=True)
class Run:
    """A run folder's contents as tables: read with `load_run`."""

    path: Path
    manifest: dict[str, Any]
    scenario: Scenario
    trials: pd.DataFrame  # one row per trial (results.TRIAL_COLUMNS)
    jobs: pd.DataFrame  # one row per job attempt (results.events_frame)


def load_run(path: str | Path) -> Run:
    """Read a run folder (ConfigError if it is not one, or of a layout this lab cannot read)."""
    folder = RunFolder.open(Path(path))
    return Run(
        path=folder.path,
        manifest=folder.manifest,
        scenario=folder.scenario(),
        trials=folder.trials(),
        jobs=folder.jobs(),
    )


@dataclass(frozen=True)
class Analysis:
    """Everything the plots, the report and recommendation.json show."""

    objective: Objective
    trials: pd.DataFrame
    configs: pd.DataFrame  # per configuration: means, intervals, worst cases, `slo_problems`
    recommendation: Recommendation
    fits: list[UslFit]
    warnings: list[str]
    service: ServiceSpec | None = None
    run: Run | None = field(default=None, repr=False)
    # one row per dynamic policy (num_workers auto, autoscaled instances) against the best
    # fixed configuration: lab.analysis.dynamic.compare_policies
    dynamic: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    @property
    def chosen(self) -> dict[str, Any] | None:
        """The recommended configuration, or None when nothing met the SLO."""
        config = self.recommendation.config
        return None if config is None else config.to_json()

    def config(self, **keys: Any) -> pd.Series:
        """The row of `configs` for one configuration: `config(num_workers=4, ..., batch_size=50)`."""
        mask = pd.Series(True, index=self.configs.index)
        for key, value in keys.items():
            mask &= self.configs[key] == value
        rows = self.configs[mask]
        if len(rows) != 1:
            raise KeyError(f"{keys} matches {len(rows)} configurations, not one")
        return rows.iloc[0]

    def summary(self) -> str:
        """The recommendation, its reasons and the warnings as plain text (for a terminal)."""
        rec = self.recommendation
        lines = [rec.describe(), "why:", *(f"  - {r}" for r in rec.reasons)]
        if self.warnings:
            lines += ["warnings:", *(f"  - {w}" for w in self.warnings)]
        return "\n".join(lines)


@dataclass(frozen=True)
class Speedup:
    """How many times faster `candidate` is than `baseline`, by the objective's figure."""

    baseline: str
    candidate: str
    factor: float
    low: float | None  # from the two 95 % intervals, when both configurations have repeats
    high: float | None

    def describe(self) -> str:
        spread = "" if self.low is None else f" (between {self.low:,.1f}× and {self.high:,.1f}×)"
        return f"{self.candidate} is {self.factor:,.1f}× {self.baseline}{spread}"


def speedup(analysis: Analysis, baseline: pd.Series, candidate: pd.Series) -> Speedup:
    """The measured speed-up of one configuration (a `configs` row) over another."""
    metric = analysis.objective.maximize
    low = candidate[f"{metric}_ci_low"] / baseline[f"{metric}_ci_high"]
    high = candidate[f"{metric}_ci_high"] / baseline[f"{metric}_ci_low"]
    known = math.isfinite(low) and math.isfinite(high) and baseline[f"{metric}_ci_low"] > 0
    return Speedup(
        label(baseline), label(candidate), float(candidate[metric] / baseline[metric]),
        float(low) if known else None, float(high) if known else None,
    )  # fmt: skip


def _intervals(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """The Student-t interval of the mean of `column` for every configuration of `frame` at
    once, in `per_config`'s order (low clipped at 0: a rate is never negative); NaN below two
    values."""
    from scipy import stats

    values = frame[column].astype(float).replace([np.inf, -np.inf], np.nan)
    keys = [frame[k] for k in (*CONFIG, PLACEMENT)]
    g = values.groupby(keys, sort=True).agg(["mean", "std", "count"])
    n = g["count"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = stats.t.ppf((1 + CONFIDENCE) / 2, np.where(n >= 2, n - 1, np.nan))
        half = t * g["std"].to_numpy(dtype=float) / np.sqrt(n)
    mean = g["mean"].to_numpy(dtype=float)
    return np.maximum(mean - half, 0.0), mean + half


def _sum_known(s: pd.Series) -> float:
    return float(s.sum(min_count=1))  # NaN when no repeat could tell (not 0: unknown)


def rank_metric(objective: Objective) -> str:
    """The per-configuration column the recommendation ranks by (see the module's docstring)."""
    return f"steady_{objective.maximize}"


def unit(metric: str) -> str:
    """items_per_s, steady_items_per_s -> items/s."""
    return metric.removeprefix("steady_").replace("_per_s", "/s")


#: What a results layout older than 5 lacks, as it would have read.
_LAYOUT_5_DEFAULTS = {"length_x": 1, "too_short": False, "stopped_early": False, "stop_reason": ""}


def _with_layout_5(trials: pd.DataFrame) -> pd.DataFrame:
    """The search's columns filled for an older layout (or a synthetic table), and each trial's
    steady jobs/s (its steady items/s over its batch size)."""
    out = trials.copy()
    for column, default in _LAYOUT_5_DEFAULTS.items():
        values = out[column] if column in out else pd.Series(default, index=out.index)
        out[column] = values.astype(object).where(values.notna(), default).astype(type(default))
    # a table made in memory (zeros for what it does not say) ran the scenario's own backlog
    out["length_x"] = out["length_x"].where(out["length_x"] >= 1, 1)
    if "steady_items_per_s" not in out:
        out["steady_items_per_s"] = math.nan
    out["steady_jobs_per_s"] = out["steady_items_per_s"] / out["batch_size"]
    out["too_short"] |= out["steady_items_per_s"].isna()  # no steady part was measured
    return out


def _steady(trials: pd.DataFrame, configs: pd.DataFrame) -> pd.DataFrame:
    """The steady-window figures per configuration, from its measurable repeats; where it has
    none, the whole-trial figures stand in (`too_short`)."""
    measurable = trials[~trials["too_short"] & ~trials["stopped_early"]]
    keys = [*CONFIG, PLACEMENT]
    grouped = measurable.groupby(keys, sort=True)
    steady = pd.DataFrame({"steady_repeats": grouped.size()})
    for metric in ("items_per_s", "jobs_per_s"):
        column = f"steady_{metric}"
        steady[column] = grouped[column].mean()
        steady[f"{column}_ci_low"], steady[f"{column}_ci_high"] = _intervals(measurable, column)
    out = configs.merge(steady.reset_index(), on=keys, how="left")
    out["steady_repeats"] = out["steady_repeats"].fillna(0).astype(int)
    out["too_short"] = out["steady_repeats"] == 0
    for metric in ("items_per_s", "jobs_per_s"):
        column = f"steady_{metric}"
        for suffix in ("", "_ci_low", "_ci_high"):
            out[column + suffix] = out[column + suffix].where(
                ~out["too_short"], out[metric + suffix]
            )
    return out


def per_config(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: means over repeats, 95 % intervals, the SLO's worst cases,
    and the steady-window figures the ranking uses."""
    if PLACEMENT not in trials:
        trials = trials.assign(**{PLACEMENT: SEPARATE})
    trials = _with_layout_5(trials)
    scenario_length = trials[trials["length_x"] == 1]
    grouped = scenario_length.groupby([*CONFIG, PLACEMENT], as_index=False, sort=True)
    configs = grouped.agg(
        concurrency=("concurrency", "first"),
        repeats=("trial_id", "count"),
        items_per_s=("items_per_s", "mean"),
        jobs_per_s=("jobs_per_s", "mean"),
        makespan_s=("makespan_s", "mean"),
        latency_p50_ms=("latency_p50_ms", "mean"),
        latency_p90_ms=("latency_p90_ms", "mean"),
        latency_p99_ms=("latency_p99_ms", "mean"),
        latency_p99_worst_ms=("latency_p99_ms", "max"),
        queue_wait_p99_ms=("queue_wait_p99_ms", "mean"),
        error_rate=("error_rate", "max"),
        retries=("retries", "mean"),
        timeouts=("timeouts", "mean"),
        instance_seconds=("instance_seconds", "mean"),
        slots_mean=("slots_mean", "mean"),
        retry_rate=("retry_rate", "mean"),
        service_requests=("service_requests", "mean"),
        service_rejected=("service_rejected", "mean"),
        service_max_in_flight=("service_max_in_flight", "max"),
        service_max_queue_depth=("service_max_queue_depth", "max"),
        jobs_enqueued=("jobs_enqueued", "max"),
        lost_items=("lost_items", _sum_known),
        duplicate_items=("duplicate_items", _sum_known),
        timed_out=("timed_out", "any"),
        failed=("failed", "any"),
        harness_saturated=("harness_saturated", "any"),
        machine_saturated=("machine_saturated", "any"),
        littles_bound_items_per_s=("littles_bound_items_per_s", "mean"),
        capacity_bound_items_per_s=("capacity_bound_items_per_s", "mean"),
        bound_items_per_s=("bound_items_per_s", "mean"),
        bound_ratio=("bound_ratio", "mean"),
        workers_cores=("workers_cores", "mean"),
        web_p50_ms=("web_p50_ms", "mean"),
        web_p99_ms=("web_p99_ms", "mean"),
        web_requests_per_s=("web_requests_per_s", "mean"),
        stopped_early=("stopped_early", "any"),
        stop_reason=("stop_reason", "max"),
    )
    for metric in ("items_per_s", "jobs_per_s"):
        configs[f"{metric}_ci_low"], configs[f"{metric}_ci_high"] = _intervals(
            scenario_length, metric
        )
    every_length = trials.groupby([*CONFIG, PLACEMENT], sort=True).size()
    configs["repeats"] = every_length.reindex(
        pd.MultiIndex.from_frame(configs[[*CONFIG, PLACEMENT]])
    ).to_numpy()
    return _steady(trials, configs)


def slo_problems(row: pd.Series, slo: Slo) -> list[str]:
    """Why a configuration cannot be recommended, in words; empty when it qualifies."""
    problems = []
    if bool(row.get("stopped_early", False)):
        problems.append(f"stopped early: {row['stop_reason']}")
    if bool(row["timed_out"]):
        problems.append("timed out")
    elif bool(row["failed"]):
        problems.append("a trial could not finish")
    if slo.p99_latency_ms is not None and row["latency_p99_worst_ms"] > slo.p99_latency_ms:
        problems.append(f"p99 {row['latency_p99_worst_ms']:,.0f} ms > {slo.p99_latency_ms:,.0f} ms")
    if row["error_rate"] > slo.max_error_rate:
        problems.append(f"errors {row['error_rate']:.1%} > {slo.max_error_rate:.1%}")
    if row["lost_items"] > 0:  # NaN (unknown) compares False
        problems.append(f"lost {row['lost_items']:,.0f} items")
    return problems


def beats(best: pd.Series, other: pd.Series, metric: str, margin: float = NOISE_MARGIN) -> bool:
    """True when `best` is better than `other` beyond the noise (both tests must agree: a wide interval alone never makes a winner)."""
    if not other[metric] > 0:
        return True
    if best[metric] / other[metric] - 1 <= margin:
        return False
    best_low, other_high = best[f"{metric}_ci_low"], other[f"{metric}_ci_high"]
    overlap = not (math.isnan(best_low) or math.isnan(other_high)) and other_high >= best_low
    return not overlap


_FIGURES = [
    "items_per_s", "items_per_s_ci_low", "items_per_s_ci_high", "steady_items_per_s",
    "steady_items_per_s_ci_low", "steady_items_per_s_ci_high", "jobs_per_s",
    "latency_p50_ms", "latency_p99_ms", "latency_p99_worst_ms", "error_rate", "retry_rate",
    "service_rejected", "bound_ratio", "lost_items",
]  # fmt: skip


def json_safe(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN and inf to None, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _candidate(row: pd.Series, within_noise: bool | None = None) -> Candidate:
    figures = {k: float(row[k]) for k in _FIGURES}
    figures |= {
        "concurrency": int(row["concurrency"]), "repeats": int(row["repeats"]),
        "too_short": bool(row["too_short"]),
    }  # fmt: skip
    return Candidate(
        Configuration.of(row), json_safe(figures), within_noise, str(row["bottleneck"]),
        json_safe(dict(row["evidence"])),
    )  # fmt: skip


def _fits(trials: pd.DataFrame) -> list[UslFit]:
    usable = trials[~trials["failed"].astype(bool)]
    return [
        fit_usl(part["concurrency"], part["items_per_s"], batch_size=int(batch))
        for batch, part in usable.groupby("batch_size", sort=True)
    ]


def analyze_trials(
    trials: pd.DataFrame,
    objective: Objective,
    *,
    service: ServiceSpec | None = None,
    cpu_count: int | None = None,
    margin: float = NOISE_MARGIN,
    jobs: pd.DataFrame | None = None,
    context: Context | None = None,
    timelines: Mapping[str, Mapping[str, Any]] | None = None,
    faults: tuple[Fault, ...] = (),
) -> Analysis:
    """The analysis of a trials table (trials.csv's columns); `service` is the target's spec,
    `jobs` the attempts (jobs.parquet, for the retry-wave detector and the dynamic policies'
    recovery), `context` what attribution needs to know of the scenario (default: `service`,
    the SLO and a backlog), `timelines` the dynamic trials' dynamics/<trial>.json by trial id,
    `faults` the scenario's (to tell planned instance exits from the others).
    Dynamic policies (num_workers auto, autoscaled instances) are kept apart from the fixed
    configurations and compared with them (lab.analysis.dynamic)."""
    from lab.analysis.dynamic import compare_policies, split_trials  # it builds on this module

    if PLACEMENT not in trials:
        trials = trials.assign(**{PLACEMENT: SEPARATE})
    context = context or Context(service, objective.slo.max_error_rate, None, cpu_count)
    fixed, dynamic_trials = split_trials(trials)
    configs = per_config(fixed)
    if not configs.empty:  # an empty frame's key columns have no type to merge on
        attributed = attribute_configs(fixed, jobs, context, [*CONFIG, PLACEMENT])
        configs = configs.merge(attributed, on=[*CONFIG, PLACEMENT], how="left")
    configs = _with_slo_problems(configs, objective)
    fits = _fits(fixed)
    warnings = (
        trial_warnings(trials, cpu_count=cpu_count)
        + fault_warnings(trials, faults)
        + unstable(configs, rank_metric(objective))
    )
    pick, reasons, runners = _recommendation(configs, objective, margin=margin, fits=fits)
    if configs.empty and not dynamic_trials.empty:
        reasons = ["no fixed configuration was run, so none is recommended; the dynamic ones:"]
    policies, verdicts = compare_policies(
        dynamic_trials, configs, objective, timelines=timelines, jobs=jobs, margin=margin,
        brownouts=service.brownouts if service is not None else (),
    )  # fmt: skip
    rec = Recommendation(
        pick,
        (*reasons[:1], *verdicts, *reasons[1:]),
        tuple(runners),
        tuple(warnings),
        tuple(json_safe(_fit_entry(f)) for f in fits),
        objective.model_dump(mode="json") | {"noise_margin": margin, "confidence": CONFIDENCE},
        tuple(_candidate(r) for _, r in configs.iterrows()),
        tuple(json_safe(r) for r in policies.to_dict("records")),
    )
    return Analysis(objective, trials, configs, rec, fits, warnings, service, dynamic=policies)


def configs_table(trials: pd.DataFrame, objective: Objective) -> pd.DataFrame:
    """`per_config` with each configuration's `slo_problems` (empty: it may be recommended)."""
    return _with_slo_problems(per_config(trials), objective)


def _with_slo_problems(configs: pd.DataFrame, objective: Objective) -> pd.DataFrame:
    configs["slo_problems"] = [slo_problems(r, objective.slo) for _, r in configs.iterrows()]
    return configs


@dataclass(frozen=True)
class Choice:
    """The pick among the configurations meeting the SLO, the best, and those tied with it."""

    chosen: pd.Series
    best: pd.Series
    tied: pd.DataFrame
    ok: pd.DataFrame  # every configuration meeting the SLO


def choose(
    configs: pd.DataFrame, objective: Objective, margin: float = NOISE_MARGIN
) -> Choice | None:
    """The best by the ranked figure, and the cheapest (objective.prefer) of the configurations
    it does not beat beyond the noise; None when nothing meets the SLO."""
    ok = configs[configs["slo_problems"].map(len) == 0]
    if ok.empty:
        return None
    metric = rank_metric(objective)
    best = ok.loc[ok[metric].idxmax()]
    tied = ok[[not beats(best, r, metric, margin) for _, r in ok.iterrows()]]
    keys = [_PREFER_KEYS[p] for p in objective.prefer]
    chosen = tied.sort_values(
        [k for k, _ in keys] + [metric], ascending=[asc for _, asc in keys] + [False]
    ).iloc[0]
    return Choice(chosen, best, tied, ok)


def _recommendation(
    configs: pd.DataFrame, objective: Objective, *, margin: float, fits: list[UslFit]
) -> tuple[Candidate | None, list[str], list[Candidate]]:
    """The pick (None when nothing qualifies), the reasons, the runners-up."""
    if configs.empty:
        return None, ["no trial finished"], []
    metric = rank_metric(objective)
    context = explain(configs, objective, margin=margin, fits=fits)
    choice = choose(configs, objective, margin)
    if choice is None:
        verdict = (
            "no configuration met the SLO and kept every item, so none is recommended "
            f"({_slo_words(objective.slo)}); relax the SLO or change the scenario"
        )
        return None, [verdict, *context], []
    chosen, best, tied, ok = choice.chosen, choice.best, choice.tied, choice.ok
    reasons = [
        _choice_sentence(chosen, best, tied, ok, objective, margin),
        bottleneck_reason(chosen),
        *context,
    ]
    if bool(chosen["harness_saturated"]):
        reasons.append(
            "caution: a trial of the chosen configuration saturated the lab itself, so its "
            "figure measures the lab (see the warnings); rerun on a bigger machine to confirm"
        )
    tied_labels = {label(r) for _, r in tied.iterrows()}
    runners = ok.sort_values(metric, ascending=False)
    runners = runners[[label(r) != label(chosen) for _, r in runners.iterrows()]].head(3)
    return (
        _candidate(chosen),
        reasons,
        [_candidate(r, label(r) in tied_labels) for _, r in runners.iterrows()],
    )


def _fit_entry(fit: UslFit) -> dict[str, Any]:
    return {
        "batch_size": fit.batch_size, "levels": fit.levels, "lambda_items_per_s": fit.lambda_,
        "sigma": fit.sigma, "kappa": fit.kappa, "r_squared": fit.r_squared,
        "peak_concurrency": fit.peak_concurrency, "peak_items_per_s": fit.peak_items_per_s,
        "measured_max_items_per_s": fit.measured_max_items_per_s, "skipped": fit.skipped,
    }  # fmt: skip


def _slo_words(slo: Slo) -> str:
    p99 = "no p99 limit" if slo.p99_latency_ms is None else f"p99 ≤ {slo.p99_latency_ms:,.0f} ms"
    return f"SLO: {p99}, errors ≤ {slo.max_error_rate:.1%}"


def _choice_sentence(
    chosen: pd.Series, best: pd.Series, tied: pd.DataFrame, ok: pd.DataFrame,
    objective: Objective, margin: float,
) -> str:  # fmt: skip
    metric = rank_metric(objective)
    steady = "" if bool(chosen["too_short"]) else " (steady window)"
    head = (
        f"{Configuration.of(chosen).describe()}: {chosen[metric]:,.0f} {unit(metric)}{steady}"
        f"{_interval(chosen, metric)}, p99 {chosen['latency_p99_ms']:,.0f} ms, "
        f"errors {chosen['error_rate']:.1%}, {_repeats(int(chosen['repeats']))}"
    )
    prefer = ", then ".join(p.replace("_", " ", 1) for p in objective.prefer) or (
        f"higher {unit(metric)}"
    )
    if label(chosen) == label(best):
        rule = (
            f"better only if the 95 % intervals are apart and the gain is over {margin:.0%}"
            if (ok["repeats"] >= 2).any()
            else f"one repeat gives no interval: within {margin:.0%}"
        )
        rest = (
            "it is the best, beyond the noise of every other"
            if len(tied) == 1
            else f"it is the best, and the cheapest ({prefer}) of the {len(tied)} within noise "
            f"of it ({rule})"
        )
    else:
        gain = best[metric] / chosen[metric] - 1
        rest = (
            f"the best, {label(best)} at {best[metric]:,.0f} {unit(metric)}, is {gain:.0%} more but "
            f"within the noise: {_why_tied(best, chosen, metric, margin)}. Of the {len(tied)} "
            f"within noise of the best, this is the cheapest ({prefer})"
        )
    return f"{head}. Among {len(ok)} configuration(s) meeting the SLO, {rest}"


def _why_tied(best: pd.Series, other: pd.Series, metric: str, margin: float) -> str:
    if best[metric] / other[metric] - 1 <= margin:
        alone = math.isnan(best[f"{metric}_ci_low"]) or math.isnan(other[f"{metric}_ci_low"])
        why = "; one repeat gives no confidence interval, so the margin alone decides"
        return f"the gap is under {margin:.0%}{why if alone else ''}"
    return (
        f"their 95 % intervals overlap ({other[f'{metric}_ci_low']:,.0f}–"
        f"{other[f'{metric}_ci_high']:,.0f} vs {best[f'{metric}_ci_low']:,.0f}–"
        f"{best[f'{metric}_ci_high']:,.0f})"
    )


def _repeats(n: int) -> str:
    return "1 repeat" if n == 1 else f"mean of {n} repeats"


def _interval(row: pd.Series, metric: str) -> str:
    low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    return "" if math.isnan(low) else f" (95 % CI {low:,.0f}–{high:,.0f})"


def analyze(run: Run | str | Path, *, margin: float = NOISE_MARGIN) -> Analysis:
    """The analysis of a run folder (or of a `Run` already loaded)."""
    if not isinstance(run, Run):
        run = load_run(run)
    scenario = run.scenario
    service = scenario.services.get(scenario.workload.service)
    service = service if isinstance(service, ServiceSpec) else None  # a real service: no model
    cpu_count = run.manifest.get("cpu_count")
    context = Context.of(scenario, cpu_count)
    folder = RunFolder(run.path)
    trials = fill_older_layout(
        run.trials, run.jobs, folder.services, scenario.workload.service, context
    )
    timelines = {tid: t for tid in trials["trial_id"] if (t := folder.timeline(str(tid)))}
    analysis = analyze_trials(
        trials, scenario.objective, service=service, cpu_count=cpu_count, margin=margin,
        jobs=run.jobs, context=context, timelines=timelines, faults=scenario.faults,
    )  # fmt: skip
    status = run.manifest.get("status")
    planned = len(run.manifest.get("trials_planned", []))
    extra = []
    if status != STATUS_COMPLETE:
        extra.append(
            f"the run is {status}: {len(run.trials)} of {planned} planned trials are in; "
            f"finish it with `python -m lab.sweep --resume {run.path}`"
        )
    warnings = extra + analysis.warnings
    rec = analysis.recommendation.with_warnings(warnings)
    return Analysis(
        analysis.objective, analysis.trials, analysis.configs, rec, analysis.fits, warnings,
        service, run, analysis.dynamic,
    )  # fmt: skip


def recommend(
    trials: pd.DataFrame, objective: Objective, *, service: ServiceSpec | None = None,
    margin: float = NOISE_MARGIN,
) -> dict[str, Any]:  # fmt: skip
    """recommendation.json's content: `{"config": {...} | None, "figures", "reasons", ...}`."""
    return analyze_trials(
        trials, objective, service=service, margin=margin
    ).recommendation.to_json()
