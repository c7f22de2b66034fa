"""The demo end to end: a short real-time run against the sandbox."""

from __future__ import annotations

import io
import re
import signal

import pytest
import trio
from prometheus_client import CollectorRegistry
from rich.console import Console

from slapoll._stats import EngineStatistics
from slapoll.demo import DEMO_TASKS, DemoResult, _run_with_view, run_demo
from slapoll.errors import ConfigError
from slapoll.sandbox import SandboxStatistics

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


class _SlowToStop:
    """An engine stand-in whose graceful stop takes ``DRAIN_S`` to drain."""

    def __init__(self) -> None:
        self.running = False
        self.plan = None
        self.metrics_url = None
        self._stop = trio.Event()

    async def run(self) -> None:
        self.running = True
        await self._stop.wait()
        await trio.sleep(DRAIN_S)
        self.running = False

    def stop(self) -> None:
        self._stop.set()

    def statistics(self) -> EngineStatistics:
        return EngineStatistics(
            now_s=trio.current_time(),
            pool_size=1,
            busy_workers=0,
            ready=0,
            tasks={},
            clock_jumps=0,
        )


class _QuietSandbox:
    """A sandbox stand-in that has answered nothing."""

    def statistics(self) -> SandboxStatistics:
        return SandboxStatistics(
            port=1, requests=0, by_status={}, too_many=0, not_modified=0
        )


# The stand-in's drain, long enough that a frame drawn after it shows it.
DRAIN_S = 10.0
RUN_S = 5.0


async def test_the_last_frame_shows_the_moment_stop_was_asked_for(
    autojump_clock: object,
) -> None:
    """Draining takes time in which staleness grows for every target; the
    last frame and the returned statistics are those taken at the stop."""
    out = io.StringIO()
    engine, sandbox = _SlowToStop(), _QuietSandbox()

    final = await _run_with_view(
        engine,  # type: ignore[arg-type]
        sandbox,  # type: ignore[arg-type]
        RUN_S,
        Console(file=out, width=120),
    )

    assert final.now_s == pytest.approx(RUN_S)
    assert trio.current_time() >= RUN_S + DRAIN_S
    last_footer = [line for line in out.getvalue().splitlines() if "up " in line][-1]
    assert "up 5.0s" in last_footer


async def test_the_view_says_where_metrics_are_served() -> None:
    """With port 0 the engine picks the port: the view names the URL, on
    every frame to the last, and the output ends with a newline."""
    out = io.StringIO()

    await run_demo(
        duration_s=SHORT_S,
        metrics_address="127.0.0.1:0",
        targets=3,
        registry=CollectorRegistry(),
        console=Console(file=out, width=80),
    )

    text = out.getvalue()
    last_frame = text[text.rindex("slapoll: 3 tasks") :]
    assert re.search(r"metrics on http://127\.0\.0\.1:[1-9][0-9]*/metrics", last_frame)
    assert text.endswith("\n")
