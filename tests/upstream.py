"""A modelled upstream API, and a workload polling it, for simulations.

``Upstream`` is an async ``httpx.MockTransport`` handler that behaves like a
rate-limited API under load, on ``trio.current_time()`` (so a ``MockClock``
drives it):

- latency grows with concurrency: an accepted request waits
  ``base_latency_s * slowdown * (1 + others / capacity)``, where *others*
  counts the requests already being served when it arrives;
- a token bucket (``rate_per_s`` refill, ``burst`` tokens) limits requests;
  an empty bucket answers 429 at once, with ``Retry-After`` in whole seconds;
- every answer carries GitHub-style headers: ``X-RateLimit-Limit`` (the
  rate scaled to a ``window_s`` window, as GitHub counts per hour),
  ``-Remaining`` (whole tokens left) and ``-Reset`` (epoch second at which
  the bucket is full again), with a ``Date`` from the same wall clock.

``slowdown`` and ``set_rate`` change the upstream while the engine runs:
a load step and a change of the server's rate limit. Counters record what
the server saw, for assertions: requests, 429s, concurrency.

``Workload`` declares the tasks that poll it on an engine: three priorities,
each with its SLA, preferred interval and number of targets, all drawing on
one limit key.

Used by ``tests/test_simulation.py`` and ``benchmarks/control.py``.
"""

from __future__ import annotations

import email.utils
import math
from collections import Counter

import attrs
import httpx
import trio

import slapoll

__all__ = [
    "BASE_LATENCY_S",
    "BURST",
    "CAPACITY",
    "KEY",
    "WINDOW_S",
    "WORKLOAD",
    "TaskSpec",
    "Upstream",
    "declare",
    "standard_upstream",
]

# X-RateLimit-Limit counts requests per window of this length.
WINDOW_S = 60.0
# The limit key every task of the workload draws on.
KEY = "api"
# The standard upstream: a request alone takes 0.2 s; latency doubles at
# 100 requests in flight, so throughput keeps rising with concurrency well
# past what the workload needs even after a load step; the bucket holds
# 10 requests.
BASE_LATENCY_S = 0.2
CAPACITY = 100.0
BURST = 10
# A request arriving a hair before its token is complete (float rounding
# of a client that paces exactly at the refill rate) is still served.
TOKEN_EPSILON = 1e-9


class Upstream:
    """A rate-limited API whose latency grows with concurrency.

    *wall_start* is the wall-clock reading at engine-clock 0, as the
    engine under test is given (``tests/conftest.WALL_START``).
    """

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int,
        base_latency_s: float,
        capacity: float,
        wall_start: float,
        window_s: float = WINDOW_S,
    ) -> None:
        self.base_latency_s = base_latency_s
        self.capacity = capacity
        self.window_s = window_s
        self.wall_start = wall_start
        self.burst = float(burst)
        # Multiplies every latency: 5 is a load step "durations x5".
        self.slowdown = 1.0
        self._rate = rate_per_s
        self._tokens = float(burst)
        self._updated = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests = 0
        self.by_status: Counter[int] = Counter()
        # Arrival times of 429 answers, to tell when they came.
        self.too_many_at: list[float] = []

    @property
    def rate_per_s(self) -> float:
        """The bucket's refill rate in force."""
        return self._rate

    @property
    def too_many(self) -> int:
        """429 answers so far."""
        return self.by_status[429]

    def set_rate(self, rate_per_s: float) -> None:
        """Change the refill rate from now on (tokens held are kept)."""
        self._refill(trio.current_time())
        self._rate = rate_per_s

    def latency_s(self, others: int) -> float:
        """The latency of a request that arrives while *others* are served."""
        return self.base_latency_s * self.slowdown * (1 + others / self.capacity)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.burst, self._tokens + elapsed * self._rate)
        self._updated = now

    def _headers(self, now: float) -> dict[str, str]:
        wall = self.wall_start + now
        full_in = (self.burst - self._tokens) / self._rate
        return {
            "Date": email.utils.formatdate(wall, usegmt=True),
            "X-RateLimit-Limit": str(round(self._rate * self.window_s)),
            "X-RateLimit-Remaining": str(max(0, math.floor(self._tokens))),
            "X-RateLimit-Reset": str(math.ceil(wall + full_in)),
        }

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        now = trio.current_time()
        self.requests += 1
        self._refill(now)
        if self._tokens < 1.0 - TOKEN_EPSILON:
            self.by_status[429] += 1
            self.too_many_at.append(now)
            headers = self._headers(now)
            wait = (1.0 - self._tokens) / self._rate
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return httpx.Response(429, headers=headers)
        self._tokens = max(0.0, self._tokens - 1.0)
        headers = self._headers(now)

        others = self.in_flight
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(self.latency_s(others))
        finally:
            self.in_flight -= 1
        self.by_status[200] += 1
        return httpx.Response(200, headers=headers, json={"ok": True})


def standard_upstream(rate_per_s: float, *, wall_start: float) -> Upstream:
    """The upstream the simulations use, granting *rate_per_s*."""
    return Upstream(
        rate_per_s=rate_per_s,
        burst=BURST,
        base_latency_s=BASE_LATENCY_S,
        capacity=CAPACITY,
        wall_start=wall_start,
    )


# -- the workload -------------------------------------------------------------


@attrs.frozen
class TaskSpec:
    """One task of a workload: its promise, preference and size."""

    name: str
    priority: int
    sla_s: float
    every_s: float
    targets: int

    @property
    def preferred_rps(self) -> float:
        """Requests per second at the preferred interval (one per run)."""
        return self.targets / self.every_s


# Three priorities on one key: 17.33 requests/s at the preferred intervals,
# 6.8 requests/s with every target at its SLA.
WORKLOAD = (
    TaskSpec("urgent", priority=3, sla_s=10.0, every_s=5.0, targets=40),
    TaskSpec("normal", priority=2, sla_s=30.0, every_s=10.0, targets=40),
    TaskSpec("bulk", priority=1, sla_s=60.0, every_s=15.0, targets=80),
)


def declare(
    engine: slapoll.Engine,
    *,
    declared_rps: float,
    workload: tuple[TaskSpec, ...] = WORKLOAD,
) -> None:
    """Declare the limit key and *workload*'s tasks on *engine*.

    The key's rate is declared as the API documents it (*declared_rps*,
    counted per ``WINDOW_S`` like the upstream's ``X-RateLimit-Limit``, so
    the engine reads that header over the same window); the server's
    headers can only lower it. A token-bucket server refills continuously,
    so its remaining count is no hard quota (``obey_quotas=False``). Each
    run is one GET through ``ctx.http``; a 429 or any error fails it.
    """
    engine.limit(KEY, rate=f"{declared_rps * WINDOW_S:g}/m", burst=5, obey_quotas=False)

    async def poll(ctx: slapoll.RunContext, n: int) -> None:
        response = await ctx.http.get(f"http://api.test/{ctx.task}/{n}")
        response.raise_for_status()

    for spec in workload:
        task = engine.task(
            name=spec.name,
            sla=spec.sla_s,
            every=spec.every_s,
            priority=spec.priority,
            limits=(KEY,),
        )(poll)
        for i in range(spec.targets):
            task.add_target(f"{spec.name}:{i}", n=i)
