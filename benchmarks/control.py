"""The control loop against fixed intervals and a fixed pool, simulated.

The workload of the simulation tests (``tests/upstream.py``: 160 targets
in three priorities, 17.33 requests/s at their preferred intervals, on one
limit key) polls the modelled upstream (0.2 s per request alone, slower
with concurrency; a token bucket of 26 requests/s whose headers the engine
learns its budget from). Each scenario runs twice on a virtual clock, each
time with a fresh engine and upstream and the same changes at the same
times:

- adaptive: the engine as shipped; its controller sets every interval and
  the pool size each second, starting from 4 workers (1 to 256);
- fixed: the same engine whose controller never runs (its control period
  is longer than the run), so every task keeps its preferred interval and
  the pool keeps ``--fixed-pool`` workers. Its HTTP layer still paces
  requests to the budget it declares and learns, as the adaptive one's.

Scenarios, after a 60 s warm-up: nothing changes; durations x5; the
server's rate halved; the rate cut to 5/s (below what the SLAs need) and
restored 60 s later. Printed per scenario, over the window from the change
to the end: attainment per task (share of target-seconds within the SLA),
target-seconds outside the SLA, targets violating at the end, requests the
upstream saw, 429s, and the pool at the end.

Run: ``.venv/bin/python benchmarks/control.py [--fixed-pool N]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import httpx
import trio
import trio.testing

import slapoll

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from upstream import WORKLOAD, Upstream, declare, standard_upstream

# Any fixed instant does: the engine and the upstream agree on it.
WALL_START = 1_800_000_000.0
WARM_UP_S = 60.0
FULL_RPS = 26.0
HALF_RPS = 13.0
SCARCE_RPS = 5.0
# Longer than any run: a controller with this period never runs. The
# longest duration slapoll accepts: ten years.
NEVER_S = 3650 * 86400.0


@attrs.frozen
class Scenario:
    name: str
    end_s: float
    # (time, what the upstream does then)
    changes: tuple[tuple[float, Callable[[Upstream], None]], ...]


def _slow_down(upstream: Upstream) -> None:
    upstream.slowdown = 5.0


def _halve(upstream: Upstream) -> None:
    upstream.set_rate(HALF_RPS)


def _starve(upstream: Upstream) -> None:
    upstream.set_rate(SCARCE_RPS)


def _restore(upstream: Upstream) -> None:
    upstream.set_rate(FULL_RPS)


CHANGE_S = WARM_UP_S + 0.25
SCENARIOS = (
    Scenario("steady", WARM_UP_S + 120, ()),
    Scenario("durations x5", WARM_UP_S + 120, ((CHANGE_S, _slow_down),)),
    Scenario("rate halved 26 -> 13/s", WARM_UP_S + 120, ((CHANGE_S, _halve),)),
    Scenario(
        "rate 5/s for 60 s, then 26/s",
        WARM_UP_S + 180,
        ((CHANGE_S, _starve), (CHANGE_S + 60, _restore)),
    ),
)


@attrs.frozen
class Outcome:
    """What one engine did over a scenario's window (the change to the end)."""

    attainment: dict[str, float]
    outside_sla_s: float
    violating: int
    requests: int
    too_many: int
    pool: int


def _window(
    first: slapoll.EngineStatistics, last: slapoll.EngineStatistics
) -> tuple[dict[str, float], float]:
    attainment, outside = {}, 0.0
    for spec in WORKLOAD:
        a, b = first.tasks[spec.name], last.tasks[spec.name]
        observed = b.observed_s - a.observed_s
        within = b.within_sla_s - a.within_sla_s
        attainment[spec.name] = within / observed if observed else 1.0
        outside += observed - within
    return attainment, outside


async def simulate(scenario: Scenario, fixed_pool: int | None) -> Outcome:
    """Run *scenario* once: adaptive when *fixed_pool* is None."""
    upstream = standard_upstream(FULL_RPS, wall_start=WALL_START)
    if fixed_pool is None:
        workers, least, most, period = 4, 1, 256, 1.0
    else:
        workers = least = most = fixed_pool
        period = NEVER_S
    engine = slapoll.Engine(
        workers=workers,
        min_workers=least,
        max_workers=most,
        control_period=period,
        shutdown_grace="1s",
        wall_clock=lambda: WALL_START + trio.current_time(),
        http_transport=httpx.MockTransport(upstream),
    )
    declare(engine, declared_rps=FULL_RPS)

    async def change_at(t: float, change: Callable[[Upstream], None]) -> None:
        await trio.sleep_until(t)
        change(upstream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        for t, change in scenario.changes:
            nursery.start_soon(change_at, t, change)
        await trio.sleep_until(WARM_UP_S)
        first = engine.statistics()
        requests, too_many = upstream.requests, upstream.too_many
        await trio.sleep_until(scenario.end_s)
        last = engine.statistics()
        engine.stop()

    attainment, outside = _window(first, last)
    return Outcome(
        attainment=attainment,
        outside_sla_s=outside,
        violating=sum(t.violating for t in last.tasks.values()),
        requests=upstream.requests - requests,
        too_many=upstream.too_many - too_many,
        pool=last.pool_size,
    )


def _rows(outcome: Outcome) -> list[str]:
    return [
        *(f"{outcome.attainment[s.name]:.2%}" for s in WORKLOAD),
        f"{outcome.outside_sla_s:,.0f}",
        f"{outcome.violating}",
        f"{outcome.requests:,}",
        f"{outcome.too_many:,}",
        f"{outcome.pool}",
    ]


LABELS = (
    *(f"attainment {s.name} (p{s.priority}, SLA {s.sla_s:g}s)" for s in WORKLOAD),
    "target-seconds outside SLA",
    "targets violating at the end",
    "requests sent",
    "429 responses",
    "pool at the end",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--fixed-pool",
        type=int,
        default=8,
        help="workers of the fixed engine (default 8: Little's law for the "
        "steady load, 3.8, with room to spare)",
    )
    args = parser.parse_args()

    began = time.perf_counter()
    total = sum(spec.targets for spec in WORKLOAD)
    print(
        f"{total} targets, {sum(s.preferred_rps for s in WORKLOAD):.2f} requests/s "
        f"at preferred intervals; upstream {FULL_RPS:g} requests/s; fixed pool "
        f"{args.fixed_pool}"
    )
    width = max(len(label) for label in LABELS)
    for scenario in SCENARIOS:
        outcomes = [
            trio.run(
                simulate,
                scenario,
                fixed,
                clock=trio.testing.MockClock(autojump_threshold=0),
            )
            for fixed in (None, args.fixed_pool)
        ]
        window = scenario.end_s - WARM_UP_S
        print()
        print(f"{scenario.name}: window {WARM_UP_S:g}-{scenario.end_s:g} s")
        print(f"  {'':{width}}  {'adaptive':>12}  {'fixed':>12}")
        columns = [_rows(outcome) for outcome in outcomes]
        for i, label in enumerate(LABELS):
            print(f"  {label:{width}}  {columns[0][i]:>12}  {columns[1][i]:>12}")
        print(f"  ({total * window:,.0f} target-seconds observed in the window)")
    print(f"\n{time.perf_counter() - began:.1f} s real time")


if __name__ == "__main__":
    main()
