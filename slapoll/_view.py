"""The demo's live terminal view: one row per task, a footer for the engine.

``render`` is a pure function of snapshots (the statistics, the
controller's plan, the sandbox's counts), so tests can print it to a
``Console`` writing into a string, and the demo can redraw it as often as
it likes. Each task shows the interval the controller chose beside the
longest interval that still keeps its SLA; the footer shows the pool the
controller wants beside the one running, each limit key's planned demand
against its budget (and what is missing when it does not fit), and the
429s the API sent.
"""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ._control import ControlPlan, KeyPlan, TaskPlan
from ._stats import EngineStatistics, TaskStatistics
from .sandbox import SandboxStatistics

__all__ = ["render"]

# Attainment at or above this share is shown green, and at or above the
# second yellow; below both, red. Four and two nines are the common tiers.
ATTAINMENT_GOOD = 0.999
ATTAINMENT_FAIR = 0.99
# The columns after the task's name.
_COLUMNS = (
    "targets",
    "SLA",
    "inter-\nval",
    "SLA-\nsafe",
    "attain-\nment",
    "violat-\ning",
    "worst\nstale",
    "lag\np99",
    "runs\nok/err/to",
)
# Between the items of a footer line.
_SEPARATOR = " · "
# Durations below one second read better in milliseconds.
_MS_PER_S = 1000.0


def render(
    stats: EngineStatistics,
    *,
    requests_per_s: float,
    sandbox: SandboxStatistics | None,
    elapsed_s: float | None = None,
    plan: ControlPlan | None = None,
    metrics_url: str | None = None,
) -> RenderableType:
    """Return the view of one moment: the task table above the footer.

    *requests_per_s* is the request rate the caller measured (the view keeps
    no history); *sandbox* adds the API's 429 and 304 counts when given;
    *elapsed_s*, how long the caller has been running, heads the footer;
    *plan*, the controller's latest, adds each task's SLA-safe interval,
    the pool's target size and the limit keys (before the first plan they
    read "-"); *metrics_url*, where metrics are served, follows the title.
    """
    footer = _footer(stats, requests_per_s, sandbox, elapsed_s, plan)
    return Group(_task_table(stats, plan, metrics_url), footer)


def _task_table(
    stats: EngineStatistics, plan: ControlPlan | None, metrics_url: str | None
) -> Table:
    count = len(stats.tasks)
    tasks = {0: "no tasks", 1: "1 task"}.get(count, f"{count} tasks")
    title = f"slapoll: {tasks}"
    if metrics_url is not None:
        title += f" · metrics on {metrics_url}"
    # Headings of two short lines and a light frame, so that every column
    # fits in 80 terminal columns with its values whole.
    table = Table(
        title=title,
        title_justify="left",
        expand=False,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("task", no_wrap=True)
    for name in _COLUMNS:
        table.add_column(name, justify="right", no_wrap=True)

    plans = {} if plan is None else {t.name: t for t in plan.tasks}
    for task in _by_priority(stats):
        table.add_row(*_task_row(task, plans.get(task.name)))
    return table


def _by_priority(stats: EngineStatistics) -> list[TaskStatistics]:
    return sorted(stats.tasks.values(), key=lambda t: (-t.priority, t.name))


def _task_row(task: TaskStatistics, plan: TaskPlan | None) -> list[RenderableType]:
    runs = task.runs
    outcomes = (runs.get("success", 0), runs.get("error", 0), runs.get("timeout", 0))
    stale_style = "red" if task.worst_staleness_s > task.sla_s else ""
    violating_style = "red" if task.violating else ""
    targets = f"{task.targets}"

    # Text, not markup strings: a task name such as "[x]" is shown as is.
    return [
        Text(task.name),
        targets,
        _duration(task.sla_s),
        _duration(task.interval_s),
        _sla_safe(plan),
        _attainment(task.attainment),
        Text(str(task.violating), style=violating_style),
        Text(_duration(task.worst_staleness_s), style=stale_style),
        _duration(task.lag_p99_s),
        "/".join(_count(n) for n in outcomes),
    ]


def _count(n: int) -> str:
    """A count in at most five characters: ``9999``, ``22.4k``, ``1.2M``."""
    if n < 10_000:
        return str(n)
    if n < 999_500:
        return f"{n / 1000:.1f}k" if n < 99_950 else f"{n / 1000:.0f}k"
    return f"{n / 1_000_000:.1f}M"


def _footer(
    stats: EngineStatistics,
    requests_per_s: float,
    sandbox: SandboxStatistics | None,
    elapsed_s: float | None,
    plan: ControlPlan | None,
) -> Text:
    # One line for the engine, one for the API: each fits 80 columns, so
    # neither wraps in the middle of an item.
    parts = [] if elapsed_s is None else [f"up {elapsed_s:.1f}s"]
    target = "-" if plan is None else str(plan.pool.target_size)
    parts += [
        f"workers {stats.busy_workers}/{stats.pool_size} busy",
        f"pool target {target}",
        f"ready {stats.ready}",
        f"{requests_per_s:.1f} req/s",
    ]
    footer = Text(_SEPARATOR.join(parts))
    paused = [f"{t.name} {t.paused}" for t in _by_priority(stats) if t.paused]
    if paused:
        footer.append("\npaused targets  " + _SEPARATOR.join(paused))
    if plan is not None and plan.pool.short:
        footer.append(
            f"\npool short by {plan.pool.workers_missing} workers for every "
            "SLA: low priorities stretched",
            style="red",
        )
    if sandbox is not None:
        counts = (
            f"429s {sandbox.too_many}",
            f"304s {sandbox.not_modified}",
            f"requests {sandbox.requests}",
        )
        footer.append("\nsandbox  " + _SEPARATOR.join(counts))
    # A template's budget is per credential, enforced request by request;
    # the plan sums its demand as if it were one key, which reads wrong.
    keys = [] if plan is None else [k for k in plan.keys if "{" not in k.name]
    if keys:
        footer.append("\nlimits  ")
        for i, key in enumerate(keys):
            footer.append(_SEPARATOR if i else "")
            footer.append_text(_key(key))
    return footer


def _key(key: KeyPlan) -> Text:
    """``api 120/150 req/s``; a key that does not fit shows what it lacks."""
    budget = "unlimited" if key.budget_rps is None else f"{key.budget_rps:.1f}"
    text = Text(f"{key.name} {key.demand_rps:.1f}/{budget} req/s")
    if not key.feasible:
        text.append(f" short {key.deficit_rps:.1f} req/s", style="red")
    return text


def _sla_safe(plan: TaskPlan | None) -> Text:
    """The longest interval that keeps the SLA; red when it cannot be kept."""
    if plan is None:
        return Text("-")
    style = "" if plan.sla_feasible else "red"
    return Text(_duration(plan.sla_safe_interval_s), style=style)


def _attainment(share: float) -> Text:
    if share >= ATTAINMENT_GOOD:
        style = "green"
    elif share >= ATTAINMENT_FAIR:
        style = "yellow"
    else:
        style = "red"
    return Text(f"{share:.2%}", style=style)


def _duration(seconds: float) -> str:
    """Short human form: ``850ms``, ``12.3s``, ``30s``."""
    if seconds < 1:
        return f"{seconds * _MS_PER_S:.0f}ms"
    if seconds.is_integer():
        return f"{seconds:.0f}s"
    return f"{seconds:.1f}s"
