"""The capacity plan as text, for ``slapoll check``: pure, no I/O.

``declared_snapshot`` builds a controller snapshot from what a config
declares (policies, target counts, expected durations, budgets) instead of
what was measured; ``render_plan`` turns the plan for it into lines: per
task the interval it would get and whether its SLA holds, per limit key the
demand against the budget, the pool size and the replicas needed.

A limit key template (``"github:{account}"``) has one budget per
credential, which the controller does not plan for: its requests wait
for budget instead. The plan shows it apart, holding the busiest
credential's demand at the planned intervals against its budget.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence

import attrs

from ._control import (
    CAUSE_BUDGET,
    CAUSE_MARGINS,
    CAUSE_MIN_INTERVAL,
    CAUSE_WORKERS,
    POOL_HEADROOM_FRACTION,
    ControlPlan,
    ControlSnapshot,
    KeyPlan,
    LimitSnapshot,
    PoolSnapshot,
    TaskSnapshot,
)
from ._policy import TaskPolicy

__all__ = [
    "CredentialLimit",
    "DeclaredTask",
    "columns",
    "declared_snapshot",
    "format_rate",
    "render_plan",
]

# What `check` prints is read in terminals: 80 columns, the usual default.
_LINE_WIDTH = 80
# Why a task would miss its SLA, as the plan's last column says it.
_CAUSE_TEXT = {
    CAUSE_BUDGET: "no: over budget",
    CAUSE_MARGINS: "no: runs outlast it",
    CAUSE_MIN_INTERVAL: "no: server minimum",
    CAUSE_WORKERS: "no: too few workers",
}
# A task drawing on a credential whose budget its targets there outgrow.
_CREDENTIAL_SHORT_TEXT = "no: credential over budget"
# Rates are shown per second, per minute or per hour, whichever first gives
# at least one request: "1.389/s", "30/m", "3.6/h".
_RATE_UNITS = (("s", 1.0), ("m", 60.0), ("h", 3600.0))
# Under a second, times read best in milliseconds; from two minutes on, in
# whole seconds split into hours, minutes and seconds.
_MS_PER_S = 1000.0
_WHOLE_SECONDS_FROM_S = 120.0
_SPAN_UNITS = (("h", 3600), ("m", 60), ("s", 1))
# Figures are shown to four significant digits: enough to check the
# arithmetic by hand, few enough to read at a glance.
_DIGITS = 4
# A demand this close above a budget still fits it: float sums of equal
# rates need not add up exactly.
_FIT_TOLERANCE = 1e-9


@attrs.frozen
class DeclaredTask:
    """One task as a config declares it, before anything was measured.

    ``targets`` counts the targets declared in code. ``expected_duration_s``
    is the config's guess at one run's duration; ``None`` when not given.
    """

    name: str
    policy: TaskPolicy
    targets: int
    expected_duration_s: float | None = None


@attrs.frozen
class CredentialLimit:
    """A limit key template, whose every credential has a budget of its own.

    ``budget_rps`` is each credential's declared rate (``None``: none
    declared). ``credentials`` has one entry per credential the targets
    declared in code resolve to: how many targets of each task draw on it.
    The credentials themselves are never kept.
    """

    name: str
    budget_rps: float | None
    credentials: tuple[Mapping[str, int], ...] = ()


@attrs.frozen
class _CredentialDemand:
    limit: CredentialLimit
    busiest_rps: float
    busiest_at_sla_rps: float
    tasks: tuple[str, ...]

    @property
    def deficit_rps(self) -> float:
        budget = self.limit.budget_rps
        if budget is None or self.busiest_at_sla_rps <= budget * (1 + _FIT_TOLERANCE):
            return 0.0
        return self.busiest_at_sla_rps - budget


def declared_snapshot(
    tasks: Iterable[DeclaredTask],
    *,
    budgets_rps: Mapping[str, float | None],
    pool: PoolSnapshot,
) -> ControlSnapshot:
    """A snapshot of declared figures, as if nothing had been measured yet.

    An expected duration stands for both the mean and the margin of the
    durations (there is nothing to take a quantile of); lag is taken as 0.
    A task without one counts as instant for the pool and its SLA-safe
    bound; the plan says so.
    """
    snapshots = tuple(
        TaskSnapshot.from_policy(
            task.name,
            task.policy,
            targets=task.targets,
            duration_margin_s=task.expected_duration_s or 0.0,
            duration_mean_s=task.expected_duration_s or 0.0,
        )
        for task in tasks
    )
    limits = tuple(LimitSnapshot(name, rps) for name, rps in budgets_rps.items())
    return ControlSnapshot(now_s=0.0, tasks=snapshots, limits=limits, pool=pool)


def render_plan(
    snapshot: ControlSnapshot,
    plan: ControlPlan,
    *,
    unknown_durations: Sequence[str] = (),
    credential_limits: Sequence[CredentialLimit] = (),
) -> list[str]:
    """The lines ``check`` prints for *plan*, made from *snapshot*.

    *unknown_durations* names tasks whose duration nobody declared, so the
    reader knows which figures assume instant runs. *credential_limits*
    are the limit key templates, shown per credential rather than as keys.
    """
    demands = [_credential_demand(snapshot, plan, limit) for limit in credential_limits]
    short = {task for demand in demands if demand.deficit_rps for task in demand.tasks}
    templates = {limit.name for limit in credential_limits}
    keys = [key for key in plan.keys if key.name not in templates]
    lines = ["capacity plan, from the declared figures:"]
    lines.extend(_task_table(snapshot, plan, set(unknown_durations), short))
    if keys:
        lines.append("")
        lines.extend(_key_table(keys))
    if demands:
        lines.append("")
        lines.extend(_credential_table(demands))
    lines.append("")
    lines.extend(_pool_lines(snapshot, plan))
    if unknown_durations:
        names = ", ".join(sorted(unknown_durations))
        unknown = f"no expected_duration for {names}: their runs count as instant;"
        # Many names break onto more lines, whole, not past the width.
        lines.extend(
            textwrap.wrap(
                unknown,
                width=_LINE_WIDTH,
                subsequent_indent="  ",
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
        lines.append("  set expected_duration in [tasks.NAME] for a truer plan")
    lines.append(_verdict(plan, demands))
    return lines


def _task_table(
    snapshot: ControlSnapshot,
    plan: ControlPlan,
    unknown: set[str],
    credential_short: set[str],
) -> list[str]:
    rows = [("task", "targets", "duration", "interval", "sla-safe", "sla kept")]
    # In the snapshot's order, which for `check` is the order of declaration.
    for declared in snapshot.tasks:
        task = plan.task(declared.name)
        duration = "?" if task.name in unknown else _seconds(declared.duration_mean_s)
        if task.cause is not None:
            kept = _CAUSE_TEXT[task.cause]
        elif task.name in credential_short:
            kept = _CREDENTIAL_SHORT_TEXT
        else:
            kept = "yes"
        rows.append(
            (
                task.name,
                str(declared.targets),
                duration,
                _seconds(task.interval_s),
                _seconds(task.sla_safe_interval_s),
                kept,
            )
        )
    return columns(rows)


def _key_table(keys: Sequence[KeyPlan]) -> list[str]:
    rows = [("limit", "budget", "demand", "at sla-safe", "fits")]
    for key in keys:
        if key.budget_rps is None:
            budget, fits = "unlimited", "yes"
        else:
            budget = format_rate(key.budget_rps)
            fits = (
                "yes" if key.feasible else f"no: {format_rate(key.deficit_rps)} short"
            )
        rows.append(
            (
                key.name,
                budget,
                format_rate(key.demand_rps),
                format_rate(key.demand_at_sla_rps),
                fits,
            )
        )
    return columns(rows)


def _credential_demand(
    snapshot: ControlSnapshot, plan: ControlPlan, limit: CredentialLimit
) -> _CredentialDemand:
    """The busiest credential's demand at the planned and SLA-safe intervals."""
    per_run = {task.name: task.requests_per_run for task in snapshot.tasks}
    planned = {task.name: task.interval_s for task in plan.tasks}
    safe = {task.name: task.sla_safe_interval_s for task in plan.tasks}

    def demand(targets: Mapping[str, int], intervals: Mapping[str, float]) -> float:
        return sum(n * per_run[task] / intervals[task] for task, n in targets.items())

    tasks = sorted({task for targets in limit.credentials for task in targets})
    return _CredentialDemand(
        limit,
        busiest_rps=max((demand(c, planned) for c in limit.credentials), default=0.0),
        busiest_at_sla_rps=max(
            (demand(c, safe) for c in limit.credentials), default=0.0
        ),
        tasks=tuple(tasks),
    )


def _credential_table(demands: Sequence[_CredentialDemand]) -> list[str]:
    rows = [
        ("per credential", "budget", "credentials", "busiest", "at sla-safe", "fits")
    ]
    for demand in demands:
        limit = demand.limit
        if limit.budget_rps is None:
            budget, fits = "unlimited", "yes"
        else:
            budget = format_rate(limit.budget_rps)
            deficit = demand.deficit_rps
            fits = f"no: {format_rate(deficit)} short" if deficit else "yes"
        rows.append(
            (
                limit.name,
                budget,
                str(len(limit.credentials)),
                format_rate(demand.busiest_rps),
                format_rate(demand.busiest_at_sla_rps),
                fits,
            )
        )
    return columns(rows)


def _pool_lines(snapshot: ControlSnapshot, plan: ControlPlan) -> list[str]:
    pool, bounds = plan.pool, snapshot.pool
    law = (
        f"  Little's law: {_number(pool.needed_concurrency)} busy on average, "
        f"{pool.unbounded_size} with {POOL_HEADROOM_FRACTION:.0%} headroom"
    )
    lines = [
        f"workers needed: {pool.wanted_size} "
        f"(between {bounds.min_size} and {bounds.max_size})",
        law,
    ]
    if pool.unbounded_size > bounds.max_size:
        lines.append("  that is more than max_workers: add replicas or raise it")
    if pool.short:
        lines.append(
            f"  every SLA needs {pool.workers_missing} more: low priorities "
            "are stretched to fit"
        )
    lines.append(
        f"desired replicas: {plan.desired_replicas} "
        f"(at most {bounds.ceiling} workers per process)"
    )
    return lines


def _verdict(plan: ControlPlan, demands: Sequence[_CredentialDemand]) -> str:
    short = [demand for demand in demands if demand.deficit_rps]
    if plan.feasible and not short:
        return "plan: every SLA can be kept"
    missing = [
        f"{key.name} short by {format_rate(key.deficit_rps)}"
        for key in plan.keys
        if not key.feasible
    ]
    if plan.pool.short:
        missing.append(f"{plan.pool.workers_missing} workers short")
    missing.extend(
        f"{demand.limit.name} short by {format_rate(demand.deficit_rps)} "
        "for its busiest credential"
        for demand in short
    )
    # The controller does not stretch intervals for a credential's budget:
    # its requests wait instead, and every task drawing on it may run late.
    at_risk = {task.name for task in plan.tasks if not task.sla_feasible}
    at_risk.update(task for demand in short for task in demand.tasks)
    losing = [task.name for task in plan.tasks if task.name in at_risk]
    text = f"plan: SLA at risk for {', '.join(losing)}"
    return f"{text} ({'; '.join(missing)})" if missing else text


def format_rate(rps: float) -> str:
    """Render requests per second in the unit that gives at least one."""
    for unit, period_s in _RATE_UNITS:
        if rps * period_s >= 1:
            return f"{_number(rps * period_s)}/{unit}"
    return f"{_number(rps * _RATE_UNITS[-1][1])}/{_RATE_UNITS[-1][0]}"


def _seconds(value_s: float) -> str:
    if value_s < 1:
        return f"{_number(value_s * _MS_PER_S)}ms"
    if value_s < _WHOLE_SECONDS_FROM_S:
        return f"{_number(value_s)}s"
    # Longer spans in whole seconds, split into units: "4m58s", "2h30m".
    rest = round(value_s)
    parts = []
    for unit, size in _SPAN_UNITS:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _number(value: float) -> str:
    # Four significant digits without falling into exponent notation.
    if abs(value) >= 10**_DIGITS:
        return f"{value:.0f}"
    return f"{value:.{_DIGITS}g}"


def columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Align *rows* of cells into left-justified columns, two spaces apart.

    The first row holds the headings. Any cell may break into lines, so
    that a column need not be as wide as its longest line could have made
    it: a heading's lines stack upwards (``"re-"`` above ``"tries"``),
    shorter headings sitting on the last line, next to the values; a
    value's lines run downwards (one limit key a line).
    """
    head, *body = rows
    table = _cell_lines(head, upwards=True)
    for row in body:
        table.extend(_cell_lines(row, upwards=False))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return [
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in table
    ]


def _cell_lines(row: tuple[str, ...], *, upwards: bool) -> list[tuple[str, ...]]:
    """*row* as rows of one line each, its cells' lines split among them."""
    cells = [cell.split("\n") for cell in row]
    depth = max(len(lines) for lines in cells)
    padded = [
        [""] * (depth - len(lines)) + lines
        if upwards
        else lines + [""] * (depth - len(lines))
        for lines in cells
    ]
    return [tuple(lines[i] for lines in padded) for i in range(depth)]
