"""Running estimates and exact time-weighted SLA accounting."""

from __future__ import annotations

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


def test_quantile_is_nearest_rank() -> None:
    """p90 of 1..10 is 9 and p99 is 10; an empty list gives 0."""
    values = [float(v) for v in range(1, 11)]
    assert quantile(values, 0.9) == 9.0
    assert quantile(values, 0.99) == 10.0
    assert quantile([], 0.5) == 0.0


@given(
    sla=st.integers(min_value=1, max_value=40),
    events=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=20),  # seconds until completion
            st.integers(min_value=0, max_value=20),  # how long the run took
            st.booleans(),  # success
        ),
        max_size=12,
    ),
)
def test_sla_account_matches_a_second_by_second_count(
    sla: int, events: list[tuple[int, int, bool]]
) -> None:
    """On whole-second events, accounted seconds equal counting each second
    [t, t+1) as within when staleness at its end is at most the SLA."""
    account = SlaAccount(0.0)
    now = 0
    refs = [(0, 0)]  # (completed at, freshness reference from then on)
    for gap, took, success in events:
        start = max(0, now + gap - took)
        now += gap
        account.advance(float(now), float(sla))
        if success:
            account.ref = max(account.ref, float(start))
            refs.append((now, int(account.ref)))

    within = 0
    for t in range(now):
        ref = [r for since, r in refs if since <= t][-1]
        within += (t + 1) - ref <= sla
    assert account.observed_s == now
    assert account.within_s == within
