"""Autoscaled instances (`instances: {autoscale: {...}}`): worker processes that follow the load.

Modelled on what people run: KEDA's Redis list scaler feeding a Kubernetes HPA, with a second
metric beside it, as an HPA takes (the largest desired count of its metrics wins). Every
`poll_s`:
- backlog: the length of the pending list (KEDA `listLength`); desired = ceil(pending /
  target_backlog_per_instance) (the HPA's AverageValue target). While an ordered instance is
  still starting or has run for less than one poll (the HPA sets aside pods not ready yet),
  the backlog that grew meanwhile is mostly that instance's work: it asks for more only past
  STARTING_BACKLOG_X times the target per instance. Without that, a start-up delay turns one
  step of load into an order for `max` (held for `cooldown_s`); with no allowance at all, a
  service that suddenly slows (its backlog growing at nearly the arrival rate) waits a whole
  start-up delay for each further instance.
- utilization (the HPA's CPU-style target, with a fixed `num_workers`): the jobs in flight
  (claimed by the instances: their busy slots, averaged over the last BUSY_WINDOW_S) over
  their slots; desired = ceil(in flight / (num_workers x target_utilization)), an instance
  still starting counted as idle slots. Once
  the instances keep up the pending list reads 0, and the backlog metric alone would scale
  down to `min` and climb back (flapping); the busy slots still say how many are needed.
  With `num_workers: auto` the slots move with the service, so busy / slots says nothing
  about room: the backlog metric alone decides.
- No change while a metric is within 10 % of its target (the HPA's tolerance), within [min,
  max]; scale-up is immediate; scale-down goes only to the highest desired count of the last
  `cooldown_s` (the HPA's scale-down stabilisation window), so a dip does not flap.
- A new instance starts `start_delay_s` after the decision (a pod is scheduled, its image
  pulled) and costs instance-seconds from the decision on; a removed one is stopped gracefully
  (SIGTERM: it stops claiming, finishes its jobs, puts back the rest) and costs until it exits.

`Autoscaler` is the decision alone, a pure function of the series it reads (tested on
synthetic series); `AutoscaleHook` is the trial's side that reads the queue and starts and stops
the processes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis

from lab.infra.procs import Child
from lab.runtime.queue import QueueKeys
from lab.scenario.spec import Autoscale

#: The HPA's default tolerance: no change while the ratio to the target is within it.
TOLERANCE = 0.1

#: Seconds the jobs in flight are averaged over (a rate over a window, as the CPU usage an HPA
#: reads from metrics-server): one poll's snapshot is noisy (3 to 19 jobs at a mean of 10, at
#: 300/s on 16 slots), and one taken while new instances drain a backlog reads every slot
#: busy; with the scale-down window keeping the highest count, every spike would hold an
#: instance for `cooldown_s`.
BUSY_WINDOW_S = 5.0

#: While instances start, the backlog per instance that asks for more, in targets. Measured on
#: dynamic_load: 1 step of load grew the backlog to ~1.5 targets per instance during a 1-s
#: start (no more needed); a 5x brown-out grew it to ~5 (more needed at once).
STARTING_BACKLOG_X = 2.0


class Load(NamedTuple):
    """What one poll reads from the queue."""

    pending: int  # jobs waiting in the pending list
    in_flight: int = 0  # jobs the running instances hold (their busy slots)


def _wanted(value: float, target: float, current: int) -> int:
    """The HPA's rule for one metric: ceil(current x value / (current x target)), no change
    while the ratio is within TOLERANCE of 1."""
    current = max(current, 1)
    ratio = value / (current * target)
    return current if abs(ratio - 1) <= TOLERANCE else math.ceil(ratio * current)


def read_load(client: redis.Redis, keys: QueueKeys, instances: list[str]) -> Load:
    """The pending list's length and the jobs the given instances hold (their processing
    hashes), in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.llen(keys.pending)
    for instance in instances:
        pipe.hlen(keys.processing(instance))
    pending, *held = pipe.execute()
    return Load(int(pending), sum(int(n) for n in held))


class Autoscaler:
    """How many instances to run, from what the queue holds over time (no processes here).

    `slots_per_instance` is `num_workers` when fixed; None (`num_workers: auto`) leaves the
    backlog metric alone."""

    def __init__(self, spec: Autoscale, slots_per_instance: int | None = None) -> None:
        self.spec = spec
        self.slots = slots_per_instance
        self._recent: deque[tuple[float, int]] = deque()  # (t, desired) within cooldown_s
        self._busy: deque[tuple[float, int]] = deque()  # (t, jobs in flight), BUSY_WINDOW_S

    def decide(self, t_s: float, load: Load, current: int, starting: int = 0) -> int:
        """The instance count to run from `t_s` on, given what the queue holds and the
        instances running or starting now (`starting` of them ordered and not yet running
        for a whole poll)."""
        s = self.spec
        if starting:  # what waits is mostly the starting instances' work; only far more asks
            target = STARTING_BACKLOG_X * s.target_backlog_per_instance
            wanted = [max(current, _wanted(load.pending, target, current))]
        else:
            wanted = [_wanted(load.pending, s.target_backlog_per_instance, current)]
        self._busy.append((t_s, load.in_flight))
        while self._busy[0][0] < t_s - BUSY_WINDOW_S:
            self._busy.popleft()
        if self.slots is not None and s.target_utilization is not None:
            busy = sum(n for _, n in self._busy) / len(self._busy)
            wanted.append(_wanted(busy, self.slots * s.target_utilization, current))
        desired = min(s.max, max(s.min, max(wanted)))
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
    """The trial's side: every `poll_s`, read the queue, decide, start or stop processes.

    `start(i)` starts worker instance `i` and returns its process; `stop(i, child)` stops it
    gracefully (SIGTERM: it stops claiming, finishes its jobs, puts back the rest);
    `load(running)` reads the pending list and the jobs held by the instances of those
    indices; the instances already running at the clock start are `initial`; `slots` is
    `num_workers` (None for `auto`).
    """

    spec: Autoscale
    start: Callable[[int], Child]
    stop: Callable[[int, Child], None]
    load: Callable[[list[int]], Load]
    initial: list[Child]
    slots: int | None = None
    scaler: Autoscaler = field(init=False)
    instances: list[Instance] = field(default_factory=list)
    series: list[tuple[float, int, int, int, int, int, int]] = field(default_factory=list)
    _next_poll_s: float = 0.0

    COLUMNS = ("t_s", "backlog", "desired", "running", "starting", "stopping", "in_flight")

    def __post_init__(self) -> None:
        self.scaler = Autoscaler(self.spec, self.slots)
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
        active = [i for i in self.instances if i.ended_s is None and i.stopping_s is None]
        load = self.load([i.index for i in active if i.child is not None])
        starting = sum(  # the instances there at the clock start were ready before it
            i.index >= len(self.initial) and elapsed_s < i.start_at_s + self.spec.poll_s
            for i in active
        )
        desired = self.scaler.decide(elapsed_s, load, len(active), starting)
        for _ in range(desired - len(active)):
            index = len(self.instances)
            self.instances.append(Instance(index, elapsed_s, elapsed_s + self.spec.start_delay_s))
        for inst in sorted(active, key=lambda i: -i.index)[: max(0, len(active) - desired)]:
            self._stop(inst, elapsed_s)
        self.series.append((elapsed_s, load.pending, desired, *self._counts(), load.in_flight))

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
                (r + s + x for *_, r, s, x, _ in self.series), default=len(self.initial)
            ),
            "instances": {"columns": list(self.COLUMNS), "rows": [list(r) for r in self.series]},
            "periods": [
                [i.index, i.ordered_s, i.start_at_s, i.stopping_s, i.ended_s]
                for i in self.instances
            ],
        }
