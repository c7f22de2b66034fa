"""The controller's values: the snapshot it reads and the plan it returns.

Frozen and validated at construction, so a bad figure fails where the
snapshot is built, not inside ``plan``. See ``slapoll._control`` for what
the controller does with them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from ._policy import TaskPolicy
from .errors import ConfigError

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
]

# Why a task will not keep its SLA under a plan.
CAUSE_MIN_INTERVAL = "min_interval"  # the server's minimum is above the bound
CAUSE_MARGINS = "margins"  # lag and duration margins leave no safe interval
CAUSE_BUDGET = "budget"  # stretched beyond its bound to fit a key's budget
CAUSE_WORKERS = "workers"  # stretched beyond its bound to fit the pool

DECISION_STRETCH = "stretch"
DECISION_RESTORE = "restore"
DECISION_INFEASIBLE = "infeasible"
DECISION_FEASIBLE = "feasible"
DECISION_POOL_GROW = "pool_grow"
DECISION_POOL_SHRINK = "pool_shrink"
DECISION_POOL_SATURATED = "pool_saturated"
DECISION_KINDS = (
    DECISION_STRETCH,
    DECISION_RESTORE,
    DECISION_INFEASIBLE,
    DECISION_FEASIBLE,
    DECISION_POOL_GROW,
    DECISION_POOL_SHRINK,
    DECISION_POOL_SATURATED,
)


def _number(what: str, value: object, low: float, *, strict: bool = False) -> None:
    """Raise unless *value* is a finite number above *low* (or equal, if not strict)."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if strict else value >= low)
    )
    if not ok:
        rule = f"a finite number {'>' if strict else '>='} {low:g}"
        raise ConfigError(f"{what} must be {rule}, got {value!r}")


def _whole(what: str, value: object, low: int | None) -> None:
    """Raise unless *value* is an integer (not below *low*, when given)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or (low is not None and value < low)
    ):
        rule = "an integer" if low is None else f"a whole number >= {low}"
        raise ConfigError(f"{what} must be {rule}, got {value!r}")


def _unique_keys(keys: Iterable[str]) -> tuple[str, ...]:
    # A key named twice would count the task's demand on it twice.
    return tuple(dict.fromkeys(keys))


# -- the snapshot ----------------------------------------------------------


@attrs.frozen
class TaskSnapshot:
    """One task as the controller sees it: promise, load and measured margins.

    All times in seconds. ``targets`` counts the targets being scheduled
    (paused ones excluded). Each run draws ``requests_per_run`` requests
    from every key in ``limit_keys``. ``lag_margin_s`` and
    ``duration_margin_s`` are high quantiles (p99) of what was measured
    lately; ``duration_mean_s``, the mean of the latest runs, feeds
    Little's law. ``min_interval_s`` is the
    shortest interval the server allows (``X-Poll-Interval``), 0 if none.
    ``timeout_s`` is the task's declared run timeout (``None``: none
    declared), the longest a failed attempt takes before its retry.
    ``interval_s`` is the interval in force, to tell a stretch from a
    restore; ``None`` before the first plan. ``ready`` counts the task's
    runs that are due and wait for a worker: the engine's backlog.
    """

    name: str
    sla_s: float
    targets: int = 1
    preferred_interval_s: float | None = None
    priority: int = 0
    limit_keys: tuple[str, ...] = attrs.field(default=(), converter=_unique_keys)
    requests_per_run: float = 1.0
    lag_margin_s: float = 0.0
    duration_margin_s: float = 0.0
    duration_mean_s: float = 0.0
    retries: int = 0
    retry_backoff_s: float = 0.0
    timeout_s: float | None = None
    min_interval_s: float = 0.0
    interval_s: float | None = None
    ready: int = 0

    def __attrs_post_init__(self) -> None:
        what = f"task {self.name!r}:"
        _number(f"{what} sla_s", self.sla_s, 0, strict=True)
        if self.preferred_interval_s is not None:
            _number(
                f"{what} preferred_interval_s",
                self.preferred_interval_s,
                0,
                strict=True,
            )
        _number(f"{what} requests_per_run", self.requests_per_run, 0, strict=True)
        if self.interval_s is not None:
            _number(f"{what} interval_s", self.interval_s, 0, strict=True)
        if self.timeout_s is not None:
            _number(f"{what} timeout_s", self.timeout_s, 0, strict=True)
        for field in (
            "lag_margin_s",
            "duration_margin_s",
            "duration_mean_s",
            "retry_backoff_s",
            "min_interval_s",
        ):
            _number(f"{what} {field}", getattr(self, field), 0)
        _whole(f"{what} targets", self.targets, 0)
        _whole(f"{what} retries", self.retries, 0)
        _whole(f"{what} ready", self.ready, 0)
        _whole(f"{what} priority", self.priority, None)
        for key in self.limit_keys:
            if not isinstance(key, str) or not key:
                raise ConfigError(
                    f"{what} limit keys must be non-empty strings, got {key!r}"
                )

    @classmethod
    def from_policy(
        cls,
        name: str,
        policy: TaskPolicy,
        *,
        targets: int,
        lag_margin_s: float = 0.0,
        duration_margin_s: float = 0.0,
        duration_mean_s: float = 0.0,
        min_interval_s: float = 0.0,
        interval_s: float | None = None,
        requests_per_run: float = 1.0,
        ready: int = 0,
    ) -> TaskSnapshot:
        """Take the declared part from *policy*, the measured part as given."""
        return cls(
            name=name,
            sla_s=policy.sla_s,
            targets=targets,
            preferred_interval_s=policy.every_s,
            priority=policy.priority,
            limit_keys=policy.limits,
            requests_per_run=requests_per_run,
            lag_margin_s=lag_margin_s,
            duration_margin_s=duration_margin_s,
            duration_mean_s=duration_mean_s,
            retries=policy.retries,
            retry_backoff_s=policy.retry_backoff_s,
            timeout_s=policy.timeout_s,
            min_interval_s=min_interval_s,
            interval_s=interval_s,
            ready=ready,
        )

    @property
    def margin_s(self) -> float:
        """What the SLA-safe bound keeps back from the SLA.

        Lag and duration margins, and room for one retry when retries are
        configured: a run that fails refreshes nothing, so the retry has to
        land inside the SLA too.
        """
        return self.lag_margin_s + self.run_margin_s

    @property
    def run_margin_s(self) -> float:
        """The part of ``margin_s`` that the runs themselves take.

        The duration margin, and a retry's room; lag left out. It may keep
        a preferred interval short of the SLA; lag may not (see
        ``slapoll._control._bounds``). The retry's room is the failed
        attempt, the backoff and the duration margin again; the failed
        attempt counts as the timeout when one is declared (a run that
        hangs fails no sooner), else as the duration margin.

        The retry's room is at most half of what the duration margin leaves
        of the SLA: at an interval of that half, the next scheduled run
        lands inside the SLA after a failed one, retry or not. Reserving
        more would poll more often than that, to protect nothing more (a
        timeout near the SLA would otherwise pull the interval to the
        floor).
        """
        margin = self.duration_margin_s
        if self.retries:
            failed = (
                self.duration_margin_s if self.timeout_s is None else self.timeout_s
            )
            enough = max(0.0, (self.sla_s - self.duration_margin_s) / 2)
            margin += min(failed + self.retry_backoff_s, enough)
        return margin


@attrs.frozen
class LimitSnapshot:
    """One limit key's budget in requests per second; ``None`` is unlimited.

    The budget is the declared one, or what the server's headers taught.
    """

    name: str
    budget_rps: float | None

    def __attrs_post_init__(self) -> None:
        if self.budget_rps is not None:
            _number(f"limit {self.name!r}: budget_rps", self.budget_rps, 0)


@attrs.frozen
class ConcurrencySample:
    """Runs in flight at once over a period, and their mean duration then."""

    concurrency: int
    duration_mean_s: float

    def __attrs_post_init__(self) -> None:
        _whole("a sample's concurrency", self.concurrency, 1)
        _number("a sample's duration_mean_s", self.duration_mean_s, 0, strict=True)


@attrs.frozen
class ControlMemory:
    """What the controller remembers from one plan to the next.

    The pool target the last plan chose, when (``now_s`` of that snapshot)
    the target last changed, the limit keys that were infeasible and
    whether the pool was too small for every SLA. Carry
    ``ControlPlan.memory`` into the next snapshot unchanged.
    """

    pool_target_size: int
    pool_changed_at_s: float
    infeasible_keys: tuple[str, ...] = ()
    pool_short: bool = False


@attrs.frozen
class PoolSnapshot:
    """The worker pool's bounds and size, and recent load samples.

    ``process_ceiling`` is the most workers one process should run, for the
    desired replica count; ``None`` means ``max_size``. ``samples`` are
    recent (concurrency, mean duration) pairs, oldest first, from which the
    controller tells whether more concurrency still buys throughput.
    """

    min_size: int
    max_size: int
    size: int
    process_ceiling: int | None = None
    samples: tuple[ConcurrencySample, ...] = ()

    def __attrs_post_init__(self) -> None:
        for field in ("min_size", "max_size", "size"):
            _whole(f"pool {field}", getattr(self, field), 1)
        if self.process_ceiling is not None:
            _whole("pool process_ceiling", self.process_ceiling, 1)
        if self.min_size > self.max_size:
            raise ConfigError(
                f"pool min_size ({self.min_size!r}) must not exceed max_size "
                f"({self.max_size!r})"
            )

    @property
    def ceiling(self) -> int:
        """The per-process ceiling in force."""
        return self.max_size if self.process_ceiling is None else self.process_ceiling


@attrs.frozen
class ControlSnapshot:
    """Everything ``plan`` looks at, taken at ``now_s`` (engine clock).

    Keys that tasks draw on but ``limits`` does not list are unlimited.
    ``memory`` is the previous plan's ``memory``; ``None`` for the first
    plan, which treats ``pool.size`` as just set and every key as feasible
    so far.
    """

    now_s: float
    tasks: tuple[TaskSnapshot, ...]
    pool: PoolSnapshot
    limits: tuple[LimitSnapshot, ...] = ()
    memory: ControlMemory | None = None

    def __attrs_post_init__(self) -> None:
        for kind, names in (
            ("task", [t.name for t in self.tasks]),
            ("limit", [k.name for k in self.limits]),
        ):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ConfigError(f"{kind} names must be unique, got {twice!r} twice")


# -- the plan --------------------------------------------------------------


@attrs.frozen
class TaskPlan:
    """The interval one task gets, against the bounds that framed it.

    ``unconstrained_interval_s`` is what it would get with room in every
    budget: its preferred interval, or its SLA-safe bound when it has none
    or the bound is shorter. ``sla_safe_interval_s`` is never below the
    floor (server minimum, or a share of the SLA); when it had to be raised
    to the floor, ``cause`` says the SLA cannot be kept at any budget.
    ``cause`` is ``None`` while the SLA holds, else ``"min_interval"``,
    ``"margins"``, ``"budget"`` or ``"workers"`` (the pool, at its most,
    cannot run every task at its SLA-safe bound).
    """

    name: str
    interval_s: float
    sla_safe_interval_s: float
    unconstrained_interval_s: float
    sla_feasible: bool
    cause: str | None

    @property
    def stretched(self) -> bool:
        """Whether a budget made the interval longer than it would be."""
        return self.interval_s > self.unconstrained_interval_s


@attrs.frozen
class KeyPlan:
    """One limit key: planned demand against its budget, in requests/s.

    ``demand_at_sla_rps`` is the demand with every task on the key at its
    SLA-safe bound; the key is feasible when that fits the budget, and
    ``deficit_rps`` is how far it does not (0 when feasible).
    ``violating`` names the tasks on the key that will miss their SLA.
    """

    name: str
    budget_rps: float | None
    demand_rps: float
    demand_at_sla_rps: float
    feasible: bool
    deficit_rps: float
    violating: tuple[str, ...]


@attrs.frozen
class PoolPlan:
    """The pool size to set, and the figures behind it.

    ``needed_concurrency`` is Little's law on the planned intervals, plus
    the workers that clear the runs already waiting within a few periods;
    ``unbounded_size`` adds headroom; ``wanted_size`` keeps that to the
    bounds; ``target_size``, what to set now, is ``wanted_size`` smoothed
    and held to the saturation limit. ``saturation_limit`` is the
    concurrency beyond which the samples showed no throughput gain, if they
    did.

    ``needed_concurrency`` is taken at the intervals the budgets allow;
    when the pool at its most, ``capacity`` (``max_size``), cannot keep
    that many workers busy, intervals are
    stretched until it can (less the workers that clear the runs already
    waiting). ``concurrency_at_sla`` is the busy workers every task at its
    SLA-safe bound would take, lag left out: when the pool is short, the
    lag is its own queue. The pool is short (``short``) when that exceeds
    the capacity, by ``workers_missing``.
    """

    target_size: int
    wanted_size: int
    unbounded_size: int
    needed_concurrency: float
    saturation_limit: int | None
    capacity: float = math.inf
    concurrency_at_sla: float = 0.0

    @property
    def short(self) -> bool:
        """Whether the pool at its most cannot keep every task's SLA."""
        return self.concurrency_at_sla > self.capacity

    @property
    def workers_missing(self) -> int:
        """The workers the pool lacks for every SLA (0 when it is not short)."""
        return math.ceil(self.concurrency_at_sla - self.capacity) if self.short else 0


@attrs.frozen
class ControlPlan:
    """What the engine should do until the next control period.

    ``tasks`` and ``keys`` are sorted by name. ``desired_replicas`` is the
    concurrency wanted (with headroom, before the pool bounds) divided by
    the per-process ceiling, at least 1. ``decisions`` lists one kind from
    ``DECISION_KINDS`` per change made, for a counter by kind: an interval
    stretched or restored, a key turned infeasible or feasible again, the
    pool grown, shrunk, or held back by saturation (that one every period
    it holds). ``memory`` goes into the next snapshot.
    """

    tasks: tuple[TaskPlan, ...]
    keys: tuple[KeyPlan, ...]
    pool: PoolPlan
    desired_replicas: int
    decisions: tuple[str, ...]
    memory: ControlMemory

    @property
    def feasible(self) -> bool:
        """Whether every key fits its budget and every task keeps its SLA."""
        return all(k.feasible for k in self.keys) and all(
            t.sla_feasible for t in self.tasks
        )

    def task(self, name: str) -> TaskPlan:
        """The plan of task *name*; raises ``KeyError`` for an unknown one."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"the plan has no task {name!r}")

    def key(self, name: str) -> KeyPlan:
        """The plan of limit key *name*; raises ``KeyError`` for an unknown one."""
        for key in self.keys:
            if key.name == name:
                return key
        raise KeyError(f"the plan has no limit key {name!r}")

    def intervals(self) -> dict[str, float]:
        """Every task's planned interval, by task name."""
        return {task.name: task.interval_s for task in self.tasks}
