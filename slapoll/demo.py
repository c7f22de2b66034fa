"""``slapoll demo``: keep thousands of feeds of a local sandbox API fresh.

The demo starts the sandbox (rate-limited per token, long-tailed latency,
ETags), declares three tasks with SLAs of 10 s, 30 s and 60 s, spreads the
targets across them, one token per target, and shows the engine keeping
its promises in a live terminal table until the duration ends or Ctrl-C.

The tasks talk to the sandbox through ``ctx.http``, the engine's shared
client: the sandbox's per-token limit is declared as a budget per token
(``"sandbox:{token}"``), so no request is sent that the sandbox would
refuse, and the layer sends each feed's ETag back, so unchanged feeds
cost a 304.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
from collections.abc import Iterator, Mapping

import attrs
import httpx
import trio
from prometheus_client import CollectorRegistry
from rich.console import Console, RenderableType
from rich.live import Live

from ._control import ControlPlan
from ._engine import Engine
from ._stats import EngineStatistics
from ._task import RunContext, Task
from ._view import render
from .errors import ConfigError
from .sandbox import (
    RATE_LIMIT_WINDOW_S,
    Sandbox,
    SandboxConfig,
    SandboxStatistics,
    serve_sandbox,
)

__all__ = ["DemoResult", "run_demo"]

# The pool the demo starts with; a few dozen concurrent requests at a mean
# latency of about 0.1 s is several hundred requests per second.
DEMO_WORKERS = 64
# The most the controller may grow it to. The sandbox needs a few dozen
# requests in flight; past that the shared client only gets slower (its
# connection pool scans every connection for every request), runs take
# longer, Little's law asks for still more workers, and a 40 s demo grew
# to 528 workers and lost the 10 s SLA.
DEMO_MAX_WORKERS = 64
# The view is redrawn this often: smooth enough to watch, cheap enough that
# a statistics sweep over all targets costs nothing noticeable.
REFRESH_PERIOD_S = 0.5
# The sandbox's limit per token, declared as a budget per token: each
# target polls with its own token, so each has its own budget.
PER_TOKEN_LIMIT = "sandbox:{token}"
# The whole API: nothing is declared (the sandbox has no global limit), but
# drawing on it puts the demand of all tasks in the plan as one figure.
API_LIMIT = "sandbox"


@attrs.frozen
class _DemoTask:
    name: str
    sla: str
    priority: int
    # Well above the sandbox's p99 latency (0.8 s), so only its rare tail
    # is cut off, and well under the SLA. A run cut off is retried once;
    # the controller keeps room for that in each interval.
    timeout: str
    retries: int = 1


DEMO_TASKS = (
    _DemoTask("urgent", sla="10s", priority=3, timeout="2s"),
    _DemoTask("normal", sla="30s", priority=2, timeout="5s"),
    _DemoTask("relaxed", sla="60s", priority=1, timeout="10s"),
)


@attrs.frozen
class DemoResult:
    """What a demo did: runs ended, requests the sandbox saw, SLA attainment.

    ``runs`` counts runs that ended, except skipped ones; ``attainment``
    maps each task to its share of target-seconds within the SLA.
    """

    elapsed_s: float
    runs: int
    requests: int
    too_many: int
    attainment: Mapping[str, float]


class _Poller:
    """The demo's task function: one GET of a feed through ``ctx.http``.

    The engine's client sends the feed's last ETag back, so an unchanged
    feed answers 304, a fresh poll.
    """

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url

    async def __call__(self, ctx: RunContext, token: str, feed: int) -> None:
        """Fetch one feed; 304 is a fresh poll, 4xx and 5xx raise."""
        headers = {"Authorization": f"Bearer {token}"}
        response = await ctx.http.get(f"{self._base_url}/feeds/{feed}", headers=headers)
        if response.status_code == httpx.codes.NOT_MODIFIED:
            return
        # Raises on 429 and 5xx (and 4xx), so the run counts as an error.
        response.raise_for_status()


def _declare_limits(engine: Engine, config: SandboxConfig) -> None:
    """Declare the sandbox's limits: its bucket per token, and the API."""
    engine.limit(
        PER_TOKEN_LIMIT,
        rate=config.rate_per_token,
        burst=config.burst,
        # X-RateLimit-Limit counts requests per minute, not per second.
        window=RATE_LIMIT_WINDOW_S,
    )


def _declare_tasks(engine: Engine, poller: _Poller, targets: int) -> list[Task]:
    """Declare the three demo tasks and deal *targets* out among them."""
    tasks = [
        engine.task(
            name=spec.name,
            sla=spec.sla,
            priority=spec.priority,
            timeout=spec.timeout,
            retries=spec.retries,
            limits=[API_LIMIT, PER_TOKEN_LIMIT],
        )(poller)
        for spec in DEMO_TASKS
    ]
    for i in range(targets):
        task: Task = tasks[i % len(tasks)]
        task.add_target(f"user:{i}", token=f"tok-{i}", feed=i)
    return tasks


async def run_demo(
    *,
    duration_s: float | None,
    metrics_address: str | None,
    targets: int = 3000,
    registry: CollectorRegistry | None = None,
    console: Console | None = None,
) -> DemoResult:
    """Run the demo for *duration_s* seconds (``None``: until Ctrl-C).

    The first Ctrl-C (or SIGTERM) stops the engine gracefully, letting
    in-flight runs finish; a second one cancels them. Metrics are served on
    *metrics_address* when given. Returns what the demo did.
    """
    if isinstance(targets, bool) or not isinstance(targets, int) or targets < 1:
        raise ConfigError(f"targets must be a whole number >= 1, got {targets!r}")
    if duration_s is not None and not duration_s > 0:
        raise ConfigError(f"duration must be greater than 0, got {duration_s!r}")
    console = Console() if console is None else console
    with _quiet_httpx():
        return await _run(duration_s, metrics_address, targets, registry, console)


@contextlib.contextmanager
def _quiet_httpx() -> Iterator[None]:
    """Silence httpx's INFO line per request, which would bury the view."""
    httpx_logger = logging.getLogger("httpx")
    level = httpx_logger.level
    httpx_logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        httpx_logger.setLevel(level)


async def _run(
    duration_s: float | None,
    metrics_address: str | None,
    targets: int,
    registry: CollectorRegistry | None,
    console: Console,
) -> DemoResult:
    engine = Engine(
        metrics_address=metrics_address,
        registry=registry,
        workers=DEMO_WORKERS,
        max_workers=DEMO_MAX_WORKERS,
    )
    config = SandboxConfig()
    started_s = trio.current_time()
    async with trio.open_nursery() as nursery:
        sandbox: Sandbox = await nursery.start(serve_sandbox, config)
        _declare_limits(engine, config)
        _declare_tasks(engine, _Poller(sandbox.url), targets)
        final = await _run_with_view(engine, sandbox, duration_s, console)
        nursery.cancel_scope.cancel()

    api = sandbox.statistics()
    return DemoResult(
        elapsed_s=trio.current_time() - started_s,
        runs=engine.statistics().runs_total,
        requests=api.requests,
        too_many=api.too_many,
        attainment={name: task.attainment for name, task in final.tasks.items()},
    )


async def _run_with_view(
    engine: Engine, sandbox: Sandbox, duration_s: float | None, console: Console
) -> EngineStatistics:
    """Run *engine* under the live view until the duration or a signal.

    Returns the statistics taken when the stop was asked for, which the
    last frame shows: while in-flight runs drain nothing new starts, so
    staleness grows for every target, and a frame drawn after the drain
    would show violations that never happened while the engine ran.
    """
    view = _View(engine, sandbox)
    stop_requested = trio.Event()
    deadline = math.inf if duration_s is None else trio.current_time() + duration_s

    with Live(view.frame(), console=console, auto_refresh=False) as live:
        async with trio.open_nursery() as nursery:

            async def run_engine() -> None:
                await engine.run()
                # Stopped and drained: the view and the signal watch end too.
                nursery.cancel_scope.cancel()

            nursery.start_soon(run_engine)
            nursery.start_soon(view.refresh_forever, live)
            nursery.start_soon(_watch_signals, stop_requested, nursery.cancel_scope)
            with trio.move_on_at(deadline):
                await stop_requested.wait()

            final = view.snapshot()
            engine.stop()
            if not engine.running:
                # A signal came before the engine even started: nothing is
                # in flight, so there is nothing to wait for.
                nursery.cancel_scope.cancel()
            await trio.sleep_forever()
        live.update(view.frame(final, final=True), refresh=True)
    if not console.is_terminal:
        # Rich ends a live view with a newline on a terminal only; piped,
        # the last line would run into whatever is written next.
        console.line()
    return final.engine


async def _watch_signals(
    stop_requested: trio.Event, cancel_on_second: trio.CancelScope
) -> None:
    """Set *stop_requested* at the first SIGINT or SIGTERM; cancel at the next.

    Off the main thread, where signals cannot be received, this does nothing
    and Ctrl-C raises ``KeyboardInterrupt`` as usual.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if stop_requested.is_set():
                cancel_on_second.cancel()
                return
            stop_requested.set()


@attrs.frozen
class _Snapshot:
    """The engine, its plan and the sandbox at one moment (engine clock)."""

    at_s: float
    engine: EngineStatistics
    plan: ControlPlan | None
    api: SandboxStatistics


class _View:
    """Snapshots for the live view, and the request rate between them."""

    def __init__(self, engine: Engine, sandbox: Sandbox) -> None:
        self._engine = engine
        self._sandbox = sandbox
        self._started_s = trio.current_time()
        self._last = (self._started_s, 0)
        self._rate = 0.0
        # Kept once known: the engine forgets it when it stops, and the
        # final frame still says where the metrics were.
        self._metrics_url: str | None = None

    def snapshot(self) -> _Snapshot:
        """Take the engine's statistics, its plan and the sandbox's now."""
        return _Snapshot(
            at_s=trio.current_time(),
            engine=self._engine.statistics(),
            plan=self._engine.plan,
            api=self._sandbox.statistics(),
        )

    def frame(
        self, snapshot: _Snapshot | None = None, *, final: bool = False
    ) -> RenderableType:
        """Render *snapshot* (by default one taken now).

        The request rate is over the last refresh period, or over the whole
        run up to the snapshot for the *final* frame.
        """
        now = self.snapshot() if snapshot is None else snapshot
        api = now.api
        elapsed_s = now.at_s - self._started_s
        last_at, last_requests = self._last
        if final and elapsed_s > 0:
            self._rate = api.requests / elapsed_s
        # A rate over a very short span is noise; keep the last one.
        elif now.at_s - last_at >= REFRESH_PERIOD_S / 2:
            self._rate = (api.requests - last_requests) / (now.at_s - last_at)
            self._last = (now.at_s, api.requests)
        self._metrics_url = self._engine.metrics_url or self._metrics_url
        return render(
            now.engine,
            requests_per_s=self._rate,
            sandbox=api,
            elapsed_s=elapsed_s,
            plan=now.plan,
            metrics_url=self._metrics_url,
        )

    async def refresh_forever(self, live: Live) -> None:
        """Redraw every ``REFRESH_PERIOD_S`` until cancelled."""
        while True:
            await trio.sleep(REFRESH_PERIOD_S)
            live.update(self.frame(), refresh=True)
