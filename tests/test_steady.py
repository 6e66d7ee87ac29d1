"""The steady-window throughput: the completions between 10 % and 90 % of the items."""

from __future__ import annotations

import math

import pytest

from lab.runtime.queue import JobEvent
from lab.sweep.trial_row import steady_figures


def finished(times: list[float], items: int = 10) -> list[JobEvent]:
    return [JobEvent(f"j{i}", "x", "w", 0.0, 0.0, t, 1, "ok", items, None, None) for i, t in enumerate(times)]


def test_the_window_leaves_out_the_start_and_the_tail() -> None:
    # a slow start (one job in 1 s), then 100 jobs at 100 jobs/s, then a slow tail
    times = [1.0] + [1.0 + i / 100 for i in range(1, 101)] + [5.0]
    figures = steady_figures(finished(times))
    assert figures["items_per_s_steady"] == pytest.approx(1000, rel=0.03)  # 100 jobs/s x 10 items
    assert figures["jobs_per_s_steady"] == pytest.approx(100, rel=0.03)
    assert figures["too_short"] is False
    whole = 102 * 10 / 5.0
    assert whole < figures["items_per_s_steady"] / 4  # what the whole trial would have said


@pytest.mark.parametrize(
    "times",
    [[0.1 * i for i in range(1, 6)], [0.001 * i for i in range(1, 200)], [1.0], []],
    ids=["5 jobs", "0.2 s", "one job", "none"],
)
def test_a_trial_too_short_or_too_sparse_is_flagged(times: list[float]) -> None:
    figures = steady_figures(finished(times))
    assert figures["too_short"] is True
    if len(times) < 2:
        assert math.isnan(figures["items_per_s_steady"])
