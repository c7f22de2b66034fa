"""Prometheus exposition: names, labels, values, and the served endpoint."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
import trio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import slapoll
from slapoll import RunContext

EngineFactory = Callable[..., slapoll.Engine]


def samples(
    engine: slapoll.Engine,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the engine's registry, keyed by name and labels."""
    text = generate_latest(engine.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_series_carry_task_and_outcome_labels_only(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """Runs, lag, duration and SLA series are labelled by task (and outcome),
    never by target key, and never show target arguments."""
    engine = engine_factory()

    @engine.task(sla="15s", every="10s", phase=0)
    async def feed(ctx: RunContext, token: str) -> None:
        await trio.sleep(1)
        if ctx.key == "user:2":
            raise RuntimeError("upstream error")

    for i in range(3):
        feed.add_target(f"user:{i}", token=f"tok-secret-{i}")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await trio.sleep(25.5)
        engine.stop()

    text = generate_latest(engine.registry).decode()
    assert "user:" not in text
    assert "tok-secret" not in text
    values = samples(engine)
    task = (("task", "feed"),)
    assert values["slapoll_runs_total", (("outcome", "success"), *task)] == 6
    assert values["slapoll_runs_total", (("outcome", "error"), *task)] == 3
    assert values["slapoll_run_duration_seconds_count", task] == 9
    assert values["slapoll_run_duration_seconds_sum", task] == pytest.approx(9.0)
    assert values["slapoll_run_lag_seconds_bucket", (("le", "0.001"), *task)] == 9
    assert values["slapoll_targets", task] == 3
    assert values["slapoll_targets_violating", task] == 1
    assert values["slapoll_sla_seconds", task] == 15
    assert values["slapoll_interval_seconds", task] == 10
    # The failing target is within its SLA for its first 15 s only.
    stats = engine.statistics().tasks["feed"]
    assert values["slapoll_sla_observed_seconds_total", task] == pytest.approx(
        stats.observed_s, rel=1e-6
    )
    assert values["slapoll_sla_met_seconds_total", task] == pytest.approx(
        stats.within_sla_s, rel=1e-6
    )
    assert stats.observed_s - stats.within_sla_s == pytest.approx(25.5 - 15.0)
    assert values["slapoll_pool_size", ()] == engine.pool_size


async def test_metrics_are_served_on_the_configured_address(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """With metrics_address set, the exposition is served over HTTP."""
    engine = engine_factory(metrics_address="127.0.0.1:0")

    @engine.task(sla="10s", every="5s")
    async def ping(ctx: RunContext) -> None:
        pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await trio.sleep(6)
        url = engine.metrics_url
        assert url is not None
        response = await trio.to_thread.run_sync(httpx.get, url)
        engine.stop()

    assert response.status_code == 200
    assert 'slapoll_runs_total{outcome="success",task="ping"}' in response.text
    assert engine.metrics_url is None


def test_each_engine_has_its_own_registry() -> None:
    """Two engines in one process do not collide on metric names."""
    first, second = slapoll.Engine(), slapoll.Engine()
    assert first.registry is not second.registry


async def test_a_pool_too_small_for_every_sla_exports_the_workers_missing(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """100 targets of 2 s runs with a 10 s SLA: at the SLA-safe bound without
    lag (10 - 2 s) they keep 25 workers busy; with 4 at most, 21 are missing."""
    engine = engine_factory(workers=4, min_workers=1, max_workers=4)

    @engine.task(sla="10s", every="5s")
    async def feed(ctx: RunContext, n: int) -> None:
        await trio.sleep(2)

    for n in range(100):
        feed.add_target(f"t{n}", n=n)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await trio.sleep(20.5)
        values = samples(engine)
        engine.stop()

    assert engine.plan is not None
    assert engine.plan.pool.workers_missing == 21
    assert values["slapoll_pool_workers_missing", ()] == 21
