"""Tasks and their targets: the per-target state the engine schedules.

``Task`` is what ``@engine.task`` returns: the user's function, its policy
and its targets. ``TargetState`` is the engine's mutable record of one
target; it never leaves the engine (snapshots do).
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import trio

from ._measure import (
    DEFAULT_WINDOW,
    DURATION_BUCKETS_S,
    LAG_BUCKETS_S,
    BucketCounts,
    SlaAccount,
    quantile,
)
from ._policy import Outcome, TaskPolicy, template_arguments, template_fields
from .errors import ConfigError, UnknownTargetError, UsageError

if TYPE_CHECKING:
    from ._engine import Engine
    from ._http import TargetHttp

__all__ = [
    "DEFAULT_TARGET_KEY",
    "RecentWindow",
    "RunContext",
    "TargetState",
    "Task",
    "TaskFunction",
]

TaskFunction = Callable[..., Awaitable[object]]

# The key of the one target of a task whose function takes no arguments.
DEFAULT_TARGET_KEY = "default"

# Before anything was measured, an SLA-driven task runs twice per SLA.
_UNMEASURED_INTERVAL_FRACTION = 0.5
# Margins are taken at this quantile of recent lag and duration.
MARGIN_QUANTILE = 0.99
# Margins are taken over the runs that ended in this long: long enough for
# a p99 over hundreds of runs at ordinary rates, short enough that a
# transient (a load step, a budget cut and the queue it left) stops
# shaping the plan half a minute after it ended. A count of runs would
# keep it for as long as the task takes to run that many times: minutes
# for a task that runs rarely.
MARGIN_WINDOW_S = 30.0
# A task that runs less often than that keeps its latest few runs, so it
# still has margins to plan with; they refresh with each run.
MIN_WINDOW_SAMPLES = 8
# The duration margin, a p99, is read from at least this many runs.
MIN_MARGIN_SAMPLES = 128
# Little's law takes the mean duration of the latest runs: enough for a
# steady mean, few enough that a load step shows within seconds.
RECENT_RUNS = 64


class RecentWindow:
    """Samples of the last ``MARGIN_WINDOW_S`` (engine clock), with quantiles.

    At most *size* samples are kept, and at least *min_samples* whatever
    their age. Samples are stamped with the trio clock; outside a
    trio run (a task used directly) they count as just taken.
    """

    __slots__ = ("_samples", "min_samples", "window_s")

    def __init__(
        self,
        size: int = DEFAULT_WINDOW,
        window_s: float = MARGIN_WINDOW_S,
        min_samples: int = MIN_WINDOW_SAMPLES,
    ) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=size)
        self.window_s = window_s
        self.min_samples = min_samples

    def add(self, value: float, now: float | None = None) -> None:
        """Record one sample taken at *now* (default: the current time).

        Old samples are dropped when the window is read, not here: this is
        on every run's path, and ``maxlen`` bounds the memory anyway.
        """
        self._samples.append((_now() if now is None else now, value))

    def _expire(self, now: float | None = None) -> None:
        samples = self._samples
        least = self.min_samples
        if len(samples) <= least:
            return
        oldest = (_now() if now is None else now) - self.window_s
        while len(samples) > least and samples[0][0] < oldest:
            samples.popleft()

    def values(self) -> list[float]:
        """The samples in the window, oldest first."""
        self._expire()
        return [value for _, value in self._samples]

    def mean(self) -> float:
        """Mean of the samples in the window (0 when empty)."""
        values = self.values()
        return sum(values) / len(values) if values else 0.0

    def recent_mean(self, count: int = RECENT_RUNS) -> float:
        """Mean of the latest *count* samples in the window (0 when empty)."""
        values = self.values()[-count:]
        return sum(values) / len(values) if values else 0.0

    def quantile(self, q: float) -> float:
        """The *q* quantile of the samples in the window (0 when empty)."""
        return quantile(sorted(self.values()), q)

    def __len__(self) -> int:
        return len(self._samples)


def _now() -> float:
    try:
        return trio.current_time()
    except RuntimeError:
        return float("inf")  # outside a run: nothing counts as old


class RunContext:
    """What a run receives as its first argument.

    ``due_s`` and ``deadline_s`` are on the engine's clock
    (``trio.current_time()``); the run is cancelled at ``deadline_s``.
    ``attempt`` is 0 for a scheduled run and counts up for retries.
    ``http`` is the engine's HTTP client for this run: every request draws
    from the task's limit keys and is bounded by the deadline.
    """

    __slots__ = ("_http", "_http_for", "_state", "attempt", "deadline_s", "due_s")

    def __init__(
        self,
        state: TargetState,
        due_s: float,
        attempt: int,
        deadline_s: float,
        http_for: Callable[[TargetState, float], TargetHttp] | None,
    ) -> None:
        self._state = state
        self.due_s = due_s
        self.attempt = attempt
        self.deadline_s = deadline_s
        self._http_for = http_for
        self._http: TargetHttp | None = None

    @property
    def task(self) -> str:
        """The task's name."""
        return self._state.task.name

    @property
    def key(self) -> str:
        """The target's key."""
        return self._state.key

    @property
    def http(self) -> TargetHttp:
        """The HTTP client of this run (made on first use)."""
        if self._http is None:
            if self._http_for is None:
                raise UsageError("ctx.http exists only in runs of a running engine")
            self._http = self._http_for(self._state, self.deadline_s)
        return self._http

    @property
    def budget_wait_s(self) -> float:
        """Seconds this run's requests waited for rate budget or a
        connection (0 if it made none)."""
        return 0.0 if self._http is None else self._http.wait_s

    def __repr__(self) -> str:
        return (
            f"RunContext(task={self.task!r}, key={self.key!r}, "
            f"due_s={self.due_s!r}, attempt={self.attempt!r})"
        )


class TargetState:
    """The engine's mutable record of one target; see ``TargetStatistics``."""

    __slots__ = (
        "account",
        "args",
        "deadlines",
        "failures",
        "generation",
        "interval_s",
        "key",
        "last_success_start",
        "min_interval_s",
        "next_due",
        "paused",
        "pending",
        "phase",
        "queued",
        "removed",
        "runs",
        "task",
    )

    def __init__(
        self,
        task: Task,
        key: str,
        args: Mapping[str, object],
        now: float,
        phase: float | None,
    ) -> None:
        self.task = task
        self.key = key
        self.args = dict(args)
        self.phase = phase
        self.paused = False
        self.removed = False
        self.queued = False
        # Deadlines of the runs in flight; a run past its deadline is being
        # cancelled and no longer blocks the next one.
        self.deadlines: list[float] = []
        # A due time held back by the overlap policy: (due, attempt).
        self.pending: tuple[float, int] | None = None
        self.next_due: float | None = None
        # The interval the pending due time was laid with; see
        # Dispatcher.retime.
        self.interval_s = task.interval_s
        # The least interval the server asks of this target
        # (X-Poll-Interval): it runs no more often, whatever its task's.
        self.min_interval_s = 0.0
        # Timer entries of an older generation are stale and ignored.
        self.generation = 0
        self.account = SlaAccount(now)
        self.runs = 0
        self.failures = 0
        self.last_success_start: float | None = None

    def phase_fraction(self, interval_s: float) -> float:
        """Where in an interval of *interval_s* this target's due times fall."""
        fixed = self.task.policy.phase_s
        if fixed is not None:
            return (fixed % interval_s) / interval_s
        assert self.phase is not None, "phases are set when the engine starts"
        return self.phase

    def active_runs(self, now: float) -> int:
        """Runs in flight that are not yet past their deadline."""
        return sum(1 for d in self.deadlines if d > now)

    def sla_deadline(self) -> float:
        """When staleness will exceed the SLA unless a run succeeds first."""
        return self.account.ref + self.task.policy.sla_s


class Task:
    """A declared kind of work: an async function, its policy, its targets.

    Returned by ``Engine.task``. Targets can be added, removed, paused and
    resumed at any time, before or while the engine runs; changes take
    effect at once and are written to the engine's store.
    """

    def __init__(
        self, engine: Engine, name: str, fn: TaskFunction, policy: TaskPolicy
    ) -> None:
        self.engine = engine
        self.name = name
        self.fn = fn
        self.policy = policy
        self.targets: dict[str, TargetState] = {}
        # Removed targets whose run is still going, by key: one added again
        # under the key must not overlap that run (see Engine._add_target).
        self.leaving: dict[str, TargetState] = {}
        self._signature = _TargetSignature.of(name, fn)
        self.takes_arguments = self._signature.takes_arguments
        self.check_limits(policy.limits)
        self.lag = RecentWindow()
        self.duration = RecentWindow()
        # Durations of successful runs only: those are what freshness waits
        # for, so the SLA-safe bound keeps room for them (a timed-out run
        # refreshes nothing and must not shrink the interval). Their p99
        # is the duration margin: it keeps at least a hundred or so runs,
        # whatever their age, as fewer make a p99 the largest of a handful
        # (of eight runs of 1 to 10 s, often 6 s or less: the SLA lost).
        self.success_duration = RecentWindow(min_samples=MIN_MARGIN_SAMPLES)
        self.lag_buckets = BucketCounts(LAG_BUCKETS_S)
        self.duration_buckets = BucketCounts(DURATION_BUCKETS_S)
        self.runs = {outcome.value: 0 for outcome in Outcome}
        self.missed = 0
        self.observed_s = 0.0
        self.within_s = 0.0
        self.interval_s = self._initial_interval()
        # Set by the controller each period: the longest interval that keeps
        # the SLA given measured margins, and the server's minimum.
        self.sla_safe_interval_s = self.interval_s
        self.min_interval_s = 0.0
        # The interval the dispatcher last moved due times onto.
        self.retimed_interval_s = self.interval_s

    def __repr__(self) -> str:
        return f"<Task {self.name!r} sla={self.policy.sla_s}s targets={len(self)}>"

    def __len__(self) -> int:
        return len(self.targets)

    def __iter__(self) -> Iterator[str]:
        return iter(self.targets)

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[object]:
        """Call the task's function directly, outside the engine."""
        return self.fn(*args, **kwargs)

    # -- declaring ---------------------------------------------------------

    def configure(self, **options: Any) -> None:
        """Override decorator options (same spelling), e.g. from config.

        Raises ``ConfigError`` naming a bad option, or a limit key template
        that the function or a target cannot fill; allowed only before the
        engine runs.
        """
        if self.engine.running:
            raise UsageError(
                f"task {self.name!r} cannot be reconfigured while the engine "
                "runs; configure it before Engine.run()"
            )
        policy = self.policy.with_options(**options)
        self.check_limits(policy.limits)
        self.policy = policy
        self.interval_s = self.retimed_interval_s = self._initial_interval()

    def check_limits(self, limits: Iterable[str]) -> None:
        """Raise ``ConfigError`` unless every target can fill every template.

        A template in *limits* must name only arguments the function takes
        (any, with ``**kwargs``), and the targets added so far must have
        them all: a key that cannot be filled fails every run.
        """
        for template in limits:
            self._signature.check_template(template)
            for key, state in self.targets.items():
                template_arguments(template, state.args, task=self.name, target=key)

    # -- targets -----------------------------------------------------------

    def add_target(self, key: str, /, **args: object) -> None:
        """Add a target (or replace the arguments of an existing one).

        *args* are passed to the task's function as keyword arguments; they
        may hold credentials and are never logged or exported. Raises
        ``ConfigError`` unless they fit the function and hold every argument
        the task's limit key templates name.
        """
        if not isinstance(key, str) or not key:
            raise ConfigError(f"a target key must be a non-empty string, got {key!r}")
        self._signature.check(args)
        for template in self.policy.limits:
            template_arguments(template, args, task=self.name, target=key)
        self.engine._add_target(self, key, args)

    def remove_target(self, key: str) -> None:
        """Remove a target; its in-flight run finishes, nothing more runs."""
        self.engine._remove_target(self._get(key))

    def pause(self, key: str | None = None) -> None:
        """Stop scheduling one target (or all); SLA time is not counted."""
        for state in self._select(key):
            self.engine._set_paused(state, paused=True)

    def resume(self, key: str | None = None) -> None:
        """Schedule a paused target (or all) again from its next due time."""
        for state in self._select(key):
            self.engine._set_paused(state, paused=False)

    def _get(self, key: str) -> TargetState:
        try:
            return self.targets[key]
        except KeyError:
            raise UnknownTargetError(
                f"task {self.name!r} has no target {key!r}"
            ) from None

    def _select(self, key: str | None) -> list[TargetState]:
        return list(self.targets.values()) if key is None else [self._get(key)]

    # -- intervals ---------------------------------------------------------

    def _initial_interval(self) -> float:
        # Until the controller has measured anything: the preferred interval,
        # or twice per SLA.
        if self.policy.every_s is not None:
            return self.policy.every_s
        return self.policy.sla_s * _UNMEASURED_INTERVAL_FRACTION

    def active_targets(self) -> int:
        """Targets that are scheduled (not paused)."""
        return sum(1 for state in self.targets.values() if not state.paused)


class _TargetSignature:
    """Which target arguments a task's function takes, to check them early.

    A function that cannot be called as ``await fn(ctx, **args)`` with a
    target's arguments, or a limit key template naming an argument it never
    gets, would fail on every run; these checks make it fail when it is
    declared or the target is added instead.
    """

    def __init__(
        self, task: str, required: set[str], optional: set[str], open_ended: bool
    ) -> None:
        self.task = task
        self.required = required
        self.allowed = required | optional
        self.open_ended = open_ended

    @property
    def takes_arguments(self) -> bool:
        return bool(self.allowed) or self.open_ended

    @classmethod
    def of(cls, task: str, fn: TaskFunction) -> _TargetSignature:
        # Objects whose __call__ is async are tasks too.
        call = type(fn).__call__ if callable(fn) else None
        if not (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)):
            raise ConfigError(
                f"task {task!r} must be an async function (async def), got {fn!r}"
            )
        params = list(inspect.signature(fn).parameters.values())
        positional = (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
        if not params or params[0].kind not in positional:
            raise ConfigError(
                f"task {task!r} must take the run context as its first "
                "argument: async def fn(ctx, ...)"
            )
        required, optional, open_ended = set(), set(), False
        for param in params[1:]:
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                open_ended = True
            elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            elif param.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise ConfigError(
                    f"task {task!r}: target arguments are passed by name, so "
                    f"{param.name!r} must not be positional-only"
                )
            elif param.default is inspect.Parameter.empty:
                required.add(param.name)
            else:
                optional.add(param.name)
        return cls(task, required, optional, open_ended)

    def check(self, args: Mapping[str, object]) -> None:
        """Raise ``ConfigError`` unless *args* fit the function."""
        missing = sorted(self.required - set(args))
        unknown = [] if self.open_ended else sorted(set(args) - self.allowed)
        if missing or unknown:
            problems = []
            if missing:
                problems.append(f"missing {', '.join(missing)}")
            if unknown:
                problems.append(f"unknown {', '.join(unknown)}")
            takes = ", ".join(sorted(self.allowed)) or "none"
            raise ConfigError(
                f"target arguments of task {self.task!r}: {'; '.join(problems)} "
                f"(it takes: {takes})"
            )

    def check_template(self, template: str) -> None:
        """Raise ``ConfigError`` unless the function takes what *template* names."""
        fields = template_fields(template)
        if self.open_ended:
            return  # **kwargs takes whatever a target brings
        unknown = [name for name in fields if name not in self.allowed]
        if unknown:
            takes = ", ".join(sorted(self.allowed)) or "none"
            raise ConfigError(
                f"limit key template {template!r} of task {self.task!r} names "
                f"the argument {unknown[0]!r}, which its function does not take "
                f"(it takes: {takes})"
            )
