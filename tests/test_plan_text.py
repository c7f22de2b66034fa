"""Tests for the capacity plan as ``slapoll check`` prints it."""

from __future__ import annotations

import pytest

from slapoll import TaskPolicy
from slapoll._control import (
    ControlSnapshot,
    LimitSnapshot,
    PoolSnapshot,
    TaskSnapshot,
    plan,
)
from slapoll._plan_text import (
    CredentialLimit,
    DeclaredTask,
    columns,
    declared_snapshot,
    format_rate,
    render_plan,
)

POOL = PoolSnapshot(min_size=1, max_size=16, size=4)


def declared(name: str, targets: int, **options: object) -> DeclaredTask:
    """A task with a 1 m SLA and a 10 s preferred interval on "github"."""
    expected = options.pop("expected_duration_s", 10.0)
    policy = TaskPolicy.from_options(
        sla="1m",
        every="10s",
        limits=["github"],
        **options,  # type: ignore[arg-type]
    )
    return DeclaredTask(name, policy, targets, expected)  # type: ignore[arg-type]


def lines_for(
    snapshot: ControlSnapshot, unknown_durations: tuple[str, ...] = ()
) -> list[str]:
    return render_plan(snapshot, plan(snapshot), unknown_durations=unknown_durations)


def test_declared_figures_stand_in_for_measurements() -> None:
    snapshot = declared_snapshot(
        [declared("feed", 3, priority=2, retries=1)],
        budgets_rps={"github": 1.5},
        pool=POOL,
    )

    (task,) = snapshot.tasks
    assert task.targets == 3
    assert task.duration_mean_s == task.duration_margin_s == 10.0
    assert task.lag_margin_s == 0.0
    assert task.priority == 2
    assert task.retries == 1
    assert snapshot.limits == (LimitSnapshot("github", 1.5),)
    assert snapshot.pool == POOL


def test_an_infeasible_budget_is_shown_with_its_deficit() -> None:
    # Both tasks are safe up to 60 - 10 = 50 s, where 250 targets draw 5/s;
    # the budget is 3/s, planned to 97 %: 2.91/s. "high" keeps 50 s (2/s),
    # "low" gets the 0.91/s left: 150 / 0.91 = 165 s.
    snapshot = declared_snapshot(
        [declared("high", 100, priority=2), declared("low", 150, priority=1)],
        budgets_rps={"github": 3.0},
        pool=PoolSnapshot(min_size=1, max_size=64, size=4, process_ceiling=16),
    )

    assert lines_for(snapshot) == [
        "capacity plan, from the declared figures:",
        "task  targets  duration  interval  sla-safe  sla kept",
        "high  100      10s       50s       50s       yes",
        "low   150      10s       2m45s     50s       no: over budget",
        "",
        "limit   budget  demand  at sla-safe  fits",
        "github  3/s     2.91/s  5/s          no: 2/s short",
        "",
        "workers needed: 37 (between 1 and 64)",
        "  Little's law: 29.1 busy on average, 37 with 25% headroom",
        "desired replicas: 3 (at most 16 workers per process)",
        "plan: SLA at risk for low (github short by 2/s)",
    ]


def test_a_pool_too_small_for_the_slas_is_shown_with_the_workers_missing() -> None:
    # At their 50 s safe bounds, 250 targets of 10 s runs keep 50 workers
    # busy, 34 more than the 16 at most. "high" alone would keep 20 busy:
    # it gives way past its bound too.
    snapshot = declared_snapshot(
        [declared("high", 100, priority=2), declared("low", 150, priority=1)],
        budgets_rps={},
        pool=POOL,
    )

    lines = lines_for(snapshot)

    assert "  every SLA needs 34 more: low priorities are stretched to fit" in lines
    assert lines[-1] == "plan: SLA at risk for high, low (34 workers short)"
    assert lines[2].startswith("high ")
    assert lines[2].endswith("no: too few workers")


def test_room_to_spare_gives_the_preferred_intervals() -> None:
    snapshot = declared_snapshot(
        [declared("feed", 10)], budgets_rps={"github": 5000 / 3600}, pool=POOL
    )

    lines = lines_for(snapshot)

    assert "feed  10       10s       10s       50s       yes" in lines
    assert "github  1.389/s  1/s     12/m         yes" in lines
    assert lines[-1] == "plan: every SLA can be kept"


def test_tasks_without_a_duration_are_named() -> None:
    snapshot = declared_snapshot(
        [declared("feed", 10, expected_duration_s=None)], budgets_rps={}, pool=POOL
    )

    lines = lines_for(snapshot, unknown_durations=("feed",))

    assert "feed  10       ?         10s       60s       yes" in lines
    assert "github  unlimited  1/s     10/m         yes" in lines
    assert "no expected_duration for feed: their runs count as instant;" in lines


def test_an_sla_no_budget_can_save_says_why() -> None:
    snapshot = ControlSnapshot(
        now_s=0.0,
        tasks=(
            TaskSnapshot("polled", sla_s=60.0, min_interval_s=90.0),
            TaskSnapshot("slow", sla_s=60.0, duration_margin_s=61.0),
        ),
        pool=POOL,
    )

    lines = lines_for(snapshot)

    assert "polled  1        0ms       90s       90s       no: server minimum" in lines
    assert "slow    1        0ms       3s        3s        no: runs outlast it" in lines
    assert lines[-1] == "plan: SLA at risk for polled, slow"


@pytest.mark.parametrize(
    ("rps", "text"),
    [
        (5000 / 3600, "1.389/s"),
        (40.0, "40/s"),
        (12_345.6, "12346/s"),
        (0.5, "30/m"),
        (0.001, "3.6/h"),
        (0.0, "0/h"),
    ],
)
def test_rates_use_the_unit_that_gives_at_least_one(rps: float, text: str) -> None:
    assert format_rate(rps) == text


def per_account(targets: int, budget_rps: float | None) -> list[str]:
    """The plan for one task of *targets* on "github:{account}", four of them
    on one account and one on each other account."""
    policy = TaskPolicy.from_options(sla="1m", every="10s", limits=["github:{account}"])
    snapshot = declared_snapshot(
        [DeclaredTask("feed", policy, targets, 10.0)], budgets_rps={}, pool=POOL
    )
    credentials = ({"feed": 4},) + ({"feed": 1},) * (targets - 4)
    template = CredentialLimit("github:{account}", budget_rps, credentials)
    return render_plan(snapshot, plan(snapshot), credential_limits=[template])


def test_a_template_is_planned_per_credential_not_as_one_key() -> None:
    # The busiest account has 4 targets: 24/m every 10 s, 4.8/m at the
    # 50 s safe bound, within its 18/m.
    lines = per_account(6, budget_rps=0.3)

    assert lines[3:7] == [
        "",
        "per credential    budget  credentials  busiest  at sla-safe  fits",
        "github:{account}  18/m    3            24/m     4.8/m        yes",
        "",
    ]
    assert not any(line.startswith("limit ") for line in lines)
    assert lines[-1] == "plan: every SLA can be kept"


def test_a_credential_short_of_its_budget_puts_its_tasks_at_risk() -> None:
    lines = per_account(6, budget_rps=0.05)

    assert (
        "feed  6        10s       10s       50s       no: credential over budget"
        in (lines)
    )
    assert (
        "github:{account}  3/m     3            24/m     4.8/m        no: 1.8/m short"
        in lines
    )
    assert lines[-1] == (
        "plan: SLA at risk for feed (github:{account} short by 1.8/m for its "
        "busiest credential)"
    )


def test_a_template_without_a_budget_is_unlimited_per_credential() -> None:
    lines = per_account(5, budget_rps=None)

    assert (
        "github:{account}  unlimited  2            24/m     4.8/m        yes" in lines
    )


def test_columns_take_cells_of_several_lines() -> None:
    """A heading's lines stack upwards, so a long word need not widen a
    column of short values; a value's lines run downwards."""
    rows = [
        ("task", "re-\ntries", "limits"),
        ("feed", "2", "api\napi:{token}"),
        ("digest", "0", "-"),
    ]

    assert columns(rows) == [
        "        re-",
        "task    tries  limits",
        "feed    2      api",
        "               api:{token}",
        "digest  0      -",
    ]
