"""Running an engine from synchronous code, stopping it on signals."""

from __future__ import annotations

import logging
import signal

import trio

from ._engine import Engine

__all__ = ["run", "run_until_signalled"]

logger = logging.getLogger("slapoll.engine")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run_until_signalled(engine: Engine) -> None:
    """Run *engine*; the first SIGINT/SIGTERM stops it gracefully.

    A second signal cancels what is still running at once.
    """
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:

            async def watch() -> None:
                count = 0
                async for signum in signals:
                    count += 1
                    name = signal.Signals(signum).name
                    if count == 1:
                        logger.info(
                            "%s received: stopping (a second signal cancels "
                            "the runs in flight)",
                            name,
                        )
                        engine.stop()
                    else:
                        logger.warning(
                            "%s received again: cancelling %d runs in flight",
                            name,
                            engine.busy_workers,
                        )
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await engine.run()
            nursery.cancel_scope.cancel()


def run(engine: Engine) -> None:
    """Run *engine* from synchronous code until SIGINT or SIGTERM."""
    trio.run(run_until_signalled, engine)
