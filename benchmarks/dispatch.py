"""Dispatch cost of the engine beside a bare trio heap-and-pool loop.

Two measurements, each repeated, medians printed:

1. Throughput: no-op runs per second when every target is always due, through
   the whole engine (schedule, EDF ready heap, worker pool, measurement,
   metrics) and through a bare loop (a due-time heap, a FIFO and the same
   number of workers, nothing measured). The ratio is engine / bare.
2. Steady load: 10,000 targets every 1 s for a while on the real clock; lag
   (start minus due time) p50 and p99, and CPU seconds per wall second.

Run: ``make bench`` or ``.venv/bin/python benchmarks/dispatch.py [--quick]``.
"""

from __future__ import annotations

import argparse
import heapq
import statistics
import time
from collections import deque

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


async def noop_bare_throughput(targets: int, seconds: float) -> float:
    """The same workload through the least a trio scheduler must do."""
    interval = 0.001
    timers = [(i * interval / targets, i) for i in range(targets)]
    heapq.heapify(timers)
    ready: deque[tuple[float, int]] = deque()
    lot = trio.lowlevel.ParkingLot()
    wake = trio.lowlevel.ParkingLot()
    runs = 0
    start = trio.current_time()

    async def noop(n: int) -> None:
        nonlocal runs
        runs += 1

    async def scheduler() -> None:
        while True:
            now = trio.current_time() - start
            while timers and timers[0][0] <= now:
                due, n = heapq.heappop(timers)
                ready.append((due, n))
                lot.unpark()
            with trio.move_on_at(start + timers[0][0] if timers else float("inf")):
                await wake.park()

    async def worker() -> None:
        while True:
            if not ready:
                await lot.park()
                continue
            due, n = ready.popleft()
            await noop(n)
            now = trio.current_time() - start
            nxt = due + interval
            if nxt <= now:  # coalesce passed due times, as the engine does
                nxt = due + (int((now - due) / interval) + 1) * interval
            heapq.heappush(timers, (nxt, n))
            wake.unpark_all()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(scheduler)
        for _ in range(WORKERS):
            nursery.start_soon(worker)
        await trio.sleep(0.2)
        first, began = runs, time.perf_counter()
        await trio.sleep(seconds)
        done, elapsed = runs - first, time.perf_counter() - began
        nursery.cancel_scope.cancel()
    return done / elapsed


async def steady_lag(targets: int, seconds: float) -> tuple[float, float, float]:
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
    qs = statistics.quantiles(lags, n=100)
    return qs[49], qs[98], cpu


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

    results = [
        trio.run(steady_lag, 10_000, 2 * seconds) for _ in range(max(1, repeats // 2))
    ]
    p50 = statistics.median(r[0] for r in results)
    p99 = statistics.median(r[1] for r in results)
    cpu = statistics.median(r[2] for r in results)
    print(f"steady load, 10,000 targets every 1s, median of {len(results)} runs")
    print(f"  lag p50 : {p50 * 1000:8.3f} ms")
    print(f"  lag p99 : {p99 * 1000:8.3f} ms  (target <= 2 ms)")
    print(f"  CPU     : {cpu:8.2f} s per s")


if __name__ == "__main__":
    main()
