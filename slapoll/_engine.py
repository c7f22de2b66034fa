"""The engine: declared tasks and targets, their store, their statistics.

``Engine`` is the public face: it holds the tasks, writes targets through
the store, places each target's first due time on its phase, hands the
rest to the ``Dispatcher`` (timers, ready queue, workers) and, once per
control period, refreshes the statistics the metrics and the CLI read.
Time comes from ``trio.current_time()``; the wall clock is read to place
phases on a grid that survives restarts and to notice when it jumps.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Mapping
from types import MappingProxyType
from typing import Any

import httpx
import trio
from prometheus_client import CollectorRegistry, start_http_server

from ._control import ControlPlan
from ._dispatch import Dispatcher
from ._durations import Duration, parse_duration
from ._http import HttpLayer, TargetHttp
from ._measure import SlaAccount, quantile
from ._policy import TaskPolicy, template_fields
from ._ratelimit import KeyStatistics, LimitSpec
from ._schedule import first_due, hash_fraction, spread_fractions
from ._stats import EngineStatistics, TargetStatistics, TaskStatistics
from ._steering import Steering
from ._store import MemoryStore, Store, TargetRecord
from ._task import DEFAULT_TARGET_KEY, TargetState, Task, TaskFunction
from .errors import ConfigError, UnknownTargetError, UsageError
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
    *http_transport* replaces the network under ``ctx.http`` (tests pass
    ``httpx.MockTransport``).
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
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.tasks: dict[str, Task] = {}
        self.running = False
        self.registry = CollectorRegistry() if registry is None else registry
        self.metrics = EngineMetrics(self.registry, lambda: self.tasks)
        self.store: Store = MemoryStore() if store is None else store
        self._wall_clock = wall_clock
        self._http_transport = http_transport
        self._limits: dict[str, LimitSpec] = {}
        self._http: HttpLayer | None = None
        self._http_stats: tuple[KeyStatistics, ...] = ()
        self._dispatch = Dispatcher(pool_size=1, min_workers=1, max_workers=1024)
        self._steering = Steering()
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
        self._store_ops: deque[tuple[str, Any]] = deque()
        self._store_lot = trio.lowlevel.ParkingLot()
        self._stop_event: trio.Event | None = None
        # stop() came before run() began (nursery.start_soon(engine.run)
        # then engine.stop(), or a signal during start-up): the next run()
        # returns at once rather than run until a stop that already came.
        self._stopped_early = False
        # The engine-clock instant of the wall-clock epoch: due-time grids
        # hang from it, so phases mean the same thing after a restart.
        self._origin = 0.0
        self._clock_jumps = 0
        self._last_now = 0.0
        # Targets the server gave a minimum interval (X-Poll-Interval).
        self._floored: set[TargetState] = set()

    @property
    def pool_size(self) -> int:
        """Workers in the pool (the target size while running)."""
        return self._dispatch.pool_size

    @property
    def busy_workers(self) -> int:
        """Workers running a run now."""
        return self._dispatch.busy_workers

    @property
    def min_workers(self) -> int:
        """The least the pool may shrink to."""
        return self._dispatch.min_workers

    @property
    def max_workers(self) -> int:
        """The most the pool may grow to."""
        return self._dispatch.max_workers

    def set_pool_size(self, size: int) -> int:
        """Resize the worker pool within its bounds; return the new size.

        Growing starts workers at once; shrinking lets busy workers finish
        their run before they leave.
        """
        return self._dispatch.set_pool_size(size)

    # -- declaring -----------------------------------------------------------

    def configure(self, **knobs: Any) -> None:
        """Set engine knobs by name, as the config's ``[engine]`` table does.

        Knobs: ``workers``, ``min_workers``, ``max_workers``,
        ``control_period``, ``shutdown_grace``, ``metrics_address``.
        Raises ``ConfigError`` for an unknown knob or a bad value, and
        ``UsageError`` while the engine runs (resize the pool with
        ``set_pool_size``).
        """
        if self.running:
            raise UsageError(
                "engine options cannot change while it runs; use "
                "set_pool_size() to resize the pool"
            )
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
        pool = self._dispatch
        low = knobs.get("min_workers", pool.min_workers)
        high = knobs.get("max_workers", pool.max_workers)
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
        pool.min_workers, pool.max_workers = low, high
        size = pool.pool_size if workers is None else workers
        pool.pool_size = min(max(size, low), high)
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

    @property
    def limits(self) -> Mapping[str, LimitSpec]:
        """The budgets declared with ``limit()``, by key or template."""
        return MappingProxyType(self._limits)

    def limit(self, name: str, /, **options: Any) -> LimitSpec:
        """Declare the rate budget of a limit key: ``limit("github",
        rate="5000/h", burst=100)``.

        *name* is a key that tasks list in ``limits``, or a template over
        target arguments (``"github:{account}"``: one budget per account).
        Options are those of ``LimitSpec.from_options``: ``rate``,
        ``burst``, ``concurrency``, ``reset_format`` and the backoff and
        circuit knobs. A key without a declared budget learns one from the
        server. Raises ``ConfigError`` for a bad option.
        """
        if self.running:
            raise UsageError(
                f"limit {name!r} cannot be declared while the engine runs: "
                "declare budgets before Engine.run() (the server's rate "
                "headers still correct them while running)"
            )
        template_fields(name)  # a malformed template fails here, not at run()
        spec = LimitSpec.from_options(**options)
        self._limits[name] = spec
        return spec

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

        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(f"a task name must be a non-empty string, got {name!r}")

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
        if self._stopped_early:
            self._stopped_early = False
            logger.info("engine stopped before it started")
            return
        self.running = True
        self._stop_event = trio.Event()
        self._dispatch.start()
        server = None
        try:
            await self._load_store()
            self._open_http()
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
                nursery.start_soon(self._dispatch.schedule_loop)
                nursery.start_soon(self._control_loop)
                nursery.start_soon(self._store_loop)
                work_done = trio.Event()
                work_scope = trio.CancelScope()
                nursery.start_soon(self._dispatch.run_workers, work_scope, work_done)
                await self._stop_event.wait()
                await self._dispatch.drain(self.shutdown_grace_s, work_scope, work_done)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._flush_store()
                if self._http is not None:
                    self._http_stats = self._http.statistics()
                    await self._http.aclose()
                    self._http = None
                    self._dispatch.http_for = self._dispatch.on_resize = None
            self.metrics.update(self.statistics(), self._steering, self._http_stats)
            if server is not None:
                # shutdown() waits for the server thread's next poll (up to
                # half a second): not on the event loop.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(server.shutdown)
                server.server_close()
                self.metrics_url = None
            self.running = False
            logger.info("engine stopped")

    def stop(self) -> None:
        """Stop gracefully: start nothing new, let in-flight runs finish.

        Runs still going after ``shutdown_grace`` are cancelled. Called
        before ``run()`` began, the next ``run()`` returns at once.
        """
        if not self.running or self._stop_event is None:
            self._stopped_early = True
            return
        if not self._dispatch.stopping:
            logger.info(
                "engine stopping: %d runs in flight, grace %.1fs",
                self._dispatch.busy_workers,
                self.shutdown_grace_s,
            )
        self._dispatch.stop()
        self._stop_event.set()

    def _open_http(self) -> None:
        # The client's own pool is as large as the worker pool may grow;
        # connection permits follow the pool's current size, so requests
        # queue for a connection (lag) rather than time out.
        layer = HttpLayer(
            self._limits,
            max_connections=self.max_workers,
            transport=self._http_transport,
            wall_clock=self._wall_clock,
        )
        layer.set_max_connections(self.pool_size)
        self._http = layer
        self._dispatch.on_resize = layer.set_max_connections

        def http_for(state: TargetState, deadline: float) -> TargetHttp:
            task = state.task
            return layer.for_target(
                task.name, state.key, state.args, task.policy.limits, deadline
            )

        self._dispatch.http_for = http_for

    def _serve_metrics(self, address: str) -> Any:
        host, port = parse_address(address)
        try:
            server, _thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {address!r}: {exc.strerror or exc}"
            ) from None
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
        leaving = task.leaving.pop(key, None)
        if leaving is not None:
            # The same list: the old run's end takes its deadline out of
            # it, and until then the overlap policy sees it running.
            state.deadlines = leaving.deadlines
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
        for key in [k for k, s in task.leaving.items() if not s.deadlines]:
            del task.leaving[key]
        if state.deadlines:
            task.leaving[state.key] = state
        if self._http is not None:
            self._http.forget(task.name, state.key)
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
        ops = self._store_ops
        while ops:
            op, value = ops.popleft()
            if op == "put":
                await self.store.put_target(value)
            else:
                await self.store.remove_target(*value)
            # A store that never blocks (memory) must still let runs start
            # while a bulk change of many targets is written.
            await trio.lowlevel.checkpoint()

    # -- the schedule --------------------------------------------------------

    def _start_schedules(self) -> None:
        now = trio.current_time()
        self._origin = now - self._wall_clock()
        self._dispatch.origin = self._origin
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
        state.interval_s = interval
        due = first_due(now, interval, state.phase_fraction(interval), self._origin)
        state.next_due = due
        self._dispatch.push_timer(due, state, 0)

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
            now = trio.current_time()
            if self._http is not None:
                self._http_stats = self._http.statistics()
                self._apply_server_floors(self._http.min_intervals(), now)
            self._steering.step(
                now, self.tasks.values(), self._dispatch, self._budgets()
            )
            for task in self.tasks.values():
                self._dispatch.retime(task, now)
            self.metrics.update(
                await self._statistics_in_steps(), self._steering, self._http_stats
            )

    def _apply_server_floors(
        self, floors: Mapping[tuple[str, str], float], now: float
    ) -> None:
        """Hold each target to the least interval its server asked for.

        The floor is the target's own: the rest of its task keeps the
        planned interval. The controller sees a floor only where every
        target of a task has one (the least of them), as a bound on the
        whole task. A floor longer than the task's SLA-safe interval costs
        that target its SLA: a warning says so, once per value.
        """
        floored: set[TargetState] = set()
        for (name, key), floor in floors.items():
            task = self.tasks.get(name)
            state = None if task is None else task.targets.get(key)
            if state is None or state.removed:
                continue
            floored.add(state)
            if state.min_interval_s != floor:
                self._set_floor(state, floor, now)
        for state in self._floored - floored:
            if not state.removed:
                self._set_floor(state, 0.0, now)
        self._floored = floored

        least: dict[str, float] = {}
        count: Counter[str] = Counter()
        for state in floored:
            name = state.task.name
            count[name] += 1
            least[name] = min(least.get(name, math.inf), state.min_interval_s)
        for task in self.tasks.values():
            whole = task.name in least and count[task.name] == len(task.targets)
            task.min_interval_s = least[task.name] if whole else 0.0

    def _set_floor(self, state: TargetState, floor: float, now: float) -> None:
        state.min_interval_s = floor
        task = state.task
        if floor > task.sla_safe_interval_s:
            logger.warning(
                "%s[%s]: the server asks for polls at least %gs apart "
                "(X-Poll-Interval), longer than the %gs that keep its %gs "
                "SLA: this target will violate it",
                task.name,
                state.key,
                floor,
                task.sla_safe_interval_s,
                task.policy.sla_s,
            )
        self._dispatch.retime_target(state, now)

    def _budgets(self) -> dict[str, float | None]:
        """Requests per second each limit key allows, declared or learned.

        Only plain keys: a template's budget is per credential, enforced
        request by request, while the controller plans per task.
        """
        budgets: dict[str, float | None] = {
            name: spec.rate.per_s if spec.rate is not None else None
            for name, spec in self._limits.items()
            if "{" not in name
        }
        for stats in self._http_stats:
            if stats.key == stats.limit and "{" not in stats.key:
                budgets[stats.key] = stats.capacity_per_s
        return budgets

    @property
    def plan(self) -> ControlPlan | None:
        """The controller's latest plan (``None`` before the first period)."""
        return self._steering.plan

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
            pool_size=self._dispatch.pool_size,
            busy_workers=self._dispatch.busy_workers,
            ready=self._dispatch.ready_count,
            tasks=tasks,
            clock_jumps=self._clock_jumps,
            taken_at_unix_s=self._wall_clock(),
        )

    def _now(self) -> float:
        # The engine's time passes while it runs. Before its first run
        # nothing has been observed (every staleness reads 0, not the trio
        # clock's reading); after a run, the last reading stands.
        if self.running:
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
        if task not in self.tasks:
            raise UnknownTargetError(
                f"no task named {task!r}; tasks: {', '.join(sorted(self.tasks))}"
            )
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
            # As in the task's count of violating targets: a paused target
            # is not held to its SLA.
            within_sla=state.paused or staleness <= state.task.policy.sla_s,
            observed_s=state.account.observed_s,
            within_sla_s=state.account.within_s,
            runs=state.runs,
            failures_in_a_row=state.failures,
        )


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
