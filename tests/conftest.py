"""Shared fixtures: a virtual clock and engines with fresh registries."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings

import slapoll

# Properties are about values, not speed (benchmarks/ measures speed): on a
# shared, noisy machine a per-example deadline, or a limit on how long
# drawing inputs may take (slow before .hypothesis/ holds any), only makes
# them flaky.
settings.register_profile(
    "slapoll", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("slapoll")

# A fixed wall-clock reading for engines on the virtual clock: whole hours,
# so due-time grids line up with round numbers in the tests.
WALL_START = 1_800_000_000.0


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """A virtual clock that skips ahead whenever every task is waiting."""
    return trio.testing.MockClock(autojump_threshold=0)


def make_wall_clock(start: float = WALL_START) -> Callable[[], float]:
    """A wall clock that follows the trio clock from *start*."""
    return lambda: start + trio.current_time()


@pytest.fixture
def engine_factory() -> Callable[..., slapoll.Engine]:
    """Build engines on the virtual clock, each with its own registry."""

    def make(**kwargs: object) -> slapoll.Engine:
        kwargs.setdefault("wall_clock", make_wall_clock())
        kwargs.setdefault("shutdown_grace", "1s")
        return slapoll.Engine(**kwargs)  # type: ignore[arg-type]

    return make
