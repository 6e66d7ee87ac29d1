"""What a trial records of its dynamic configuration: limits and instances over time, and the cost.

Every trial gets the cost columns (`instance_seconds`, `instances_max`, `slots_mean`,
`slots_max`; described in `lab.results.TRIAL_COLUMNS`), so a fixed configuration and a dynamic policy compare on the same terms. A trial
with `num_workers: auto` or autoscaled instances also leaves a timeline (the run folder's
`dynamics/<trial>.json`): every limit window of every instance, and the autoscaler's series.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lab.runtime.limits import LimitEvent

#: Format history of dynamics/<trial>.json: 1 = schema_version, clock_start, wall_s, slots
#: {columns: [t_s, slots], rows} (job slots summed over instances, every TIMELINE_STEP_S),
#: limits {columns, rows} (every window of every instance; t_s from the clock start), and
#: with autoscaling: instances {columns, rows} (the autoscaler's polls), periods ([index,
#: ordered_s, start_at_s, stopping_s, ended_s] per instance).
TIMELINE_VERSION = 1

#: Resolution of the time-weighted slot figures, in seconds...
GRID_S = 0.05
#: ...and of the slots series kept in the timeline.
TIMELINE_STEP_S = 0.1


def _steps(grid: np.ndarray, points: Sequence[tuple[float, float]]) -> np.ndarray:
    """A step function (value from each point's time until the next) sampled on `grid`; 0
    before the first point."""
    if not points:
        return np.zeros_like(grid)
    times = np.array([t for t, _ in points])
    values = np.array([0.0, *(v for _, v in points)])
    return values[np.searchsorted(times, grid, side="right")]


def slot_series(
    grid: np.ndarray,
    *,
    num_workers: int | None,
    limits: Sequence[LimitEvent],
    clock_start: float,
    lifetimes: Sequence[tuple[float, float | None]],
) -> np.ndarray:
    """Job slots summed over instances at each grid time (seconds after the clock start).

    With `num_workers: auto` each instance's slots are its recorded limit, from its start
    event to its stop event; otherwise `num_workers` over each instance's (start, end) lifetime.
    """
    total = np.zeros_like(grid)
    if num_workers is None:
        by_instance: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for e in limits:
            by_instance[e.instance].append(
                (e.t - clock_start, 0.0 if e.reason == "stop" else float(e.limit))
            )
        for points in by_instance.values():
            total += _steps(grid, sorted(points))
        return total
    for start, end in lifetimes:
        if end is not None and end <= start:
            continue  # ordered, then cancelled before it started
        points = [(start, float(num_workers))] + ([(end, 0.0)] if end is not None else [])
        total += _steps(grid, points)
    return total


@dataclass(frozen=True)
class Dynamics:
    """What a trial adds to its row (`cost`) and, when something moved, its `timeline`."""

    cost: dict[str, float]
    timeline: dict[str, Any] | None


def record(
    *,
    num_workers: int | None,
    instances: int | None,
    wall_s: float,
    clock_start: float,
    limits: Sequence[LimitEvent],
    autoscaled: Mapping[str, Any] | None,
) -> Dynamics:
    """The cost columns and the timeline of one trial. `num_workers` is None with `auto`
    (the limits then count); `instances` is None when autoscaled (`autoscaled` is then
    `AutoscaleHook.finish`'s summary)."""
    grid = np.arange(0.0, max(wall_s, GRID_S), GRID_S)
    if autoscaled is not None:
        # an instance claims from its start until it is asked to stop (or its end)
        lifetimes = [(p[2], p[3] if p[3] is not None else p[4]) for p in autoscaled["periods"]]
        spent, most = float(autoscaled["instance_seconds"]), int(autoscaled["instances_max"])
    else:
        assert instances is not None
        lifetimes = [(-math.inf, None)] * instances
        spent, most = instances * wall_s, instances
    slots = slot_series(
        grid, num_workers=num_workers, limits=limits, clock_start=clock_start, lifetimes=lifetimes
    )
    cost = {
        "instance_seconds": spent,
        "instances_max": most,
        "slots_mean": float(slots.mean()),
        "slots_max": float(slots.max()),
    }
    if not limits and autoscaled is None:
        return Dynamics(cost, None)
    every = max(1, round(TIMELINE_STEP_S / GRID_S))
    out: dict[str, Any] = {
        "schema_version": TIMELINE_VERSION,
        "clock_start": clock_start,
        "wall_s": wall_s,
        "slots": {
            "columns": ["t_s", "slots"],
            "rows": [
                [round(float(t), 3), float(v)]
                for t, v in zip(grid[::every], slots[::every], strict=True)
            ],
        },
        "limits": {
            "columns": ["t_s", *LimitEvent._fields[2:], "instance"],
            "rows": [
                [round(e.t - clock_start, 4), *map(_finite, e[2:]), e.instance] for e in limits
            ],
        },
    }
    if autoscaled is not None:
        out["instances"] = autoscaled["instances"]
        out["periods"] = autoscaled["periods"]
    return Dynamics(cost, out)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
