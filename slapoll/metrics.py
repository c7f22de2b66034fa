"""Prometheus metrics: what the engine measured, in ``slapoll_*`` series.

Labels are bounded: task and outcome only, never a target key (there may be
a million targets; per-target detail is in ``Engine.target_statistics``).
Per-run observations go through children bound once per task, because a
``.labels()`` lookup costs several times an increment. Everything else is
read from the engine's statistics snapshot once per control period.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ._policy import Outcome
from ._stats import EngineStatistics

__all__ = ["EngineMetrics", "TaskMetrics"]

# Lag is usually milliseconds and grows to minutes under overload.
LAG_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
# Polls of an HTTP API take tens of milliseconds to tens of seconds.
DURATION_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip


class TaskMetrics:
    """The per-run series of one task, with children bound once."""

    __slots__ = ("_duration", "_lag", "_runs")

    def __init__(self, metrics: EngineMetrics, task: str) -> None:
        self._runs = {o: metrics.runs.labels(task, o.value) for o in Outcome}
        self._lag = metrics.lag.labels(task)
        self._duration = metrics.duration.labels(task)

    def observe_run(self, outcome: Outcome, lag_s: float, duration_s: float) -> None:
        """Count one run that started (lag) and ended (duration)."""
        self._runs[outcome].inc()
        self._lag.observe(lag_s)
        self._duration.observe(duration_s)

    def observe_skip(self) -> None:
        """Count a due time that did not run because the target was busy."""
        self._runs[Outcome.SKIPPED].inc()


class EngineMetrics:
    """Every ``slapoll_*`` series of one engine, in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.runs = Counter(
            "slapoll_runs",
            "Runs by outcome; skipped counts due times dropped by the overlap policy.",
            ["task", "outcome"],
            registry=registry,
        )
        self.lag = Histogram(
            "slapoll_run_lag_seconds",
            "Start of a run minus its due time.",
            ["task"],
            buckets=LAG_BUCKETS_S,
            registry=registry,
        )
        self.duration = Histogram(
            "slapoll_run_duration_seconds",
            "End minus start of a run.",
            ["task"],
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.missed = Counter(
            "slapoll_due_missed",
            "Due times that passed without a run of their own (coalesced).",
            ["task"],
            registry=registry,
        )

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["task"], registry=registry)

        self.targets = gauge("slapoll_targets", "Targets of the task.")
        self.paused = gauge("slapoll_targets_paused", "Targets paused.")
        self.violating = gauge(
            "slapoll_targets_violating", "Targets whose staleness exceeds the SLA."
        )
        self.staleness_worst = gauge(
            "slapoll_staleness_worst_seconds", "Largest staleness among targets."
        )
        self.staleness_p90 = gauge(
            "slapoll_staleness_p90_seconds", "90th percentile of target staleness."
        )
        self.sla = gauge("slapoll_sla_seconds", "The task's freshness bound.")
        self.interval = gauge(
            "slapoll_interval_seconds", "The polling interval in force."
        )
        self.observed = Counter(
            "slapoll_sla_observed_seconds",
            "Target-seconds observed (not paused); the attainment denominator.",
            ["task"],
            registry=registry,
        )
        self.met = Counter(
            "slapoll_sla_met_seconds",
            "Target-seconds spent within the SLA; the attainment numerator.",
            ["task"],
            registry=registry,
        )
        self.pool_size = Gauge(
            "slapoll_pool_size", "Workers in the pool.", registry=registry
        )
        self.pool_busy = Gauge(
            "slapoll_pool_busy", "Workers running a run.", registry=registry
        )
        self.ready = Gauge(
            "slapoll_ready_runs",
            "Runs that are due and wait for a worker.",
            registry=registry,
        )
        self.clock_jumps = Counter(
            "slapoll_clock_jumps",
            "Times the wall clock moved against the monotonic clock by more "
            "than a second; schedules do not follow it.",
            registry=registry,
        )
        # Counters are fed from cumulative totals in the snapshots.
        self._seen: dict[tuple[str, str], float] = {}
        self._bound: dict[str, tuple[Any, ...]] = {}

    def bind_task(self, task: str) -> TaskMetrics:
        """Return the per-run series of *task*."""
        return TaskMetrics(self, task)

    def update(self, stats: EngineStatistics) -> None:
        """Publish a statistics snapshot."""
        self.pool_size.set(stats.pool_size)
        self.pool_busy.set(stats.busy_workers)
        self.ready.set(stats.ready)
        self._add(("", "clock_jumps"), stats.clock_jumps, self.clock_jumps)
        for name, task in stats.tasks.items():
            bound = self._bound.get(name)
            if bound is None:
                bound = self._bound[name] = self._bind_snapshot_series(name)
            (targets, paused, violating, worst, p90, sla, interval,
             observed, met, missed) = bound  # fmt: skip
            targets.set(task.targets)
            paused.set(task.paused)
            violating.set(task.violating)
            worst.set(task.worst_staleness_s)
            p90.set(task.staleness_p90_s)
            sla.set(task.sla_s)
            interval.set(task.interval_s)
            self._add((name, "observed"), task.observed_s, observed)
            self._add((name, "met"), task.within_sla_s, met)
            self._add((name, "missed"), task.missed, missed)

    def _bind_snapshot_series(self, task: str) -> tuple[Any, ...]:
        return tuple(
            metric.labels(task)
            for metric in (
                self.targets,
                self.paused,
                self.violating,
                self.staleness_worst,
                self.staleness_p90,
                self.sla,
                self.interval,
                self.observed,
                self.met,
                self.missed,
            )
        )

    def _add(self, key: tuple[str, str], total: float, counter: Any) -> None:
        # A counter only goes up; totals can only go up too, so the
        # difference since the last snapshot is what happened meanwhile.
        seen = self._seen.get(key, 0.0)
        if total > seen:
            counter.inc(total - seen)
            self._seen[key] = total
