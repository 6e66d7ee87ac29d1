"""The retry-wave detector: did the retries of a trial come back in step?

Retries that honour one `Retry-After` exactly come back one floor after the wave that was
turned away, so their start times repeat with that period, and a rate limit's tokens go unused
between the waves. Jittered retries spread out. The detector bins the start times of the retry
attempts (attempt >= 2, from jobs.parquet or the worker's events) and looks for a periodic peak
in their autocorrelation; it also gives the share of all attempts that were answered 429.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lab.runtime.queue import JobEvent

#: Retry waves: retry starts are binned this finely, and an autocorrelation peak at least this
#: high (at a lag of at least WAVE_MIN_SPACING_S) marks attempts that come back in step.
WAVE_BIN_S = 0.05
WAVE_PEAK = 0.3
WAVE_MIN_SPACING_S = 0.2
MIN_RETRIES_FOR_WAVES = 30

_REJECTED = re.compile(r"\b429\b")


@dataclass(frozen=True)
class Waves:
    """Did retries come back in step? From the start times of a trial's attempts."""

    attempts: int
    retries: int  # attempts after the first of their job
    rejected_share: float  # of all attempts, the share answered 429
    spacing_s: float | None  # the period of the waves, when there are waves
    strength: float | None  # autocorrelation of retry starts at that period (None: too few)

    @property
    def waves(self) -> bool:
        return self.spacing_s is not None


def retry_waves(
    started_at: Sequence[float] | np.ndarray,
    attempt: Sequence[int] | np.ndarray,
    errors: Sequence[str | None],
) -> Waves:
    """The retry-wave detector: bin the retry attempts' start times (WAVE_BIN_S) and look for a
    periodic peak in their autocorrelation. Retries that honour one Retry-After exactly come back
    one floor after their wave, so their starts repeat with that period; jittered ones do not."""
    starts, tries = np.asarray(started_at, dtype=float), np.asarray(attempt)
    rejected = sum(1 for e in errors if isinstance(e, str) and _REJECTED.search(e))
    retry_starts = np.sort(starts[tries >= 2])
    share = rejected / len(starts) if len(starts) else 0.0
    base = Waves(len(starts), len(retry_starts), share, None, None)
    if len(retry_starts) < MIN_RETRIES_FOR_WAVES:
        return base
    edges = np.arange(retry_starts[0], retry_starts[-1] + WAVE_BIN_S, WAVE_BIN_S)
    counts = np.histogram(retry_starts, bins=edges)[0].astype(float)
    centred = counts - counts.mean()
    power = float((centred * centred).sum())
    lags = len(counts) // 2
    if power == 0 or lags * WAVE_BIN_S < 2 * WAVE_MIN_SPACING_S:
        return Waves(base.attempts, base.retries, share, None, 0.0)
    acf = np.array([(centred[: len(centred) - k] * centred[k:]).sum() / power for k in range(lags)])
    # a period shows as a peak AFTER the autocorrelation has first fallen below zero; before
    # that, neighbouring bins correlate only because the retry rate changes slowly
    trough = int(np.argmax(acf < 0)) if (acf < 0).any() else lags
    first = max(trough, round(WAVE_MIN_SPACING_S / WAVE_BIN_S))
    if first >= lags:
        return Waves(base.attempts, base.retries, share, None, 0.0)
    lag = first + int(np.argmax(acf[first:]))
    strength = float(acf[lag])
    spacing = round(lag * WAVE_BIN_S, 3) if strength >= WAVE_PEAK else None
    return Waves(base.attempts, base.retries, share, spacing, strength)


def waves_of_events(events: Sequence[JobEvent]) -> Waves:
    return retry_waves(
        [e.started_at for e in events], [e.attempt for e in events], [e.error for e in events]
    )


def waves_of_jobs(jobs: pd.DataFrame) -> Waves:
    """The detector on one trial's rows of jobs.parquet."""
    return retry_waves(jobs["started_at"], jobs["attempt"], list(jobs["error"]))


def mean_waves(waves: list[Waves]) -> Waves:
    """Repeats' waves as one: waves when most repeats had them, at their median spacing."""
    known = [w for w in waves if w.attempts]
    if not known:
        return Waves(0, 0, math.nan, None, None)
    spaced = [w.spacing_s for w in known if w.spacing_s is not None]
    strengths = [w.strength for w in known if w.strength is not None]
    return Waves(
        attempts=round(float(np.mean([w.attempts for w in known]))),
        retries=round(float(np.mean([w.retries for w in known]))),
        rejected_share=float(np.mean([w.rejected_share for w in known])),
        spacing_s=float(np.median(spaced)) if 2 * len(spaced) > len(known) else None,
        strength=float(np.mean(strengths)) if strengths else None,
    )
