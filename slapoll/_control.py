"""The controller: every task's interval and the pool size, from a snapshot.

``plan`` is a pure function of a ``ControlSnapshot``: no clock, no I/O, no
trio, so hypothesis can test it and ``slapoll check`` can run it on declared
figures. The engine builds a snapshot every control period, applies the
``ControlPlan`` it gets back, and hands ``ControlPlan.memory`` to the next
snapshot: that small state is all the smoothing and the change reports need.
The snapshot and plan classes live in ``_control_values`` and are
re-exported here.

Intervals (DESIGN.md, "The control loop"): with room in every budget a task
runs at its preferred interval. Without, tasks are stretched toward their
SLA-safe bound, lowest priority first, until each key's demand fits its
budget. When even the SLA-safe bounds do not fit, higher priorities keep
their SLA, the lowest are stretched beyond theirs, and the key reports the
requests per second missing. Each key is solved on its own; a task drawing
on several keys takes the longest interval any of them asks for, so it fits
them all.

Pool: Little's law gives the concurrency the chosen intervals need; the
pool gets that plus headroom, within its bounds. It grows at once, shrinks
after a hold time by a bounded step, and stops growing when the recent
(concurrency, duration) samples show more concurrency buying no throughput.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs

from ._control_values import (
    CAUSE_BUDGET,
    CAUSE_MARGINS,
    CAUSE_MIN_INTERVAL,
    CAUSE_WORKERS,
    DECISION_FEASIBLE,
    DECISION_INFEASIBLE,
    DECISION_KINDS,
    DECISION_POOL_GROW,
    DECISION_POOL_SATURATED,
    DECISION_POOL_SHRINK,
    DECISION_RESTORE,
    DECISION_STRETCH,
    ConcurrencySample,
    ControlMemory,
    ControlPlan,
    ControlSnapshot,
    KeyPlan,
    LimitSnapshot,
    PoolPlan,
    PoolSnapshot,
    TaskPlan,
    TaskSnapshot,
)

# The values are re-exported: the engine and `check` import from here.
__all__ = [
    "CAUSE_BUDGET",
    "CAUSE_MARGINS",
    "CAUSE_MIN_INTERVAL",
    "CAUSE_WORKERS",
    "DECISION_FEASIBLE",
    "DECISION_INFEASIBLE",
    "DECISION_KINDS",
    "DECISION_POOL_GROW",
    "DECISION_POOL_SATURATED",
    "DECISION_POOL_SHRINK",
    "DECISION_RESTORE",
    "DECISION_STRETCH",
    "ConcurrencySample",
    "ControlMemory",
    "ControlPlan",
    "ControlSnapshot",
    "KeyPlan",
    "LimitSnapshot",
    "PoolPlan",
    "PoolSnapshot",
    "TaskPlan",
    "TaskSnapshot",
    "plan",
]

# However large its margins, a task never runs more often than this share of
# its SLA (the engine's own floor agrees): past that point the runs take
# nearly the whole SLA, and polling faster cannot keep it.
MIN_INTERVAL_FRACTION = 0.05
# Past a hundred times its SLA-safe bound a target is as good as stopped.
# When stretching the lowest priority that far still leaves a key over
# budget, the higher priorities alone exceed it, and the next priority has
# to give way instead of the lowest starving without end.
MAX_STRETCH_FACTOR = 100.0
# Little's law gives the mean number of busy workers. Runs come in bursts
# and their durations vary, and every run queued for a worker adds lag that
# eats into the SLA margin: a quarter more workers keeps that queue short.
POOL_HEADROOM_FRACTION = 0.25
# The pool shrinks only this long after its target last changed, so a load
# that comes back every few seconds does not resize it each period.
POOL_SHRINK_HOLD_S = 30.0
# One shrink step gives up at most this share of the workers (and at least
# one): a wrong shrink then costs little, and growing back is immediate.
POOL_SHRINK_STEP_FRACTION = 0.25
# Added concurrency counts as paying while it brings at least this share of
# the throughput it would bring if durations stayed the same. Below that,
# more workers mostly make the upstream slower (HTTP clients whose
# connection pool degrades, servers at capacity), so the pool stops growing.
MIN_CONCURRENCY_YIELD = 0.1
# Saturation is concluded only from samples that reach at least a quarter
# beyond the best concurrency seen: durations are noisy, and one sample
# just above the best proves nothing.
SATURATION_SPAN_FRACTION = 0.25
# Plans spend this share of every budget when they can, and keep the rest.
# A plan that spends all of it leaves nothing to drain the runs already
# queued (held back by a burst, or a budget that fell): that queue then
# never empties, its lag eats the SLA margins and the safe bounds shrink for
# nothing. Keeping 3% drains a backlog of a budget-second in half a minute
# while leaving an API's allowance barely unused.
BUDGET_UTILISATION = 0.97
# Runs waiting to start are work the intervals do not account for (due at
# older, shorter intervals, or left by a burst): the pool gets the workers
# that clear them in this long, a few control periods.
BACKLOG_DRAIN_S = 5.0
# Between two concurrency levels, throughput that falls below this share of
# the lower level's is no contention: more workers do not take half the
# throughput away. It is the upstream slowing down for other reasons (a
# load step) between when the levels were seen, so the lower level's
# samples describe an upstream that is gone.
SATURATION_DROP_SHARE = 0.5
# Saturation never holds the pool below this many workers. Between one
# and a few workers, durations that merely vary (runs of 1 to 10 s) read
# as saturation often enough to hold the pool at one worker while runs
# queue: their lag then shortens the intervals, which adds to the queue.
# An API that takes only a few requests at once declares `concurrency`.
SATURATION_FLOOR = 4
# Each concurrency level is judged by its most recent samples only: a level
# revisited after a load step shows the upstream as it is now.
SAMPLES_PER_LEVEL = 5
# An interval change smaller than this share is margin noise, not a decision
# worth counting.
DECISION_CHANGE_FRACTION = 0.01
# Halving [0, 1] sixty times reaches below a double's resolution there.
_BISECTION_STEPS = 60


# -- planning --------------------------------------------------------------


@attrs.frozen
class _Bounds:
    # The SLA-safe bound: SLA less every margin, lag included. The ceiling
    # for stretching and what feasibility and deficits are measured at.
    safe_s: float
    # The interval with room in every budget (see ``_bounds``).
    unconstrained_s: float
    cause: str | None  # why the SLA cannot be kept at any budget

    @property
    def top_s(self) -> float:
        """How far a budget may stretch the task before its SLA gives way.

        The safe bound, unless lag left that below the unconstrained
        interval: lag never shortens an interval, so then the unconstrained
        interval is where stretching starts.
        """
        return max(self.safe_s, self.unconstrained_s)


def plan(snapshot: ControlSnapshot) -> ControlPlan:
    """Choose every task's interval and the pool size for *snapshot*.

    Pure and deterministic: the same snapshot gives an equal plan, whatever
    the order of its tasks and limits.
    """
    tasks = sorted(snapshot.tasks, key=lambda t: t.name)
    bounds = {t.name: _bounds(t) for t in tasks}
    budgets = _budgets(snapshot.limits, tasks)
    users = {key: [t for t in tasks if key in t.limit_keys] for key in budgets}
    by_budgets = _plan_intervals(tasks, bounds, budgets, users)
    # The busy workers the intervals may keep: the pool at its most. No
    # headroom beyond the share every fit keeps (BUDGET_UTILISATION): at
    # its bound the pool has no more to add. Not the saturation limit,
    # which caps the pool's size but is read from noisy samples: planning
    # on a misreading of it stretched a task past its SLA with a third of
    # the pool idle.
    capacity = float(snapshot.pool.max_size)
    by_pool = _fit_pool(tasks, bounds, capacity - _backlog(tasks, capacity))
    intervals = {name: max(by_budgets[name], by_pool[name]) for name in by_budgets}

    task_plans = tuple(
        _task_plan(t, bounds[t.name], intervals[t.name], by_budgets[t.name])
        for t in tasks
    )
    feasible = {p.name: p.sla_feasible for p in task_plans}
    key_plans = tuple(
        _key_plan(key, budget, users[key], bounds, intervals, feasible)
        for key, budget in budgets.items()
    )
    # The pool is sized for what the budgets allow, not for what its own
    # bounds let through: it then grows to its most when short, and the
    # desired replicas say how many processes the load wants.
    pool, changed_at, pool_decisions = _plan_pool(snapshot, tasks, by_budgets)
    # Lag is left out of the bounds the shortfall is measured at: when the
    # pool is short, the lag is the queue the shortfall makes.
    at_sla = _concurrency(tasks, {t.name: _bound_without_lag(t) for t in tasks})
    pool = attrs.evolve(pool, capacity=capacity, concurrency_at_sla=at_sla)
    replicas = max(1, math.ceil(pool.unbounded_size / snapshot.pool.ceiling))

    infeasible = tuple(key.name for key in key_plans if not key.feasible)
    memory = ControlMemory(
        pool_target_size=pool.target_size,
        pool_changed_at_s=changed_at,
        infeasible_keys=infeasible,
        pool_short=pool.short,
    )
    decisions = (
        *_interval_decisions(tasks, intervals),
        *_key_decisions(snapshot.memory, infeasible),
        *_pool_short_decisions(snapshot.memory, pool.short),
        *pool_decisions,
    )
    return ControlPlan(
        tasks=task_plans,
        keys=key_plans,
        pool=pool,
        desired_replicas=replicas,
        decisions=decisions,
        memory=memory,
    )


def _plan_intervals(
    tasks: Sequence[TaskSnapshot],
    bounds: Mapping[str, _Bounds],
    budgets: Mapping[str, float | None],
    users: Mapping[str, Sequence[TaskSnapshot]],
) -> dict[str, float]:
    """Every task's interval: the longest that any of its keys asks for."""
    intervals = {t.name: bounds[t.name].unconstrained_s for t in tasks}
    for key, budget in budgets.items():
        # Tasks without targets draw nothing: stretching them helps no one.
        loaded = [t for t in users[key] if t.targets]
        if budget is None or not loaded:
            continue
        for name, interval in _fit_key(loaded, bounds, budget).items():
            intervals[name] = max(intervals[name], interval)
    return intervals


def _bounds(task: TaskSnapshot) -> _Bounds:
    least = task.sla_s * MIN_INTERVAL_FRACTION
    floor = float(max(task.min_interval_s, least))
    raw = task.sla_s - task.margin_s
    safe = max(float(raw), floor)
    cause = None
    if raw < least:
        cause = CAUSE_MARGINS
    elif raw < task.min_interval_s:
        cause = CAUSE_MIN_INTERVAL

    if task.preferred_interval_s is None:
        # Nothing preferred: the SLA-safe bound is the interval asked for.
        return _Bounds(safe_s=safe, unconstrained_s=safe, cause=cause)

    # A preferred interval yields only to what the runs themselves take:
    # when their duration margin (and a retry's room) leaves less than the
    # preference before the SLA, the SLA is the promise and wins. Lag never
    # shortens it: lag comes from the engine's own queue (too few workers)
    # or from waiting for budget, and polling more often would only add to
    # both. The pool answers the one, stretching and the deficit the other.
    # The share-of-SLA floor guards the measured bound only: a preferred
    # interval shorter than it is the user's explicit choice.
    runs_allow = max(float(task.sla_s - task.run_margin_s), floor)
    preferred = float(task.preferred_interval_s)
    unconstrained = max(task.min_interval_s, min(preferred, runs_allow))
    return _Bounds(safe_s=safe, unconstrained_s=unconstrained, cause=cause)


def _budgets(
    limits: Sequence[LimitSnapshot], tasks: Sequence[TaskSnapshot]
) -> dict[str, float | None]:
    declared = {limit.name: limit.budget_rps for limit in limits}
    names = set(declared).union(*(t.limit_keys for t in tasks))
    return {name: declared.get(name) for name in sorted(names)}


def _demand(tasks: Sequence[TaskSnapshot], intervals: Mapping[str, float]) -> float:
    """Requests per second *tasks* draw at *intervals*.

    Always summed in the same (name) order, so a demand computed twice from
    equal intervals is the same float.
    """
    return sum(t.targets * t.requests_per_run / intervals[t.name] for t in tasks)


def _fit_key(
    tasks: Sequence[TaskSnapshot], bounds: Mapping[str, _Bounds], budget_rps: float
) -> dict[str, float]:
    """The intervals one key's budget asks of the tasks drawing on it.

    The plan aims at ``BUDGET_UTILISATION`` of the budget, but takes that
    reserve only from stretching that costs no SLA: when every task at its
    bound needs more than the share, the plan spends up to the whole
    budget instead (see ``_stretch_beyond_sla`` for the infeasible case).
    """
    top = {t.name: bounds[t.name].top_s for t in tasks}
    levels = sorted({t.priority for t in tasks})
    at_top = _demand(tasks, top)
    reserve = (1 - BUDGET_UTILISATION) * budget_rps
    if at_top <= budget_rps:
        aim = max(budget_rps - reserve, at_top)
        unconstrained = {t.name: bounds[t.name].unconstrained_s for t in tasks}
        return _stretch_within_sla(tasks, levels, unconstrained, top, aim)
    return _stretch_beyond_sla(tasks, levels, top, budget_rps, reserve)


def _stretch_within_sla(
    tasks: Sequence[TaskSnapshot],
    levels: Sequence[int],
    unconstrained: Mapping[str, float],
    safe: Mapping[str, float],
    budget_rps: float,
) -> dict[str, float]:
    """Stretch priority levels in turn toward their safe bounds until it fits.

    The caller made sure that every task at its safe bound fits.
    """
    chosen = dict(unconstrained)
    for level in levels:
        if _demand(tasks, chosen) <= budget_rps:
            break
        members = [t.name for t in tasks if t.priority == level]
        at_bound = chosen | {name: safe[name] for name in members}
        if _demand(tasks, at_bound) > budget_rps:
            chosen = at_bound
            continue

        chosen = _least_stretch(tasks, members, chosen, safe, budget_rps)
        break

    return chosen


def _least_stretch(
    tasks: Sequence[TaskSnapshot],
    members: Sequence[str],
    chosen: Mapping[str, float],
    safe: Mapping[str, float],
    budget_rps: float,
) -> dict[str, float]:
    """Stretch *members* from *chosen* toward *safe* by the least share that fits.

    Every member covers the same share of its way. Demand falls as the share
    grows, so bisection keeps a share that fits in ``high`` throughout; the
    caller made sure the whole way (share 1) fits.
    """

    def stretched(share: float) -> dict[str, float]:
        return {
            **chosen,
            **{name: _between(chosen[name], safe[name], share) for name in members},
        }

    low, high = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if _demand(tasks, stretched(middle)) <= budget_rps:
            high = middle
        else:
            low = middle
    return stretched(high)


def _between(start: float, end: float, share: float) -> float:
    # Exactly `end` at share 1: rounding must not leave a task a hair short
    # of its bound (demand too high) or past it (SLA lost).
    if share >= 1.0:
        return end
    return min(start + share * (end - start), end)


def _stretch_beyond_sla(
    tasks: Sequence[TaskSnapshot],
    levels: Sequence[int],
    safe: Mapping[str, float],
    budget_rps: float,
    reserve_rps: float,
) -> dict[str, float]:
    """Stretch past the safe bounds, lowest priority first, until it fits.

    A level is stretched by one factor over its safe bounds, the least that
    fits, up to ``MAX_STRETCH_FACTOR``; only when that is not enough does
    the next level give up its SLA too. Whether a level fits is judged on
    the whole budget; the level that gives way leaves *reserve_rps* unspent
    as far as its stretch allows, so that what is queued can drain.
    """
    chosen = dict(safe)
    for level in levels:
        members = [t for t in tasks if t.priority == level]
        others = [t for t in tasks if t.priority != level]
        room = budget_rps - _demand(others, chosen)
        level_demand = _demand(members, safe)
        # Decided from the arithmetic, not from summing the demand again:
        # a rounding error there would make the next level give way for
        # nothing.
        fits = room > 0 and level_demand <= room * MAX_STRETCH_FACTOR
        if fits:
            aimed = room - reserve_rps
            factor = MAX_STRETCH_FACTOR
            if aimed > 0 and level_demand <= aimed * MAX_STRETCH_FACTOR:
                factor = max(1.0, level_demand / aimed)
        else:
            factor = MAX_STRETCH_FACTOR
        for task in members:
            chosen[task.name] = safe[task.name] * factor
        if fits:
            break

    return chosen


def _task_plan(
    task: TaskSnapshot, bounds: _Bounds, interval_s: float, by_budgets_s: float
) -> TaskPlan:
    # A task left above its safe bound by lag (its unconstrained interval
    # stands) has a capacity problem, which the pool answers; only a budget,
    # or the pool at its most, stretching it past where lag left it costs
    # its SLA by plan.
    cause = bounds.cause
    if cause is None and interval_s > bounds.top_s:
        cause = CAUSE_BUDGET if by_budgets_s >= interval_s else CAUSE_WORKERS
    return TaskPlan(
        name=task.name,
        interval_s=interval_s,
        sla_safe_interval_s=bounds.safe_s,
        unconstrained_interval_s=bounds.unconstrained_s,
        sla_feasible=cause is None,
        cause=cause,
    )


def _key_plan(
    name: str,
    budget_rps: float | None,
    tasks: Sequence[TaskSnapshot],
    bounds: Mapping[str, _Bounds],
    intervals: Mapping[str, float],
    sla_feasible: Mapping[str, bool],
) -> KeyPlan:
    at_sla = _demand(tasks, {t.name: bounds[t.name].safe_s for t in tasks})
    feasible = budget_rps is None or at_sla <= budget_rps
    deficit = 0.0 if budget_rps is None or feasible else at_sla - budget_rps
    return KeyPlan(
        name=name,
        budget_rps=budget_rps,
        demand_rps=_demand(tasks, intervals),
        demand_at_sla_rps=at_sla,
        feasible=feasible,
        deficit_rps=deficit,
        violating=tuple(
            t.name for t in tasks if t.targets and not sla_feasible[t.name]
        ),
    )


def _interval_decisions(
    tasks: Sequence[TaskSnapshot], intervals: Mapping[str, float]
) -> list[str]:
    decisions = []
    for task in tasks:
        current = task.interval_s
        if current is None:
            continue
        new = intervals[task.name]
        if new > current * (1 + DECISION_CHANGE_FRACTION):
            decisions.append(DECISION_STRETCH)
        elif new < current * (1 - DECISION_CHANGE_FRACTION):
            decisions.append(DECISION_RESTORE)
    return decisions


def _key_decisions(
    memory: ControlMemory | None, infeasible: Sequence[str]
) -> list[str]:
    before = () if memory is None else memory.infeasible_keys
    turned = [DECISION_INFEASIBLE for key in infeasible if key not in before]
    recovered = [DECISION_FEASIBLE for key in before if key not in infeasible]
    return turned + recovered


# -- the pool --------------------------------------------------------------


def _backlog(tasks: Sequence[TaskSnapshot], capacity: float) -> float:
    """The busy workers that clear the runs already waiting within
    ``BACKLOG_DRAIN_S``: the intervals get the rest of the pool, at least
    half of it, so that a queue drains rather than lingers as lag."""
    waiting = sum(t.ready * t.duration_mean_s for t in tasks) / BACKLOG_DRAIN_S
    return min(waiting, capacity / 2)


def _bound_without_lag(task: TaskSnapshot) -> float:
    """The SLA-safe bound as it would be with no lag."""
    floor = max(task.min_interval_s, task.sla_s * MIN_INTERVAL_FRACTION)
    return max(task.sla_s - task.run_margin_s, floor)


def _concurrency(
    tasks: Sequence[TaskSnapshot], intervals: Mapping[str, float]
) -> float:
    """Busy workers *tasks* keep at *intervals*, by Little's law."""
    return sum(t.targets * t.duration_mean_s / intervals[t.name] for t in tasks)


def _fit_pool(
    tasks: Sequence[TaskSnapshot], bounds: Mapping[str, _Bounds], capacity: float
) -> dict[str, float]:
    """The intervals the pool at its most asks of every task.

    The pool is a budget every task draws on, a run costing its mean
    duration in worker-seconds: fitted like a key's, lowest priority
    first, so that demand the pool can never serve is not scheduled to
    queue. Polling more often than a full pool can run only adds lag,
    which shrinks the safe bounds, which asks for more polls. Like each
    key, it is solved on its own: more budget elsewhere never lengthens
    an interval here.
    """
    intervals = {t.name: bounds[t.name].unconstrained_s for t in tasks}
    loaded = [
        attrs.evolve(t, requests_per_run=t.duration_mean_s)
        for t in tasks
        if t.targets and t.duration_mean_s > 0
    ]
    if loaded and _demand(loaded, intervals) > capacity * BUDGET_UTILISATION:
        intervals.update(_fit_key(loaded, bounds, capacity))
    return intervals


def _pool_short_decisions(memory: ControlMemory | None, short: bool) -> list[str]:
    before = memory is not None and memory.pool_short
    if short and not before:
        return [DECISION_INFEASIBLE]
    if before and not short:
        return [DECISION_FEASIBLE]
    return []


def _plan_pool(
    snapshot: ControlSnapshot,
    tasks: Sequence[TaskSnapshot],
    intervals: Mapping[str, float],
) -> tuple[PoolPlan, float, list[str]]:
    """Size the pool by Little's law, then smooth: grow now, shrink slowly.

    Returns the plan, when the target last changed, and the decisions.
    """
    pool = snapshot.pool
    work = _concurrency(tasks, intervals)
    needed = work + sum(t.ready * t.duration_mean_s for t in tasks) / BACKLOG_DRAIN_S
    unbounded = math.ceil(needed * (1 + POOL_HEADROOM_FRACTION))
    wanted = _clamp(unbounded, pool.min_size, pool.max_size)
    limit = _saturation_limit(pool.samples)
    floor = max(pool.min_size, SATURATION_FLOOR)
    capped = wanted if limit is None else min(wanted, max(limit, floor))

    now = snapshot.now_s
    memory = snapshot.memory
    previous = pool.size if memory is None else memory.pool_target_size
    previous = _clamp(previous, pool.min_size, pool.max_size)
    changed_at = now if memory is None else memory.pool_changed_at_s
    decisions = [DECISION_POOL_SATURATED] if capped < wanted else []
    target = previous
    if capped > previous:
        target, changed_at = capped, now
        decisions.append(DECISION_POOL_GROW)
    elif capped < previous and now - changed_at >= POOL_SHRINK_HOLD_S:
        step = max(1, math.ceil(previous * POOL_SHRINK_STEP_FRACTION))
        target, changed_at = max(capped, previous - step), now
        decisions.append(DECISION_POOL_SHRINK)

    planned = PoolPlan(
        target_size=target,
        wanted_size=wanted,
        unbounded_size=unbounded,
        needed_concurrency=needed,
        saturation_limit=limit,
    )
    return planned, changed_at, decisions


def _clamp(value: int, low: int, high: int) -> int:
    return min(max(value, low), high)


def _saturation_limit(samples: Sequence[ConcurrencySample]) -> int | None:
    """The concurrency past which the samples showed no throughput to gain.

    Throughput at a concurrency is concurrency ÷ mean duration (Little's
    law), each level judged by its ``SAMPLES_PER_LEVEL`` latest samples.
    Walking up the concurrencies seen, a level becomes the best when it
    adds at least ``MIN_CONCURRENCY_YIELD`` of the throughput its extra
    workers would add at the best level's duration. If samples reach well
    beyond the best level without beating it, the best level is the limit.

    Saturation is throughput staying flat as concurrency grows. A level
    whose throughput falls below ``SATURATION_DROP_SHARE`` of the best's,
    and which was seen only after the best level last was, shows the
    upstream slowing down between the two (a load step): the walk starts
    again from that level, since what was seen below it no longer holds.
    Had the lower level been seen again since, fast as before, the drop is
    the concurrency's doing, and counts as saturation.
    """
    by_level: dict[int, list[float]] = {}
    first_seen: dict[int, int] = {}
    last_seen: dict[int, int] = {}
    for i, sample in enumerate(samples):
        level = sample.concurrency
        by_level.setdefault(level, []).append(sample.duration_mean_s)
        first_seen.setdefault(level, i)
        last_seen[level] = i
    levels = []
    for n in sorted(by_level):
        recent = by_level[n][-SAMPLES_PER_LEVEL:]
        levels.append((n, sum(recent) / len(recent)))
    if len(levels) < 2:
        return None

    best_n, best_d = levels[0]
    for n, d in levels[1:]:
        throughput, best_throughput = n / d, best_n / best_d
        stepped = (
            throughput < SATURATION_DROP_SHARE * best_throughput
            and last_seen[best_n] < first_seen[n]
        )
        gained = throughput - best_throughput
        promised = (n - best_n) / best_d
        if stepped or gained >= MIN_CONCURRENCY_YIELD * promised:
            best_n, best_d = n, d

    highest = levels[-1][0]
    if highest > best_n and highest >= best_n * (1 + SATURATION_SPAN_FRACTION):
        return best_n
    return None
