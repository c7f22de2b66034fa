"""Runs talking HTTP through the engine: ctx.http, budgets, outcomes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import httpx
import pytest
import trio
from prometheus_client import generate_latest

import slapoll
from slapoll import RunContext

EngineFactory = Callable[..., slapoll.Engine]


async def run_for(engine: slapoll.Engine, seconds: float) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await trio.sleep(seconds)
        engine.stop()


async def test_requests_through_ctx_http_stay_inside_a_declared_budget(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """50 targets that want 5 requests/s share a 2/s budget: the server sees
    at most the budget, and the waits show up as lag. (The controller is
    kept out: it would stretch the intervals until nobody waits.)"""
    sent: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(trio.current_time())
        return httpx.Response(200, json={"ok": True})

    engine = engine_factory(
        http_transport=httpx.MockTransport(handler), control_period="1h"
    )
    engine.limit("api", rate="2/s", burst=1)

    @engine.task(sla="60s", every="10s", limits=["api"])
    async def poll(ctx: RunContext, n: int) -> None:
        response = await ctx.http.get(f"http://api.test/feeds/{n}")
        response.raise_for_status()

    for i in range(50):
        poll.add_target(f"feed:{i}", n=i)
    await run_for(engine, 60)

    assert sent
    for start in range(int(max(sent))):
        in_window = [t for t in sent if start <= t < start + 10]
        assert len(in_window) <= 2 * 10 + 1
    assert len(sent) >= 0.9 * 2 * 60
    stats = engine.statistics().tasks["poll"]
    # Waiting for budget inside the run is lag; the duration is the request.
    assert stats.lag_p99_s > 1.0
    assert stats.duration_p99_s < 0.01


async def test_a_429_pauses_only_its_key(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """A 429 with Retry-After pauses one key; the other keeps its schedule."""
    sent: dict[str, list[float]] = {"slow": [], "fast": []}

    def handler(request: httpx.Request) -> httpx.Response:
        api = request.url.host.split(".")[0]
        sent[api].append(trio.current_time())
        if api == "slow" and len(sent[api]) == 1:
            return httpx.Response(429, headers={"Retry-After": "30"})
        return httpx.Response(200)

    engine = engine_factory(http_transport=httpx.MockTransport(handler))

    def declare(api: str) -> None:
        async def poll(ctx: RunContext) -> None:
            response = await ctx.http.get(f"http://{api}.test/")
            response.raise_for_status()

        engine.task(name=api, sla="20s", every="5s", limits=[api], phase=0)(poll)

    declare("slow")
    declare("fast")
    await run_for(engine, 29)

    assert sent["slow"] == [0.0]
    assert len(sent["fast"]) == 6
    text = generate_latest(engine.registry).decode()
    assert 'slapoll_http_429_total{key="slow"} 1.0' in text


async def test_a_request_past_the_deadline_counts_as_a_timeout(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """A run whose request cannot finish by the run's deadline is a timeout."""

    async def handler(request: httpx.Request) -> httpx.Response:
        await trio.sleep(100)
        return httpx.Response(200)

    engine = engine_factory(http_transport=httpx.MockTransport(handler))

    @engine.task(sla="30s", every="10s", timeout="2s", phase=0)
    async def poll(ctx: RunContext) -> None:
        await ctx.http.get("http://api.test/")

    await run_for(engine, 5)

    assert engine.statistics().tasks["poll"].runs["timeout"] == 1


async def test_a_timeout_inside_a_nursery_of_the_run_is_a_timeout(
    autojump_clock: object, engine_factory: EngineFactory
) -> None:
    """Cancelled wrapped in an exception group by the run's own nursery is
    still recognised as the run's timeout."""
    engine = engine_factory()

    @engine.task(sla="30s", every="10s", timeout="1s", phase=0)
    async def fan_out(ctx: RunContext) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(trio.sleep_forever)

    await run_for(engine, 25)

    runs = engine.statistics().tasks["fan_out"].runs
    assert runs["timeout"] == 3
    assert runs["error"] == 0


def test_ctx_http_outside_a_running_engine_is_a_usage_error() -> None:
    """A context made outside the engine has no HTTP client to give."""
    engine = slapoll.Engine()

    @engine.task(sla="1m")
    async def poll(ctx: RunContext) -> None:
        pass

    from slapoll._task import RunContext as Context
    from slapoll._task import TargetState

    state = TargetState(poll, "k", {}, 0.0, 0.0)
    ctx = Context(state, 0.0, 0, 1.0, None)
    with pytest.raises(slapoll.UsageError, match=r"ctx\.http exists only"):
        _ = ctx.http


async def test_a_failed_request_is_logged_with_its_status_not_its_url(
    autojump_clock: object,
    engine_factory: EngineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """raise_for_status() on a 404 logs the status, which says what went
    wrong, and not the message, which quotes a URL holding the token."""
    engine = engine_factory(
        http_transport=httpx.MockTransport(lambda request: httpx.Response(404))
    )

    @engine.task(sla="20s", every="10s")
    async def feed(ctx: RunContext, token: str) -> None:
        response = await ctx.http.get(f"http://api.test/feed?token={token}")
        response.raise_for_status()

    feed.add_target("user:1", token="s3cret-token")
    with caplog.at_level(logging.DEBUG, logger="slapoll"):
        await run_for(engine, 5)

    assert "feed[user:1]: run failed: HTTPStatusError (HTTP 404)" in caplog.text
    assert "s3cret-token" not in caplog.text


@pytest.fixture
def httpx_logger() -> Iterator[logging.Logger]:
    """httpx's logger with no level of its own, as in a fresh process; its
    level is put back afterwards."""
    httpx_logger = logging.getLogger("httpx")
    level = httpx_logger.level
    httpx_logger.setLevel(logging.NOTSET)
    yield httpx_logger
    httpx_logger.setLevel(level)


def token_feed(engine: slapoll.Engine) -> None:
    """A task whose one target sends its token in the query string."""

    @engine.task(sla="20s", every="10s")
    async def feed(ctx: RunContext, token: str) -> None:
        await ctx.http.get(f"http://api.test/feed?token={token}")

    feed.add_target("user:1", token="s3cret-token")


async def test_an_info_log_shows_no_request_urls(
    autojump_clock: object,
    engine_factory: EngineFactory,
    caplog: pytest.LogCaptureFixture,
    httpx_logger: logging.Logger,
) -> None:
    """A library user logging at INFO does not get httpx's line per request,
    URL and token included: the engine turns httpx down to warnings."""
    caplog.set_level(logging.INFO)
    engine = engine_factory(
        http_transport=httpx.MockTransport(lambda request: httpx.Response(200))
    )
    token_feed(engine)

    await run_for(engine, 5)

    assert "engine started" in caplog.text
    assert engine.statistics().tasks["feed"].runs["success"] >= 1
    assert "s3cret-token" not in caplog.text
    assert httpx_logger.level == logging.WARNING


async def test_a_level_set_on_the_httpx_logger_is_kept(
    autojump_clock: object,
    engine_factory: EngineFactory,
    caplog: pytest.LogCaptureFixture,
    httpx_logger: logging.Logger,
) -> None:
    """Who sets httpx's level chooses to see its lines."""
    caplog.set_level(logging.INFO)
    httpx_logger.setLevel(logging.DEBUG)
    engine = engine_factory(
        http_transport=httpx.MockTransport(lambda request: httpx.Response(200))
    )
    token_feed(engine)

    await run_for(engine, 5)

    assert "GET http://api.test/feed?token=s3cret-token" in caplog.text
    assert httpx_logger.level == logging.DEBUG
