"""Plain-word explanations of a sweep, each from its own figures: none is asserted, all measured.

Where throughput stops growing and what held it there (the words and their evidence come from
lab.analysis.attribution), where the SLO breaks, where 429s and retries start, what batching
bought, how the scalability fit reads; and the warnings about trials not to trust.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from lab.analysis.attribution import describe, more_slots
from lab.analysis.usl import UslFit
from lab.configuration import label
from lab.scenario.spec import Objective

#: At most this many names in a list before "and N more".
MAX_NAMES = 6


def names(items: Iterable[str], limit: int = MAX_NAMES) -> str:
    """'a, b and c', or 'a, b, ... and 4 more'."""
    items = list(items)
    if len(items) > limit:
        return f"{', '.join(items[:limit])} and {len(items) - limit} more"
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _levels(values: Iterable[int]) -> str:
    return names([f"{v:,}" for v in sorted(set(values))])


def _batches(configs: pd.DataFrame) -> list[tuple[int, pd.DataFrame]]:
    return [(int(b), part) for b, part in configs.groupby("batch_size", sort=True)]


def _groups(configs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per batch size, and per placement when the run swept both: a name and its rows."""
    placements = configs["placement"].nunique() if "placement" in configs else 1
    keys = ["batch_size", "placement"] if placements > 1 else ["batch_size"]
    out = []
    for key, part in configs.groupby(keys, sort=True):
        batch, *where = key if isinstance(key, tuple) else (key,)
        out.append((f"batch {int(batch)}" + (f", {where[0]}" if where else ""), part))
    return out


def held_by(row: pd.Series | dict[str, Any]) -> str:
    """What held one configuration, in words (lab.analysis.attribution)."""
    return describe(str(row["bottleneck"]), row["_evidence"])


def _lever(row: pd.Series | dict[str, Any]) -> str:
    """What would raise a configuration's ceiling, when its word says so."""
    if row["bottleneck"] == "concurrency":
        return f"; {more_slots(row['_evidence'])}"
    if row["bottleneck"] == "worker_cpu":
        return "; more instances would raise it (one core each, where the machine has them)"
    return ""


#: Words whose ceiling more slots or more instances can still raise.
_MORE_HELPS = ("concurrency", "worker_cpu")


def bottleneck_reason(row: pd.Series) -> str:
    """The chosen configuration's binding constraint, with its evidence: 'nw16-in1-bs1: ...'."""
    return f"{label(row)}: held by {held_by(row)}{_lever(row)}"


def plateau(configs: pd.DataFrame, metric: str, *, margin: float) -> list[str]:
    """Per batch size and placement: the knee (where more concurrency stops paying), what holds
    there, and which constraint takes over past it."""
    out, unit = [], metric.replace("_per_s", "/s")
    for name, part in _groups(configs[~configs["timed_out"].astype(bool)]):
        # the best configuration at each total concurrency
        by_n = part.sort_values(metric).groupby("concurrency").tail(1).set_index("concurrency")
        by_n = by_n.sort_index()
        if len(by_n) < 2:
            continue
        peak = by_n[metric].max()
        knee = int(by_n.index[by_n[metric] >= (1 - margin) * peak][0])
        at_knee = by_n.loc[knee]
        head = f"{name}: "
        if knee == by_n.index[-1]:
            where = f"({knee:,}: {at_knee[metric]:,.0f} {unit}, {label(at_knee)})"
            out.append(
                f"{head}throughput still grows at the largest concurrency tried {where}, held "
                f"by {held_by(at_knee)}{_lever(at_knee)}"
                if at_knee["bottleneck"] in _MORE_HELPS
                else f"{head}the largest concurrency tried is the best {where}, held by "
                f"{held_by(at_knee)}, which more concurrency does not lift"
            )
            continue
        past = by_n[by_n.index > knee]
        takes_over = past["bottleneck"].value_counts().index[0]
        then = past[past["bottleneck"] == takes_over].iloc[0]
        knee_words = (
            f"held by {held_by(at_knee)}"
            if takes_over == at_knee["bottleneck"]
            else f"past it, {label(then)} is held by {held_by(then)}"
        )
        out.append(
            f"{head}throughput stops growing at concurrency {knee:,} ({at_knee[metric]:,.0f} "
            f"{unit}, {label(at_knee)}; more concurrency adds under {margin:.0%}); {knee_words}"
        )
    return out


def slo_edges(configs: pd.DataFrame, objective: Objective) -> list[str]:
    """Which configurations the SLO (or lost items, or a timeout) ruled out, and where."""
    slo = objective.slo
    failing = configs[configs["slo_problems"].map(len) > 0]
    p99 = f"p99 ≤ {slo.p99_latency_ms:,.0f} ms, " if slo.p99_latency_ms is not None else ""
    if failing.empty:
        return [
            f"all {len(configs)} configurations met the SLO ({p99}errors ≤ "
            f"{slo.max_error_rate:.1%}) and lost no item"
        ]
    out = []
    for batch, part in _batches(configs):
        parts = []
        if slo.p99_latency_ms is not None:
            hit = part[part["latency_p99_worst_ms"] > slo.p99_latency_ms]
            if not hit.empty:
                parts.append(
                    f"p99 over {slo.p99_latency_ms:,.0f} ms at concurrency "
                    f"{_levels(hit['concurrency'])} (up to {hit['latency_p99_worst_ms'].max():,.0f} ms)"
                )
        hit = part[part["error_rate"] > slo.max_error_rate]
        if not hit.empty:
            parts.append(
                f"errors over {slo.max_error_rate:.1%} at concurrency {_levels(hit['concurrency'])} "
                f"(up to {hit['error_rate'].max():.1%})"
            )
        hit = part[part["lost_items"].fillna(0) > 0]
        if not hit.empty:
            parts.append(
                f"items lost at concurrency {_levels(hit['concurrency'])} "
                f"({hit['lost_items'].sum():,.0f} in all)"
            )
        hit = part[part["timed_out"].astype(bool)]
        if not hit.empty:
            parts.append(f"timed out at concurrency {_levels(hit['concurrency'])}")
        if parts:
            ruled_out = (part["slo_problems"].map(len) > 0).sum()
            out.append(f"batch {batch} ({ruled_out} of {len(part)} ruled out): {'; '.join(parts)}")
    waited = failing[failing["queue_wait_p99_ms"] >= 0.5 * failing["latency_p99_ms"]]
    if slo.p99_latency_ms is not None and not waited.empty:
        out.append(
            f"in {len(waited)} of those, most of the p99 latency is waiting in the queue "
            "(with a backlog, p99 latency is close to the drain time: more throughput shortens it)"
        )
    head = (
        f"{len(failing)} of {len(configs)} configurations are ruled out by the SLO "
        f"({p99}errors ≤ {slo.max_error_rate:.1%}), lost items or timeouts"
    )
    return [head, *out]


def rejections(configs: pd.DataFrame) -> list[str]:
    """Per batch size: the lowest concurrency with 429s or retries, with their counts."""
    out = []
    for batch, part in _batches(configs):
        hit = part[(part["service_rejected"] > 0) | (part["retries"] > 0)]
        if hit.empty:
            continue
        first = hit.sort_values("concurrency").iloc[0]
        out.append(
            f"batch {batch}: 429s or retries start at concurrency {int(first['concurrency']):,} "
            f"({label(first)}: {first['service_rejected']:,.0f} rejected requests, "
            f"{first['retries']:,.0f} retries per trial), {len(hit)} configuration(s) in all"
        )
    return out or ["no request was rejected (429) and no job retried in any trial"]


def batching(configs: pd.DataFrame, metric: str) -> list[str]:
    """What batching bought: the best of each batch size against the smallest batch's best."""
    best = configs.groupby("batch_size")[metric].max().sort_index()
    if len(best) < 2 or not best.iloc[0] > 0:
        return []
    parts = [
        f"batch {int(b)}: {v:,.0f} ({v / best.iloc[0]:,.1f}×)" for b, v in best.iloc[1:].items()
    ]
    return [
        f"batching: best {metric.replace('_per_s', '/s')} with batch {int(best.index[0])} is "
        f"{best.iloc[0]:,.0f}; {'; '.join(parts)}"
    ]


def explain(
    configs: pd.DataFrame, objective: Objective, *, margin: float, fits: list[UslFit]
) -> list[str]:
    """The sentences behind a recommendation, most telling first."""
    metric = objective.maximize
    return [
        *slo_edges(configs, objective),
        *plateau(configs, metric, margin=margin),
        *batching(configs, metric),
        *rejections(configs),
        *(f.describe() for f in fits),
    ]


def trial_warnings(trials: pd.DataFrame, *, cpu_count: int | None) -> list[str]:
    """Trials whose figures are not to be trusted as they stand, and why."""
    out = []

    def ids(mask: pd.Series) -> list[str]:
        return list(trials.loc[mask, "trial_id"].astype(str))

    harness = trials["harness_saturated"].astype(bool)
    if harness.any():
        why = trials.loc[harness, "saturation_reason"].fillna("").astype(str).iloc[0]
        out.append(
            f"{harness.sum()} trial(s) harness-saturated, not trusted (the figure measures the "
            f"lab, not the configuration): {names(ids(harness))} (e.g. {why})"
        )
    machine = trials["machine_saturated"].astype(bool) & ~harness
    if machine.any():
        cores = f"all {cpu_count} cores" if cpu_count else "every core"
        out.append(
            f"{machine.sum()} trial(s) kept {cores} busy, so workers and services competed for "
            f"CPU; those figures hold for this machine only: {names(ids(machine))}"
        )
    timed_out = trials["timed_out"].astype(bool)
    if timed_out.any():
        out.append(f"{timed_out.sum()} trial(s) timed out before draining: {names(ids(timed_out))}")
    for column, words in (("lost_items", "lost"), ("duplicate_items", "received more than once")):
        hit = trials[column].fillna(0) > 0
        if hit.any():
            total = int(trials.loc[hit, column].sum())
            dead = int(trials.loc[hit, "dead_letters"].sum()) if column == "lost_items" else 0
            cause = f"; those trials dead-lettered {dead:,} jobs (retries used up)" if dead else ""
            out.append(f"{total:,} item(s) {words}, in trial(s) {names(ids(hit))}{cause}")
    return out


#: An interval wider than this fraction of the mean, each side, makes a configuration unstable.
UNSTABLE_HALF_WIDTH = 0.10


def unstable(configs: pd.DataFrame, metric: str) -> list[str]:
    """Configurations whose repeats disagree too much to rank them finely, and what to do."""
    half = (configs[f"{metric}_ci_high"] - configs[f"{metric}_ci_low"]) / 2
    wide = configs[half > UNSTABLE_HALF_WIDTH * configs[metric]]
    if wide.empty:
        return []
    worst = wide.loc[(half[wide.index] / wide[metric]).idxmax()]
    return [
        f"{len(wide)} of {len(configs)} configurations are unstable (95 % interval wider than "
        f"±{UNSTABLE_HALF_WIDTH:.0%} of the mean), e.g. {label(worst)}: "
        f"{worst[f'{metric}_ci_low']:,.0f}–{worst[f'{metric}_ci_high']:,.0f} around "
        f"{worst[metric]:,.0f}; more repeats (sweep.repeats) or a bigger backlog narrow it"
    ]
