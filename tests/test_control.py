"""Tests for the controller: properties of ``plan`` and worked examples."""

from __future__ import annotations

import math

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slapoll import ConfigError, TaskPolicy
from slapoll._control import (
    BUDGET_UTILISATION,
    DECISION_FEASIBLE,
    DECISION_INFEASIBLE,
    DECISION_POOL_GROW,
    DECISION_POOL_SATURATED,
    DECISION_POOL_SHRINK,
    DECISION_RESTORE,
    DECISION_STRETCH,
    MAX_STRETCH_FACTOR,
    POOL_SHRINK_HOLD_S,
    SATURATION_FLOOR,
    ConcurrencySample,
    ControlMemory,
    ControlPlan,
    ControlSnapshot,
    LimitSnapshot,
    PoolSnapshot,
    TaskSnapshot,
    plan,
)

KEYS = ("api", "github", "github:token-7")
# Drawing a snapshot takes about a hundred draws; fifty examples per
# property keep the whole module within a few seconds.
PROPERTY = settings(max_examples=50)
POOL = PoolSnapshot(min_size=1, max_size=64, size=4)


def snapshot(
    *tasks: TaskSnapshot,
    budgets: dict[str, float | None] | None = None,
    pool: PoolSnapshot = POOL,
    now_s: float = 0.0,
    memory: ControlMemory | None = None,
) -> ControlSnapshot:
    limits = tuple(LimitSnapshot(k, b) for k, b in (budgets or {}).items())
    return ControlSnapshot(
        now_s=now_s, tasks=tasks, limits=limits, pool=pool, memory=memory
    )


# -- strategies ---------------------------------------------------------------

# Everything is drawn as whole numbers (milliseconds, percentages, a bit
# mask of keys): they draw several times faster than floats, optional values
# and lists, and read well when hypothesis shrinks an example. A share or
# budget drawn as 0 (or -1) stands for "none".


def share(draw: st.DrawFn) -> float:
    return draw(st.integers(0, 120)) / 100


@st.composite
def task_snapshots(draw: st.DrawFn, name: str) -> TaskSnapshot:
    sla = draw(st.integers(1, 600_000)) / 1000
    preferred, interval = share(draw), share(draw)
    keys = draw(st.integers(0, 2 ** len(KEYS) - 1))
    retries = draw(st.integers(0, 2))
    return TaskSnapshot(
        name=name,
        sla_s=sla,
        targets=draw(st.integers(0, 200)),
        preferred_interval_s=preferred * sla if preferred else None,
        priority=draw(st.integers(0, 3)),
        limit_keys=tuple(k for i, k in enumerate(KEYS) if keys >> i & 1),
        requests_per_run=draw(st.sampled_from([1.0, 2.0, 0.5])),
        lag_margin_s=share(draw) * sla / 4,
        duration_margin_s=share(draw) * sla / 4,
        duration_mean_s=share(draw) * sla / 8,
        retries=retries,
        retry_backoff_s=share(draw) * sla / 8 if retries else 0.0,
        timeout_s=draw(st.none() | st.integers(1, 100).map(lambda n: n * sla / 100)),
        min_interval_s=share(draw) * sla / 2,
        interval_s=interval * sla if interval else None,
    )


@st.composite
def pools(draw: st.DrawFn) -> PoolSnapshot:
    low = draw(st.integers(1, 8))
    high = draw(st.integers(low, 128))
    samples = [
        ConcurrencySample(
            draw(st.integers(1, 128)), draw(st.integers(1, 10_000)) / 1000
        )
        for _ in range(draw(st.integers(0, 8)))
    ]
    ceiling = draw(st.integers(0, 64))
    return PoolSnapshot(
        min_size=low,
        max_size=high,
        size=draw(st.integers(low, high)),
        process_ceiling=ceiling or None,
        samples=tuple(samples),
    )


@st.composite
def snapshots(draw: st.DrawFn) -> ControlSnapshot:
    count = draw(st.integers(1, 5))
    tasks = tuple(draw(task_snapshots(f"t{i}")) for i in range(count))
    budgets = [draw(st.integers(-1, 5000)) for _ in KEYS]
    limits = tuple(
        LimitSnapshot(key, None if centi < 0 else centi / 100)
        for key, centi in zip(KEYS, budgets, strict=True)
    )
    memory = None
    if draw(st.booleans()):
        memory = ControlMemory(
            pool_target_size=draw(st.integers(1, 200)),
            pool_changed_at_s=draw(st.integers(-100, 100)),
            infeasible_keys=tuple(k for k in KEYS if draw(st.booleans())),
        )
    return ControlSnapshot(
        now_s=0.0, tasks=tasks, limits=limits, pool=draw(pools()), memory=memory
    )


# The pool as a key in properties about keys.
POOL_KEY = "(pool)"


def users(snap: ControlSnapshot, key: str) -> list[TaskSnapshot]:
    return [t for t in snap.tasks if key in t.limit_keys and t.targets]


# -- properties -------------------------------------------------------------


@PROPERTY
@given(snap=snapshots())
def test_a_feasible_key_gets_no_more_than_its_budget(snap: ControlSnapshot) -> None:
    """Wherever the SLAs fit a key's budget, the planned demand fits it too."""
    result = plan(snap)

    for key in result.keys:
        if key.feasible and key.budget_rps is not None:
            assert key.demand_rps <= key.budget_rps
            assert key.deficit_rps == 0.0


@PROPERTY
@given(snap=snapshots())
def test_no_interval_below_the_preferred_one_or_the_server_minimum(
    snap: ControlSnapshot,
) -> None:
    """Intervals keep to the server's minimum and to the preferred interval.

    The preferred interval gives way only to what the runs take: when the
    duration margin (and a retry's room) leaves less than it before the
    SLA, that bound wins. Lag never shortens it.
    """
    result = plan(snap)

    for task in snap.tasks:
        chosen = result.task(task.name)
        assert chosen.interval_s >= task.min_interval_s
        if task.preferred_interval_s is not None:
            runs_allow = max(
                task.sla_s - task.run_margin_s,
                task.sla_s * 0.05,
                task.min_interval_s,
            )
            assert chosen.interval_s >= min(task.preferred_interval_s, runs_allow)


@PROPERTY
@given(snap=snapshots())
def test_lag_never_makes_a_task_with_a_preference_poll_more_often(
    snap: ControlSnapshot,
) -> None:
    """Lag is a capacity or budget problem, never a reason to poll more often:
    without any lag the same tasks get the same unconstrained intervals, and
    no interval below them."""
    without_lag = attrs.evolve(
        snap, tasks=tuple(attrs.evolve(t, lag_margin_s=0.0) for t in snap.tasks)
    )
    result, lagless = plan(snap), plan(without_lag)

    for task in snap.tasks:
        if task.preferred_interval_s is None:
            continue
        chosen = result.task(task.name)
        assert (
            chosen.unconstrained_interval_s
            == lagless.task(task.name).unconstrained_interval_s
        )
        assert chosen.interval_s >= chosen.unconstrained_interval_s


@PROPERTY
@given(snap=snapshots())
def test_no_interval_above_its_sla_safe_bound_while_every_key_is_feasible(
    snap: ControlSnapshot,
) -> None:
    """While every budget, and the pool at its most, fits the SLAs, nothing
    stretches an interval past its SLA-safe bound (or past its
    unconstrained interval, where lag left the bound below that)."""
    result = plan(snap)

    if all(key.feasible for key in result.keys) and not result.pool.short:
        for task in result.tasks:
            top = max(task.sla_safe_interval_s, task.unconstrained_interval_s)
            assert task.interval_s <= top
            assert task.cause in (None, "min_interval", "margins")


@PROPERTY
@given(snap=snapshots())
def test_a_pool_that_fits_the_slas_is_not_planned_past_its_capacity(
    snap: ControlSnapshot,
) -> None:
    """Wherever the SLAs fit the pool at its most, the planned busy workers
    (Little's law) fit it too, headroom kept; a short pool says how many
    workers it lacks."""
    result = plan(snap)
    intervals = result.intervals()
    busy = sum(t.targets * t.duration_mean_s / intervals[t.name] for t in snap.tasks)

    if result.pool.short:
        assert result.pool.workers_missing >= 1
    else:
        assert busy <= result.pool.capacity * (1 + 1e-9)
        assert result.pool.workers_missing == 0


@PROPERTY
@given(snap=snapshots())
def test_a_higher_priority_is_stretched_only_once_lower_ones_are_at_their_bound(
    snap: ControlSnapshot,
) -> None:
    """A stretched task has a key on which every lower priority already gave all.

    Stretched at all: every lower-priority task on that key is at least at
    its SLA-safe bound. Stretched past its own bound: they are stretched as
    far as they go. Tasks without targets draw nothing and are left alone.
    (A bound is the longer of the SLA-safe bound and the unconstrained
    interval: lag never shortens an interval.) The pool counts as one more
    key, which every task whose runs take time draws on.
    """
    result = plan(snap)

    def top(name: str) -> float:
        chosen = result.task(name)
        return max(chosen.sla_safe_interval_s, chosen.unconstrained_interval_s)

    on_pool = [t for t in snap.tasks if t.targets and t.duration_mean_s > 0]
    lower_than = {
        task.name: {
            key: [t for t in users(snap, key) if t.priority < task.priority]
            for key in task.limit_keys
        }
        | {POOL_KEY: [t for t in on_pool if t.priority < task.priority]}
        for task in snap.tasks
    }

    for task in snap.tasks:
        chosen = result.task(task.name)
        if chosen.interval_s > chosen.unconstrained_interval_s:
            assert any(
                all(result.task(low.name).interval_s >= top(low.name) for low in lower)
                for lower in lower_than[task.name].values()
            )
        if chosen.interval_s > top(task.name):
            assert any(
                all(
                    result.task(low.name).interval_s
                    >= top(low.name) * MAX_STRETCH_FACTOR
                    for low in lower
                )
                for lower in lower_than[task.name].values()
            )


@PROPERTY
@given(
    snap=snapshots(),
    key=st.sampled_from(KEYS),
    more=st.none() | st.floats(1, 10, allow_nan=False),
)
def test_more_budget_never_lengthens_an_interval(
    snap: ControlSnapshot, key: str, more: float | None
) -> None:
    """Raising one key's budget (or lifting it) shortens intervals or keeps them."""
    richer = tuple(
        attrs.evolve(
            limit,
            budget_rps=None
            if more is None or limit.budget_rps is None
            else limit.budget_rps * more,
        )
        if limit.name == key
        else limit
        for limit in snap.limits
    )

    before = plan(snap).intervals()
    after = plan(attrs.evolve(snap, limits=richer)).intervals()

    for name, interval in after.items():
        assert interval <= before[name]


@PROPERTY
@given(snap=snapshots())
def test_the_pool_stays_within_its_bounds(snap: ControlSnapshot) -> None:
    """Whatever the load, memory and samples, the pool target keeps to its bounds."""
    pool = plan(snap).pool

    assert snap.pool.min_size <= pool.target_size <= snap.pool.max_size
    assert snap.pool.min_size <= pool.wanted_size <= snap.pool.max_size


@PROPERTY
@given(snap=snapshots(), data=st.data())
def test_the_same_snapshot_gives_the_same_plan(
    snap: ControlSnapshot, data: st.DataObject
) -> None:
    """Planning is deterministic, and blind to the order tasks and keys come in."""
    shuffled = attrs.evolve(
        snap,
        tasks=tuple(data.draw(st.permutations(snap.tasks))),
        limits=tuple(data.draw(st.permutations(snap.limits))),
    )

    assert plan(snap) == plan(snap)
    assert plan(shuffled) == plan(snap)


@PROPERTY
@given(snap=snapshots())
def test_a_task_on_several_keys_fits_each_of_them(snap: ControlSnapshot) -> None:
    """Each key's demand is computed from the final intervals of all its tasks."""
    result = plan(snap)
    intervals = result.intervals()

    for key in result.keys:
        demand = sum(
            t.targets * t.requests_per_run / intervals[t.name]
            for t in sorted(users(snap, key.name), key=lambda t: t.name)
        )
        assert key.demand_rps == pytest.approx(demand)


# -- intervals, by example ------------------------------------------------


def feeds(priority: int, targets: int, **options: object) -> TaskSnapshot:
    """A task on "github" with a 60 s SLA, 10 s margins and a 10 s preference."""
    defaults: dict[str, object] = {
        "sla_s": 60.0,
        "preferred_interval_s": 10.0,
        "duration_margin_s": 10.0,
        "limit_keys": ("github",),
        "duration_mean_s": 1.0,
    }
    return TaskSnapshot(
        name=f"p{priority}",
        targets=targets,
        priority=priority,
        **(defaults | options),  # type: ignore[arg-type]
    )


def test_with_room_to_spare_every_task_runs_at_its_preferred_interval() -> None:
    # 25/s wanted, within 97% of 28/s.
    result = plan(snapshot(feeds(2, 100), feeds(1, 150), budgets={"github": 28.0}))

    assert result.intervals() == {"p1": 10.0, "p2": 10.0}
    assert result.key("github").demand_rps == 25.0
    assert result.feasible
    assert DECISION_INFEASIBLE not in result.decisions


def test_a_tight_budget_stretches_the_lowest_priority_first() -> None:
    # At 10 s the two draw 10 + 15 = 25/s. With 20/s the plan aims at
    # BUDGET_UTILISATION of it (19.4/s): p2 keeps 10 s (10/s) and p1's 150
    # targets share the other 9.4/s, every 15.96 s, within their 50 s bound.
    result = plan(snapshot(feeds(2, 100), feeds(1, 150), budgets={"github": 20.0}))

    aim = 20.0 * BUDGET_UTILISATION
    assert result.task("p2").interval_s == 10.0
    assert result.task("p1").interval_s == pytest.approx(150 / (aim - 10.0))
    assert result.task("p1").stretched
    assert result.key("github").demand_rps <= aim + 1e-9
    assert result.feasible


def test_an_infeasible_budget_reports_the_deficit_arithmetic() -> None:
    # SLA 60 s minus a 10 s margin: both tasks are safe up to 50 s, where
    # 250 targets draw 250 / 50 = 5/s. The budget is 3/s: 2/s are missing.
    # p2 keeps its SLA at 50 s (2/s); p1 gets the remaining 1/s less the
    # share of the budget kept back to drain queued runs (3% of 3/s):
    # 0.91/s, so its 150 targets run every 150 / 0.91 s.
    result = plan(snapshot(feeds(2, 100), feeds(1, 150), budgets={"github": 3.0}))

    github = result.key("github")
    assert github.demand_at_sla_rps == pytest.approx(5.0)
    assert not github.feasible
    assert github.deficit_rps == pytest.approx(2.0)
    p1_rps = 3.0 * BUDGET_UTILISATION - 2.0
    assert github.demand_rps == pytest.approx(2.0 + p1_rps)
    assert github.violating == ("p1",)
    assert result.task("p2").interval_s == 50.0
    assert result.task("p2").sla_feasible
    assert result.task("p1").interval_s == pytest.approx(150 / p1_rps)
    assert result.task("p1").cause == "budget"
    assert DECISION_INFEASIBLE in result.decisions
    assert not result.feasible


def test_when_higher_priorities_alone_exceed_the_budget_they_stretch_too() -> None:
    # p2 alone needs 100 / 50 = 2/s at its bound; the budget is 1/s. p1 is
    # stretched as far as it goes (50 s x 100), p2 takes what is left but
    # the share of the budget kept back.
    result = plan(snapshot(feeds(2, 100), feeds(1, 150), budgets={"github": 1.0}))

    p1 = result.task("p1").interval_s
    assert p1 == 50.0 * MAX_STRETCH_FACTOR
    room = 1.0 * BUDGET_UTILISATION - 150 / p1
    assert result.task("p2").interval_s == pytest.approx(100 / room)
    assert result.key("github").violating == ("p1", "p2")


def test_budget_restored_returns_intervals_to_preferred() -> None:
    tasks = (feeds(2, 100), feeds(1, 150))
    starved = plan(snapshot(*tasks, budgets={"github": 3.0}))
    applied = tuple(
        attrs.evolve(t, interval_s=starved.task(t.name).interval_s) for t in tasks
    )

    restored = plan(snapshot(*applied, budgets={"github": 100.0}))

    assert restored.intervals() == {"p1": 10.0, "p2": 10.0}
    assert restored.decisions.count(DECISION_RESTORE) == 2
    assert restored.feasible


def test_a_key_turning_infeasible_is_one_decision_and_so_is_recovery() -> None:
    tasks = (feeds(2, 100), feeds(1, 150))
    first = plan(snapshot(*tasks, budgets={"github": 3.0}))
    again = plan(snapshot(*tasks, budgets={"github": 3.0}, memory=first.memory))
    recovered = plan(snapshot(*tasks, budgets={"github": 30.0}, memory=again.memory))

    assert first.memory.infeasible_keys == ("github",)
    assert first.decisions.count(DECISION_INFEASIBLE) == 1
    assert DECISION_INFEASIBLE not in again.decisions
    assert recovered.decisions.count(DECISION_FEASIBLE) == 1
    assert recovered.memory.infeasible_keys == ()


def test_stretching_is_counted_as_a_decision() -> None:
    tasks = (feeds(2, 100, interval_s=10.0), feeds(1, 150, interval_s=10.0))

    result = plan(snapshot(*tasks, budgets={"github": 20.0}))

    assert result.decisions.count(DECISION_STRETCH) == 1
    assert DECISION_RESTORE not in result.decisions


def test_a_task_on_two_keys_takes_the_longer_interval_either_asks_for() -> None:
    both = feeds(1, 100, limit_keys=("github", "github:token-7"))
    result = plan(snapshot(both, budgets={"github": 5.0, "github:token-7": 4.0}))

    # 97% of each: 4.85/s asks for 20.6 s, 3.88/s for 25.8 s.
    aim = 4.0 * BUDGET_UTILISATION
    assert result.task("p1").interval_s == pytest.approx(100 / aim)
    assert result.key("github").demand_rps == pytest.approx(aim)
    assert result.key("github:token-7").demand_rps <= aim + 1e-9


def test_a_key_no_limit_names_is_unlimited() -> None:
    # Short runs: 10,000 targets keep one worker busy, and the pool has room.
    result = plan(snapshot(feeds(1, 10_000, duration_mean_s=0.001)))

    assert result.key("github").budget_rps is None
    assert result.key("github").feasible
    assert result.task("p1").interval_s == 10.0


def test_without_a_preferred_interval_a_task_runs_at_its_safe_bound() -> None:
    result = plan(snapshot(feeds(1, 10, preferred_interval_s=None)))

    assert result.task("p1").interval_s == 50.0


def test_a_preferred_interval_past_the_safe_bound_yields_to_the_sla() -> None:
    # A 15 s duration margin leaves a 45 s safe bound, shorter than the 50 s
    # the task prefers: the SLA is the promise, so it wins.
    slow = feeds(1, 10, preferred_interval_s=50.0, duration_margin_s=15.0)

    result = plan(snapshot(slow))

    assert result.task("p1").interval_s == 45.0
    assert result.task("p1").sla_feasible


@pytest.mark.parametrize(
    ("timeout_s", "safe_s"),
    [
        # 60 - 2 lag - (10 failed attempt + 5 backoff) - 10 duration = 33.
        (None, 33.0),
        # A run that hangs fails at its timeout, not after a usual duration:
        # 60 - 2 lag - (15 timeout + 5 backoff) - 10 duration = 28.
        (15.0, 28.0),
        # A timeout near the SLA: the room is at most half of what the
        # duration leaves, (60 - 10) / 2 = 25, where the next scheduled run
        # covers a failed one: 60 - 2 lag - 25 - 10 duration = 23.
        (50.0, 23.0),
    ],
)
def test_retries_keep_room_for_one_more_attempt(
    timeout_s: float | None, safe_s: float
) -> None:
    task = feeds(
        1,
        10,
        preferred_interval_s=None,
        lag_margin_s=2.0,
        retries=1,
        retry_backoff_s=5.0,
        timeout_s=timeout_s,
    )

    assert plan(snapshot(task)).task("p1").sla_safe_interval_s == safe_s


def test_a_timeout_near_the_sla_does_not_pull_a_preference_to_the_floor() -> None:
    """SLA 10 s, every 5 s, timeout 9 s, one retry, instant runs: room for a
    timed-out attempt and its retry cannot fit, and polling every 5 s
    already covers a failed run with the next one, so the task keeps its
    preferred 5 s, not the 0.5 s floor."""
    task = TaskSnapshot(
        name="feed",
        sla_s=10.0,
        preferred_interval_s=5.0,
        retries=1,
        retry_backoff_s=1.0,
        timeout_s=9.0,
    )

    chosen = plan(snapshot(task)).task("feed")

    assert (chosen.interval_s, chosen.sla_safe_interval_s) == (5.0, 5.0)
    assert chosen.sla_feasible


@pytest.mark.parametrize(
    ("ready", "interval_s"), [(0, 400 / 62.08), (1900, 400 / 31.04)]
)
def test_a_full_pool_stretches_intervals_and_keeps_room_to_drain_its_queue(
    ready: int, interval_s: float
) -> None:
    """4,000 targets of 100 ms runs at a 5.5 s bound keep 72.7 workers busy:
    more than the 64 at most, so the interval stretches until the runs fit
    97% of the pool; with 1,900 runs queued, half the pool is left to drain
    them. At the bound without lag (10 - 1 s duration) the pool would do:
    it is not short, the lag is its own queue."""
    task = TaskSnapshot(
        name="feed",
        sla_s=10.0,
        targets=4000,
        duration_margin_s=1.0,
        duration_mean_s=0.1,
        lag_margin_s=3.5,
        ready=ready,
    )
    pool = PoolSnapshot(min_size=1, max_size=64, size=64)

    result = plan(snapshot(task, pool=pool))

    assert result.task("feed").interval_s == pytest.approx(interval_s)
    assert result.task("feed").cause == "workers"
    assert not result.pool.short


def test_a_pool_too_small_at_every_sla_says_how_many_workers_it_lacks() -> None:
    # At the 9 s bound 9,000 targets of 100 ms runs keep 100 workers busy.
    task = TaskSnapshot(
        name="feed",
        sla_s=10.0,
        targets=9000,
        duration_margin_s=1.0,
        duration_mean_s=0.1,
    )
    pool = PoolSnapshot(min_size=1, max_size=64, size=64)

    result = plan(snapshot(task, pool=pool))

    assert result.pool.short
    assert result.pool.workers_missing == 36
    assert result.pool.concurrency_at_sla == pytest.approx(100.0)
    assert not result.feasible


def test_a_server_minimum_above_the_safe_bound_makes_the_sla_infeasible() -> None:
    task = feeds(1, 10, min_interval_s=55.0)

    result = plan(snapshot(task, budgets={"github": 100.0}))

    chosen = result.task("p1")
    assert chosen.interval_s == 55.0
    assert chosen.sla_safe_interval_s == 55.0
    assert not chosen.sla_feasible
    assert chosen.cause == "min_interval"
    assert result.key("github").feasible
    assert result.key("github").violating == ("p1",)
    assert not result.feasible


def test_margins_larger_than_the_sla_leave_the_floor() -> None:
    task = feeds(1, 10, duration_margin_s=70.0)

    chosen = plan(snapshot(task)).task("p1")

    assert chosen.interval_s == 60.0 * 0.05
    assert chosen.cause == "margins"


def test_requests_per_run_multiply_the_demand() -> None:
    result = plan(snapshot(feeds(1, 100, requests_per_run=3.0)))

    assert result.key("github").demand_rps == pytest.approx(30.0)


def test_a_plan_from_a_policy_takes_the_declared_figures() -> None:
    policy = TaskPolicy.from_options(
        sla="1m",
        every="10s",
        priority=2,
        limits=["github"],
        retries=1,
        timeout="20s",
    )

    task = TaskSnapshot.from_policy("feed", policy, targets=5, duration_mean_s=1.0)

    assert task.sla_s == 60.0
    assert task.preferred_interval_s == 10.0
    assert task.priority == 2
    assert task.limit_keys == ("github",)
    assert task.retries == 1
    assert task.retry_backoff_s == 1.0
    assert task.timeout_s == 20.0


# -- the pool -----------------------------------------------------------------


def busy(targets: int, duration_mean_s: float = 1.0) -> TaskSnapshot:
    """A task needing targets x duration / 10 s workers by Little's law."""
    return TaskSnapshot(
        name="busy",
        sla_s=60.0,
        targets=targets,
        preferred_interval_s=10.0,
        duration_mean_s=duration_mean_s,
    )


def test_the_pool_is_littles_law_plus_headroom() -> None:
    result = plan(snapshot(busy(160)))

    assert result.pool.needed_concurrency == pytest.approx(16.0)
    assert result.pool.wanted_size == 20
    assert result.pool.target_size == 20
    assert DECISION_POOL_GROW in result.decisions


def test_the_pool_grows_at_once_and_shrinks_after_the_hold_by_a_step() -> None:
    grown = plan(snapshot(busy(400), now_s=100.0))
    assert grown.pool.target_size == 50
    assert grown.memory == ControlMemory(pool_target_size=50, pool_changed_at_s=100.0)

    quiet = snapshot(busy(8), now_s=100.0 + POOL_SHRINK_HOLD_S - 1, memory=grown.memory)
    held = plan(quiet)
    assert held.pool.target_size == 50
    assert held.memory == grown.memory

    later = attrs.evolve(quiet, now_s=100.0 + POOL_SHRINK_HOLD_S)
    shrunk = plan(later)
    assert shrunk.pool.target_size == 50 - math.ceil(50 * 0.25)
    assert DECISION_POOL_SHRINK in shrunk.decisions
    assert shrunk.memory.pool_changed_at_s == later.now_s


def test_the_first_plan_does_not_shrink_the_configured_pool_at_once() -> None:
    result = plan(snapshot(busy(0), pool=PoolSnapshot(1, 64, 32)))

    assert result.pool.wanted_size == 1
    assert result.pool.target_size == 32


def test_the_pool_stops_growing_when_concurrency_only_slows_the_upstream() -> None:
    # From 8 to 16 workers the duration doubled: no throughput gained.
    samples = tuple(ConcurrencySample(n, d) for n, d in ((4, 1.0), (8, 1.0), (16, 2.0)))
    pool = PoolSnapshot(min_size=1, max_size=256, size=16, samples=samples)

    result = plan(snapshot(busy(1000, duration_mean_s=2.0), pool=pool))

    assert result.pool.saturation_limit == 8
    assert result.pool.target_size == 16
    assert DECISION_POOL_SATURATED in result.decisions
    assert DECISION_POOL_GROW not in result.decisions


def test_the_pool_keeps_growing_while_concurrency_pays() -> None:
    samples = tuple(ConcurrencySample(n, d) for n, d in ((4, 1.0), (8, 1.1), (16, 1.3)))
    pool = PoolSnapshot(min_size=1, max_size=256, size=16, samples=samples)

    result = plan(snapshot(busy(1000), pool=pool))

    assert result.pool.saturation_limit is None
    assert result.pool.target_size == 125


def test_desired_replicas_divide_the_wanted_concurrency_by_the_ceiling() -> None:
    pool = PoolSnapshot(min_size=1, max_size=16, size=4, process_ceiling=16)

    result = plan(snapshot(busy(400), pool=pool))

    assert result.pool.target_size == 16
    assert result.desired_replicas == math.ceil(50 / 16)


# -- validation ---------------------------------------------------------------


def test_a_snapshot_rejects_a_bad_sla() -> None:
    with pytest.raises(ConfigError, match=r"task 'feed': sla_s must be a finite "):
        TaskSnapshot(name="feed", sla_s=0.0)


def test_a_snapshot_rejects_duplicate_task_names() -> None:
    task = busy(1)
    with pytest.raises(ConfigError, match=r"task names must be unique, got \['busy'"):
        snapshot(task, task)


def test_a_pool_rejects_bounds_the_wrong_way_round() -> None:
    with pytest.raises(ConfigError, match=r"min_size \(8\) must not exceed max_size"):
        PoolSnapshot(min_size=8, max_size=4, size=4)


def test_a_limit_key_named_twice_counts_once() -> None:
    task = feeds(1, 100, limit_keys=("github", "github"))

    assert task.limit_keys == ("github",)


def test_plan_lookup_names_the_missing_task() -> None:
    result: ControlPlan = plan(snapshot(busy(1)))

    with pytest.raises(KeyError, match="no task 'nope'"):
        result.task("nope")


# -- the rules of issue 4's simulations ---------------------------------------


def test_a_load_step_is_not_read_as_saturation() -> None:
    # Fast at 4 workers, then (later) five times slower at 5: throughput
    # fell to a quarter, which no contention does; the upstream slowed.
    samples = (ConcurrencySample(4, 0.2),) * 50 + (ConcurrencySample(5, 1.0),) * 5
    feed = TaskSnapshot(
        "feed", sla_s=10.0, targets=100, preferred_interval_s=5.0, duration_mean_s=1.0
    )
    pool = PoolSnapshot(min_size=1, max_size=256, size=5, samples=samples)

    result = plan(snapshot(feed, pool=pool, now_s=100.0))

    assert result.pool.saturation_limit is None
    assert result.pool.target_size == 25


def test_a_drop_seen_with_the_lower_level_revisited_is_saturation() -> None:
    # 4 workers were fast again after 16 had been slow: contention.
    samples = tuple(ConcurrencySample(n, d) for n, d in ((4, 1.0), (16, 8.0), (4, 1.0)))
    pool = PoolSnapshot(min_size=1, max_size=256, size=16, samples=samples)

    result = plan(snapshot(busy(1000), pool=pool))

    assert result.pool.saturation_limit == 4


def test_saturation_read_at_one_worker_holds_the_pool_at_no_fewer_than_four() -> None:
    # Two workers looked twice as slow as one: saturation at 1, as noisy
    # durations can make it look. The pool still gets four workers.
    samples = (ConcurrencySample(1, 2.0),) * 5 + (ConcurrencySample(2, 5.0),) * 5
    pool = PoolSnapshot(min_size=1, max_size=256, size=2, samples=samples)

    result = plan(snapshot(busy(1000), pool=pool))

    assert result.pool.saturation_limit == 1
    assert result.pool.target_size == SATURATION_FLOOR


def test_lag_does_not_shorten_a_preferred_interval() -> None:
    urgent = TaskSnapshot(
        "urgent",
        sla_s=10.0,
        preferred_interval_s=5.0,
        lag_margin_s=8.0,
        duration_margin_s=1.0,
        targets=40,
    )

    chosen = plan(snapshot(urgent)).task("urgent")

    assert chosen.interval_s == 5.0
    assert chosen.sla_safe_interval_s == 1.0  # still reported, with lag


def test_runs_waiting_for_a_worker_grow_the_pool() -> None:
    # Little's law: 16 workers; 120 waiting runs of 1 s, cleared in 5 s: 24.
    waiting = attrs.evolve(busy(160), ready=120)

    result = plan(snapshot(waiting))

    assert result.pool.needed_concurrency == pytest.approx(16.0 + 24.0)
    assert result.pool.target_size == 50
