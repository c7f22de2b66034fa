"""Steering: what the controller sees of the engine, and its plan applied.

Once per control period the engine calls ``Steering.step``: it builds a
``ControlSnapshot`` from the tasks' measurements, the pool and the rate
budgets, asks the pure controller for a plan, and applies it: every task's
interval and the pool size. Nothing is restarted; new intervals take effect
at each target's next due time.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterable, Mapping

from ._control import (
    ConcurrencySample,
    ControlMemory,
    ControlPlan,
    ControlSnapshot,
    LimitSnapshot,
    PoolSnapshot,
    TaskSnapshot,
    plan,
)
from ._dispatch import Dispatcher
from ._task import MARGIN_QUANTILE, Task

__all__ = ["Steering"]

logger = logging.getLogger("slapoll.control")

# Before a task's first successful run nothing is measured; a task without a
# preferred interval assumes runs may take half the SLA, so it starts at
# twice per SLA rather than at the SLA itself.
UNMEASURED_DURATION_FRACTION = 0.5
# Periods of (concurrency, duration) kept for telling whether more workers
# still bring more throughput: a minute at the default period.
CONCURRENCY_SAMPLES = 60


class Steering:
    """Carries the controller's memory between periods and applies plans."""

    def __init__(self) -> None:
        self.plan: ControlPlan | None = None
        self.decisions: Counter[str] = Counter()
        self._memory: ControlMemory | None = None
        self._samples: deque[ConcurrencySample] = deque(maxlen=CONCURRENCY_SAMPLES)
        self._last_busy_s = 0.0
        self._last_runs = 0
        self._last_now: float | None = None

    def step(
        self,
        now: float,
        tasks: Iterable[Task],
        dispatch: Dispatcher,
        budgets: Mapping[str, float | None],
    ) -> ControlPlan:
        """Plan from what was measured up to *now* and apply the plan.

        *budgets* maps limit keys to requests per second (``None``:
        unlimited), declared or learned from the server.
        """
        tasks = list(tasks)
        self._sample(now, dispatch)
        ready = dispatch.ready_by_task()
        snapshot = ControlSnapshot(
            now_s=now,
            tasks=tuple(_task_snapshot(task, ready[task.name]) for task in tasks),
            pool=PoolSnapshot(
                min_size=dispatch.min_workers,
                max_size=dispatch.max_workers,
                size=dispatch.pool_size,
                samples=tuple(self._samples),
            ),
            limits=tuple(LimitSnapshot(k, b) for k, b in sorted(budgets.items())),
            memory=self._memory,
        )
        new = plan(snapshot)

        for task, task_plan in zip(
            sorted(tasks, key=lambda t: t.name), new.tasks, strict=True
        ):
            task.interval_s = task_plan.interval_s
            task.sla_safe_interval_s = task_plan.sla_safe_interval_s
        if new.pool.target_size != dispatch.pool_size:
            logger.info(
                "pool resized from %d to %d workers (%.1f needed by Little's law)",
                dispatch.pool_size,
                new.pool.target_size,
                new.pool.needed_concurrency,
            )
            dispatch.set_pool_size(new.pool.target_size)
        self._report_keys(new)
        self.decisions.update(new.decisions)
        self._memory = new.memory
        self.plan = new
        return new

    def _sample(self, now: float, dispatch: Dispatcher) -> None:
        # Mean concurrency over the period is worker-seconds spent running
        # divided by its length; mean duration is the same over runs ended.
        busy_s, runs = dispatch.busy_s_total, dispatch.runs_ended
        if (
            self._last_now is not None
            and now > self._last_now
            and runs > self._last_runs
        ):
            spent = busy_s - self._last_busy_s
            concurrency = round(spent / (now - self._last_now))
            if concurrency >= 1:
                self._samples.append(
                    ConcurrencySample(
                        concurrency=concurrency,
                        duration_mean_s=spent / (runs - self._last_runs),
                    )
                )
        self._last_now, self._last_busy_s, self._last_runs = now, busy_s, runs

    def _report_keys(self, new: ControlPlan) -> None:
        was_infeasible = set(self._memory.infeasible_keys if self._memory else ())
        for key in new.keys:
            if not key.feasible and key.name not in was_infeasible:
                logger.info(
                    "limit key %r cannot carry every SLA: demand %.2f req/s at "
                    "SLA-safe intervals against a budget of %.2f req/s, %.2f "
                    "req/s missing; tasks that will violate: %s",
                    key.name,
                    key.demand_at_sla_rps,
                    key.budget_rps or 0.0,
                    key.deficit_rps,
                    ", ".join(key.violating) or "none",
                )
            elif key.feasible and key.name in was_infeasible:
                logger.info("limit key %r can carry every SLA again", key.name)
        pool = new.pool
        was_short = self._memory is not None and self._memory.pool_short
        if pool.short and not was_short:
            logger.info(
                "the pool cannot carry every SLA: %.1f busy workers at SLA-safe "
                "intervals against %d at most, %d workers missing; low "
                "priorities are stretched to fit",
                pool.concurrency_at_sla,
                pool.capacity,
                pool.workers_missing,
            )
        elif was_short and not pool.short:
            logger.info("the pool can carry every SLA again")


def _task_snapshot(task: Task, ready: int) -> TaskSnapshot:
    policy = task.policy
    # The margin is taken over successful runs, which are what freshness
    # waits for; the pool's demand over all runs, which all hold a worker.
    if len(task.success_duration):
        duration_margin = task.success_duration.quantile(MARGIN_QUANTILE)
    elif policy.every_s is None:
        duration_margin = policy.sla_s * UNMEASURED_DURATION_FRACTION
    else:
        duration_margin = 0.0  # the declared interval stands until measured
    measured = len(task.duration) > 0
    # Little's law follows the latest runs, so a load step shows within
    # seconds; 0 until runs show what they cost.
    duration_mean = task.duration.recent_mean()
    return TaskSnapshot.from_policy(
        task.name,
        policy,
        targets=task.active_targets(),
        lag_margin_s=task.lag.quantile(MARGIN_QUANTILE) if measured else 0.0,
        duration_margin_s=duration_margin,
        duration_mean_s=duration_mean,
        min_interval_s=task.min_interval_s,
        interval_s=task.interval_s,
        ready=ready,
    )
