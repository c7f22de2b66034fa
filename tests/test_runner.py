"""Running from signals: the first stops gracefully, a second at once."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

import pytest
import trio

import slapoll
from slapoll import RunContext

EngineFactory = Callable[..., slapoll.Engine]


def long_running(engine: slapoll.Engine) -> None:
    @engine.task(sla="1h", every="1h", phase=0)
    async def report(ctx: RunContext) -> None:
        await trio.sleep(50)


async def test_sigterm_stops_gracefully_and_lets_the_run_finish(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """SIGTERM: nothing new starts; the run in flight finishes inside the
    grace period and counts as a success."""
    engine = engine_factory(shutdown_grace="100s")
    long_running(engine)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slapoll.run_until_signalled, engine)
        await trio.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    runs = engine.statistics().tasks["report"].runs
    assert runs["success"] == 1
    assert runs["cancelled"] == 0
    assert trio.current_time() == 50
    assert not engine.running


async def test_second_signal_cancels_the_runs_in_flight(
    autojump_clock: object,
    engine_factory: EngineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A second SIGINT does not wait for the grace period, and says so."""
    engine = engine_factory(shutdown_grace="100s")
    long_running(engine)

    with caplog.at_level(logging.INFO, logger="slapoll"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slapoll.run_until_signalled, engine)
            await trio.sleep(1)
            os.kill(os.getpid(), signal.SIGINT)
            await trio.sleep(1)
            os.kill(os.getpid(), signal.SIGINT)

    runs = engine.statistics().tasks["report"].runs
    assert runs["cancelled"] == 1
    assert trio.current_time() < 3
    assert "SIGINT received again: cancelling 1 runs in flight" in caplog.text
