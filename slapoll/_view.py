"""The demo's live terminal view: one row per task, a footer for the engine.

``render`` is a pure function of snapshots, so tests can print it to a
``Console`` writing into a string, and the demo can redraw it as often as
it likes.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ._stats import EngineStatistics, TaskStatistics
from .sandbox import SandboxStatistics

__all__ = ["render"]

# Attainment at or above this share is shown green, and at or above the
# second yellow; below both, red. Four and two nines are the common tiers.
ATTAINMENT_GOOD = 0.999
ATTAINMENT_FAIR = 0.99
# Durations below one second read better in milliseconds.
_MS_PER_S = 1000.0


def render(
    stats: EngineStatistics,
    *,
    requests_per_s: float,
    sandbox: SandboxStatistics | None,
    elapsed_s: float | None = None,
) -> RenderableType:
    """Return the view of one moment: the task table above the footer.

    *requests_per_s* is the request rate the caller measured (the view keeps
    no history); *sandbox* adds the API's 429 and 304 counts when given;
    *elapsed_s*, how long the caller has been running, heads the footer.
    """
    footer = _footer(stats, requests_per_s, sandbox, elapsed_s)
    return Group(_task_table(stats), footer)


def _task_table(stats: EngineStatistics) -> Table:
    count = len(stats.tasks)
    tasks = {0: "no tasks", 1: "1 task"}.get(count, f"{count} tasks")
    table = Table(
        title=f"slapoll: {tasks}",
        title_justify="left",
        expand=False,
    )
    table.add_column("task", no_wrap=True)
    for name in ("targets", "SLA", "interval", "attainment", "violating"):
        table.add_column(name, justify="right")
    for name in ("worst stale", "lag p99", "runs ok/err/timeout"):
        table.add_column(name, justify="right")

    for task in sorted(stats.tasks.values(), key=lambda t: (-t.priority, t.name)):
        table.add_row(*_task_row(task))
    return table


def _task_row(task: TaskStatistics) -> list[RenderableType]:
    runs = task.runs
    outcomes = (runs.get("success", 0), runs.get("error", 0), runs.get("timeout", 0))
    stale_style = "red" if task.worst_staleness_s > task.sla_s else ""
    violating_style = "red" if task.violating else ""
    targets = f"{task.targets}"
    if task.paused:
        targets += f" ({task.paused} paused)"

    # Text, not markup strings: a task name such as "[x]" is shown as is.
    return [
        Text(task.name),
        targets,
        _duration(task.sla_s),
        _duration(task.interval_s),
        _attainment(task.attainment),
        Text(str(task.violating), style=violating_style),
        Text(_duration(task.worst_staleness_s), style=stale_style),
        _duration(task.lag_p99_s),
        "/".join(str(n) for n in outcomes),
    ]


def _footer(
    stats: EngineStatistics,
    requests_per_s: float,
    sandbox: SandboxStatistics | None,
    elapsed_s: float | None,
) -> Text:
    parts = [] if elapsed_s is None else [f"up {elapsed_s:.1f}s"]
    parts += [
        f"workers {stats.busy_workers}/{stats.pool_size} busy",
        f"ready {stats.ready}",
        f"{requests_per_s:.1f} req/s",
    ]
    if sandbox is not None:
        parts += [
            f"429s {sandbox.too_many}",
            f"304s {sandbox.not_modified}",
            f"requests {sandbox.requests}",
        ]
    return Text("  ·  ".join(parts))


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
