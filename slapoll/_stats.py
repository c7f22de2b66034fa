"""Frozen snapshots of what the engine measured, for tests, CLI and control."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

__all__ = ["EngineStatistics", "TargetStatistics", "TaskStatistics"]


@attrs.frozen
class TargetStatistics:
    """One target's state at ``now_s`` (engine clock, seconds).

    ``within_sla`` is staleness within the SLA, and true while the target
    is paused: a paused target is not held to its SLA, nor counted in its
    task's ``violating``.
    """

    task: str
    key: str
    paused: bool
    running: int
    next_due_s: float | None
    last_success_start_s: float | None
    staleness_s: float
    within_sla: bool
    observed_s: float
    within_sla_s: float
    runs: int
    failures_in_a_row: int


@attrs.frozen
class TaskStatistics:
    """One task's aggregate at a moment; lag and duration over recent runs."""

    name: str
    sla_s: float
    interval_s: float
    priority: int
    targets: int
    paused: int
    violating: int
    worst_staleness_s: float
    staleness_p90_s: float
    lag_mean_s: float
    lag_p99_s: float
    duration_mean_s: float
    duration_p99_s: float
    runs: Mapping[str, int]
    missed: int
    observed_s: float
    within_sla_s: float

    @property
    def attainment(self) -> float:
        """Share of observed target-seconds spent within the SLA (1 if none)."""
        return self.within_sla_s / self.observed_s if self.observed_s else 1.0


@attrs.frozen
class EngineStatistics:
    """The whole engine at ``now_s`` (engine clock, seconds)."""

    now_s: float
    pool_size: int
    busy_workers: int
    ready: int
    tasks: Mapping[str, TaskStatistics]
    clock_jumps: int
    # When the snapshot was taken, by the wall clock: a metrics scrape can
    # tell a fresh snapshot from one a blocked event loop left behind.
    taken_at_unix_s: float = 0.0

    @property
    def runs_total(self) -> int:
        """Runs that ended, over all tasks and outcomes except skipped."""
        return sum(
            n
            for task in self.tasks.values()
            for outcome, n in task.runs.items()
            if outcome != "skipped"
        )
