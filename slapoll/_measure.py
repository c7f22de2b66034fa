"""Running estimates and SLA accounting; pure bookkeeping, no I/O.

``SampleWindow`` keeps the most recent samples of a quantity (lag, duration)
for a mean and a high quantile; ``BucketCounts`` counts all of them by
histogram bucket. ``SlaAccount`` integrates, exactly, how long
one target was observed and how long of that it was within its SLA.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque

__all__ = ["BucketCounts", "SampleWindow", "SlaAccount", "quantile"]

# Histogram buckets. Lag is usually milliseconds and grows to minutes under
# overload; polls of an HTTP API take tens of milliseconds to minutes.
LAG_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
DURATION_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip

# Enough samples for a stable p99 (about ten beyond it), few enough to sort
# every control period.
DEFAULT_WINDOW = 1024


def quantile(sorted_values: list[float], q: float) -> float:
    """Return the *q* quantile (nearest rank) of already sorted values."""
    if not sorted_values:
        return 0.0
    rank = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[min(rank, len(sorted_values) - 1)]


class SampleWindow:
    """The last *size* samples of a quantity, with mean and quantiles."""

    __slots__ = ("_samples",)

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        """Record one sample, replacing the oldest once the window is full."""
        self._samples.append(value)

    def mean(self) -> float:
        """Mean of the samples in the window (0 when empty)."""
        n = len(self._samples)
        return sum(self._samples) / n if n else 0.0

    def quantile(self, q: float) -> float:
        """The *q* quantile of the samples in the window (0 when empty)."""
        return quantile(sorted(self._samples), q)

    def __len__(self) -> int:
        return len(self._samples)


class SlaAccount:
    """Time-weighted SLA bookkeeping for one target.

    Staleness at time t is ``t - ref``, where ``ref`` is the start of the
    newest completed successful run (or when the target was added, before
    its first success). It grows linearly, so the part of ``[t0, t1]`` spent
    within the SLA is known exactly: everything up to ``ref + sla``.
    """

    __slots__ = ("accounted_until", "observed_s", "ref", "within_s")

    def __init__(self, now: float) -> None:
        self.ref = now
        self.accounted_until = now
        self.observed_s = 0.0
        self.within_s = 0.0

    def advance(self, now: float, sla_s: float) -> tuple[float, float]:
        """Account up to *now*; return the (observed, within) seconds added."""
        start = self.accounted_until
        if now <= start:
            return 0.0, 0.0
        observed = now - start
        within = min(now, self.ref + sla_s) - start
        within = within if within > 0.0 else 0.0
        self.accounted_until = now
        self.observed_s += observed
        self.within_s += within
        return observed, within

    def skip_to(self, now: float) -> None:
        """Move on to *now* without counting (the target was paused)."""
        self.accounted_until = max(self.accounted_until, now)

    def staleness(self, now: float) -> float:
        """Seconds since the freshness reference."""
        return now - self.ref


class BucketCounts:
    """Cumulative counts of samples by upper bound, as a histogram exposes.

    ``counts[i]`` holds the samples in ``(bounds[i-1], bounds[i]]``; the
    last slot holds those above every bound. Observing is a bisection and
    an increment, cheap enough for every run.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one sample."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[int]:
        """Counts of samples at or below each bound, then the grand count."""
        return list(itertools.accumulate(self.counts))
