"""Dispatch cost of the engine beside a bare trio heap-and-pool loop.

Two measurements, each repeated, medians printed:

1. Throughput: no-op runs per second when every target is always due, through
   the whole engine (schedule, EDF ready heap, worker pool, measurement,
   metrics) and through a bare loop (a due-time heap, a FIFO and the same
   number of workers, nothing measured). The ratio is engine / bare.
2. Steady load: 10,000 targets every 1 s for a while on the real clock; lag
   (start minus due time) p50 and p99, and CPU seconds per wall second,
   through the engine and through the same bare loop. The bare loop shows
   what trio itself costs at 10,000 timer expiries a second.

Run: ``make bench`` or ``.venv/bin/python benchmarks/dispatch.py [--quick]``.
"""

from __future__ import annotations

import argparse
import heapq
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable

import trio

import slapoll

WORKERS = 32


async def noop_engine_throughput(targets: int, seconds: float) -> float:
    """No-op runs per second through the engine with every target always due."""
    engine = slapoll.Engine(workers=WORKERS, shutdown_grace="0s")
    runs = 0

    # An interval far below the dispatch cost keeps every target due.
    @engine.task(sla="1s", every="1ms")
    async def noop(ctx: slapoll.RunContext, n: int) -> None:
        nonlocal runs
        runs += 1

    for i in range(targets):
        noop.add_target(f"t{i}", n=i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await trio.sleep(0.2)  # start-up
        first, began = runs, time.perf_counter()
        await trio.sleep(seconds)
        done, elapsed = runs - first, time.perf_counter() - began
        engine.stop()
    return done / elapsed


async def bare_loop(
    targets: int, interval: float, on_run: Callable[[float], Awaitable[None]]
) -> None:
    """The least a trio scheduler must do: a due-time heap, a FIFO and
    WORKERS workers; *on_run* gets each run's due time (on trio's clock).
    Runs until cancelled."""
    start = trio.current_time()
    timers = [(start + i * interval / targets, i) for i in range(targets)]
    heapq.heapify(timers)
    ready: deque[tuple[float, int]] = deque()
    lot = trio.lowlevel.ParkingLot()
    wake = trio.lowlevel.ParkingLot()

    async def scheduler() -> None:
        while True:
            now = trio.current_time()
            while timers and timers[0][0] <= now:
                ready.append(heapq.heappop(timers))
                lot.unpark()
            with trio.move_on_at(timers[0][0] if timers else float("inf")):
                await wake.park()

    async def worker() -> None:
        while True:
            if not ready:
                await lot.park()
                continue
            due, n = ready.popleft()
            await on_run(due)
            now = trio.current_time()
            nxt = due + interval
            if nxt <= now:  # coalesce passed due times, as the engine does
                nxt = due + (int((now - due) / interval) + 1) * interval
            heapq.heappush(timers, (nxt, n))
            wake.unpark_all()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(scheduler)
        for _ in range(WORKERS):
            nursery.start_soon(worker)


async def noop_bare_throughput(targets: int, seconds: float) -> float:
    """The same workload through the bare loop."""
    runs = 0

    async def count(due: float) -> None:
        nonlocal runs
        runs += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bare_loop, targets, 0.001, count)
        await trio.sleep(0.2)
        first, began = runs, time.perf_counter()
        await trio.sleep(seconds)
        done, elapsed = runs - first, time.perf_counter() - began
        nursery.cancel_scope.cancel()
    return done / elapsed


Steady = tuple[float, float, float]


def summarise(lags: list[float], cpu: float) -> Steady:
    qs = statistics.quantiles(lags, n=100)
    return qs[49], qs[98], cpu


async def steady_bare(targets: int, seconds: float) -> Steady:
    """(lag p50 s, lag p99 s, CPU s per s) of the bare loop, *targets*
    every 1 s."""
    lags: list[float] = []
    measuring = False

    async def record(due: float) -> None:
        if measuring:
            lags.append(trio.current_time() - due)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bare_loop, targets, 1.0, record)
        await trio.sleep(1.5)
        measuring = True
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await trio.sleep(seconds)
        cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        measuring = False
        nursery.cancel_scope.cancel()
    return summarise(lags, cpu)


async def steady_lag(targets: int, seconds: float) -> Steady:
    """(lag p50 s, lag p99 s, CPU s per s) at *targets* every 1 s."""
    engine = slapoll.Engine(workers=WORKERS, shutdown_grace="0s")
    lags: list[float] = []
    measuring = False

    @engine.task(sla="2s", every="1s")
    async def poll(ctx: slapoll.RunContext, n: int) -> None:
        if measuring:
            lags.append(trio.current_time() - ctx.due_s)

    for i in range(targets):
        poll.add_target(f"t{i}", n=i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await trio.sleep(1.5)  # every target has run once
        measuring = True
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await trio.sleep(seconds)
        cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        measuring = False
        engine.stop()
    return summarise(lags, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    args = parser.parse_args()
    repeats, seconds = (1, 1.0) if args.quick else (5, 3.0)
    throughput_targets = 1000

    engine_rates, bare_rates = [], []
    for _ in range(repeats):  # interleaved so machine noise hits both alike
        bare_rates.append(trio.run(noop_bare_throughput, throughput_targets, seconds))
        engine_rates.append(
            trio.run(noop_engine_throughput, throughput_targets, seconds)
        )
    engine_rate = statistics.median(engine_rates)
    bare_rate = statistics.median(bare_rates)
    print(
        f"throughput, {throughput_targets} always-due no-op targets, "
        f"{WORKERS} workers, median of {repeats} x {seconds:g}s"
    )
    print(f"  bare trio heap + pool : {bare_rate:10,.0f} runs/s")
    print(f"  slapoll engine        : {engine_rate:10,.0f} runs/s")
    print(
        f"  ratio engine / bare   : {engine_rate / bare_rate:10.2f}  (target >= 0.40)"
    )

    runs = max(1, repeats // 2)
    engine_steady, bare_steady = [], []
    for _ in range(runs):
        bare_steady.append(trio.run(steady_bare, 10_000, 2 * seconds))
        engine_steady.append(trio.run(steady_lag, 10_000, 2 * seconds))
    print(f"steady load, 10,000 targets every 1s, median of {runs} runs")
    print("                     bare      engine   ratio")
    for name, i, scale, unit in (
        ("lag p50", 0, 1000, "ms"),
        ("lag p99", 1, 1000, "ms"),
        ("CPU", 2, 1, "s/s"),
    ):
        bare = statistics.median(r[i] for r in bare_steady) * scale
        ours = statistics.median(r[i] for r in engine_steady) * scale
        ratio = ours / bare if bare else float("inf")
        print(f"  {name:8} {bare:9.3f} {ours:11.3f} {ratio:7.2f}  {unit}")
    print("  (target: engine lag p99 <= 2 ms)")


if __name__ == "__main__":
    main()
