"""Running estimates and SLA accounting; pure bookkeeping, no I/O.

``SampleWindow`` keeps the most recent samples of a quantity (lag, duration)
for a mean and a high quantile. ``SlaAccount`` integrates, exactly, how long
one target was observed and how long of that it was within its SLA.
"""

from __future__ import annotations

import math

__all__ = ["SampleWindow", "SlaAccount", "quantile"]

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

    __slots__ = ("_next", "_samples", "_size", "count", "total")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        self._size = size
        self._samples: list[float] = []
        self._next = 0
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        """Record one sample, replacing the oldest once the window is full."""
        if len(self._samples) < self._size:
            self._samples.append(value)
        else:
            self._samples[self._next] = value
            self._next = (self._next + 1) % self._size
        self.count += 1
        self.total += value

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
