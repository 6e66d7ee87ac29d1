"""Dynamic policies against the best fixed configuration for the same scenario, measured.

A dynamic policy is a configuration whose `num_workers` is `auto` (each instance adapts its
slot limit) or whose `instances` is `autoscale` (instances follow the backlog). Each one is put
next to two fixed configurations of the same batch size and placement, both from the same run:

- the **best fixed**: the highest `objective.maximize` among those that meet the SLO (what a
  sweep finds, knowing the service). Compared: throughput (within the noise or not), p99,
  429s and timeouts, instance-seconds.
- the **cheapest fixed that meets the SLO**: the fewest instance-seconds. A policy that meets
  the SLO for less is cheaper; when no fixed configuration meets the SLO, that is said.

Verdict: `wins` when the policy meets the SLO, the best fixed does not beat it beyond the noise,
and it is cheaper or sheds load (fewer 429s and timeouts than the best fixed); `ties` when it
only matches; `loses` otherwise. From its timeline (dynamics/<trial>.json): how long the slot
limit took to settle, and, when the service browns out, how far it shed and how long it took
to come back after.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from lab.analysis.configs import NOISE_MARGIN, beats, choose, per_config, slo_problems
from lab.configuration import Configuration, label
from lab.mocks.spec import Brownout
from lab.scenario.spec import Objective

#: The limit has settled once it stays within this fraction of its later median...
SETTLE_BAND = 0.3

#: ...its median over this many seconds, that is.
SMOOTH_S = 1.0

#: After a brown-out, recovered once the items done per second (over 1 s) are back to this
#: share of their rate before it...
RECOVERED_SHARE = 0.8

#: ...looked at every this many seconds.
RATE_STEP_S = 0.25

#: Seconds before a brown-out that are "before it".
BEFORE_S = 5.0


def split_trials(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fixed, dynamic) trials. Fixed knobs as int64; dynamic ones as text (`auto`, `2`)."""
    if trials.empty:
        return trials, trials.copy()
    fixed_mask = trials["num_workers"].map(_is_int) & trials["instances"].map(_is_int)
    fixed = trials[fixed_mask].copy()
    dynamic = trials[~fixed_mask].copy()
    for knob in ("num_workers", "instances"):
        fixed[knob] = fixed[knob].astype("int64")
        dynamic[knob] = dynamic[knob].astype(str)
    fixed["concurrency"] = fixed["num_workers"] * fixed["instances"]  # empty for dynamic rows
    return fixed, dynamic


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer)


def timeline_frame(timeline: Mapping[str, Any], part: str) -> pd.DataFrame:
    """One table of a dynamics/<trial>.json: `slots`, `limits` or `instances`."""
    table = timeline.get(part) or {"columns": [], "rows": []}
    return pd.DataFrame(table["rows"], columns=table["columns"])


def settle_s(slots: pd.DataFrame, until_s: float) -> float:
    """When the total slot limit (its median over the last SMOOTH_S: a probe of one window is
    not a swing) entered, for good until `until_s`, the band of ±SETTLE_BAND around its median
    over the second half of [0, until_s]; NaN if it never did."""
    part = slots[slots["t_s"] < until_s]
    if part.empty:
        return math.nan
    step_s = float(part["t_s"].diff().median()) if len(part) > 1 else SMOOTH_S
    smooth = part["slots"].rolling(max(1, round(SMOOTH_S / step_s)), min_periods=1).median()
    part = part.assign(slots=smooth)
    later = part[part["t_s"] >= until_s / 2]["slots"]
    mid = float(later.median()) if len(later) else math.nan
    if not mid > 0:
        return math.nan
    outside = part[(part["slots"] - mid).abs() > SETTLE_BAND * mid]
    if outside.empty:
        return float(part["t_s"].iloc[0])
    after = part[part["t_s"] > outside["t_s"].iloc[-1]]
    return float(after["t_s"].iloc[0]) if len(after) else math.nan


def done_items(jobs: pd.DataFrame, trial: pd.Series) -> pd.DataFrame:
    """A trial's successful jobs: `t_s` (their end, seconds after the clock start), `items`."""
    mine = jobs[(jobs["trial_id"] == trial["trial_id"]) & (jobs["outcome"] == "ok")]
    return pd.DataFrame(
        {"t_s": mine["finished_at"] - float(trial["started_at"]), "items": mine["items"]}
    )


def recovery_s(done: pd.DataFrame, window: Brownout, end_s: float) -> float:
    """Seconds after the brown-out `window` until the items done per second (over 1 s) were
    back to RECOVERED_SHARE of their rate in the BEFORE_S before it; NaN if not by `end_s`."""
    start, stop = window.start_s, window.start_s + window.duration_s
    span = min(BEFORE_S, start)
    if span <= 0:
        return math.nan
    before = done[(done["t_s"] >= start - span) & (done["t_s"] < start)]["items"].sum() / span
    for at in np.arange(stop, end_s - 1.0, RATE_STEP_S):
        if (
            done[(done["t_s"] >= at) & (done["t_s"] < at + 1.0)]["items"].sum()
            >= RECOVERED_SHARE * before
        ):
            return float(at - stop)
    return math.nan


def brownout_response(
    slots: pd.DataFrame, done: pd.DataFrame, window: Brownout, end_s: float
) -> dict[str, float]:
    """How a policy met the brown-out `window`: its mean slots during it as a share of the
    BEFORE_S before it, and its `recovery_s` after it (`done`: `done_items`)."""
    start, stop = window.start_s, window.start_s + window.duration_s
    t, v = slots["t_s"], slots["slots"]
    before = float(v[(t >= start - BEFORE_S) & (t < start)].median())
    during = float(v[(t >= start) & (t < stop)].mean())
    return {
        "slots_during_share": during / before if before > 0 else math.nan,
        "recovery_s": recovery_s(done, window, end_s),
    }


def compare_policies(
    trials: pd.DataFrame,
    fixed: pd.DataFrame,
    objective: Objective,
    *,
    timelines: Mapping[str, Mapping[str, Any]] | None = None,
    brownouts: Sequence[Brownout] = (),
    jobs: pd.DataFrame | None = None,
    margin: float = NOISE_MARGIN,
) -> tuple[pd.DataFrame, list[str]]:
    """One row per dynamic policy with its comparison, and the sentences for the reasons.

    `trials`: the dynamic trials (`split_trials`); `fixed`: the fixed configurations (the
    analysis's `configs`, with `slo_problems`); `timelines`: dynamics/<trial>.json by trial id;
    `jobs`: the run's job events (for the recovery after a brown-out).
    """
    if trials.empty:
        return pd.DataFrame(), []
    metric = objective.maximize
    policies = per_config(trials)
    policies["slo_problems"] = [slo_problems(r, objective.slo) for _, r in policies.iterrows()]
    rows, sentences = [], []
    for _, policy in policies.iterrows():
        rivals = _rivals(fixed, policy)
        row: dict[str, Any] = {
            "config": label(policy),
            **{k: policy[k] for k in ("num_workers", "instances", "batch_size", "placement")},
            **_figures(policy, metric),
            **_dynamics(trials[_matches(trials, policy)], timelines or {}, brownouts, jobs),
        }
        choice = choose(rivals, objective, margin) if not rivals.empty else None
        if choice is not None:
            best, pick, ok = choice.best, choice.chosen, choice.ok
            cheapest = ok.sort_values(["instance_seconds", metric], ascending=[True, False]).iloc[0]
            row |= {
                "best_fixed": label(best),
                "throughput_ratio": policy[metric] / best[metric] if best[metric] else math.nan,
                "beaten_by_best": beats(best, policy, metric, margin),
                "p99_ratio": policy["latency_p99_ms"] / best["latency_p99_ms"],
                "fixed_pick": label(pick),
                "pick_overloads": pick["service_rejected"] + pick["timeouts"],
                "pick_instance_seconds": pick["instance_seconds"],
                "cheapest_fixed": label(cheapest),
                "cheapest_instance_seconds": cheapest["instance_seconds"],
            }
        row["verdict"] = _verdict(row, margin)
        rows.append(row)
        sentences.append(_sentence(row, metric))
    return pd.DataFrame(rows), sentences


def _rivals(fixed: pd.DataFrame, policy: pd.Series) -> pd.DataFrame:
    """The fixed configurations a policy answers for: same batch size and placement, and the
    same value of the knob it does not adapt (`auto` with 2 instances vs num_workers N with 2
    instances; autoscaled with num_workers 4 vs N instances of num_workers 4)."""
    if fixed.empty:
        return fixed
    mask = (fixed["batch_size"] == policy["batch_size"]) & (
        fixed["placement"] == policy["placement"]
    )
    for knob in ("num_workers", "instances"):
        if str(policy[knob]).isdigit():
            mask &= fixed[knob] == int(policy[knob])
    return fixed[mask]


def _matches(trials: pd.DataFrame, policy: pd.Series) -> pd.Series:
    mask = pd.Series(True, index=trials.index)
    for knob in ("num_workers", "instances", "batch_size", "placement"):
        mask &= trials[knob].astype(str) == str(policy[knob])
    return mask


def _figures(policy: pd.Series, metric: str) -> dict[str, Any]:
    keys = [metric, "latency_p99_ms", "queue_wait_p99_ms", "error_rate", "service_rejected",
            "timeouts", "instance_seconds", "slots_mean", "repeats"]  # fmt: skip
    out = {k: policy[k] for k in keys}
    out["overloads"] = policy["service_rejected"] + policy["timeouts"]
    out["slo_problems"] = list(policy["slo_problems"])
    return out


def _dynamics(
    trials: pd.DataFrame,
    timelines: Mapping[str, Mapping[str, Any]],
    brownouts: Sequence[Brownout],
    jobs: pd.DataFrame | None,
) -> dict[str, float]:
    """Settling and brown-out figures, the mean over the policy's repeats with a timeline."""
    found: list[dict[str, float]] = []
    for _, trial in trials.iterrows():
        timeline = timelines.get(str(trial["trial_id"]))
        if timeline is None:
            continue
        slots, makespan = timeline_frame(timeline, "slots"), float(trial["makespan_s"])
        first = brownouts[0].start_s if brownouts else math.inf
        figures = {"settle_s": settle_s(slots, min(first, makespan))}
        if first < makespan and jobs is not None:
            done = done_items(jobs, trial)
            figures |= brownout_response(slots, done, brownouts[0], makespan)
        found.append(figures)
    return {k: _mean_known([f.get(k, math.nan) for f in found]) for k in found[0]} if found else {}


def _mean_known(values: list[float]) -> float:
    known = [v for v in values if math.isfinite(v)]
    return sum(known) / len(known) if known else math.nan


def _verdict(row: Mapping[str, Any], margin: float) -> str:
    if row["slo_problems"]:
        return "loses"
    if "best_fixed" not in row:
        return "wins"  # it meets the SLO and no fixed configuration of its kind does
    if row["beaten_by_best"]:
        return "loses"
    cheaper = row["instance_seconds"] < (1 - margin) * row["cheapest_instance_seconds"]
    gentler = row["overloads"] < row["pick_overloads"]
    return "wins" if cheaper or gentler else "ties"


def _sentence(row: Mapping[str, Any], metric: str) -> str:
    """The policy against the fixed configurations, in words: the reasons' dynamic lines."""
    unit = metric.replace("_per_s", "/s")
    head = (
        f"dynamic {Configuration.of(row).describe()}: {row[metric]:,.0f} {unit}, p99 "
        f"{row['latency_p99_ms']:,.0f} ms, {row['instance_seconds']:,.1f} instance-seconds"
    )
    broken = f"it breaks the SLO ({'; '.join(row['slo_problems'])})" if row["slo_problems"] else ""
    if "best_fixed" not in row:
        alone = broken.replace("it breaks", "nor does it meet") or "it does"
        return (
            f"{head}: {row['verdict']}: no fixed configuration of its kind meets the SLO; {alone}"
        )
    noise = "beaten beyond the noise" if row["beaten_by_best"] else "within the noise"
    parts = [
        f"{row['throughput_ratio']:.0%} of the best fixed {row['best_fixed']}'s {unit} ({noise}), "
        f"p99 {row['p99_ratio']:.2f}×",
        f"against the fixed pick {row['fixed_pick']}: 429s and timeouts {row['overloads']:,.0f} "
        f"vs {row['pick_overloads']:,.0f}, instance-seconds {row['instance_seconds']:,.1f} vs "
        f"{row['pick_instance_seconds']:,.1f}",
    ]
    if row["cheapest_fixed"] != row["fixed_pick"]:
        parts.append(
            f"the cheapest fixed that meets the SLO, {row['cheapest_fixed']}, used "
            f"{row['cheapest_instance_seconds']:,.1f} instance-seconds"
        )
    if broken:
        parts.append(broken)
    if math.isfinite(row.get("settle_s", math.nan)):
        parts.append(f"its slots settled after {row['settle_s']:.1f} s")
    if math.isfinite(row.get("slots_during_share", math.nan)):
        recovery = row.get("recovery_s", math.nan)
        back = (
            f"back to {RECOVERED_SHARE:.0%} of their rate before {recovery:.1f} s after it"
            if math.isfinite(recovery)
            else "not back to their rate before by the end"
        )
        parts.append(
            f"in the brown-out its slots were {row['slots_during_share']:.0%} of their level "
            f"before it; its items done per second were {back}"
        )
    return f"{head}: {row['verdict']}: " + "; ".join(parts)
