"""The demo's terminal view, rendered from hand-built snapshots."""

from __future__ import annotations

import io
import re
import types

import attrs
import pytest
from rich.console import Console, RenderableType

from slapoll._control import (
    ControlMemory,
    ControlPlan,
    KeyPlan,
    PoolPlan,
    TaskPlan,
)
from slapoll._stats import EngineStatistics, TaskStatistics
from slapoll._view import render
from slapoll.sandbox import SandboxStatistics

WIDTH = 120
RED, GREEN, RESET = re.escape("\x1b[31m"), re.escape("\x1b[32m"), re.escape("\x1b[0m")


def task_stats(name: str = "feed", **changes: object) -> TaskStatistics:
    fields: dict[str, object] = {
        "name": name,
        "sla_s": 30.0,
        "interval_s": 27.5,
        "priority": 1,
        "targets": 1000,
        "paused": 0,
        "violating": 0,
        "worst_staleness_s": 28.25,
        "staleness_p90_s": 20.0,
        "lag_mean_s": 0.01,
        "lag_p99_s": 0.25,
        "duration_mean_s": 0.1,
        "duration_p99_s": 0.9,
        "runs": {"success": 812, "error": 3, "timeout": 2, "skipped": 1},
        "missed": 0,
        "observed_s": 1000.0,
        "within_sla_s": 1000.0,
    }
    fields.update(changes)
    return TaskStatistics(**fields)  # type: ignore[arg-type]


def engine_stats(*tasks: TaskStatistics) -> EngineStatistics:
    return EngineStatistics(
        now_s=42.0,
        pool_size=64,
        busy_workers=12,
        ready=3,
        tasks={task.name: task for task in tasks},
        clock_jumps=0,
    )


SANDBOX = SandboxStatistics(
    port=1234,
    requests=5000,
    by_status=types.MappingProxyType({200: 4000, 304: 900, 429: 100}),
    too_many=100,
    not_modified=900,
)


def task_plan(name: str = "feed", **changes: object) -> TaskPlan:
    fields: dict[str, object] = {
        "name": name,
        "interval_s": 27.5,
        "sla_safe_interval_s": 28.75,
        "unconstrained_interval_s": 27.5,
        "sla_feasible": True,
        "cause": None,
    }
    fields.update(changes)
    return TaskPlan(**fields)  # type: ignore[arg-type]


def key_plan(name: str = "api", **changes: object) -> KeyPlan:
    fields: dict[str, object] = {
        "name": name,
        "budget_rps": 50.0,
        "demand_rps": 36.4,
        "demand_at_sla_rps": 34.8,
        "feasible": True,
        "deficit_rps": 0.0,
        "violating": (),
    }
    fields.update(changes)
    return KeyPlan(**fields)  # type: ignore[arg-type]


def control_plan(
    tasks: tuple[TaskPlan, ...] = (), keys: tuple[KeyPlan, ...] = ()
) -> ControlPlan:
    return ControlPlan(
        tasks=tasks,
        keys=keys,
        pool=PoolPlan(
            target_size=72,
            wanted_size=72,
            unbounded_size=72,
            needed_concurrency=57.3,
            saturation_limit=None,
        ),
        desired_replicas=1,
        decisions=(),
        memory=ControlMemory(pool_target_size=72, pool_changed_at_s=40.0),
    )


def text_of(
    renderable: RenderableType, *, color: bool = False, width: int = WIDTH
) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system="standard" if color else None)
    console.print(renderable)
    return out.getvalue()


def row_of(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"{name} "))


def cells_of(row: str) -> list[str]:
    """A row's cells: the table sets them apart by two spaces or more."""
    return re.split(r"\s{2,}", row.strip())


def test_row_shows_each_column_of_a_task() -> None:
    """A task's row carries targets, SLA, the chosen interval beside the
    SLA-safe one from the plan, attainment and the rest."""
    stats = engine_stats(task_stats("feed", within_sla_s=995.0))
    plan = control_plan(tasks=(task_plan("feed"),))

    view = render(stats, requests_per_s=0.0, sandbox=None, plan=plan)
    row = row_of(text_of(view), "feed")

    assert cells_of(row) == [
        "feed",
        "1000",
        "30s",
        "27.5s",
        "28.8s",
        "99.50%",
        "0",
        "28.2s",
        "250ms",
        "812/3/2",
    ]


def test_footer_shows_workers_rate_and_sandbox_counts() -> None:
    """Below the table: busy/total workers, request rate, 429s and 304s."""
    text = text_of(
        render(engine_stats(task_stats()), requests_per_s=153.25, sandbox=SANDBOX)
    )

    engine_line, sandbox_line = text.strip().splitlines()[-2:]
    assert "workers 12/64 busy" in engine_line
    assert "153.2 req/s" in engine_line
    assert sandbox_line == "sandbox  429s 100 · 304s 900 · requests 5000"


def test_footer_starts_with_elapsed_time_when_given() -> None:
    """The caller's running time, when it passes one, opens the footer."""
    stats = engine_stats(task_stats())

    text = text_of(render(stats, requests_per_s=0.0, sandbox=None, elapsed_s=19.96))

    assert text.strip().splitlines()[-1].startswith("up 20.0s")
    assert "up " not in text_of(render(stats, requests_per_s=0.0, sandbox=None))


def test_footer_without_sandbox_leaves_its_counts_out() -> None:
    """With no sandbox statistics the view shows only what the engine knows."""
    text = text_of(render(engine_stats(task_stats()), requests_per_s=1.0, sandbox=None))

    assert "429s" not in text
    assert "workers 12/64 busy" in text


def test_tasks_are_listed_by_priority_then_name() -> None:
    """The most important task comes first, so it is read first."""
    stats = engine_stats(
        task_stats("slow", priority=1),
        task_stats("fast", priority=3),
        task_stats("also-slow", priority=1),
    )

    text = text_of(render(stats, requests_per_s=0.0, sandbox=None))

    positions = [text.index(f"\n{name} ") for name in ("fast", "also-slow", "slow")]
    assert positions == sorted(positions)


def test_a_busy_view_fits_80_columns_with_nothing_cut_or_wrapped() -> None:
    """A common terminal width shows every heading and value whole, and no
    footer line wraps in the middle of an item, however busy the engine."""
    stats = attrs.evolve(
        engine_stats(
            task_stats("urgent", runs={"success": 123456, "error": 12, "timeout": 3}),
            task_stats("normal", targets=4000, paused=120),
        ),
        busy_workers=256,
        pool_size=256,
        ready=11227,
    )
    plan = control_plan(tasks=(task_plan("urgent"), task_plan("normal")))
    short = attrs.evolve(
        plan,
        pool=attrs.evolve(plan.pool, capacity=256.0, concurrency_at_sla=400.0),
    )

    text = text_of(
        render(
            stats, requests_per_s=1597.3, sandbox=SANDBOX, elapsed_s=1234.5, plan=short
        ),
        width=80,
    )

    assert "…" not in text
    # Counts past 9,999 are shortened, so the column stays narrow.
    assert cells_of(row_of(text, "urgent"))[-1] == "123k/12/3"
    lines = text.rstrip().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert [line.split()[0] for line in lines[-4:]] == [
        "up",
        "paused",
        "pool",
        "sandbox",
    ]


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (9999, "9999"),
        (10_000, "10.0k"),
        (22_362, "22.4k"),
        (99_949, "99.9k"),
        (99_950, "100k"),
        (999_499, "999k"),
        (999_500, "1.0M"),
        (12_345_678, "12.3M"),
    ],
)
def test_run_counts_are_at_most_five_characters(n: int, shown: str) -> None:
    stats = engine_stats(task_stats(runs={"success": n, "error": 0, "timeout": 0}))

    text = text_of(render(stats, requests_per_s=0.0, sandbox=None))

    assert cells_of(row_of(text, "feed"))[-1] == f"{shown}/0/0"


def test_nothing_observed_reads_as_full_attainment() -> None:
    """Before any time was observed, attainment shows 100%, not an error."""
    stats = engine_stats(task_stats(observed_s=0.0, within_sla_s=0.0))

    text = text_of(render(stats, requests_per_s=0.0, sandbox=None))

    assert "100.00%" in text


def test_paused_targets_and_missing_outcomes_are_shown() -> None:
    """Paused targets are counted below the table (the row keeps its
    width); outcomes never seen count as 0."""
    stats = engine_stats(task_stats(paused=7, runs={}))

    text = text_of(render(stats, requests_per_s=0.0, sandbox=None))

    assert cells_of(row_of(text, "feed"))[1] == "1000"
    assert cells_of(row_of(text, "feed"))[-1] == "0/0/0"
    assert "\npaused targets  feed 7\n" in text


def test_violations_are_coloured_red() -> None:
    """Violating targets, staleness past the SLA and low attainment are red."""
    stats = engine_stats(
        task_stats(
            violating=4, worst_staleness_s=41.0, within_sla_s=900.0, observed_s=1000.0
        )
    )

    output = text_of(render(stats, requests_per_s=0.0, sandbox=None), color=True)

    for cell in ("4", "41s", "90.00%"):
        assert re.search(rf"{RED}\s*{re.escape(cell)}{RESET}", output), cell


def test_a_task_keeping_its_sla_is_not_red() -> None:
    """Full attainment is green and nothing in the row is red."""
    output = text_of(
        render(engine_stats(task_stats()), requests_per_s=0.0, sandbox=None),
        color=True,
    )

    assert re.search(rf"{GREEN}\s*100.00%{RESET}", output)
    assert RED not in output


def test_task_names_are_not_read_as_markup() -> None:
    """A name with brackets is printed as written, not as a style."""
    stats = engine_stats(task_stats("[bold]feed"))

    text = text_of(render(stats, requests_per_s=0.0, sandbox=None))

    assert "[bold]feed" in text


def test_an_engine_without_tasks_renders() -> None:
    """An empty engine shows an empty table and its footer."""
    text = text_of(render(engine_stats(), requests_per_s=0.0, sandbox=None))

    assert "no tasks" in text
    assert "workers 12/64 busy" in text


def test_without_a_plan_the_sla_safe_interval_and_target_read_as_dashes() -> None:
    """Before the controller's first plan nothing is made up."""
    text = text_of(render(engine_stats(task_stats()), requests_per_s=0.0, sandbox=None))

    assert cells_of(row_of(text, "feed"))[4] == "-"
    assert "pool target -" in text
    assert "limits" not in text


def test_footer_shows_the_pool_target_beside_the_pool() -> None:
    """The size the controller wants next to the size running now."""
    plan = control_plan(tasks=(task_plan(),))

    text = text_of(
        render(engine_stats(task_stats()), requests_per_s=0.0, sandbox=None, plan=plan)
    )

    assert "workers 12/64 busy" in text
    assert "pool target 72" in text


def test_footer_says_how_many_workers_a_short_pool_lacks() -> None:
    """When the pool at its most cannot keep every SLA, the footer says by
    how much, beside the pool target."""
    plan = control_plan(tasks=(task_plan(),))
    short = attrs.evolve(
        plan,
        pool=attrs.evolve(plan.pool, capacity=64.0, concurrency_at_sla=88.5),
    )
    stats = engine_stats(task_stats())

    text = text_of(render(stats, requests_per_s=0.0, sandbox=None, plan=short))

    assert "pool short by 25 workers for every SLA" in text
    assert "short" not in text_of(
        render(stats, requests_per_s=0.0, sandbox=None, plan=plan)
    )


def test_footer_shows_each_keys_demand_against_its_budget() -> None:
    """Planned demand over budget per plain limit key; unlimited keys say
    so, and templates (a budget per credential) are left out."""
    plan = control_plan(
        tasks=(task_plan(),),
        keys=(
            key_plan("api"),
            key_plan("api:{token}", budget_rps=None),
            key_plan("search", budget_rps=None),
        ),
    )

    text = text_of(
        render(engine_stats(task_stats()), requests_per_s=0.0, sandbox=None, plan=plan)
    )

    limits = text.strip().splitlines()[-1]
    assert limits.startswith("limits")
    assert "api 36.4/50.0 req/s" in limits
    assert "search 36.4/unlimited req/s" in limits
    assert "short" not in limits
    assert "{token}" not in limits  # budgets per credential are not planned


def test_a_key_that_cannot_carry_its_tasks_shows_its_deficit_in_red() -> None:
    """An infeasible key names the requests per second it lacks, and the
    task it leaves without its SLA has its SLA-safe interval in red."""
    plan = control_plan(
        tasks=(task_plan(sla_feasible=False, cause="budget"),),
        keys=(key_plan("api", feasible=False, deficit_rps=12.5, violating=("feed",)),),
    )

    output = text_of(
        render(engine_stats(task_stats()), requests_per_s=0.0, sandbox=None, plan=plan),
        color=True,
    )

    assert re.search(rf"{RED}\s*short 12\.5 req/s{RESET}", output)
    assert re.search(rf"{RED}\s*28\.8s{RESET}", output)


def test_the_title_names_where_metrics_are_served() -> None:
    stats = engine_stats(task_stats())
    url = "http://127.0.0.1:40123/metrics"

    text = text_of(render(stats, requests_per_s=0.0, sandbox=None, metrics_url=url))

    assert text.splitlines()[0].rstrip() == f"slapoll: 1 task · metrics on {url}"
    assert "metrics on" not in text_of(render(stats, requests_per_s=0.0, sandbox=None))
