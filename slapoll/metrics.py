"""Prometheus metrics: what the engine measured, as ``slapoll_*`` series.

One collector reads, at scrape time, the counts the engine keeps anyway (runs
by outcome, lag and duration buckets) and the statistics snapshot of the
last control period. Nothing is incremented per run on prometheus-client's
objects, so measurement costs the hot path a bisection and two increments.

Labels are bounded: task and outcome only, never a target key (there may be
a million targets; per-target detail is in ``Engine.target_statistics``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ._control import DECISION_KINDS, ControlPlan
from ._http import collect as collect_key_series
from ._measure import BucketCounts
from ._ratelimit import KeyStatistics
from ._stats import EngineStatistics

__all__ = ["EngineMetrics", "MeasuredTask"]


class SteeringState(Protocol):
    """What the collector reads of the controller."""

    @property
    def plan(self) -> ControlPlan | None: ...

    @property
    def decisions(self) -> Mapping[str, int]: ...


class MeasuredTask(Protocol):
    """What the collector reads of a task while the engine runs."""

    @property
    def runs(self) -> Mapping[str, int]: ...

    @property
    def lag_buckets(self) -> BucketCounts: ...

    @property
    def duration_buckets(self) -> BucketCounts: ...


# (name, help, field of TaskStatistics) of the per-task gauges.
_TASK_GAUGES = (
    ("slapoll_targets", "Targets of the task.", "targets"),
    ("slapoll_targets_paused", "Targets paused.", "paused"),
    (
        "slapoll_targets_violating",
        "Targets whose staleness exceeds the SLA.",
        "violating",
    ),
    (
        "slapoll_staleness_worst_seconds",
        "Largest staleness among the task's targets.",
        "worst_staleness_s",
    ),
    (
        "slapoll_staleness_p90_seconds",
        "90th percentile of the task's target staleness.",
        "staleness_p90_s",
    ),
    ("slapoll_sla_seconds", "The task's freshness bound.", "sla_s"),
    ("slapoll_interval_seconds", "The polling interval in force.", "interval_s"),
)
# (name without _total, help, field) of the per-task counters.
_TASK_COUNTERS = (
    (
        "slapoll_sla_observed_seconds",
        "Target-seconds observed (not paused); the attainment denominator.",
        "observed_s",
    ),
    (
        "slapoll_sla_met_seconds",
        "Target-seconds spent within the SLA; the attainment numerator.",
        "within_sla_s",
    ),
    (
        "slapoll_due_missed",
        "Due times that passed without a run of their own (coalesced).",
        "missed",
    ),
)


class EngineMetrics(Collector):
    """Every ``slapoll_*`` series of one engine, registered in *registry*.

    *tasks* returns the engine's tasks by name; ``update`` hands over the
    latest statistics snapshot. Scrapes run on the metrics server's thread
    and only read.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        tasks: Callable[[], Mapping[str, MeasuredTask]],
    ) -> None:
        self.registry = registry
        self._tasks = tasks
        self._stats: EngineStatistics | None = None
        self._keys: tuple[KeyStatistics, ...] = ()
        self._plan: ControlPlan | None = None
        self._decisions: dict[str, int] = {}
        registry.register(self)

    def update(
        self,
        stats: EngineStatistics,
        steering: SteeringState,
        keys: tuple[KeyStatistics, ...] = (),
    ) -> None:
        """Publish a statistics snapshot, the controller's latest plan and
        the limit keys' budgets."""
        self._stats = stats
        self._keys = keys
        self._plan = steering.plan
        self._decisions = dict(steering.decisions)

    def collect(self) -> Iterator[Metric]:
        tasks = dict(self._tasks())
        yield from self._run_series(tasks)
        stats = self._stats
        if stats is not None:
            yield from self._snapshot_series(stats)
        if self._plan is not None:
            yield from _plan_series(self._plan, self._decisions)
        yield from collect_key_series(self._keys)

    def _run_series(self, tasks: Mapping[str, MeasuredTask]) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "slapoll_runs",
            "Runs by outcome; skipped counts due times dropped by the overlap policy.",
            labels=["task", "outcome"],
        )
        lag = HistogramMetricFamily(
            "slapoll_run_lag_seconds",
            "Start of a run minus its due time.",
            labels=["task"],
        )
        duration = HistogramMetricFamily(
            "slapoll_run_duration_seconds",
            "End minus start of a run.",
            labels=["task"],
        )
        for name, task in tasks.items():
            for outcome, count in list(task.runs.items()):
                runs.add_metric([name, outcome], count)
            _add_histogram(lag, name, task.lag_buckets)
            _add_histogram(duration, name, task.duration_buckets)
        yield runs
        yield lag
        yield duration

    def _snapshot_series(self, stats: EngineStatistics) -> Iterator[Metric]:
        for name, doc, field in _TASK_GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=["task"])
            for task in stats.tasks.values():
                gauge.add_metric([task.name], float(getattr(task, field)))
            yield gauge
        for name, doc, field in _TASK_COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=["task"])
            for task in stats.tasks.values():
                counter.add_metric([task.name], float(getattr(task, field)))
            yield counter
        yield GaugeMetricFamily(
            "slapoll_pool_size", "Workers in the pool.", value=stats.pool_size
        )
        yield GaugeMetricFamily(
            "slapoll_pool_busy", "Workers running a run.", value=stats.busy_workers
        )
        yield GaugeMetricFamily(
            "slapoll_ready_runs",
            "Runs that are due and wait for a worker.",
            value=stats.ready,
        )
        yield GaugeMetricFamily(
            "slapoll_snapshot_timestamp_seconds",
            "Unix time of the statistics these series come from; refreshed "
            "every control period, so an old value means a stalled engine.",
            value=stats.taken_at_unix_s,
        )
        yield CounterMetricFamily(
            "slapoll_clock_jumps",
            "Times the wall clock moved against the monotonic clock by more "
            "than a second; schedules do not follow it.",
            value=stats.clock_jumps,
        )


def _add_histogram(family: HistogramMetricFamily, task: str, b: BucketCounts) -> None:
    cumulative = b.cumulative()
    buckets = [
        (_le(bound), float(n)) for bound, n in zip(b.bounds, cumulative, strict=False)
    ]
    buckets.append(("+Inf", float(cumulative[-1])))
    family.add_metric([task], buckets, sum_value=b.total)


def _le(bound: float) -> str:
    return repr(float(bound))


def _plan_series(plan: ControlPlan, decisions: Mapping[str, int]) -> Iterator[Metric]:
    preferred = GaugeMetricFamily(
        "slapoll_interval_preferred_seconds",
        "The interval the task would get with unlimited budget: its preferred "
        "one, or its SLA-safe bound when it has none.",
        labels=["task"],
    )
    safe = GaugeMetricFamily(
        "slapoll_interval_safe_seconds",
        "The longest interval that keeps the SLA given measured lag and "
        "duration margins.",
        labels=["task"],
    )
    for task in plan.tasks:
        preferred.add_metric([task.name], task.unconstrained_interval_s)
        safe.add_metric([task.name], task.sla_safe_interval_s)
    yield preferred
    yield safe

    feasible = GaugeMetricFamily(
        "slapoll_plan_feasible",
        "1 when the key's budget carries every SLA, 0 when it cannot.",
        labels=["key"],
    )
    deficit = GaugeMetricFamily(
        "slapoll_plan_deficit_requests_per_second",
        "Requests per second the key's budget lacks to keep every SLA.",
        labels=["key"],
    )
    for key in plan.keys:
        feasible.add_metric([key.name], float(key.feasible))
        deficit.add_metric([key.name], key.deficit_rps)
    yield feasible
    yield deficit

    yield GaugeMetricFamily(
        "slapoll_pool_target",
        "The pool size the controller chose (Little's law plus headroom).",
        value=plan.pool.target_size,
    )
    yield GaugeMetricFamily(
        "slapoll_pool_workers_missing",
        "Workers the pool at max_workers lacks to keep every SLA (0 when it "
        "can); meanwhile low priorities are stretched to fit.",
        value=plan.pool.workers_missing,
    )
    yield GaugeMetricFamily(
        "slapoll_desired_replicas",
        "Processes needed at the per-process worker ceiling, for an autoscaler.",
        value=plan.desired_replicas,
    )
    counted = CounterMetricFamily(
        "slapoll_control_decisions",
        "Controller decisions by kind (stretch, restore, infeasible, pool_grow...).",
        labels=["kind"],
    )
    # Every kind from the start, at 0 until it happens: a counter that
    # appears only on its first increment hides that first increase.
    for kind in sorted(set(DECISION_KINDS) | set(decisions)):
        counted.add_metric([kind], decisions.get(kind, 0))
    yield counted
