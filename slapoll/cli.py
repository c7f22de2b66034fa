"""The ``slapoll`` command: run an engine from a config file, check one, demo.

Exit codes: 0 done; 1 ``check`` found the config invalid; 2 a usage or
config error stopped ``run`` or ``demo`` before anything started.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import attrs
import click
import trio

from ._control import PoolSnapshot, plan
from ._durations import format_duration, parse_duration
from ._engine import DEFAULT_METRICS_ADDRESS, Engine, parse_address
from ._plan_text import DeclaredTask, columns, declared_snapshot, render_plan
from ._policy import TaskPolicy
from ._runner import run_until_signalled
from ._task import Task
from .config import Address, Config, apply_config, load_config, load_engine
from .errors import ConfigError

__all__ = ["main"]

# Exit status of a config (or usage) error, as click uses for usage errors.
_EXIT_USAGE = 2
# Exit status of ``check`` when the config is invalid: the answer is "no".
_EXIT_INVALID = 1
_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_LOG_LEVELS = ("debug", "info", "warning", "error")
# A few thousand targets: enough to show scheduling at scale, few enough for
# one process and the sandbox to share two cores.
_DEMO_TARGETS = 3000


class _DurationType(click.ParamType[float]):
    """A duration option such as ``30s`` or ``1m``, converted to seconds."""

    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value), name=self.name)
        except ConfigError as exc:
            self.fail(str(exc).removeprefix(f"{self.name} "), param, ctx)


class _AddressType(click.ParamType[str]):
    """A ``HOST:PORT`` option, kept as text once it has been checked."""

    name = "host:port"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        try:
            parse_address(str(value))
        except ConfigError as exc:
            self.fail(str(exc).removeprefix("metrics_address "), param, ctx)
        return str(value)


_DURATION = _DurationType()
_ADDRESS = _AddressType()


@click.group()
@click.version_option(package_name="slapoll")
def main() -> None:
    """Keep polled data fresh within its SLA."""


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--metrics-address",
    type=_ADDRESS,
    help="Serve Prometheus metrics here, overriding the config "
    f"(default when neither sets it: {DEFAULT_METRICS_ADDRESS}).",
)
@click.option(
    "--log-level",
    type=click.Choice(_LOG_LEVELS),
    default="info",
    show_default=True,
)
# Stops the engine gracefully after this long, as a signal would; for tests
# and for trying a config out.
@click.option("--duration", type=_DURATION, hidden=True)
def run(
    config: Path,
    metrics_address: str | None,
    log_level: str,
    duration: float | None,
) -> None:
    """Run the engine CONFIG names until SIGINT or SIGTERM.

    The first signal stops gracefully (in-flight runs get the shutdown
    grace); a second one cancels them at once.
    """
    try:
        engine = _prepare(config, metrics_address)
    except ConfigError as exc:
        _fail(exc, _EXIT_USAGE)

    logging.basicConfig(level=log_level.upper(), format=_LOG_FORMAT)
    trio.run(_run_engine, engine, duration)


async def _run_engine(engine: Engine, duration_s: float | None) -> None:
    if duration_s is None:
        await run_until_signalled(engine)
        return

    async def stop_later() -> None:
        await trio.sleep(duration_s)
        engine.stop()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_later)
        await run_until_signalled(engine)
        nursery.cancel_scope.cancel()


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
def check(config: Path) -> None:
    """Check CONFIG and print what would run; exit 1 if it is invalid."""
    try:
        loaded = load_config(config)
        engine = load_engine(loaded)
        apply_config(loaded, engine)
    except ConfigError as exc:
        _fail(exc, _EXIT_INVALID)

    click.echo(_describe(loaded, engine))


@main.command()
@click.option(
    "--duration",
    type=_DURATION,
    default=None,
    help="Stop after this long (default: run until Ctrl-C).",
)
@click.option(
    "--metrics-address",
    type=_ADDRESS,
    default=DEFAULT_METRICS_ADDRESS,
    show_default=True,
    help="Serve Prometheus metrics here.",
)
@click.option(
    "--targets",
    type=click.IntRange(min=1),
    default=_DEMO_TARGETS,
    show_default=True,
    help="How many feeds to keep fresh.",
)
def demo(duration: float | None, metrics_address: str, targets: int) -> None:
    """Poll a local sandbox API and show the SLAs holding."""
    # Imported here: the demo pulls in the sandbox, which no other command
    # needs.
    from .demo import run_demo

    try:
        trio.run(
            functools.partial(
                run_demo,
                duration_s=duration,
                metrics_address=metrics_address,
                targets=targets,
            )
        )
    except ConfigError as exc:
        _fail(exc, _EXIT_USAGE)


def _prepare(path: Path, metrics_address: str | None) -> Engine:
    config = load_config(path)
    if metrics_address is None and config.engine.metrics_address is None:
        metrics_address = DEFAULT_METRICS_ADDRESS
    if metrics_address is not None:
        config = attrs.evolve(
            config,
            engine=attrs.evolve(
                config.engine, metrics_address=Address(metrics_address)
            ),
        )
    engine = load_engine(config)
    apply_config(config, engine)
    return engine


def _fail(error: ConfigError, code: int) -> NoReturn:
    click.echo(f"error: {error}", err=True)
    raise SystemExit(code)


# -- describing what would run ---------------------------------------------


def _describe(
    config: Config,
    engine: Engine,
    budgets_rps: Mapping[str, float | None] | None = None,
) -> str:
    """What ``check`` prints: the engine's knobs, one row per task, the plan.

    *budgets_rps* are the limit keys' budgets in requests per second; by
    default those the config declares.
    """
    grace = format_duration(engine.shutdown_grace_s)
    period = format_duration(engine.control_period_s)
    lines = [
        f"config:  {config.path}",
        f"app:     {config.engine.app}",
        f"workers: {engine.pool_size} "
        f"(between {engine.min_workers} and {engine.max_workers})",
        f"control period {period}, shutdown grace {grace}",
        f"metrics: {engine.metrics_address or DEFAULT_METRICS_ADDRESS + ' (default)'}",
        "",
    ]

    header = ("task", "sla", "interval", "priority", "limits", "timeout")
    rows: list[tuple[str, ...]] = [(*header, "retries", "overlap", "targets")]
    rows.extend(
        _task_row(task.name, task.policy, _targets(task))
        for task in engine.tasks.values()
    )
    lines.extend(columns(rows))
    lines.append("")
    if budgets_rps is None:
        budgets_rps = _declared_budgets(config)
    lines.extend(_capacity_plan(config, engine, budgets_rps))
    targets = sum(_targets(task) for task in engine.tasks.values())
    lines.append("")
    lines.append(f"ok: {len(engine.tasks)} tasks, {targets} targets declared in code")
    return "\n".join(lines)


def _declared_budgets(config: Config) -> dict[str, float | None]:
    # Budgets from [limits.NAME] tables are not read yet: until the config
    # declares them, every limit key counts as unlimited in the plan, so a
    # budget too small for the SLAs goes unreported by `check`.
    return {}


def _capacity_plan(
    config: Config, engine: Engine, budgets_rps: Mapping[str, float | None]
) -> list[str]:
    """The controller's plan for the declared figures, as lines of text."""
    expected = config.expected_durations()
    declared = [
        DeclaredTask(task.name, task.policy, _targets(task), expected.get(task.name))
        for task in engine.tasks.values()
    ]
    pool = PoolSnapshot(
        min_size=engine.min_workers,
        max_size=engine.max_workers,
        size=engine.pool_size,
    )
    snapshot = declared_snapshot(declared, budgets_rps=budgets_rps, pool=pool)
    unknown = [task.name for task in declared if task.expected_duration_s is None]
    return render_plan(snapshot, plan(snapshot), unknown_durations=unknown)


def _targets(task: Task) -> int:
    # A task whose function takes no arguments gets its one target when the
    # engine starts.
    return len(task) or int(not task.takes_arguments)


def _task_row(name: str, policy: TaskPolicy, targets: int) -> tuple[str, ...]:
    every = policy.every_s
    timeout = format_duration(policy.effective_timeout_s)
    return (
        name,
        format_duration(policy.sla_s),
        "auto" if every is None else format_duration(every),
        str(policy.priority),
        ",".join(policy.limits) or "-",
        timeout if policy.timeout_s is not None else f"{timeout} (sla)",
        str(policy.retries),
        policy.overlap,
        str(targets),
    )
