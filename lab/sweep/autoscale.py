"""Autoscaled instances (`instances: {autoscale: {...}}`): worker processes that follow the backlog.

Modelled on what people run: KEDA's Redis list scaler feeding a Kubernetes HPA.
- The metric is the length of the pending list (KEDA `listLength`), read every `poll_s`.
- desired = ceil(backlog / target_backlog_per_instance), within [min, max] (the HPA's
  AverageValue target); no change while backlog / (current x target) is within 10 % of 1 (the
  HPA's tolerance).
- Scale-up is immediate; scale-down goes only to the highest desired count of the last
  `cooldown_s` (the HPA's scale-down stabilisation window), so a dip does not flap.
- A new instance starts `start_delay_s` after the decision (a pod is scheduled, its image
  pulled) and costs instance-seconds from the decision on; a removed one is stopped gracefully
  (SIGTERM: it stops claiming, finishes its jobs, puts back the rest) and costs until it exits.

`Autoscaler` is the decision alone, a pure function of the backlog series (tested on synthetic
series); `AutoscaleHook` is the trial's side that starts and stops the processes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lab.infra.procs import Child
from lab.scenario.spec import Autoscale

#: The HPA's default tolerance: no change while the ratio to the target is within it.
TOLERANCE = 0.1


class Autoscaler:
    """How many instances to run, from the backlog over time (no processes here)."""

    def __init__(self, spec: Autoscale) -> None:
        self.spec = spec
        self._recent: deque[tuple[float, int]] = deque()  # (t, desired) within cooldown_s

    def decide(self, t_s: float, backlog: int, current: int) -> int:
        """The instance count to run from `t_s` on, given the pending jobs and the instances
        running or starting now."""
        s = self.spec
        ratio = backlog / (max(current, 1) * s.target_backlog_per_instance)
        raw = current if abs(ratio - 1) <= TOLERANCE else math.ceil(ratio * max(current, 1))
        desired = min(s.max, max(s.min, raw))
        self._recent.append((t_s, desired))
        while self._recent[0][0] < t_s - s.cooldown_s:
            self._recent.popleft()
        if desired >= current:
            return desired
        return min(current, max(d for _, d in self._recent))


@dataclass
class Instance:
    """One autoscaled worker: billed from `ordered_s` until `ended_s` (trial seconds)."""

    index: int
    ordered_s: float
    start_at_s: float
    child: Child | None = None
    stopping_s: float | None = None
    ended_s: float | None = None

    def exited(self) -> bool:
        return self.child is not None and not self.child.alive()


@dataclass
class AutoscaleHook:
    """The trial's side: every `poll_s`, read the backlog, decide, start or stop processes.

    `start(i)` starts worker instance `i` and returns its process; `stop(i, child)` stops it
    gracefully (SIGTERM: it stops claiming, finishes its jobs, puts back the rest); `backlog()`
    reads the pending list; the instances already running at the clock start are `initial`.
    """

    spec: Autoscale
    start: Callable[[int], Child]
    stop: Callable[[int, Child], None]
    backlog: Callable[[], int]
    initial: list[Child]
    scaler: Autoscaler = field(init=False)
    instances: list[Instance] = field(default_factory=list)
    series: list[tuple[float, int, int, int, int, int]] = field(default_factory=list)
    _next_poll_s: float = 0.0

    COLUMNS = ("t_s", "backlog", "desired", "running", "starting", "stopping")

    def __post_init__(self) -> None:
        self.scaler = Autoscaler(self.spec)
        self.instances = [Instance(i, 0.0, 0.0, child) for i, child in enumerate(self.initial)]

    def tick(self, elapsed_s: float) -> None:
        """Called by the trial's drain loop: start what is due, reap what stopped, decide."""
        for inst in self.instances:
            if inst.ended_s is None and inst.child is None and elapsed_s >= inst.start_at_s:
                inst.child = self.start(inst.index)
            if inst.stopping_s is not None and inst.ended_s is None and inst.exited():
                inst.ended_s = elapsed_s
        if elapsed_s < self._next_poll_s:
            return
        self._next_poll_s = elapsed_s + self.spec.poll_s
        backlog = self.backlog()
        active = [i for i in self.instances if i.ended_s is None and i.stopping_s is None]
        desired = self.scaler.decide(elapsed_s, backlog, len(active))
        for _ in range(desired - len(active)):
            index = len(self.instances)
            self.instances.append(Instance(index, elapsed_s, elapsed_s + self.spec.start_delay_s))
        for inst in sorted(active, key=lambda i: -i.index)[: max(0, len(active) - desired)]:
            self._stop(inst, elapsed_s)
        self.series.append((elapsed_s, backlog, desired, *self._counts()))

    def _stop(self, inst: Instance, elapsed_s: float) -> None:
        """The newest first: one not started yet is cancelled, a running one stopped gracefully."""
        inst.stopping_s = elapsed_s
        if inst.child is None:
            inst.ended_s = elapsed_s
        else:
            self.stop(inst.index, inst.child)

    def _counts(self) -> tuple[int, int, int]:
        """Instances running, starting (ordered, not yet spawned) and stopping."""
        running = starting = stopping = 0
        for inst in self.instances:
            if inst.ended_s is not None:
                continue
            if inst.stopping_s is not None:
                stopping += 1
            elif inst.child is None:
                starting += 1
            else:
                running += 1
        return running, starting, stopping

    def finish(self, end_s: float) -> dict[str, Any]:
        """The cost and the series, once the trial ended at `end_s` (trial seconds)."""
        spent = sum(
            max(0.0, min(end_s, i.ended_s if i.ended_s is not None else end_s) - i.ordered_s)
            for i in self.instances
        )
        return {
            "instance_seconds": spent,
            "instances_max": max(
                (r + s + x for *_, r, s, x in self.series), default=len(self.initial)
            ),
            "instances": {"columns": list(self.COLUMNS), "rows": [list(r) for r in self.series]},
            "periods": [
                [i.index, i.ordered_s, i.start_at_s, i.stopping_s, i.ended_s]
                for i in self.instances
            ],
        }
