"""The steady part's throughput (10 % to 90 % of the items done), and when a trial is too short
to rank by it."""

from __future__ import annotations

import math

import pytest

from lab.analysis.attribution import steady_items_per_s, too_short


def test_the_steady_part_leaves_out_the_start_and_the_tail() -> None:
    # a slow start (one job in 1 s), then 100 jobs at 100 jobs/s, then a slow tail
    times = [1.0] + [1.0 + i / 100 for i in range(1, 101)] + [5.0]
    items = [10] * len(times)
    assert steady_items_per_s(times, items) == pytest.approx(1000, rel=0.03)  # 100 jobs/s x 10
    assert too_short(times, items) is False
    whole = sum(items) / max(times)
    assert whole < steady_items_per_s(times, items) / 4  # what the whole trial would have said


@pytest.mark.parametrize(
    "times",
    [[0.1 * i for i in range(1, 6)], [0.001 * i for i in range(1, 200)], [1.0], []],
    ids=["5 jobs", "0.2 s", "one job", "none"],
)
def test_a_trial_too_short_or_too_sparse_is_flagged(times: list[float]) -> None:
    assert too_short(times, [10] * len(times)) is True
    if len(times) < 10:
        assert math.isnan(steady_items_per_s(times, [10] * len(times)))
