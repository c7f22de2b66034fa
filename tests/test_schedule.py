"""Schedule arithmetic: anchored due times, phases, catching up."""

from __future__ import annotations

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from slapoll._schedule import (
    catch_up,
    first_due,
    hash_fraction,
    retimed_due,
    spread_fractions,
)

intervals = st.floats(min_value=1e-3, max_value=86_400.0)
fractions = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
times = st.floats(min_value=-1e7, max_value=1e7)
origins = st.floats(min_value=-2e9, max_value=2e9)


@given(now=times, interval=intervals, fraction=fractions, origin=origins)
def test_first_due_is_the_next_grid_point(
    now: float, interval: float, fraction: float, origin: float
) -> None:
    """The first due time is at or after now, less than one interval later,
    and on the grid origin + (k + fraction) * interval."""
    due = first_due(now, interval, fraction, origin)
    tolerance = 1e-6 * max(1.0, abs(now), abs(origin)) / interval
    assert now - interval * 1e-9 - 1e-6 <= due < now + interval + 1e-6
    k = (due - origin) / interval - fraction
    assert abs(k - round(k)) <= tolerance + 1e-6


@given(
    interval=intervals,
    steps=st.integers(min_value=1, max_value=10_000),
    late=st.lists(st.floats(min_value=0.0, max_value=0.999), min_size=1),
)
def test_anchored_due_times_never_drift(
    interval: float, steps: int, late: list[float]
) -> None:
    """However late each timer fires (less than an interval), due time k is
    always k intervals after the first: lateness does not accumulate."""
    due = 0.0
    for k in range(1, steps + 1):
        fired_at = due + late[k % len(late)] * interval
        latest, passed = catch_up(due, fired_at, interval)
        assert passed == 0
        due = latest + interval
    assert math.isclose(due, steps * interval, rel_tol=1e-9)


@given(
    due=st.floats(min_value=0, max_value=1e6),
    interval=intervals,
    gap=st.floats(min_value=0, max_value=1e10),
)
def test_catch_up_collapses_passed_due_times_into_the_latest(
    due: float, interval: float, gap: float
) -> None:
    """After a gap, the latest passed due time is returned with the count of
    earlier ones, by arithmetic."""
    now = due + gap
    latest, passed = catch_up(due, now, interval)
    assert passed >= 0
    assert latest <= now + 1e-6 * max(1.0, now)
    assert now < latest + interval + 1e-6 * max(1.0, now)
    assert math.isclose(latest, due + passed * interval, rel_tol=1e-9, abs_tol=1e-9)


@given(st.text(min_size=1))
def test_hash_phase_is_a_fraction_and_the_same_every_time(key: str) -> None:
    """Hash phases lie in [0, 1) and do not depend on the process (no salt)."""
    fraction = hash_fraction(key)
    assert 0.0 <= fraction < 1.0
    assert fraction == hash_fraction(str(key))


def test_hash_phase_is_stable_across_processes() -> None:
    """A fixed key maps to a fixed phase, here and after any restart."""
    assert hash_fraction("feed\0user:123") == hash_fraction("feed\0user:123")
    assert round(hash_fraction("user:123"), 12) == round(
        int.from_bytes(
            __import__("hashlib").blake2b(b"user:123", digest_size=8).digest(),
            "big",
        )
        / 2**64,
        12,
    )


@given(st.sets(st.text(min_size=1), min_size=1, max_size=200), st.text())
def test_spread_phases_are_even_and_depend_only_on_the_key_set(
    keys: set[str], salt: str
) -> None:
    """Targets registered together sit 1/n apart, whatever order they came in."""
    forward = spread_fractions(sorted(keys), salt=salt)
    backward = spread_fractions(sorted(keys, reverse=True), salt=salt)
    assert forward == backward
    phases = sorted(forward.values())
    assert all(0.0 <= p < 1.0 for p in phases)
    gaps = [b - a for a, b in itertools.pairwise(phases)]
    assert all(math.isclose(g, 1 / len(keys), abs_tol=1e-9) for g in gaps)


@given(
    now=times,
    old=intervals,
    new=intervals,
    left=st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
)
def test_a_retimed_due_time_keeps_the_rate_of_the_new_interval(
    now: float, old: float, new: float, left: float
) -> None:
    """A due time pending at *now* (a share *left* of its wait to go) moves
    to within one new interval of now, and the gap from the due time before
    it lies between the old and the new interval: a change of interval
    never brings a target's run earlier than either interval allows."""
    due = now + left * old
    moved = retimed_due(due, now, old, new)
    slack = 1e-9 * max(1.0, abs(now), old, new)
    assert now - slack <= moved <= now + new + slack
    gap = moved - (due - old)
    assert min(old, new) - slack <= gap <= max(old, new) + slack


@given(
    old=intervals,
    new=intervals,
    fractions=st.lists(fractions, min_size=2, max_size=50, unique=True),
)
def test_retiming_keeps_targets_in_the_order_and_spread_they_had(
    old: float, new: float, fractions: list[float]
) -> None:
    """Targets pending over one old interval keep their order, and their
    spacing scales by new / old: an even spread stays even."""
    now = 1000.0
    dues = sorted(now + old * (1 - f) for f in fractions)
    moved = [retimed_due(d, now, old, new) for d in dues]
    assert moved == sorted(moved)
    for (a, b), (c, d) in zip(
        itertools.pairwise(dues), itertools.pairwise(moved), strict=True
    ):
        assert math.isclose(d - c, (b - a) * new / old, rel_tol=1e-6, abs_tol=1e-6)
