"""The engine: schedule, worker pool and measurement, on the trio clock.

One scheduler task moves targets from a timer heap (ordered by due time)
into a ready heap (ordered by SLA deadline, then priority) and wakes a
worker; workers take the most urgent ready target and run it under its
timeout. A control task refreshes the statistics and the metrics once per
control period. Time comes from ``trio.current_time()`` only; the wall clock
is read to place phases on a grid that survives restarts and to notice when
it jumps.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Generator, Mapping
from typing import Any

import trio
from prometheus_client import CollectorRegistry, start_http_server

from ._durations import Duration, parse_duration
from ._measure import SlaAccount, quantile
from ._policy import Outcome, TaskPolicy
from ._schedule import catch_up, first_due, hash_fraction, spread_fractions
from ._stats import EngineStatistics, TargetStatistics, TaskStatistics
from ._store import MemoryStore, Store, TargetRecord
from ._task import DEFAULT_TARGET_KEY, RunContext, TargetState, Task, TaskFunction
from .errors import ConfigError, UsageError
from .metrics import EngineMetrics

__all__ = ["Engine"]

logger = logging.getLogger("slapoll.engine")

# A wall clock that moves more than this against the monotonic clock between
# two control periods has been stepped (NTP, a suspended VM, a human).
CLOCK_JUMP_THRESHOLD_S = 1.0
# Staleness is summarised per task at this quantile besides the worst.
STALENESS_QUANTILE = 0.9
# Targets accounted between two checkpoints of the statistics sweep: well
# under a millisecond of work, so no run waits on the sweep for longer.
STATISTICS_SLICE = 500
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9464"

# Outcome values, as plain strings: the run path counts by them.
_SUCCESS = Outcome.SUCCESS.value
_ERROR = Outcome.ERROR.value
_TIMEOUT = Outcome.TIMEOUT.value
_SKIPPED = Outcome.SKIPPED.value
_CANCELLED = Outcome.CANCELLED.value

# Timer heap entry: (due, seq, target, generation, attempt).
_Timer = tuple[float, int, TargetState, int, int]
# Ready heap entry: (SLA deadline, -priority, seq, target, due, attempt).
_Ready = tuple[float, int, int, TargetState, float, int]


class Engine:
    """Keeps every target of every task fresh within its SLA.

    Declare tasks with ``@engine.task(...)``, add targets, then
    ``await engine.run()`` inside a trio program (or ``slapoll.run(engine)``
    from synchronous code). ``run`` returns after ``stop()`` once in-flight
    runs finish or ``shutdown_grace`` passes (then they are cancelled and
    counted as ``cancelled``); cancelling ``run`` from outside stops at once.

    ``workers`` is the pool size, kept within ``min_workers`` and
    ``max_workers`` when changed while running. Metrics go to *registry*
    (a fresh one per engine by default) and are served on
    *metrics_address* (``"HOST:PORT"``) when one is given.
    """

    def __init__(
        self,
        *,
        workers: int = 32,
        min_workers: int = 1,
        max_workers: int = 1024,
        control_period: Duration = "1s",
        shutdown_grace: Duration = "10s",
        metrics_address: str | None = None,
        registry: CollectorRegistry | None = None,
        store: Store | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.tasks: dict[str, Task] = {}
        self.registry = CollectorRegistry() if registry is None else registry
        self.metrics = EngineMetrics(self.registry, lambda: self.tasks)
        self.store: Store = MemoryStore() if store is None else store
        self._wall_clock = wall_clock
        self.min_workers = 1
        self.max_workers = 1024
        self.pool_size = 1
        self.control_period_s = 1.0
        self.shutdown_grace_s = 10.0
        self.metrics_address: str | None = None
        # Where metrics are served once running (the real port when 0 was
        # asked for); None while not served.
        self.metrics_url: str | None = None
        self.configure(
            workers=workers,
            min_workers=min_workers,
            max_workers=max_workers,
            control_period=control_period,
            shutdown_grace=shutdown_grace,
            metrics_address=metrics_address,
        )

        self.running = False
        self._stopping = False
        self._seq = itertools.count()
        self._timers: list[_Timer] = []
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
        self._store_ops: list[tuple[str, Any]] = []
        self._store_lot = trio.lowlevel.ParkingLot()
        self._stop_event: trio.Event | None = None
        # The engine-clock instant of the wall-clock epoch: due-time grids
        # hang from it, so phases mean the same thing after a restart.
        self._origin = 0.0
        self._clock_jumps = 0
        self._last_now = 0.0
        # trio.current_time without the indirection; set when the run starts.
        self._clock: Callable[[], float] = trio.current_time

    # -- declaring -----------------------------------------------------------

    def configure(self, **knobs: Any) -> None:
        """Set engine knobs by name, as the config's ``[engine]`` table does.

        Knobs: ``workers``, ``min_workers``, ``max_workers``,
        ``control_period``, ``shutdown_grace``, ``metrics_address``.
        Raises ``ConfigError`` for an unknown knob or a bad value.
        """
        allowed = {
            "workers",
            "min_workers",
            "max_workers",
            "control_period",
            "shutdown_grace",
            "metrics_address",
        }
        unknown = sorted(set(knobs) - allowed)
        if unknown:
            raise ConfigError(
                f"unknown engine option {unknown[0]!r}; allowed: "
                f"{', '.join(sorted(allowed))}"
            )
        for name in ("workers", "min_workers", "max_workers"):
            value = knobs.get(name, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        low = knobs.get("min_workers", self.min_workers)
        high = knobs.get("max_workers", self.max_workers)
        if low > high:
            raise ConfigError(
                f"min_workers ({low!r}) must not exceed max_workers ({high!r})"
            )
        workers = knobs.get("workers")
        if workers is not None and not low <= workers <= high:
            raise ConfigError(
                f"workers ({workers!r}) must lie between min_workers ({low!r}) "
                f"and max_workers ({high!r})"
            )
        self.min_workers, self.max_workers = low, high
        self.pool_size = min(
            max(self.pool_size if workers is None else workers, low), high
        )
        if "control_period" in knobs:
            period = parse_duration(knobs["control_period"], name="control_period")
            if period <= 0:
                raise ConfigError(f"control_period must be > 0, got {period!r}")
            self.control_period_s = period
        if "shutdown_grace" in knobs:
            self.shutdown_grace_s = parse_duration(
                knobs["shutdown_grace"], name="shutdown_grace"
            )
        if "metrics_address" in knobs:
            address = knobs["metrics_address"]
            if address is not None:
                parse_address(address)
            self.metrics_address = address

    def task(
        self,
        *,
        name: str | None = None,
        sla: Duration,
        every: Duration | None = None,
        priority: int = 0,
        limits: tuple[str, ...] | list[str] = (),
        timeout: Duration | None = None,
        retries: int = 0,
        retry_backoff: Duration = 1.0,
        overlap: str = "skip",
        max_concurrent: int = 1,
        phase: Duration | None = None,
    ) -> Callable[[TaskFunction], Task]:
        """Declare a task: ``@engine.task(sla="30s", every="10s")``.

        The function is ``async def fn(ctx, **target_args)``; the decorator
        returns its ``Task``. ``sla`` is the freshness bound; ``every`` the
        preferred interval (without it the engine runs as rarely as the SLA
        safely allows); ``phase`` pins due times to an offset within the
        interval. See ``TaskPolicy`` for the rest. Raises ``ConfigError``
        for a bad option.
        """
        policy = TaskPolicy.from_options(
            sla=sla,
            every=every,
            priority=priority,
            limits=limits,
            timeout=timeout,
            retries=retries,
            retry_backoff=retry_backoff,
            overlap=overlap,
            max_concurrent=max_concurrent,
            phase=phase,
        )

        def declare(fn: TaskFunction) -> Task:
            task_name = name or fn.__name__
            if task_name in self.tasks:
                raise ConfigError(f"a task named {task_name!r} is already declared")
            task = Task(self, task_name, fn, policy)
            self.tasks[task_name] = task
            return task

        return declare

    # -- running -------------------------------------------------------------

    async def run(self) -> None:
        """Run until ``stop()`` (graceful) or cancellation (immediate)."""
        if self.running:
            raise UsageError("this engine is already running")
        self.running = True
        self._stopping = False
        self._stop_event = trio.Event()
        self._clock = trio.lowlevel.current_clock().current_time
        server = None
        try:
            await self._load_store()
            self._start_schedules()
            if self.metrics_address is not None:
                server = self._serve_metrics(self.metrics_address)
            logger.info(
                "engine started: %d tasks, %d targets, %d workers",
                len(self.tasks),
                sum(len(t) for t in self.tasks.values()),
                self.pool_size,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._schedule_loop)
                nursery.start_soon(self._control_loop)
                nursery.start_soon(self._store_loop)
                work_done = trio.Event()
                work_scope = trio.CancelScope()
                nursery.start_soon(self._run_workers, work_scope, work_done)
                await self._stop_event.wait()
                await self._drain(work_scope, work_done)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._flush_store()
            self.metrics.update(self.statistics())
            if server is not None:
                server.shutdown()
                server.server_close()
                self.metrics_url = None
            self.running = False
            logger.info("engine stopped")

    def stop(self) -> None:
        """Stop gracefully: start nothing new, let in-flight runs finish.

        Runs still going after ``shutdown_grace`` are cancelled.
        """
        if not self.running or self._stop_event is None:
            return
        if not self._stopping:
            logger.info(
                "engine stopping: %d runs in flight, grace %.1fs",
                self._workers_alive - self._workers_idle,
                self.shutdown_grace_s,
            )
        self._stopping = True
        self._worker_lot.unpark_all()
        self._stop_event.set()

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
        return self.pool_size

    async def _drain(self, work_scope: trio.CancelScope, done: trio.Event) -> None:
        with trio.move_on_after(self.shutdown_grace_s):
            await done.wait()
        if not done.is_set():
            logger.warning(
                "cancelling %d runs still in flight after the %.1fs grace",
                self._workers_alive - self._workers_idle,
                self.shutdown_grace_s,
            )
            work_scope.cancel()
            await done.wait()

    def _serve_metrics(self, address: str) -> Any:
        host, port = parse_address(address)
        server, _thread = start_http_server(port, host, registry=self.registry)
        shown = f"[{host}]" if ":" in host else host
        self.metrics_url = f"http://{shown}:{server.server_port}/metrics"
        logger.info("metrics on %s", self.metrics_url)
        return server

    # -- targets -------------------------------------------------------------

    def _add_target(self, task: Task, key: str, args: Mapping[str, object]) -> None:
        existing = task.targets.get(key)
        if existing is not None:
            existing.args = dict(args)
            self._store_put(existing)
            return

        now = trio.current_time() if self.running else 0.0
        phase = hash_fraction(f"{task.name}\0{key}") if self.running else None
        state = TargetState(task, key, args, now, phase)
        task.targets[key] = state
        self._store_put(state)
        if self.running:
            self._schedule_first(state, now)

    def _remove_target(self, state: TargetState) -> None:
        task = state.task
        if self.running:
            self._account(state, trio.current_time())
        state.removed = True
        state.generation += 1
        del task.targets[state.key]
        self._store_ops.append(("remove", (task.name, state.key)))
        self._store_lot.unpark_all()

    def _set_paused(self, state: TargetState, *, paused: bool) -> None:
        if state.paused == paused:
            return
        if self.running:
            now = trio.current_time()
            if paused:
                self._account(state, now)
            else:
                state.account.skip_to(now)
        state.paused = paused
        state.generation += 1
        self._store_put(state)
        if not paused and self.running:
            self._schedule_first(state, trio.current_time())

    def _store_put(self, state: TargetState) -> None:
        record = TargetRecord(
            task=state.task.name,
            key=state.key,
            args=dict(state.args),
            paused=state.paused,
            phase=state.phase,
        )
        self._store_ops.append(("put", record))
        self._store_lot.unpark_all()

    async def _load_store(self) -> None:
        # Stored targets (added at run time, paused, re-phased) win over
        # what the code declared: they are the newer word.
        for record in await self.store.load_targets():
            task = self.tasks.get(record.task)
            if task is None:
                logger.warning(
                    "stored target %r of unknown task %r kept but not run",
                    record.key,
                    record.task,
                )
                continue
            state = task.targets.get(record.key)
            if state is None:
                state = TargetState(task, record.key, record.args, 0.0, record.phase)
                task.targets[record.key] = state
            state.args = dict(record.args)
            state.paused = record.paused
            state.phase = record.phase

    async def _store_loop(self) -> None:
        while True:
            await self._flush_store()
            await self._store_lot.park()

    async def _flush_store(self) -> None:
        while self._store_ops:
            op, value = self._store_ops.pop(0)
            if op == "put":
                await self.store.put_target(value)
            else:
                await self.store.remove_target(*value)

    # -- the schedule --------------------------------------------------------

    def _start_schedules(self) -> None:
        now = trio.current_time()
        self._origin = now - self._wall_clock()
        for task in self.tasks.values():
            if not task.targets and not task.takes_arguments:
                state = TargetState(task, DEFAULT_TARGET_KEY, {}, now, None)
                task.targets[DEFAULT_TARGET_KEY] = state
            unphased = [k for k, s in task.targets.items() if s.phase is None]
            for key, phase in spread_fractions(unphased, salt=task.name).items():
                task.targets[key].phase = phase
            for state in task.targets.values():
                state.account = SlaAccount(now)
                if not state.paused:
                    self._schedule_first(state, now)

    def _schedule_first(self, state: TargetState, now: float) -> None:
        interval = state.task.interval_s
        fixed = state.task.policy.phase_s
        if fixed is not None:
            phase = (fixed % interval) / interval
        else:
            assert state.phase is not None
            phase = state.phase
        due = first_due(now, interval, phase, self._origin)
        state.next_due = due
        self._push_timer(due, state, 0)

    def _push_timer(self, due: float, state: TargetState, attempt: int) -> None:
        heapq.heappush(
            self._timers, (due, next(self._seq), state, state.generation, attempt)
        )
        if due < self._scheduler_wake_at:
            self._scheduler_lot.unpark_all()

    async def _schedule_loop(self) -> None:
        timers = self._timers
        clock = trio.lowlevel.current_clock().current_time
        while True:
            now = clock()
            while timers and timers[0][0] <= now and not self._stopping:
                self._fire(heapq.heappop(timers), now)
            next_deadline = self._expire_runs(now)
            next_timer = timers[0][0] if timers and not self._stopping else math.inf
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
            # The next due time follows from this one, never from when a run
            # ends. After a gap (a suspended process, an overload) the due
            # times that all passed collapse into the latest.
            interval = task.interval_s
            if now >= due + interval:
                due, passed = catch_up(due, now, interval)
                task.missed += passed
            state.next_due = next_due = due + interval
            # The scheduler itself is running: no need to wake it.
            heapq.heappush(
                self._timers, (next_due, next(self._seq), state, generation, 0)
            )
        elif state.failures == 0:
            return  # a scheduled run succeeded meanwhile: the retry is moot
        self._request_run(state, due, attempt, now)

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
        # Wake a worker only for work no woken worker is already coming for:
        # a worker woken for nothing costs two task switches.
        if self._workers_waking < min(len(self._ready), self._workers_idle):
            self._workers_waking += 1
            self._worker_lot.unpark()

    def _count_skip(self, task: Task, state: TargetState) -> None:
        task.runs[_SKIPPED] += 1
        logger.debug("%s[%s]: due time skipped, still running", task.name, state.key)

    # -- the pool ------------------------------------------------------------

    async def _run_workers(self, scope: trio.CancelScope, done: trio.Event) -> None:
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
        return not self._stopping and self._workers_alive <= self.pool_size

    async def _work(self, slot: _WorkerSlot) -> None:
        ready = self._ready
        # The loop condition is _may_work(), inlined on this hot path.
        while not self._stopping and self._workers_alive <= self.pool_size:
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
            state.queued = False
            if not state.removed and not state.paused:
                await self._execute(state, due, attempt, slot)

    async def _execute(
        self, state: TargetState, due: float, attempt: int, slot: _WorkerSlot
    ) -> None:
        task = state.task
        start = self._clock()
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
        ctx = RunContext(task.name, state.key, due, attempt, deadline)
        outcome = _ERROR
        try:
            await task.fn(ctx, **state.args)
            outcome = _SUCCESS
        except trio.Cancelled:
            # Only the watchdog cancels the worker's scope: a timeout. Any
            # other cancellation is the engine shutting down.
            timed_out = slot.scope.cancel_called
            outcome = _TIMEOUT if timed_out else _CANCELLED
            raise
        except Exception as exc:
            # The message is the task's own; arguments are not logged.
            logger.debug(
                "%s[%s]: run failed: %s", task.name, state.key, type(exc).__name__
            )
        finally:
            slot.run_id = -1
            state.deadlines.remove(deadline)
            self._finish(state, due, attempt, start, outcome)

    def _finish(
        self,
        state: TargetState,
        due: float,
        attempt: int,
        start: float,
        outcome: str,
    ) -> None:
        task = state.task
        end = self._clock()
        lag, duration = start - due, end - start
        task.lag.add(lag)
        task.duration.add(duration)
        task.lag_buckets.observe(lag)
        task.duration_buckets.observe(duration)
        task.runs[outcome] += 1
        state.runs += 1

        if outcome is _SUCCESS:
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
        if pending is not None and not self._stopping and not state.removed:
            self._request_run(state, pending[0], pending[1], end)

    def _maybe_retry(self, state: TargetState, attempt: int, now: float) -> None:
        policy = state.task.policy
        if attempt >= policy.retries or self._stopping:
            return
        retry_at = now + policy.retry_backoff_s * 2**attempt
        # A retry must finish inside the SLA or, once that is lost, before
        # the next scheduled run: later it would only duplicate that run.
        limit = max(state.sla_deadline(), state.next_due or 0.0)
        if retry_at + state.task.duration.mean() <= limit:
            self._push_timer(retry_at, state, attempt + 1)

    # -- measurement ---------------------------------------------------------

    def _account(self, state: TargetState, now: float) -> None:
        if state.paused:
            state.account.skip_to(now)
            return
        task = state.task
        observed, within = state.account.advance(now, task.policy.sla_s)
        task.observed_s += observed
        task.within_s += within

    async def _control_loop(self) -> None:
        last_offset = self._wall_clock() - trio.current_time()
        while True:
            await trio.sleep(self.control_period_s)
            offset = self._wall_clock() - trio.current_time()
            if abs(offset - last_offset) > CLOCK_JUMP_THRESHOLD_S:
                self._clock_jumps += 1
                logger.warning(
                    "wall clock jumped by %+.1fs; schedules keep the monotonic clock",
                    offset - last_offset,
                )
            last_offset = offset
            for task in self.tasks.values():
                task.refresh_interval()
            self.metrics.update(await self._statistics_in_steps())

    def statistics(self) -> EngineStatistics:
        """A snapshot of the engine and every task, accounted up to now."""
        tasks = {}
        for name, task in self.tasks.items():
            steps = self._task_statistics(task)
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    tasks[name] = done.value
                    break
        return self._engine_statistics(tasks)

    async def _statistics_in_steps(self) -> EngineStatistics:
        # The same snapshot, letting runs start between slices of targets:
        # a sweep over a hundred thousand targets must not hold up the
        # schedule for its whole length.
        tasks = {}
        for name, task in list(self.tasks.items()):
            steps = self._task_statistics(task)
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    tasks[name] = done.value
                    break
                await trio.lowlevel.checkpoint()
        return self._engine_statistics(tasks)

    def _engine_statistics(self, tasks: dict[str, TaskStatistics]) -> EngineStatistics:
        return EngineStatistics(
            now_s=self._now(),
            pool_size=self.pool_size,
            busy_workers=max(0, self._workers_alive - self._workers_idle),
            ready=len(self._ready),
            tasks=tasks,
            clock_jumps=self._clock_jumps,
        )

    def _now(self) -> float:
        # Outside a trio run (after it ended) the last reading stands.
        with contextlib.suppress(RuntimeError):
            self._last_now = trio.current_time()
        return self._last_now

    def _task_statistics(self, task: Task) -> Generator[None, None, TaskStatistics]:
        """Account every target of *task*; yields between slices of them."""
        sla = task.policy.sla_s
        staleness: list[float] = []
        paused = 0
        now = self._now()
        running = self.running
        for i, state in enumerate(list(task.targets.values())):
            if i and i % STATISTICS_SLICE == 0:
                yield
                now = self._now()
            account = state.account
            if state.removed:
                continue
            if state.paused:
                paused += 1
                account.skip_to(now)
                continue
            if running:
                # _account, inlined: this loop visits every target.
                observed, within = account.advance(now, sla)
                task.observed_s += observed
                task.within_s += within
            staleness.append(now - account.ref)
        yield
        staleness.sort()
        return TaskStatistics(
            name=task.name,
            sla_s=sla,
            interval_s=task.interval_s,
            priority=task.policy.priority,
            targets=len(task.targets),
            paused=paused,
            violating=len(staleness) - _count_at_most(staleness, sla),
            worst_staleness_s=staleness[-1] if staleness else 0.0,
            staleness_p90_s=quantile(staleness, STALENESS_QUANTILE),
            lag_mean_s=task.lag.mean(),
            lag_p99_s=task.lag.quantile(0.99),
            duration_mean_s=task.duration.mean(),
            duration_p99_s=task.duration.quantile(0.99),
            runs=dict(task.runs),
            missed=task.missed,
            observed_s=task.observed_s,
            within_sla_s=task.within_s,
        )

    def target_statistics(self, task: str, key: str) -> TargetStatistics:
        """One target's state now; raises ``UnknownTargetError``."""
        state = self.tasks[task]._get(key)
        now = self._now()
        if self.running:
            self._account(state, now)
        staleness = state.account.staleness(now)
        return TargetStatistics(
            task=task,
            key=key,
            paused=state.paused,
            running=len(state.deadlines),
            next_due_s=state.next_due,
            last_success_start_s=state.last_success_start,
            staleness_s=staleness,
            within_sla=staleness <= state.task.policy.sla_s,
            observed_s=state.account.observed_s,
            within_sla_s=state.account.within_s,
            runs=state.runs,
            failures_in_a_row=state.failures,
        )


class _WorkerSlot:
    """A worker's cancel scope and the id of the run it holds (-1: none)."""

    __slots__ = ("run_id", "scope")

    def __init__(self) -> None:
        self.run_id = -1
        self.scope = trio.CancelScope()


def _count_at_most(sorted_values: list[float], bound: float) -> int:
    return bisect.bisect_right(sorted_values, bound)


def parse_address(address: str) -> tuple[str, int]:
    """Split ``"HOST:PORT"``; raise ``ConfigError`` naming what is wrong."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(
            f"metrics_address must be HOST:PORT with a port from 0 to 65535, "
            f"got {address!r}"
        )
    return host.strip("[]"), int(port_text)
