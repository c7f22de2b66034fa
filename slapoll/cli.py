"""The ``slapoll`` command: run an engine from a config file, check one, demo.

Exit codes: 0 done; 1 ``check`` found a problem with the config (the file,
the app it names, its metrics address); 2 a usage or config error (a busy
metrics port too) stopped ``run`` or ``demo`` before anything started.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import attrs
import click
import trio

from ._control import PoolSnapshot, plan
from ._durations import format_duration, parse_duration
from ._engine import DEFAULT_METRICS_ADDRESS, Engine
from ._http import resolve_key
from ._plan_text import (
    CredentialLimit,
    DeclaredTask,
    columns,
    declared_snapshot,
    render_plan,
)
from ._policy import TaskPolicy
from ._runner import run_until_signalled
from ._task import DEFAULT_TARGET_KEY, Task
from .config import (
    Address,
    Config,
    apply_config,
    check_metrics_address,
    declared_limits,
    is_template,
    load_config,
    load_engine,
)
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
# httpx logs every request at INFO with its full URL, query string and all
# (tokens in it would leak); httpcore logs connections at DEBUG. Below
# --log-level debug both keep to warnings.
_HTTP_LOGGERS = ("httpx", "httpcore")
# How a failed bind of the metrics address reads, by errno.
_BIND_ERRORS = {
    errno.EADDRINUSE: "is already in use",
    errno.EADDRNOTAVAIL: "is not an address of this machine",
    errno.EACCES: "is not allowed for this user",
}


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
            check_metrics_address(str(value))
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
@click.argument("config", type=click.Path(path_type=Path))
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

    Metrics are served on the config's metrics_address, else on
    127.0.0.1:9464. The first signal stops gracefully (in-flight runs get
    the shutdown grace); a second one cancels them at once.
    """
    try:
        _, engine = _load(config, metrics_address)
        address = engine.metrics_address
        if address is None:
            # Neither the option, the config nor the code chose: the default.
            address = DEFAULT_METRICS_ADDRESS
            engine.configure(metrics_address=address)
        _probe_metrics_address(address)
    except ConfigError as exc:
        _fail(exc, _EXIT_USAGE)

    logging.basicConfig(level=log_level.upper(), format=_LOG_FORMAT)
    # DEBUG, not NOTSET: slapoll quiets an httpx logger whose level is
    # unset when it opens its client.
    http_level = logging.DEBUG if log_level == "debug" else logging.WARNING
    for name in _HTTP_LOGGERS:
        logging.getLogger(name).setLevel(http_level)
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
@click.argument("config", type=click.Path(path_type=Path))
def check(config: Path) -> None:
    """Check CONFIG and print what would run; exit 1 if it is invalid.

    The metrics address must resolve; whether its port is free is left to
    `run` (the engine being checked may be the one serving it now).
    """
    try:
        loaded, engine = _load(config)
        _resolve_metrics_address(engine.metrics_address or DEFAULT_METRICS_ADDRESS)
        description = _describe(loaded, engine)
    except ConfigError as exc:
        _fail(exc, _EXIT_INVALID)

    click.echo(description)


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
    """Poll a local sandbox API and show the SLAs holding.

    Metrics are served on 127.0.0.1:9464 unless --metrics-address says
    otherwise.
    """
    # Imported here: the demo pulls in the sandbox, which no other command
    # needs.
    from .demo import run_demo

    try:
        _probe_metrics_address(metrics_address)
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


def _load(path: Path, metrics_address: str | None = None) -> tuple[Config, Engine]:
    """Read the config at *path*, import its engine and apply the config.

    A *metrics_address* given on the command line overrides the config's.
    """
    config = load_config(path)
    if metrics_address is not None:
        config = attrs.evolve(
            config,
            engine=attrs.evolve(
                config.engine, metrics_address=Address(metrics_address)
            ),
        )
    engine = load_engine(config)
    apply_config(config, engine)
    return config, engine


def _resolve_metrics_address(
    address: str,
) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    """The address family and socket address *address* resolves to first.

    That is the one ``prometheus_client`` binds. Raises ``ConfigError``
    when the host cannot be one or does not resolve.
    """
    host, port = check_metrics_address(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"metrics address {address} cannot be resolved ({reason})"
        ) from None
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, sockaddr


def _probe_metrics_address(address: str) -> None:
    """Bind *address* as the metrics server will, and let go of it at once.

    Raises ``ConfigError`` saying why it cannot be bound (in use, not an
    address of this machine), before the engine starts and fails deep
    inside its run.
    """
    family, sockaddr = _resolve_metrics_address(address)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            if os.name != "nt":
                # As http.server does: a port left in TIME_WAIT is free.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(sockaddr)
    except OSError as exc:
        what = _BIND_ERRORS.get(exc.errno or 0, "cannot be bound")
        raise ConfigError(
            f"metrics address {address} {what} ({exc.strerror or exc}); "
            "serve metrics elsewhere with --metrics-address HOST:PORT"
        ) from None


def _fail(error: ConfigError, code: int) -> NoReturn:
    click.echo(f"error: {error}", err=True)
    raise SystemExit(code)


# -- describing what would run ---------------------------------------------


def _describe(config: Config, engine: Engine) -> str:
    """What ``check`` prints: the engine's knobs, one row per task, the plan.

    The plan holds the tasks against the budgets declared for their limit
    keys, in the config or in code.
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

    # Short and two-line headings, and a line per limit key, keep the table
    # within 80 columns with every value whole.
    header = ("task", "sla", "every", "prio", "time-\nout", "re-\ntries")
    rows: list[tuple[str, ...]] = [(*header, "over-\nlap", "targets", "limits")]
    rows.extend(
        _task_row(task.name, task.policy, _targets(task))
        for task in engine.tasks.values()
    )
    lines.extend(columns(rows))
    lines.append("")
    lines.extend(_capacity_plan(config, engine))
    targets = sum(_targets(task) for task in engine.tasks.values())
    lines.append("")
    lines.append(f"ok: {len(engine.tasks)} tasks, {targets} targets declared in code")
    return "\n".join(lines)


def _declared_budgets(engine: Engine) -> dict[str, float | None]:
    """Requests per second each plain limit key may send, as declared.

    ``None`` for a key declared without a rate. Templates are left out:
    their budget is per credential, not one for all.
    """
    return {
        name: None if spec.rate is None else spec.rate.per_s
        for name, spec in declared_limits(engine).items()
        if not is_template(name)
    }


def _credential_limits(engine: Engine) -> list[CredentialLimit]:
    """Each limit key template, declared or drawn on, with its credentials.

    Credentials are the keys the template resolves to for the targets
    declared in code; only how many targets share one is kept.
    """
    declared = declared_limits(engine)
    names = {name for name in declared if is_template(name)}
    names.update(
        name
        for task in engine.tasks.values()
        for name in task.policy.limits
        if is_template(name)
    )
    limits = []
    for name in sorted(names):
        credentials: dict[str, Counter[str]] = {}
        for task in engine.tasks.values():
            if name not in task.policy.limits:
                continue
            for key, args in _declared_targets(task):
                resolved = resolve_key(name, args, task=task.name, target=key)
                credentials.setdefault(resolved.identity, Counter())[task.name] += 1
        spec = declared.get(name)
        budget = None if spec is None or spec.rate is None else spec.rate.per_s
        limits.append(CredentialLimit(name, budget, tuple(credentials.values())))
    return limits


def _declared_targets(task: Task) -> list[tuple[str, Mapping[str, object]]]:
    if not task.targets and not task.takes_arguments:
        return [(DEFAULT_TARGET_KEY, {})]
    return [(key, state.args) for key, state in task.targets.items()]


def _capacity_plan(config: Config, engine: Engine) -> list[str]:
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
    snapshot = declared_snapshot(
        declared, budgets_rps=_declared_budgets(engine), pool=pool
    )
    unknown = [task.name for task in declared if task.expected_duration_s is None]
    return render_plan(
        snapshot,
        plan(snapshot),
        unknown_durations=unknown,
        credential_limits=_credential_limits(engine),
    )


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
        timeout if policy.timeout_s is not None else f"{timeout} (sla)",
        str(policy.retries),
        policy.overlap,
        str(targets),
        "\n".join(policy.limits) or "-",
    )
