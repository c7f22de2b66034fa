"""Real-world scheduler failures (shared/cases), each with its right value.

Cron cases C04 and C05 are run here on interval tasks of the same period;
they run again on cron expressions once cron tasks exist.
"""

from __future__ import annotations

import logging
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import pairwise

import pytest
import trio
import trio.testing

import slapoll
from slapoll import RunContext

EngineFactory = Callable[..., slapoll.Engine]


def epoch(text: str) -> float:
    """Seconds since the epoch of an ISO time in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def wall_from(start: float) -> Callable[[], float]:
    """A wall clock at *start* when the trio clock reads 0."""
    return lambda: start + trio.current_time()


async def run_for(engine: slapoll.Engine, seconds: float) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await trio.sleep(seconds)
        engine.stop()


async def test_c01_wall_clock_stepped_back_loses_no_interval_run(
    autojump_clock: object,
    engine_factory: EngineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """C01: the wall clock steps back 20 s every hour; a 900 s job still runs
    every 900 s of monotonic time, 8 runs in 2 h, and the step is reported."""
    first_run = epoch("2026-01-01T00:48:23")

    def stepping_wall() -> float:
        unstepped = first_run + trio.current_time()
        hours_crossed = int(unstepped // 3600 - first_run // 3600)
        return unstepped - 20.0 * hours_crossed

    engine = engine_factory(wall_clock=stepping_wall)
    starts: list[float] = []

    # 00:48:23 is 2903 s after midnight: 203 s into a 900 s grid.
    @engine.task(sla="20m", every="900s", phase="203s")
    async def job(ctx: RunContext) -> None:
        starts.append(trio.current_time())

    with caplog.at_level(logging.WARNING, logger="slapoll"):
        await run_for(engine, 7200.0 - 1e-3)

    assert starts == [k * 900.0 for k in range(8)]
    assert engine.statistics().clock_jumps == 2
    assert caplog.text.count("wall clock jumped by -20.0s") == 2


async def test_c02_monotonic_gap_of_ten_years_is_one_catch_up_run(
    autojump_clock: trio.testing.MockClock, engine_factory: EngineFactory
) -> None:
    """C02: after a 10-year gap a 1 s job runs once to catch up, counts the
    missed due times by arithmetic, and resumes on its grid."""
    start = epoch("2026-01-01T00:00:00")
    engine = engine_factory(wall_clock=wall_from(start))
    starts: list[float] = []

    @engine.task(sla="2s", every="1s", phase="0.5s")
    async def tick(ctx: RunContext) -> None:
        starts.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await trio.sleep(10.0)
        tracemalloc.start()
        began = time.perf_counter()
        autojump_clock.jump(epoch("2036-01-01T00:00:00.2") - start - 10.0)
        await trio.sleep(1.0)
        elapsed = time.perf_counter() - began
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        engine.stop()

    jumped_to = epoch("2036-01-01T00:00:00.2") - start
    before = [t for t in starts if t < 10.0]
    after = [t for t in starts if t > 10.0]
    assert before == [k + 0.5 for k in range(10)]
    # One catch-up run at once, then the grid: 2036-01-01T00:00:00.5Z.
    assert after == pytest.approx([jumped_to, jumped_to + 0.3], abs=1e-6)
    missed = engine.statistics().tasks["tick"].missed
    assert missed == pytest.approx(315_532_789, abs=1)
    assert elapsed < 0.5  # the control loop wakes 1 time, not 3e8 times
    assert peak < 1_000_000


async def test_c02_wall_clock_jumps_forward_and_back_without_reruns(
    autojump_clock: object,
    engine_factory: EngineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """C02: the wall clock jumps 10 years ahead, then back; the schedule keeps
    the monotonic clock, nothing is re-run, each jump is logged."""
    start = epoch("2026-01-01T00:00:00")
    ten_years = epoch("2036-01-01T00:00:00") - start

    def jumping_wall() -> float:
        t = trio.current_time()
        return start + t + (ten_years if 10.0 <= t < 20.0 else 0.0)

    engine = engine_factory(wall_clock=jumping_wall)
    starts: list[float] = []

    @engine.task(sla="2s", every="1s", phase="0.5s")
    async def tick(ctx: RunContext) -> None:
        starts.append(trio.current_time())

    with caplog.at_level(logging.WARNING, logger="slapoll"):
        await run_for(engine, 30.0)

    assert starts == [k + 0.5 for k in range(30)]
    assert engine.statistics().tasks["tick"].missed == 0
    assert engine.statistics().clock_jumps == 2
    assert caplog.text.count("wall clock jumped") == 2


async def starts_with_overlap(
    engine_factory: EngineFactory,
    *,
    seconds: float,
    run_s: Callable[[int], float],
    every: str,
    **options: object,
) -> tuple[list[float], int, slapoll.Engine]:
    """Start times of a one-target task whose run k lasts ``run_s(k)``."""
    engine = engine_factory()
    starts: list[float] = []
    in_flight = 0
    most_in_flight = 0

    @engine.task(sla="1h", every=every, phase=0, **options)
    async def job(ctx: RunContext) -> None:
        nonlocal in_flight, most_in_flight
        starts.append(trio.current_time())
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        try:
            await trio.sleep(run_s(len(starts) - 1))
        finally:
            in_flight -= 1

    await run_for(engine, seconds)
    return starts, most_in_flight, engine


async def test_c04_skip_drops_due_times_inside_a_long_run(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """C04 skip: runs of 65 s every 60 s start at 0, 120, 240; 60 and 180
    are counted as skipped."""
    starts, most, engine = await starts_with_overlap(
        engine_factory, seconds=250, run_s=lambda k: 65, every="60s", overlap="skip"
    )
    assert starts == [0, 120, 240]
    assert engine.statistics().tasks["job"].runs["skipped"] == 2
    assert most == 1


async def test_c04_queue_one_starts_as_soon_as_the_previous_run_ends(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """C04 queue_one: 12:00:00, 12:01:05, 12:02:10, 12:03:15."""
    starts, most, _ = await starts_with_overlap(
        engine_factory, seconds=200, run_s=lambda k: 65, every="60s",
        overlap="queue_one",
    )  # fmt: skip
    assert starts == [0, 65, 130, 195]
    assert most == 1


async def test_c04_allow_runs_on_every_due_time_up_to_the_limit(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """C04 allow, max_concurrent = 2: a start every minute, at most 2 at once."""
    starts, most, _ = await starts_with_overlap(
        engine_factory, seconds=300, run_s=lambda k: 65, every="60s",
        overlap="allow", max_concurrent=2,
    )  # fmt: skip
    assert starts == [0, 60, 120, 180, 240]
    assert most == 2


async def test_c04_a_fifteen_minute_run_skips_one_ten_minute_due_time(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """C04, arq's case: every 10 min, the 12:20 run lasts 15 min; 12:30 is
    skipped and the next start is 12:40."""
    starts, _, engine = await starts_with_overlap(
        engine_factory, seconds=3000, run_s=lambda k: 900 if k == 2 else 1,
        every="10m",
    )  # fmt: skip
    assert starts == [0, 600, 1200, 2400]
    assert engine.statistics().tasks["job"].runs["skipped"] == 1


async def test_c05_hung_run_is_cancelled_at_its_timeout(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """C05 (a): timeout 25 min; the hung 12:00 run is cancelled at 12:25 as a
    timeout and the 12:30 run starts on time."""
    starts, _, engine = await starts_with_overlap(
        engine_factory, seconds=3700, run_s=lambda k: 1e9 if k == 0 else 1,
        every="30m", timeout="25m",
    )  # fmt: skip
    runs = engine.statistics().tasks["job"].runs
    assert starts == [0, 1800, 3600]
    assert runs["timeout"] == 1
    assert runs["skipped"] == 0
    assert engine.statistics().tasks["job"].duration_p99_s == 1500


async def test_c05_without_a_timeout_the_sla_bounds_a_hung_run(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """C05 (b): no timeout configured; the run is cancelled at the SLA (one
    period here), recorded as a timeout, and the next run starts right then,
    never a silent skip."""
    engine = engine_factory()
    starts: list[float] = []

    @engine.task(sla="30m", every="30m", phase=0)
    async def job(ctx: RunContext) -> None:
        starts.append(trio.current_time())
        if len(starts) == 1:
            await trio.sleep_forever()

    await run_for(engine, 3700)

    stats = engine.statistics().tasks["job"]
    assert starts == [0, 1800, 3600]
    assert stats.runs["timeout"] == 1
    assert stats.runs["skipped"] == 0


async def test_c14a_minute_job_does_not_drift_over_an_hour(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """C14 (a): anchor 02:02:00, every 60 s for an hour; the 61st run starts
    at 03:02:00, every run within one tick of its due time."""
    anchor = epoch("2026-06-23T02:02:00")
    engine = engine_factory(wall_clock=wall_from(anchor))
    starts: list[float] = []

    @engine.task(sla="2m", every="60s", phase=0)
    async def job(ctx: RunContext) -> None:
        starts.append(anchor + trio.current_time())
        await trio.sleep(0.4)

    await run_for(engine, 3600.5)

    assert len(starts) == 61
    assert starts[60] == epoch("2026-06-23T03:02:00")
    assert all(0 <= s - (anchor + k * 60) <= 1.0 for k, s in enumerate(starts))


async def test_c14b_hourly_job_with_long_runs_does_not_drift(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """C14 (b): anchor 2019-06-23 06:14:42.7, hourly, runs of 12.6 s; run 30
    starts at 2019-06-24 12:14:42.7, not about 12:21."""
    anchor = epoch("2019-06-23T06:14:42.7")
    # 30 virtual hours: a slow control period keeps the test fast.
    engine = engine_factory(wall_clock=wall_from(anchor), control_period="10m")
    starts: list[float] = []

    @engine.task(sla="2h", every="1h", phase="882.7s")
    async def job(ctx: RunContext) -> None:
        starts.append(anchor + trio.current_time())
        await trio.sleep(12.6)

    await run_for(engine, 30 * 3600 + 60)

    assert starts[30] == pytest.approx(epoch("2019-06-24T12:14:42.7"), abs=1e-6)
    assert engine.statistics().tasks["job"].lag_p99_s == pytest.approx(0, abs=1e-6)


async def test_c32_jobs_registered_together_are_staggered(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """C32: 25 jobs every 10 s registered at once start at most 3 per 1 s
    bucket in every cycle, each keeping its own 10 s period."""
    engine = engine_factory()
    starts: dict[str, list[float]] = {}

    @engine.task(sla="20s", every="10s")
    async def monitor(ctx: RunContext, site: str) -> None:
        starts.setdefault(ctx.key, []).append(trio.current_time())

    for i in range(25):
        monitor.add_target(f"monitor-{i}", site=f"https://site-{i}.example")

    await run_for(engine, 100.0)

    buckets = Counter(int(t) for times in starts.values() for t in times)
    assert max(buckets.values()) <= 3
    assert sum(buckets.values()) == 250
    for times in starts.values():
        assert len(times) == 10
        assert all(b - a == pytest.approx(10.0) for a, b in pairwise(times))
