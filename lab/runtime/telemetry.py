"""What the runtime itself costs a job: slot gaps and exchange round trips, measured inside it.

The lab's runtime stands in for the user's own; time it spends between one job's end and the
next one's start would not be there in their system, so it is measured, not assumed:

- **slot gap**: for each job start, the time from the moment a slot AND the job were both
  available (the later of the slot's freeing and the job's enqueue) to the job's start. With a
  backlog that is "previous job's end to next job's start" on that slot; with open-loop arrivals
  it is the pick-up delay of a job that found a slot free. First attempts only: a retry's
  availability (its backoff's end) is not in the payload.
- **exchange round trip**: from writing an exchange request to the broker to reading its reply.
- **exchange batch**: jobs claimed per exchange that asked for jobs.

Durations go into log-bucketed histograms (2 % wide), so the records of several instances merge
into one distribution. Each instance writes one record at its graceful stop (`RuntimeStats`);
`runtime_figures` turns the records of a trial into its columns. An instance that was killed
writes none: its figures are missing, not wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

#: Format of the per-instance record. History: 1 = {v, instance, slots, slot_gap, exchange_rtt,
#: exchanges, claims, claimed}.
RECORD_VERSION = 1

_BASE = 1.02  # bucket width: values within 2 % share a bucket
_INV_LOG_BASE = 1 / math.log(_BASE)


class Histogram:
    """Durations in seconds, counted in log buckets of microseconds; mergeable, compact."""

    __slots__ = ("buckets", "count")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0

    def add(self, seconds: float) -> None:
        us = seconds * 1e6
        b = int(math.log(us) * _INV_LOG_BASE) if us > 1.0 else 0
        buckets = self.buckets
        buckets[b] = buckets.get(b, 0) + 1
        self.count += 1

    def merge(self, other: Histogram) -> None:
        for b, n in other.buckets.items():
            self.buckets[b] = self.buckets.get(b, 0) + n
        self.count += other.count

    def percentile(self, q: float) -> float:
        """The q-th percentile in seconds (the bucket's geometric middle), NaN when empty."""
        if not self.count:
            return math.nan
        rank = max(1, math.ceil(self.count * q / 100))
        seen = 0
        for b in sorted(self.buckets):
            seen += self.buckets[b]
            if seen >= rank:
                return 0.0 if b == 0 else _BASE ** (b + 0.5) / 1e6
        raise AssertionError("unreachable: counts add up to count")

    def to_json(self) -> dict[str, int]:
        return {str(b): n for b, n in self.buckets.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, int]) -> Histogram:
        h = cls()
        for b, n in data.items():
            h.buckets[int(b)] = int(n)
            h.count += int(n)
        return h


class RuntimeStats:
    """One instance's measurements of itself, kept on the hot path at the cost of a few adds."""

    __slots__ = ("claimed", "claims", "exchange_rtt", "exchanges", "slot_gap")

    def __init__(self) -> None:
        self.slot_gap = Histogram()
        self.exchange_rtt = Histogram()
        self.exchanges = 0  # round trips to the broker on the hot path
        self.claims = 0  # of them, those that asked for jobs
        self.claimed = 0  # jobs they brought

    def record(self, instance: str, slots: int) -> dict[str, Any]:
        """The record an instance writes at its stop (see RECORD_VERSION)."""
        return {
            "v": RECORD_VERSION,
            "instance": instance,
            "slots": slots,
            "slot_gap": self.slot_gap.to_json(),
            "exchange_rtt": self.exchange_rtt.to_json(),
            "exchanges": self.exchanges,
            "claims": self.claims,
            "claimed": self.claimed,
        }


#: The trial columns these records give, with their meaning (lab.results.TRIAL_COLUMNS).
RUNTIME_COLUMNS: dict[str, str] = {
    "slot_gap_p50_ms": "the runtime's own delay before a job starts once a slot and the job are both there, p50, ms",
    "slot_gap_p99_ms": "the same, p99, ms (first attempts; instances that stopped gracefully)",
    "exchange_rtt_p50_ms": "one claim/ack round trip of a worker to the broker, p50, ms",
    "exchange_rtt_p99_ms": "one claim/ack round trip of a worker to the broker, p99, ms",
    "exchange_batch_mean": "jobs claimed per round trip that asked for jobs, mean",
}


def runtime_figures(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The trial's runtime columns from its instances' records (NaN without any)."""
    gap, rtt = Histogram(), Histogram()
    claims = claimed = 0
    for rec in records:
        gap.merge(Histogram.from_json(rec["slot_gap"]))
        rtt.merge(Histogram.from_json(rec["exchange_rtt"]))
        claims += int(rec["claims"])
        claimed += int(rec["claimed"])
    return {
        "slot_gap_p50_ms": gap.percentile(50) * 1000,
        "slot_gap_p99_ms": gap.percentile(99) * 1000,
        "exchange_rtt_p50_ms": rtt.percentile(50) * 1000,
        "exchange_rtt_p99_ms": rtt.percentile(99) * 1000,
        "exchange_batch_mean": claimed / claims if claims else math.nan,
    }
