"""The runtime's record of its own cost: histograms, the per-instance record, the trial columns."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from lab.runtime.telemetry import RUNTIME_COLUMNS, Histogram, RuntimeStats, runtime_figures


def test_histogram_percentiles_stay_within_a_bucket_of_the_exact_ones() -> None:
    rng = random.Random(4)
    samples = [rng.lognormvariate(math.log(0.002), 0.8) for _ in range(20_000)]
    h = Histogram()
    for s in samples:
        h.add(s)
    assert h.count == len(samples)
    for q in (50, 90, 99):
        exact = float(np.percentile(samples, q))
        assert h.percentile(q) == pytest.approx(exact, rel=0.03)


def test_histograms_merge_and_survive_json() -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(1, 500):
        a.add(i / 1e5)
        both.add(i / 1e5)
    for i in range(1, 300):
        b.add(i / 1e3)
        both.add(i / 1e3)
    merged = Histogram.from_json(a.to_json())
    merged.merge(Histogram.from_json(b.to_json()))
    assert merged.count == both.count == 798
    assert [merged.percentile(q) for q in (1, 50, 99)] == [both.percentile(q) for q in (1, 50, 99)]


def test_an_empty_histogram_and_no_records_give_nan_not_zero() -> None:
    assert math.isnan(Histogram().percentile(50))
    figures = runtime_figures([])
    assert list(figures) == list(RUNTIME_COLUMNS)
    assert all(math.isnan(v) for v in figures.values())


def test_sub_microsecond_durations_count_as_zero() -> None:
    h = Histogram()
    h.add(0.0)
    h.add(1e-7)
    assert h.percentile(99) == 0.0 and h.count == 2


def test_records_of_several_instances_make_one_trial_figure() -> None:
    first, second = RuntimeStats(), RuntimeStats()
    for _ in range(99):
        first.slot_gap.add(0.001)
    second.slot_gap.add(0.5)  # one slow start among 100
    first.exchange_rtt.add(0.0002)
    first.claims, first.claimed = 10, 60
    second.claims, second.claimed = 10, 40
    records = [first.record("a", 4), second.record("b", 4)]
    figures = runtime_figures(records)
    assert figures["slot_gap_p50_ms"] == pytest.approx(1.0, rel=0.02)
    assert figures["slot_gap_p99_ms"] == pytest.approx(1.0, rel=0.02)  # the 99th of 100 is fast
    assert figures["exchange_rtt_p50_ms"] == pytest.approx(0.2, rel=0.02)
    assert figures["exchange_batch_mean"] == 5.0
    assert {r["instance"] for r in records} == {"a", "b"} and records[0]["v"] == 1
