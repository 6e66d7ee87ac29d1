"""From a run's trials to a recommendation. Reads only what the results folder holds.

This first version takes the best configuration by the scenario's objective among those that
meet its SLO, then the cheapest by `prefer` among those within NOISE_MARGIN of the best. (The
analysis issue adds confidence intervals over repeats, the scalability fit and the explanations.)
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from lab.scenario import Objective

CONFIG = ["num_workers", "instances", "batch_size"]

#: Configurations whose figure is within this fraction of the best count as tied with it.
NOISE_MARGIN = 0.05

_PREFER_KEYS = {
    "fewer_instances": ("instances", True),
    "fewer_num_workers": ("num_workers", True),
    "smaller_batch_size": ("batch_size", True),
    "larger_batch_size": ("batch_size", False),
}


def per_config(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: the mean over repeats, the worst case of the SLO figures."""
    grouped = trials.groupby(CONFIG, as_index=False)
    return grouped.agg(
        repeats=("trial_id", "count"),
        items_per_s=("items_per_s", "mean"),
        jobs_per_s=("jobs_per_s", "mean"),
        latency_p99_ms=("latency_p99_ms", "max"),
        latency_p50_ms=("latency_p50_ms", "mean"),
        error_rate=("error_rate", "max"),
        lost_items=("lost_items", "max"),
        timed_out=("timed_out", "any"),
        harness_saturated=("harness_saturated", "any"),
        bound_ratio=("bound_ratio", "mean"),
    )


def _config(row: pd.Series) -> dict[str, int]:
    return {k: int(row[k]) for k in CONFIG}


_FIGURES = [
    "items_per_s",
    "jobs_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "error_rate",
    "bound_ratio",
]


def _figures(row: pd.Series) -> dict[str, Any]:
    """The figures of a configuration, JSON-ready (NaN becomes None)."""
    out: dict[str, Any] = {k: float(row[k]) for k in _FIGURES}
    out = {k: None if math.isnan(v) else v for k, v in out.items()}
    out["repeats"] = int(row["repeats"])
    return out


def recommend(trials: pd.DataFrame, objective: Objective) -> dict[str, Any]:
    """`{"config", "figures", "reasons", "runners_up"}`; config is None when nothing qualifies."""
    if trials.empty:
        return {"config": None, "figures": {}, "reasons": ["no trial finished"], "runners_up": []}
    configs = per_config(trials)
    reasons: list[str] = []
    ok = ~configs["timed_out"]
    slo = objective.slo
    if slo.p99_latency_ms is not None:
        ok &= configs["latency_p99_ms"] <= slo.p99_latency_ms
    ok &= configs["error_rate"] <= slo.max_error_rate
    ok &= configs["lost_items"].fillna(0) <= 0
    dropped = len(configs) - int(ok.sum())
    if dropped:
        reasons.append(
            f"{dropped} of {len(configs)} configurations broke the SLO, lost items or timed out"
        )
    candidates = configs[ok]
    if candidates.empty:
        reasons.append("no configuration met the SLO: none is recommended")
        return {"config": None, "figures": {}, "reasons": reasons, "runners_up": []}
    metric = objective.maximize
    best_value = candidates[metric].max()
    tied = candidates[candidates[metric] >= (1 - NOISE_MARGIN) * best_value]
    sort_keys = [_PREFER_KEYS[p] for p in objective.prefer]
    ordered = tied.sort_values(
        [k for k, _ in sort_keys] + [metric], ascending=[asc for _, asc in sort_keys] + [False]
    )
    chosen = ordered.iloc[0]
    reasons.append(
        f"best {metric} {best_value:,.0f}; {len(tied)} configuration(s) within {NOISE_MARGIN:.0%} of it, "
        f"the cheapest by {', '.join(objective.prefer) or 'figure'} chosen"
    )
    if bool(chosen["harness_saturated"]):
        reasons.append(
            "warning: a trial of this configuration saturated the lab itself; its figure measures the lab"
        )
    runners = candidates.sort_values(metric, ascending=False)
    runners = runners[(runners[CONFIG] != chosen[CONFIG]).any(axis=1)].head(3)
    return {
        "config": _config(chosen),
        "figures": _figures(chosen),
        "reasons": reasons,
        "runners_up": [
            {"config": _config(r), "figures": _figures(r)} for _, r in runners.iterrows()
        ],
    }
