"""The demo end to end: a short real-time run against the sandbox."""

from __future__ import annotations

import io
import signal

import pytest
import trio
from prometheus_client import CollectorRegistry
from rich.console import Console

from slapoll.demo import DEMO_TASKS, DemoResult, run_demo
from slapoll.errors import ConfigError

# Long enough for a few first runs (their phases spread them over each
# task's first interval), short enough to keep the suite fast.
SHORT_S = 1.5
# The demo's signal watch is installed well within this; the graceful stop
# then waits only for requests in flight (the sandbox caps latency at 8 s).
SIGNAL_AFTER_S = 1.0
STOP_WITHIN_S = 10.0


async def test_short_demo_polls_every_task_and_reports() -> None:
    """A short run polls the sandbox for all three tasks and shows the view."""
    out = io.StringIO()
    registry = CollectorRegistry()

    result = await run_demo(
        duration_s=SHORT_S,
        metrics_address=None,
        targets=30,
        registry=registry,
        console=Console(file=out, width=120),
    )

    assert result.runs > 0
    assert result.requests >= result.runs
    assert set(result.attainment) == {spec.name for spec in DEMO_TASKS}
    assert all(0.0 <= share <= 1.0 for share in result.attainment.values())
    assert result.elapsed_s >= SHORT_S
    text = out.getvalue()
    for spec in DEMO_TASKS:
        assert spec.name in text
    assert "workers" in text


async def test_ctrl_c_stops_an_endless_demo_gracefully() -> None:
    """Without a duration the demo runs until SIGINT, then drains and returns."""
    out = io.StringIO()
    result: list[DemoResult] = []

    async def demo() -> None:
        result.append(
            await run_demo(
                duration_s=None,
                metrics_address=None,
                targets=30,
                console=Console(file=out, width=120),
            )
        )

    with trio.fail_after(SIGNAL_AFTER_S + STOP_WITHIN_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(demo)
            await trio.sleep(SIGNAL_AFTER_S)
            signal.raise_signal(signal.SIGINT)

    assert result[0].runs > 0
    assert result[0].elapsed_s < SIGNAL_AFTER_S + STOP_WITHIN_S


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"targets": 0}, r"targets must be a whole number >= 1, got 0"),
        ({"duration_s": 0.0}, r"duration must be greater than 0, got 0\.0"),
        ({"duration_s": -5.0}, r"duration must be greater than 0, got -5\.0"),
    ],
)
async def test_bad_options_fail_before_anything_starts(
    options: dict[str, float], message: str
) -> None:
    """Nonsense sizes and durations raise ConfigError naming the value."""
    kwargs: dict[str, object] = {"duration_s": 1.0, "metrics_address": None}
    kwargs.update(options)

    with pytest.raises(ConfigError, match=message):
        await run_demo(**kwargs)  # type: ignore[arg-type]
