"""Running estimates and exact time-weighted SLA accounting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slapoll._measure import SampleWindow, SlaAccount, quantile


def test_sample_window_keeps_the_latest_samples() -> None:
    """Once full, the window forgets the oldest samples first."""
    window = SampleWindow(size=4)
    for value in (100.0, 1.0, 2.0, 3.0, 4.0):
        window.add(value)
    assert window.mean() == 2.5
    assert window.quantile(0.99) == 4.0
    assert window.count == 5


def test_quantile_is_nearest_rank() -> None:
    """p90 of 1..10 is 9 and p99 is 10; an empty list gives 0."""
    values = [float(v) for v in range(1, 11)]
    assert quantile(values, 0.9) == 9.0
    assert quantile(values, 0.99) == 10.0
    assert quantile([], 0.5) == 0.0


@given(
    sla=st.floats(min_value=0.1, max_value=100),
    events=st.lists(
        st.tuples(
            st.floats(min_value=0.01, max_value=50),  # time until completion
            st.floats(min_value=0.0, max_value=1.0),  # start, as share of it
            st.booleans(),  # success
        ),
        max_size=30,
    ),
)
def test_sla_account_matches_a_fine_grained_simulation(
    sla: float, events: list[tuple[float, float, bool]]
) -> None:
    """Accounted seconds equal a step-by-step integral of staleness <= SLA."""
    account = SlaAccount(0.0)
    now = 0.0
    refs = [(0.0, 0.0)]  # (from time, freshness reference)
    for gap, start_share, success in events:
        start = now + gap * start_share
        now += gap
        account.advance(now, sla)
        if success:
            account.ref = max(account.ref, start)
            refs.append((now, account.ref))

    step = 0.001
    within = 0.0
    t = step / 2
    while t < now:
        ref = [r for since, r in refs if since <= t][-1]
        within += step if t - ref <= sla else 0.0
        t += step
    assert account.observed_s == pytest.approx(now)
    assert account.within_s == pytest.approx(within, abs=0.01 * (1 + len(events)))
