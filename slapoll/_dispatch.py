"""Dispatch: due targets to workers, on the trio clock.

One scheduler task moves targets from a timer heap (ordered by due time)
into a ready heap (ordered by SLA deadline, then priority) and wakes a
worker; workers take the most urgent ready target and run it. The same
scheduler task watches run deadlines and cancels runs that pass theirs.
What a run measured (lag, duration, outcome, freshness) is recorded on its
task and target as it ends.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import logging
import math
import os
import traceback
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ._policy import Outcome
from ._schedule import catch_up, retimed_due
from ._task import RunContext, TargetState, Task
from .errors import RunDeadlineError, SlapollError

if TYPE_CHECKING:
    from ._http import TargetHttp

__all__ = ["Dispatcher"]

logger = logging.getLogger("slapoll.engine")

# Outcome values, as plain strings: the run path counts by them.
_SUCCESS = Outcome.SUCCESS.value
_ERROR = Outcome.ERROR.value
_TIMEOUT = Outcome.TIMEOUT.value
_SKIPPED = Outcome.SKIPPED.value
_CANCELLED = Outcome.CANCELLED.value

# Failure warnings: at most this many per task (the first failure of each
# target's streak) in this long; the rest go to debug level, said once.
FAILURE_WARNINGS = 10
FAILURE_WARNING_WINDOW_S = 60.0
# A task is retimed when its interval moved by more than this share since
# it last was; smaller changes take effect at each target's next due time.
RETIME_TOLERANCE = 0.01
# Timer heap entry: (due, seq, target, generation, attempt).
_Timer = tuple[float, int, TargetState, int, int]
# Ready heap entry: (SLA deadline, -priority, seq, target, due, attempt).
_Ready = tuple[float, int, int, TargetState, float, int]


class Dispatcher:
    """The timer heap, the ready heap and the worker pool of one engine.

    The engine declares targets and reads statistics; the dispatcher decides
    when each run starts and records what it measured. All of it runs on
    the trio clock read through *clock*, set by ``start``.
    """

    def __init__(self, pool_size: int, min_workers: int, max_workers: int) -> None:
        self.pool_size = pool_size
        self.min_workers = min_workers
        self.max_workers = max_workers
        self.stopping = False
        self.clock: Callable[[], float] = trio.current_time
        # The engine-clock instant of the wall-clock epoch, set by the engine
        # when it starts: due-time grids hang from it.
        self.origin = 0.0
        self._seq = itertools.count()
        self._timers: list[_Timer] = []
        # Entries left behind by retime(); compacted when they are half.
        self._stale_timers = 0
        self._ready: list[_Ready] = []
        self._scheduler_lot = trio.lowlevel.ParkingLot()
        self._scheduler_wake_at = math.inf
        # Deadlines of runs in flight, a FIFO per timeout (see _expire_runs).
        self._run_deadlines: dict[float, deque[tuple[float, int, _WorkerSlot]]] = {}
        self._worker_lot = trio.lowlevel.ParkingLot()
        self._workers_alive = 0
        self._workers_idle = 0
        # Workers unparked for ready work that have not yet taken it.
        self._workers_waking = 0
        self._worker_nursery: trio.Nursery | None = None
        # Gives a run its HTTP client (set by the engine when it starts), and
        # hears of every pool resize (the client's connection permits).
        self.http_for: Callable[[TargetState, float], TargetHttp] | None = None
        self.on_resize: Callable[[int], None] | None = None
        # Per task: when its failure warnings' window began, how many so far.
        self._failure_warnings: dict[str, tuple[float, int]] = {}
        # Totals for the controller: runs ended and worker-seconds they took.
        self.runs_ended = 0
        self.busy_s_total = 0.0

    def start(self) -> None:
        """Prepare for a run of the engine (call inside trio)."""
        self.stopping = False
        self.clock = trio.lowlevel.current_clock().current_time

    def stop(self) -> None:
        """Start nothing new; idle workers leave."""
        self.stopping = True
        self._worker_lot.unpark_all()
        self._scheduler_lot.unpark_all()

    @property
    def busy_workers(self) -> int:
        """Workers running a run now."""
        return max(0, self._workers_alive - self._workers_idle)

    def ready_by_task(self) -> Counter[str]:
        """Runs waiting for a worker, by task name."""
        return Counter(entry[3].task.name for entry in self._ready)

    @property
    def ready_count(self) -> int:
        """Runs that are due and wait for a worker."""
        return len(self._ready)

    def set_pool_size(self, size: int) -> int:
        """Resize the worker pool within its bounds; return the new size.

        Growing starts workers at once; shrinking lets busy workers finish
        their run before they leave.
        """
        self.pool_size = min(max(size, self.min_workers), self.max_workers)
        if self._worker_nursery is not None:
            for _ in range(self.pool_size - self._workers_alive):
                self._workers_alive += 1
                self._worker_nursery.start_soon(self._worker)
            if self._workers_alive > self.pool_size:
                self._worker_lot.unpark_all()
        if self.on_resize is not None:
            self.on_resize(self.pool_size)
        return self.pool_size

    async def drain(
        self, grace_s: float, work_scope: trio.CancelScope, done: trio.Event
    ) -> None:
        with trio.move_on_after(grace_s):
            await done.wait()
        if not done.is_set():
            if self.busy_workers:
                logger.warning(
                    "cancelling %d runs still in flight after the %.1fs grace",
                    self.busy_workers,
                    grace_s,
                )
            work_scope.cancel()
            await done.wait()

    def push_timer(self, due: float, state: TargetState, attempt: int) -> None:
        heapq.heappush(
            self._timers, (due, next(self._seq), state, state.generation, attempt)
        )
        if due < self._scheduler_wake_at:
            self._scheduler_lot.unpark_all()

    async def schedule_loop(self) -> None:
        timers = self._timers
        clock = trio.lowlevel.current_clock().current_time
        while True:
            now = clock()
            while timers and timers[0][0] <= now and not self.stopping:
                self._fire(heapq.heappop(timers), now)
            next_deadline = self._expire_runs(now)
            next_timer = timers[0][0] if timers and not self.stopping else math.inf
            self._scheduler_wake_at = min(next_timer, next_deadline)
            with trio.move_on_at(self._scheduler_wake_at):
                await self._scheduler_lot.park()

    def _expire_runs(self, now: float) -> float:
        """Cancel the runs past their deadline; return the next deadline.

        Run timeouts are watched here rather than by a cancel scope per run:
        appending to a queue costs far less than moving a scope's deadline.
        Runs of one timeout end their deadlines in the order they started,
        so each timeout has a FIFO queue, and entries of runs that already
        ended are dropped from its head without waking anyone.
        """
        next_deadline = math.inf
        for queue in self._run_deadlines.values():
            while queue:
                deadline, run_id, slot = queue[0]
                if slot.run_id != run_id:
                    queue.popleft()  # that run has ended
                elif deadline <= now:
                    queue.popleft()
                    slot.scope.cancel()
                else:
                    next_deadline = min(next_deadline, deadline)
                    break
        return next_deadline

    def _fire(self, timer: _Timer, now: float) -> None:
        due, _, state, generation, attempt = timer
        if generation != state.generation or state.removed or state.paused:
            return
        task = state.task
        if attempt == 0:
            if due != state.next_due:
                return  # retimed: a later entry holds the due time
            # The next due time follows from this one, never from when a run
            # ends. After a gap (a suspended process, an overload) the due
            # times that all passed collapse into the latest.
            interval = task.interval_s
            if state.min_interval_s > interval:
                interval = state.min_interval_s  # the server's floor for it
            if now >= due + interval:
                due, passed = catch_up(due, now, interval)
                task.missed += passed
            next_due = due + interval
            state.interval_s = interval
            # A new scheduled run supersedes retries still pending from the
            # last one: bumping the generation drops their timers.
            state.generation = generation = generation + 1
            state.next_due = next_due
            # The scheduler itself is running: no need to wake it.
            heapq.heappush(
                self._timers, (next_due, next(self._seq), state, generation, 0)
            )
        elif state.failures == 0:
            return  # a scheduled run succeeded meanwhile: the retry is moot
        self._request_run(state, due, attempt, now)

    def retime(self, task: Task, now: float) -> None:
        """Move a task's pending due times onto its new interval.

        Each pending due time is scaled by ``retimed_due``: targets stay
        spread over the interval, and a change never adds runs beyond the
        new rate. A shortened interval brings stretched targets in at once
        rather than leaving them stale; a lengthened one defers them at
        once, so a tightened budget is spent on the new plan, not on due
        times laid under the old one.

        Cheap changes are left to the next due time, which takes the
        current interval anyway: the task is retimed only once its interval
        differs from the one it was last retimed for by more than
        ``RETIME_TOLERANCE``.
        """
        interval, laid = task.interval_s, task.retimed_interval_s
        if abs(interval - laid) <= RETIME_TOLERANCE * laid:
            return
        task.retimed_interval_s = interval
        moved = sum(self._retime_target(state, now) for state in task.targets.values())
        if moved:
            self._timers_moved(moved)

    def retime_target(self, state: TargetState, now: float) -> None:
        """Move one target's pending due time onto its interval, after the
        server's minimum for it (``min_interval_s``) changed: no sooner
        than that minimum after its last successful start."""
        moved = self._retime_target(state, now)
        start, due = state.last_success_start, state.next_due
        if start is not None and due is not None and due > now:
            earliest = start + state.min_interval_s
            if due < earliest:
                state.next_due = earliest
                entry = (earliest, next(self._seq), state, state.generation, 0)
                heapq.heappush(self._timers, entry)
                moved = True
        if moved:
            self._timers_moved(1)

    def _retime_target(self, state: TargetState, now: float) -> bool:
        interval = max(state.task.interval_s, state.min_interval_s)
        old, due = state.interval_s, state.next_due
        if state.paused or due is None or due <= now or old == interval:
            return False
        due = retimed_due(due, now, old, interval)
        state.interval_s = interval
        state.next_due = due
        heapq.heappush(self._timers, (due, next(self._seq), state, state.generation, 0))
        return True

    def _timers_moved(self, moved: int) -> None:
        self._stale_timers += moved
        if self._stale_timers > len(self._timers) // 2:
            self._compact_timers()
        self._scheduler_lot.unpark_all()

    def _compact_timers(self) -> None:
        """Drop heap entries that can no longer fire."""
        self._timers[:] = [
            entry
            for entry in self._timers
            if entry[3] == entry[2].generation
            and not entry[2].removed
            and (entry[4] != 0 or entry[0] == entry[2].next_due)
        ]
        heapq.heapify(self._timers)
        self._stale_timers = 0

    def _request_run(
        self, state: TargetState, due: float, attempt: int, now: float
    ) -> None:
        task = state.task
        if state.queued:
            task.missed += 1  # already waiting for a worker: one run serves both
            return
        if state.deadlines:
            active = state.active_runs(now)
            policy = task.policy
            if active == 0 or policy.overlap == "queue_one":
                # Either the run in flight is past its deadline and being
                # cancelled, or the policy says to queue: start when it ends.
                if state.pending is None:
                    state.pending = (due, attempt)
                else:
                    self._count_skip(task, state)
                return
            if policy.overlap != "allow" or active >= policy.max_concurrent:
                self._count_skip(task, state)
                return

        state.queued = True
        policy = task.policy
        sla_deadline = state.account.ref + policy.sla_s  # state.sla_deadline()
        entry = (sla_deadline, -policy.priority, next(self._seq), state, due, attempt)
        heapq.heappush(self._ready, entry)
        self._wake_a_worker()

    def _wake_a_worker(self) -> None:
        # One worker on its way at a time: it wakes the next as it takes its
        # run, if more are ready (see _work). Runs that end at once are then
        # taken by one worker in turn, instead of waking a worker each that
        # finds nothing left and parks again (two task switches wasted);
        # runs that block hand on to the next worker after one switch.
        if not self._workers_waking and self._workers_idle:
            self._workers_waking += 1
            self._worker_lot.unpark()

    def _count_skip(self, task: Task, state: TargetState) -> None:
        task.runs[_SKIPPED] += 1
        logger.debug("%s[%s]: due time skipped, still running", task.name, state.key)

    # -- the pool ------------------------------------------------------------

    async def run_workers(self, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    self._worker_nursery = nursery
                    self.set_pool_size(self.pool_size)
        finally:
            self._worker_nursery = None
            done.set()

    async def _worker(self) -> None:
        slot = _WorkerSlot()
        try:
            while self._may_work():
                # The scope is cancelled when a run passes its deadline; the
                # worker then goes on under a fresh one.
                with trio.CancelScope() as slot.scope:
                    await self._work(slot)
        finally:
            self._workers_alive -= 1

    def _may_work(self) -> bool:
        return not self.stopping and self._workers_alive <= self.pool_size

    async def _work(self, slot: _WorkerSlot) -> None:
        ready = self._ready
        # The loop condition is _may_work(), inlined on this hot path.
        while not self.stopping and self._workers_alive <= self.pool_size:
            if not ready:
                self._workers_idle += 1
                try:
                    await self._worker_lot.park()
                finally:
                    self._workers_idle -= 1
                    if self._workers_waking:
                        self._workers_waking -= 1
                continue
            _, _, _, state, due, attempt = heapq.heappop(ready)
            if ready:
                self._wake_a_worker()
            state.queued = False
            if not state.removed and not state.paused:
                await self._execute(state, due, attempt, slot)

    async def _execute(
        self, state: TargetState, due: float, attempt: int, slot: _WorkerSlot
    ) -> None:
        task = state.task
        start = self.clock()
        timeout = task.policy.effective_timeout_s
        deadline = start + timeout
        state.deadlines.append(deadline)
        slot.run_id = run_id = next(self._seq)
        queue = self._run_deadlines.get(timeout)
        if queue is None:
            queue = self._run_deadlines[timeout] = deque()
        queue.append((deadline, run_id, slot))
        if deadline < self._scheduler_wake_at:
            self._scheduler_lot.unpark_all()
        ctx = RunContext(state, due, attempt, deadline, self.http_for)
        outcome = _ERROR
        try:
            await task.fn(ctx, **state.args)
            outcome = _SUCCESS
        except Exception as exc:
            outcome = _TIMEOUT if isinstance(exc, RunDeadlineError) else _ERROR
            self._log_failure(state, _describe(exc, task.fn))
        except BaseException:
            # trio.Cancelled, alone or grouped by a nursery inside the run.
            # Only the watchdog cancels the worker's scope: a timeout. Any
            # other cancellation is the engine shutting down.
            timed_out = slot.scope.cancel_called
            outcome = _TIMEOUT if timed_out else _CANCELLED
            if timed_out:
                self._log_failure(state, f"timed out after {timeout:g}s")
            raise
        finally:
            slot.run_id = -1
            state.deadlines.remove(deadline)
            self._finish(state, due, attempt, start, outcome, ctx.budget_wait_s)

    def _log_failure(self, state: TargetState, what: str) -> None:
        # The first failure after a success is a warning, the rest of the
        # streak debug lines, so a target failing on every run does not
        # flood the log. Thousands of targets failing at once (an upstream
        # down) would still: past FAILURE_WARNINGS a task's warnings pause
        # for the rest of FAILURE_WARNING_WINDOW_S, and one line says so.
        task = state.task.name
        level = logging.DEBUG
        if not state.failures:
            now = self.clock()
            start, warned = self._failure_warnings.get(task, (-math.inf, 0))
            if now - start >= FAILURE_WARNING_WINDOW_S:
                start, warned = now, 0
            if warned < FAILURE_WARNINGS:
                level = logging.WARNING
            elif warned == FAILURE_WARNINGS:
                logger.warning(
                    "%s: more than %d targets failed within %gs; the task's "
                    "failures are logged at debug level for the next %.0fs",
                    task,
                    FAILURE_WARNINGS,
                    FAILURE_WARNING_WINDOW_S,
                    start + FAILURE_WARNING_WINDOW_S - now,
                )
            self._failure_warnings[task] = (start, warned + 1)
        logger.log(level, "%s[%s]: run failed: %s", task, state.key, what)

    def _finish(
        self,
        state: TargetState,
        due: float,
        attempt: int,
        start: float,
        outcome: str,
        budget_wait_s: float = 0.0,
    ) -> None:
        task = state.task
        end = self.clock()
        # Time spent inside the run waiting for rate budget is lag, as the
        # wait for a worker is: the run's duration is what the upstream took.
        lag = start - due + budget_wait_s
        duration = end - start - budget_wait_s
        task.lag.add(lag, end)
        task.duration.add(duration, end)
        task.lag_buckets.observe(lag)
        task.duration_buckets.observe(duration)
        task.runs[outcome] += 1
        state.runs += 1
        self.runs_ended += 1
        self.busy_s_total += duration

        if outcome is _SUCCESS:
            task.success_duration.add(duration, end)
            # Staleness drops only now that the run completed, and counts
            # from when it started. (_account, inlined: a paused target's
            # run does not count.)
            account = state.account
            if state.paused:
                account.skip_to(end)
            else:
                observed, within = account.advance(end, task.policy.sla_s)
                task.observed_s += observed
                task.within_s += within
            if start > account.ref:
                account.ref = start
            state.last_success_start = account.ref
            state.failures = 0
        else:
            state.failures += 1
            if outcome is not _CANCELLED:
                self._maybe_retry(state, attempt, end)

        pending, state.pending = state.pending, None
        if pending is not None and not self.stopping and not state.removed:
            self._request_run(state, pending[0], pending[1], end)

    def _maybe_retry(self, state: TargetState, attempt: int, now: float) -> None:
        policy = state.task.policy
        if attempt >= policy.retries or self.stopping:
            return
        retry_at = now + policy.retry_backoff_s * 2**attempt
        # A retry must finish inside the SLA or, once that is lost, before
        # the next scheduled run: later it would only duplicate that run.
        limit = max(state.sla_deadline(), state.next_due or 0.0)
        if retry_at + state.task.success_duration.mean() <= limit:
            self.push_timer(retry_at, state, attempt + 1)


class _WorkerSlot:
    """A worker's cancel scope and the id of the run it holds (-1: none)."""

    __slots__ = ("run_id", "scope")

    def __init__(self) -> None:
        self.run_id = -1
        self.scope = trio.CancelScope()


def _describe(exc: Exception, fn: Callable[..., object]) -> str:
    """Say what failed a run without the exception's message, which may
    quote a URL or a token.

    slapoll's own errors are written never to hold one: their message is
    shown. Otherwise the type; the status of an HTTP response that carried
    one (``httpx.HTTPStatusError``); and the line of the task's function
    *fn* that the exception passed through last, where the user's code
    went wrong or called what did.
    """
    name = type(exc).__name__
    if isinstance(exc, SlapollError):
        return f"{name}: {exc}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        name += f" (HTTP {status})"
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if code is None:
        return name
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if f.filename == code.co_filename]
    if mine:
        name += f" at {os.path.basename(mine[-1].filename)}:{mine[-1].lineno}"
    return name
