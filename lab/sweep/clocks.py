"""One clock for a trial whose job events were stamped on several hosts.

A job's enqueue time is stamped by the producer (the driver), its start and end by the worker
instance's host. Their difference is a latency only if both clocks agree, which hosts of a
cluster do only to within NTP's milliseconds, or not at all. Each host's offset is measured
against ONE reference, the broker's clock (Redis `TIME`), the way NTP does it: of several round
trips, the fastest gives the tightest bound, since the server read its clock somewhere inside
that round trip. Every event time is then moved onto the reference clock, and the trial records
the bound on the error that remains (half the fastest round trip, plus how far the offset moved
between a measurement before the trial and one after it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import redis

from lab.errors import LabError
from lab.runtime.queue import JobEvent

#: Round trips per measurement; the fastest one is kept.
SAMPLES = 16

#: Redis TIME is in whole microseconds.
_RESOLUTION_S = 1e-6


@dataclass(frozen=True)
class ClockOffset:
    """How far a host's clock is ahead of the reference, and the bound on that figure."""

    offset_s: float  # local clock minus the reference clock
    error_s: float  # |true offset - offset_s| <= error_s

    def to_json(self) -> dict[str, float]:
        return {"offset_ms": self.offset_s * 1000, "error_ms": self.error_s * 1000}


def measure_offset(
    client: redis.Redis, *, samples: int = SAMPLES, now: Callable[[], float] = time.time
) -> ClockOffset:
    """This host's clock (`now`) against the Redis server's, from the fastest of `samples`
    round trips: the server read its clock between our two readings."""
    best: ClockOffset | None = None
    for _ in range(samples):
        before = now()
        seconds, micros = client.time()
        after = now()
        reference = seconds + micros / 1e6
        candidate = ClockOffset((before + after) / 2 - reference, (after - before) / 2)
        if best is None or candidate.error_s < best.error_s:
            best = candidate
    assert best is not None, "samples must be >= 1"
    return ClockOffset(best.offset_s, best.error_s + _RESOLUTION_S)


def over_the_trial(before: ClockOffset, after: ClockOffset) -> ClockOffset:
    """The offset to correct a trial's events with (the one measured before it), bounded by
    both measurements' errors and by how far the clock drifted in between."""
    drift_s = abs(after.offset_s - before.offset_s)
    return ClockOffset(before.offset_s, max(before.error_s, after.error_s) + drift_s)


def on_reference_clock(
    events: Sequence[JobEvent],
    *,
    instance_offsets: Mapping[str, float],
    producer_offset_s: float,
) -> list[JobEvent]:
    """The events with every time on the reference clock: enqueue times (stamped by the
    producer) corrected by its offset, start and end times by their instance's host's offset.

    An event of an instance with no measured offset is an error, never left on its own clock."""
    unknown = {e.instance for e in events} - set(instance_offsets)
    if unknown:
        raise LabError(
            f"no clock offset for instance(s) {', '.join(sorted(unknown))}: their job times "
            "cannot be put on the trial's clock"
        )
    return [
        dataclasses.replace(
            e,
            enqueued_at=e.enqueued_at - producer_offset_s,
            started_at=e.started_at - instance_offsets[e.instance],
            finished_at=e.finished_at - instance_offsets[e.instance],
        )
        for e in events
    ]


def latency_error_bound_s(producer: ClockOffset, hosts: Sequence[ClockOffset]) -> float:
    """The bound on any corrected latency's error: the worst host's bound plus the producer's
    (a latency is an end stamped on a worker's host minus an enqueue stamped by the producer)."""
    return producer.error_s + max((h.error_s for h in hosts), default=0.0)
