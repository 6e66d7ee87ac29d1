"""What went wrong in a run's trials, and what it cost: the warnings beside the recommendation.

Read from the trials table alone (trials.csv's `failed`, `failure_reason` and fault columns), so
a run made elsewhere gets the same words. The figures themselves are `lab.sweep.faults`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from lab.analysis.explain import names
from lab.scenario.faults import Fault


def planned_exits(faults: Sequence[Fault], instances: int | str) -> int:
    """Instance exits a trial's schedule asks for (kills), at most its instances (autoscaled:
    their count changes, so no cap)."""
    kills = sum(f.count for f in faults if f.kill)
    return min(int(instances), kills) if str(instances).isdigit() else kills


def fault_warnings(trials: pd.DataFrame, faults: Sequence[Fault] = ()) -> list[str]:
    """Trials that could not finish, trials with instance exits nobody planned, faults that
    never applied, and what the planned ones cost (lost items, duplicates, recovery)."""
    if trials.empty:
        return []
    out = []
    failed = trials["failed"].astype(bool) & ~trials["timed_out"].astype(bool)  # see explain
    if failed.any():
        why = [f"{t}: {r}" for t, r in trials.loc[failed, ["trial_id", "failure_reason"]].values]
        out.append(
            f"{failed.sum()} trial(s) could not finish, so their configurations are ruled out: "
            f"{names(why, limit=3)}"
        )
    exits = trials["instance_crashes"].fillna(0).astype(int)
    planned = trials["instances"].map(lambda n: planned_exits(faults, n))
    unplanned = exits > planned
    if unplanned.any():
        out.append(
            f"{unplanned.sum()} trial(s) had worker instances exit that the scenario did not "
            "plan (an outside kill, the OOM killer, a crash): their figures include that exit "
            f"and its recovery: {names(_costs(trials[unplanned]))}"
        )
    if faults:
        short = trials["faults_injected"].fillna(0).astype(int) < len(faults)
        if short.any():
            out.append(
                f"in {short.sum()} trial(s) not every one of the scenario's {len(faults)} faults "
                f"applied, since the trial drained first: {names(_ids(trials[short]))}; move "
                "them earlier (faults[].at_s) or give the trial more work"
            )
        hit = trials[(trials["faults_injected"].fillna(0) > 0) & ~unplanned]
        if not hit.empty:
            out.append(f"faults injected as planned, and what they cost: {names(_costs(hit))}")
    return out


def _ids(trials: pd.DataFrame) -> list[str]:
    return list(trials["trial_id"].astype(str))


def _costs(trials: pd.DataFrame) -> list[str]:
    """'nw4-in3-bs50-r0 (1 exit, recovery 2.1 s, 12 jobs put back, 0 lost, 4 duplicate items)'."""
    out = []
    for _, row in trials.iterrows():
        parts = [f"{int(row['instance_crashes'])} exit(s)"]
        if math.isfinite(row["recovery_s"]):
            parts.append(f"recovery {row['recovery_s']:.1f} s")
        parts.append(f"{int(row['recovered_jobs'])} jobs put back")
        for column, word in (("lost_items", "lost"), ("duplicate_items", "duplicate items")):
            value = row[column]
            parts.append(f"{word} {'?' if pd.isna(value) else f'{int(value):,}'}")
        if math.isfinite(row["dip_ratio"]):
            parts.append(f"throughput {row['dip_ratio']:.0%} of before while it lasted")
        out.append(f"{row['trial_id']} ({', '.join(parts)})")
    return out
