"""HTTP through the engine's layer: budgets, pauses, validators, the pool."""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine

import attrs
import h11
import httpx
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from slapoll._http import (
    IDLE_KEY_S,
    CircuitOpenError,
    DeadlineError,
    HttpLayer,
    TargetHttp,
    collect,
)
from slapoll._ratelimit import KeyStatistics, LimitSpec
from slapoll.errors import ConfigError

Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
FAR = 1e9  # a deadline no test reaches


def layer_with(
    handler: Handler,
    limits: dict[str, LimitSpec] | None = None,
    *,
    max_connections: int = 10,
) -> HttpLayer:
    return HttpLayer(
        limits,
        max_connections=max_connections,
        transport=httpx.MockTransport(handler),
        wall_clock=lambda: 1_800_000_000.0 + trio.current_time(),
    )


def client(
    layer: HttpLayer,
    limits: tuple[str, ...] = ("api",),
    *,
    task: str = "feed",
    key: str = "t",
    deadline: float = FAR,
    **args: object,
) -> TargetHttp:
    return layer.for_target(task, key, args, limits, deadline)


def by_key(layer: HttpLayer) -> dict[str, KeyStatistics]:
    return {s.key: s for s in layer.statistics()}


# -- pauses -------------------------------------------------------------------


async def test_a_paused_key_sends_nothing_until_its_pause_ends_while_others_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """429 + Retry-After 30 on one key: zero requests on it for 30 s, the
    other key goes on polling throughout."""
    sent: dict[str, list[float]] = {"a.test": [], "b.test": []}
    paused_at: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        sent[host].append(trio.current_time())
        await trio.sleep(0.05)
        if host == "a.test" and not paused_at:
            paused_at.append(trio.current_time())
            return httpx.Response(429, headers={"Retry-After": "30"})
        return httpx.Response(200)

    limits = {"a": LimitSpec.from_options(rate="20/s", burst=5)}
    async with layer_with(handler, limits) as layer:

        async def poll(host: str, key: str) -> None:
            http = client(layer, (key,))
            while trio.current_time() < 60:
                await http.get(f"http://{host}/feed")
                await trio.sleep(0.2)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(poll, "a.test", "a")
            nursery.start_soon(poll, "b.test", "b")
            await trio.sleep(10)
            stats = by_key(layer)
            assert stats["a"].paused
            assert not stats["b"].paused

    (pause,) = paused_at
    during = [t for t in sent["a.test"] if pause < t < pause + 30]
    assert during == []
    assert any(t >= pause + 30 for t in sent["a.test"])
    b_during = [t for t in sent["b.test"] if pause < t < pause + 30]
    assert len(b_during) > 100


async def test_a_wait_past_the_deadline_fails_at_once_sending_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Paused for 60 s, deadline in 10 s: DeadlineError now, no request."""
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(429, headers={"Retry-After": "60"})

    async with layer_with(handler) as layer:
        await client(layer).get("http://api.test/")
        start = trio.current_time()
        with pytest.raises(DeadlineError, match="no budget on limit key 'api'"):
            await client(layer, deadline=start + 10).get("http://api.test/")
        assert trio.current_time() == start
    assert calls == 1


# -- conditional requests -----------------------------------------------------


async def test_validators_are_sent_back_and_a_304_is_returned_as_is(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """ETag and Last-Modified of a 200 go back; the 304 reaches the caller."""
    seen: list[tuple[str | None, str | None]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(
            (
                request.headers.get("if-none-match"),
                request.headers.get("if-modified-since"),
            )
        )
        if request.headers.get("if-none-match") == '"v1"':
            return httpx.Response(304)
        return httpx.Response(
            200,
            json={"items": [1]},
            headers={"ETag": '"v1"', "Last-Modified": "Wed, 21 Oct 2026 07:28:00 GMT"},
        )

    async with layer_with(handler) as layer:
        first = await client(layer).get("http://api.test/feed")
        second = await client(layer).get("http://api.test/feed")
        other_target = await client(layer, key="u").get("http://api.test/feed")
        other_url = await client(layer).get("http://api.test/feed?page=2")
        stats = by_key(layer)["api"]

    assert (first.status_code, second.status_code) == (200, 304)
    assert (other_target.status_code, other_url.status_code) == (200, 200)
    assert seen == [
        (None, None),
        ('"v1"', "Wed, 21 Oct 2026 07:28:00 GMT"),
        (None, None),
        (None, None),
    ]
    assert stats.not_modified == 1
    assert stats.responses == {"2xx": 3, "3xx": 1}


async def test_a_callers_own_validators_win_and_posts_get_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """If-None-Match given by the caller is kept; POSTs are not conditional."""
    seen: list[str | None] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("if-none-match"))
        return httpx.Response(200, headers={"ETag": '"v1"'})

    async with layer_with(handler) as layer:
        http = client(layer)
        await http.get("http://api.test/")
        await http.get("http://api.test/", headers={"If-None-Match": '"mine"'})
        await http.post("http://api.test/", json={"a": 1})
        layer.forget("feed", "t")
        await http.get("http://api.test/")
    assert seen == [None, '"mine"', None, None]


# -- keys ---------------------------------------------------------------------


async def test_template_keys_give_each_credential_its_own_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """'api:{account}': a 429 pauses that account's key only; arguments are
    never shown, metrics are labelled by the template."""

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == "Bearer tok-alice":
            return httpx.Response(429, headers={"Retry-After": "100"})
        return httpx.Response(200)

    templates = ("api", "api:{account}")
    async with layer_with(handler) as layer:
        alice = client(layer, templates, key="alice", account="alice-secret-1")
        bob = client(layer, templates, key="bob", account="bob-secret-2")
        await alice.get(
            "http://api.test/", headers={"Authorization": "Bearer tok-alice"}
        )
        await bob.get("http://api.test/", headers={"Authorization": "Bearer tok-bob"})
        start = trio.current_time()
        await bob.get("http://api.test/", headers={"Authorization": "Bearer tok-bob"})
        assert trio.current_time() == start  # bob is not held by alice's pause
        stats = layer.statistics()

    shown = [s.key for s in stats]
    assert shown[0] == "api"
    assert all(k.startswith("api:#") for k in shown[1:])
    assert not any("secret" in k for k in shown)
    assert alice.limit_keys[1] in shown
    paused = {s.key: s.paused for s in stats}
    assert paused == {"api": False, alice.limit_keys[1]: True, bob.limit_keys[1]: False}

    text = render(stats)
    assert 'slapoll_limit_paused{key="api:{account}"} 1.0' in text
    assert "secret" not in text


def test_a_template_needing_a_missing_argument_is_a_config_error() -> None:
    """The message names the template, the argument and what there is."""
    layer = HttpLayer(max_connections=1)
    with pytest.raises(
        ConfigError,
        match=r"template 'gh:\{account\}' of task 'feed' needs the argument "
        r"'account', which target 't' does not have; its arguments are \['token'\]",
    ):
        layer.for_target("feed", "t", {"token": "x"}, ("gh:{account}",), FAR)


def test_shown_keys_hash_arguments_with_a_key_of_the_process() -> None:
    """Unkeyed, the hash in a log line would let a weak token be found by
    hashing candidates; keyed, it still tells credentials apart the same way
    throughout the process."""

    def shown_key(layer: HttpLayer) -> str:
        http = layer.for_target(
            "feed", "t", {"token": "hunter2"}, ("api:{token}",), FAR
        )
        (shown,) = http.limit_keys
        return shown

    shown = shown_key(HttpLayer(max_connections=1))

    unkeyed = hashlib.blake2b(b"hunter2", digest_size=16).hexdigest()
    assert shown.startswith("api:#")
    assert len(shown) == len("api:#") + 12
    assert unkeyed[:12] not in shown
    assert shown_key(HttpLayer(max_connections=1)) == shown


@pytest.mark.parametrize("template", ["gh:{a.b}", "gh:{0}", "gh:{a!r}", "gh:{"])
def test_templates_may_only_name_arguments(template: str) -> None:
    """Attribute access, positions, conversions and bad braces are refused."""
    layer = HttpLayer(max_connections=1)
    with pytest.raises(ConfigError, match="template"):
        layer.for_target("feed", "t", {"a": 1}, (template,), FAR)


def test_layer_options_are_checked() -> None:
    """max_connections >= 1; limits need LimitSpecs."""
    with pytest.raises(ConfigError, match=r"max_connections must be .* got 0"):
        HttpLayer(max_connections=0)
    with pytest.raises(ConfigError, match="limit 'api' needs a LimitSpec, got '5/s'"):
        HttpLayer({"api": "5/s"}, max_connections=1)  # type: ignore[dict-item]


# -- the budget on the wire ---------------------------------------------------


async def test_declared_budget_is_never_exceeded_on_the_wire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """5/s with burst 2, 40 requests at once: sends within rate*w + burst."""
    times: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        return httpx.Response(200)

    limits = {"api": LimitSpec.from_options(rate="5/s", burst=2)}
    async with layer_with(handler, limits) as layer:
        https = [client(layer, key=f"t{i}") for i in range(40)]
        async with trio.open_nursery() as nursery:
            for http in https:
                nursery.start_soon(http.get, "http://api.test/")
        stats = by_key(layer)["api"]

    times.sort()
    for i, j in itertools.combinations(range(len(times)), 2):
        assert j - i + 1 <= 5 * (times[j] - times[i]) + 2 + 1e-6
    assert times[-1] == pytest.approx(7.6)
    total_wait = sum(h.wait_s for h in https)
    assert total_wait == pytest.approx(sum(max(0.0, (i - 1) * 0.2) for i in range(40)))
    assert stats.wait_s > 0
    assert stats.capacity_per_s == 5.0


async def test_remaining_zero_holds_the_key_until_the_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """X-RateLimit-Remaining 0 with a reset: the next request waits for it."""
    times: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        return httpx.Response(
            200, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "42"}
        )

    async with layer_with(handler) as layer:
        http = client(layer)
        await http.get("http://api.test/")
        await http.get("http://api.test/")
    assert times == [0.0, 42.0]
    assert http.wait_s == 42.0


async def test_poll_interval_is_kept_per_target(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """X-Poll-Interval is remembered for the target, and forgotten with it."""

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"X-Poll-Interval": "60"})

    async with layer_with(handler) as layer:
        http = client(layer)
        await http.get("http://api.test/")
        assert http.min_interval_s == 60.0
        assert layer.min_interval("feed", "t") == 60.0
        layer.forget("feed", "t")
        assert layer.min_interval("feed", "t") is None


async def test_bad_headers_warn_once_and_count_without_showing_arguments(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage Retry-After: one WARNING per minute per key, each counted."""

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"X-RateLimit-Remaining": "-1"})

    async with layer_with(handler) as layer:
        http = client(layer, ("api:{token}",), token="s3cr3t-token")
        for _ in range(3):
            await http.get("http://api.test/", params={"access_token": "s3cr3t-token"})
        (stats,) = layer.statistics()

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "X-RateLimit-Remaining: '-1' negative" in warnings[0].getMessage()
    assert stats.header_warnings == 3
    assert "s3cr3t" not in caplog.text


# -- failing upstreams --------------------------------------------------------


async def test_trickling_response_is_cut_at_the_runs_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A byte a second for 100 s, deadline in 5 s: DeadlineError at 5 s."""

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(100):
            await trio.sleep(1)
            yield b"x"

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=trickle())

    async with layer_with(handler) as layer:
        with pytest.raises(DeadlineError, match="before the response was complete"):
            await client(layer, deadline=5.0).get("http://api.test/")
        assert trio.current_time() == 5.0
        assert by_key(layer)["api"].responses == {"error": 1}


async def test_circuit_opens_fails_fast_then_probes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Five connection errors open the circuit: the sixth request is not
    sent; after the cool-down one probe goes and its success closes it."""
    calls = 0
    up = False

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if not up:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200)

    async with layer_with(handler) as layer:
        http = client(layer)
        for _ in range(5):
            with pytest.raises(httpx.ConnectError):
                await http.get("http://api.test/")
        with pytest.raises(CircuitOpenError, match="'api' is failing: circuit open"):
            await http.get("http://api.test/")
        assert calls == 5
        assert by_key(layer)["api"].circuit == "open"

        await trio.sleep(30)
        up = True
        assert (await http.get("http://api.test/")).status_code == 200
        assert by_key(layer)["api"].circuit == "closed"
    assert calls == 6


async def test_5xx_counts_toward_the_circuit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Five 500s in a row open it too; the responses are still returned."""

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500)

    limits = {"api": LimitSpec.from_options(failure_threshold=5)}
    async with layer_with(handler, limits) as layer:
        http = client(layer)
        for _ in range(5):
            assert (await http.get("http://api.test/")).status_code == 500
        with pytest.raises(CircuitOpenError):
            await http.get("http://api.test/")


# -- C29: more polls than connections -----------------------------------------


async def test_c29_queueing_for_connections_is_lag_not_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """100 polls at once, 10 connections, 1 s answers: 0 errors, ~10 s,
    never more than 10 in flight; the queueing shows as wait (lag)."""
    in_flight = most = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await trio.sleep(1)
        in_flight -= 1
        return httpx.Response(200)

    statuses: list[int] = []
    async with layer_with(handler, max_connections=10) as layer:
        https = [client(layer, key=f"t{i}") for i in range(100)]

        async def poll(http: TargetHttp) -> None:
            statuses.append((await http.get("http://api.test/")).status_code)

        async with trio.open_nursery() as nursery:
            for http in https:
                nursery.start_soon(poll, http)
    assert statuses == [200] * 100
    assert most == 10
    assert trio.current_time() == pytest.approx(10.0)
    assert sum(h.wait_s for h in https) == pytest.approx(450.0)


@attrs.define
class _Counts:
    active: int = 0
    most: int = 0
    served: int = 0


async def serve_slowly(
    delay_s: float,
    counts: _Counts,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A keep-alive HTTP/1.1 server on 127.0.0.1 answering after *delay_s*."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def next_event(conn: h11.Connection, stream: trio.SocketStream) -> object:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await stream.receive_some(65536))

    async def handle(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                event = await next_event(conn, stream)
                if not isinstance(event, h11.Request):
                    return
                while not isinstance(event, h11.EndOfMessage):
                    event = await next_event(conn, stream)
                counts.active += 1
                counts.most = max(counts.most, counts.active)
                await trio.sleep(delay_s)
                counts.active -= 1
                counts.served += 1
                head = h11.Response(status_code=200, headers=[("Content-Length", "2")])
                await stream.send_all(conn.send(head) or b"")
                await stream.send_all(conn.send(h11.Data(data=b"ok")) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                conn.start_next_cycle()

    task_status.started(port)
    await trio.serve_listeners(handle, listeners)


async def test_c29_against_a_real_server_no_pool_timeouts() -> None:
    """C29 scaled to 0.1 s answers on loopback: 100 polls, 10 connections,
    all succeed in about 1 s, never more than 10 at the server."""
    counts = _Counts()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_slowly, 0.1, counts)
        async with HttpLayer(max_connections=10) as layer:
            https = [client(layer, key=f"t{i}") for i in range(100)]
            results: list[int | str] = []

            async def poll(http: TargetHttp) -> None:
                try:
                    response = await http.get(f"http://127.0.0.1:{port}/")
                    results.append(response.status_code)
                except httpx.HTTPError as exc:
                    results.append(type(exc).__name__)

            start = trio.current_time()
            async with trio.open_nursery() as polls:
                for http in https:
                    polls.start_soon(poll, http)
            elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()

    assert results == [200] * 100
    assert counts.most <= 10
    assert 0.9 <= elapsed < 2.0
    assert layer.client.timeout.pool is None


# -- metrics ------------------------------------------------------------------


class _Stats(Collector):
    def __init__(self, stats: tuple[KeyStatistics, ...]) -> None:
        self.stats = stats

    def collect(self):  # type: ignore[no-untyped-def]
        return collect(self.stats)


def render(stats: tuple[KeyStatistics, ...]) -> str:
    registry = CollectorRegistry()
    registry.register(_Stats(stats))
    return generate_latest(registry).decode()


async def test_metrics_have_the_documented_names_and_labels(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every family named as documented, labelled by limit key."""
    statuses = iter([200, 304, 500, 429])

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(statuses), headers={"Retry-After": "1"})

    limits = {"api": LimitSpec.from_options(rate="10/s")}
    async with layer_with(handler, limits) as layer:
        http = client(layer)
        for _ in range(4):
            await http.get("http://api.test/")
        text = render(layer.statistics())

    for line in [
        'slapoll_limit_capacity{key="api"} 9.5',
        'slapoll_limit_wait_seconds_total{key="api"}',
        'slapoll_http_responses_total{class="2xx",key="api"} 1.0',
        'slapoll_http_responses_total{class="3xx",key="api"} 1.0',
        'slapoll_http_responses_total{class="4xx",key="api"} 1.0',
        'slapoll_http_responses_total{class="5xx",key="api"} 1.0',
        'slapoll_http_429_total{key="api"} 1.0',
        'slapoll_http_304_total{key="api"} 1.0',
        'slapoll_limit_paused{key="api"} 1.0',
        'slapoll_circuit_open{key="api"} 0.0',
        'slapoll_header_warnings_total{key="api"} 0.0',
    ]:
        assert line in text, line
    assert "slapoll_limit_remaining" in text


async def test_each_redirect_hop_draws_from_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A followed redirect is a request the API counts: 1/s with no burst
    spaces the hop a second after the first request, the final response
    carries the hop in its history, and max_redirects holds."""
    sent: list[tuple[float, str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append((trio.current_time(), request.url.path))
        if request.url.path == "/old":
            return httpx.Response(301, headers={"Location": "http://api.test/new"})
        if request.url.path == "/loop":
            return httpx.Response(302, headers={"Location": "http://api.test/loop"})
        return httpx.Response(200, text="here")

    limits = {"api": LimitSpec.from_options(rate="1/s", burst=1)}
    async with layer_with(handler, limits) as layer:
        http = client(layer)
        response = await http.get("http://api.test/old", follow_redirects=True)
        unfollowed = await http.get("http://api.test/old")
        with pytest.raises(httpx.TooManyRedirects):
            await http.get("http://api.test/loop", follow_redirects=True)

    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [301]
    assert unfollowed.status_code == 301
    assert sent[:3] == [(0.0, "/old"), (1.0, "/new"), (2.0, "/old")]
    assert len(sent) == 3 + 21  # the loop: a first request and 20 hops
    assert all(b - a >= 1.0 - 1e-9 for (a, _), (b, _) in itertools.pairwise(sent))


async def test_an_idle_credentials_budget_is_dropped_and_its_counts_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A credential unused for an hour loses its budget (memory stays that
    of the credentials in use) unless the server still holds it paused;
    the template's exported totals never fall."""

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["Authorization"] == "paused":
            return httpx.Response(429, headers={"Retry-After": "7200"})
        return httpx.Response(200)

    limits = {"api:{token}": LimitSpec.from_options(rate="10/s")}
    async with layer_with(handler, limits) as layer:
        for token in ("a", "b", "paused"):
            http = client(layer, ("api:{token}",), key=token, deadline=10, token=token)
            await http.get("http://api.test/", headers={"Authorization": token})
        before = {f.name: f.samples for f in collect(layer.statistics())}
        assert len(layer.statistics()) == 3

        await trio.sleep(IDLE_KEY_S + 1)
        after = layer.statistics()

    # "a" and "b" are folded into the template's entry; "paused" stays.
    kept = [s for s in after if "#" in s.key]
    assert len(kept) == 1
    assert kept[0].too_many == 1
    assert kept[0].paused
    folded = next(s for s in after if s.key == "api:{token}")
    assert folded.responses == {"2xx": 2}
    assert {f.name: f.samples for f in collect(after)}["slapoll_http_responses"] == (
        before["slapoll_http_responses"]
    )


async def test_every_http_method_draws_from_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """head, put, patch, delete and options go the same way as get: 1/s."""
    sent: list[tuple[float, str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append((trio.current_time(), request.method))
        return httpx.Response(200)

    limits = {"api": LimitSpec.from_options(rate="1/s", burst=1)}
    async with layer_with(handler, limits) as layer:
        http = client(layer)
        await http.head("http://api.test/")
        await http.put("http://api.test/", json={"a": 1})
        await http.patch("http://api.test/", content=b"x")
        await http.delete("http://api.test/")
        await http.options("http://api.test/")

    assert sent == [
        (0.0, "HEAD"),
        (1.0, "PUT"),
        (2.0, "PATCH"),
        (3.0, "DELETE"),
        (4.0, "OPTIONS"),
    ]
