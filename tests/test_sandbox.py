"""The sandbox API: auth, per-token rate limits, ETags, latency, statistics.

Exact arithmetic (bucket refill, ETag versions, the latency distribution)
is pinned on the pure parts with explicit times; everything else goes over
HTTP to a real sandbox on a loopback port, with latency off unless the test
is about latency.
"""

from __future__ import annotations

import email.utils
import logging
import statistics
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from slapoll import sandbox as sandbox_module
from slapoll.sandbox import (
    LatencySampler,
    Sandbox,
    SandboxConfig,
    TokenBuckets,
    serve_sandbox,
)

# No latency, no rate limit in the way, and ETags that do not roll over
# during a test.
QUIET = SandboxConfig(
    rate_per_token=1000.0,
    burst=1000,
    latency_median_s=0.0,
    latency_p99_s=0.0,
    change_every_s=3600.0,
)


async def start(nursery: trio.Nursery, config: SandboxConfig = QUIET) -> Sandbox:
    sandbox: Sandbox = await nursery.start(serve_sandbox, config)
    return sandbox


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- configuration -------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate_per_token": 0.0}, r"rate_per_token .* greater than 0, got 0\.0"),
        ({"rate_per_token": float("inf")}, r"rate_per_token .* got inf"),
        ({"burst": 0}, r"burst must be at least 1, got 0"),
        ({"burst": 2.5}, r"burst must be a whole number, got 2\.5"),
        ({"latency_median_s": -1.0}, r"latency_median_s .* >= 0, got -1\.0"),
        (
            {"latency_median_s": 0.5, "latency_p99_s": 0.1},
            r"latency_p99_s .* at least latency_median_s \(0\.5\), got 0\.1",
        ),
        ({"change_every_s": 0.0}, r"change_every_s .* greater than 0, got 0\.0"),
    ],
)
def test_config_rejects_bad_values_naming_them(
    options: dict[str, float], message: str
) -> None:
    """A bad setting fails at construction and shows the value given."""
    with pytest.raises(ValueError, match=message):
        SandboxConfig(**options)  # type: ignore[arg-type]


# --- pure parts ----------------------------------------------------------


def test_bucket_grants_burst_then_refills_at_rate() -> None:
    """A fresh token gets ``burst`` requests at once, then ``rate`` per second."""
    buckets = TokenBuckets(rate_per_s=2.0, burst=3)

    granted = [buckets.take("a", 100.0)[0] for _ in range(4)]
    assert granted == [True, True, True, False]
    assert buckets.take("a", 100.4) == pytest.approx((False, 0.8))
    assert buckets.take("a", 100.5)[0] is True
    # A long pause refills to the burst, never beyond it.
    assert buckets.take("a", 1000.0) == pytest.approx((True, 2.0))


def test_bucket_seconds_until_follows_the_rate() -> None:
    """The wait for *n* requests is the missing tokens over the rate."""
    buckets = TokenBuckets(rate_per_s=4.0, burst=8)

    assert buckets.seconds_until(0.5, 1.0) == pytest.approx(0.125)
    assert buckets.seconds_until(3.0, 1.0) == 0.0


def test_buckets_drop_only_full_ones_when_too_many_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the bucket cap, full buckets are forgotten and used ones kept."""
    monkeypatch.setattr(sandbox_module, "MAX_BUCKETS", 3)
    buckets = TokenBuckets(rate_per_s=1.0, burst=2)
    for _ in range(2):
        buckets.take("spent", 0.0)
    buckets.take("a", 0.0)
    buckets.take("b", 0.0)

    # At t=1.5, "a" and "b" have refilled; "spent" holds 1.5 of 2.
    buckets.take("new", 1.5)

    assert buckets.take("spent", 1.5) == pytest.approx((True, 0.5))
    assert len(buckets._buckets) == 2


def test_feed_versions_advance_once_per_period_with_per_feed_phase() -> None:
    """Each feed's version rises by one per period, at a phase of its own."""
    sandbox = Sandbox(SandboxConfig(change_every_s=10.0), "127.0.0.1", 1)

    for feed in ("1", "2", "abc"):
        version, etag = sandbox.feed_etag(feed, 1234.5)
        assert sandbox.feed_etag(feed, 1244.5)[0] == version + 1
        assert sandbox.feed_etag(feed, 1244.5)[1] != etag
        assert sandbox.feed_etag(feed, 1234.5) == (version, etag)

    changes = {
        feed: next(
            t
            for t in range(1, 11)
            if sandbox.feed_etag(str(feed), float(t))[0]
            != sandbox.feed_etag(str(feed), 0.0)[0]
        )
        for feed in range(50)
    }
    assert len(set(changes.values())) > 1, "all feeds changed in the same second"


def test_etags_depend_on_the_seed() -> None:
    """Two sandboxes with different seeds do not share ETags."""
    first = Sandbox(SandboxConfig(seed=1), "127.0.0.1", 1)
    second = Sandbox(SandboxConfig(seed=2), "127.0.0.1", 1)

    assert first.feed_etag("7", 50.0)[1] != second.feed_etag("7", 50.0)[1]


def test_latency_has_the_configured_median_and_p99() -> None:
    """Seeded lognormal draws match the median and p99 they were built from."""
    sampler = LatencySampler(median_s=0.05, p99_s=0.8, seed=3)
    draws = sorted(sampler.sample() for _ in range(20_000))

    assert statistics.median(draws) == pytest.approx(0.05, rel=0.05)
    assert draws[int(0.99 * len(draws))] == pytest.approx(0.8, rel=0.15)
    assert max(draws) <= 0.8 * sandbox_module.LATENCY_CAP_P99_MULTIPLE


def test_latency_is_reproducible_and_zero_when_off() -> None:
    """The same seed gives the same draws; a median of 0 means no latency."""
    first = LatencySampler(0.05, 0.8, seed=9)
    second = LatencySampler(0.05, 0.8, seed=9)
    off = LatencySampler(0.0, 0.0, seed=9)

    assert [first.sample() for _ in range(5)] == [second.sample() for _ in range(5)]
    assert {off.sample() for _ in range(5)} == {0.0}


# --- over HTTP -----------------------------------------------------------


async def test_serves_a_feed_as_json_with_etag_and_headers(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    """A granted request gets the feed, an ETag, rate headers and a Date."""
    sandbox = await start(nursery)

    response = await client.get(f"{sandbox.url}/feeds/42", headers=auth("t"))

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == 42
    assert isinstance(body["version"], int)
    assert len(body["items"]) == sandbox_module.ITEMS_PER_FEED
    assert response.headers["etag"].startswith('"')
    assert response.headers["x-ratelimit-limit"] == "60000"
    assert response.headers["x-ratelimit-remaining"] == "999"
    date = email.utils.parsedate_to_datetime(response.headers["date"])
    assert abs(date.timestamp() - time.time()) < 5


async def test_url_carries_the_real_port(nursery: trio.Nursery) -> None:
    """Port 0 binds a free port, which the url and statistics report."""
    sandbox = await start(nursery)

    assert sandbox.port > 0
    assert sandbox.url == f"http://127.0.0.1:{sandbox.port}"
    assert sandbox.statistics().port == sandbox.port


@pytest.mark.parametrize(
    "authorization", [None, "Basic dTpw", "Bearer", "Token abc", "Bearer a b"]
)
async def test_missing_or_bad_auth_is_401(
    nursery: trio.Nursery, client: httpx.AsyncClient, authorization: str | None
) -> None:
    """Without a usable bearer token the answer is a 401 JSON error."""
    sandbox = await start(nursery)
    headers = {} if authorization is None else {"Authorization": authorization}

    response = await client.get(f"{sandbox.url}/feeds/1", headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Bearer" in response.json()["error"]
    assert "x-ratelimit-limit" not in response.headers


async def test_empty_bucket_answers_429_with_retry_after(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    """Past the burst: 429, Retry-After in whole seconds, and rate headers."""
    config = SandboxConfig(
        rate_per_token=0.1, burst=3, latency_median_s=0.0, latency_p99_s=0.0
    )
    sandbox = await start(nursery, config)
    url = f"{sandbox.url}/feeds/1"

    granted = [await client.get(url, headers=auth("t")) for _ in range(3)]
    refused = await client.get(url, headers=auth("t"))

    assert [r.status_code for r in granted] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining"] for r in granted] == ["2", "1", "0"]
    assert refused.status_code == 429
    assert refused.content == b""
    assert "etag" not in refused.headers
    # One token refills in 1 / 0.1 = 10 s: the next request is accepted
    # then, and Reset says so (not when the bucket of 3 is full, 30 s).
    assert refused.headers["retry-after"] == "10"
    assert refused.headers["x-ratelimit-limit"] == "6"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    reset_in_s = int(refused.headers["x-ratelimit-reset"]) - time.time()
    assert 8 < reset_in_s < 12


async def test_tokens_have_separate_buckets(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    """One token running dry does not limit another."""
    config = SandboxConfig(
        rate_per_token=0.1, burst=2, latency_median_s=0.0, latency_p99_s=0.0
    )
    sandbox = await start(nursery, config)
    url = f"{sandbox.url}/feeds/1"

    statuses = [(await client.get(url, headers=auth("a"))).status_code for _ in "abc"]
    other = await client.get(url, headers=auth("b"))

    assert statuses == [200, 200, 429]
    assert other.status_code == 200
    assert other.headers["x-ratelimit-remaining"] == "1"


async def test_if_none_match_with_current_etag_is_304(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    """The current ETag, alone, weak or in a list, gets 304 with no body."""
    sandbox = await start(nursery)
    url = f"{sandbox.url}/feeds/5"
    etag = (await client.get(url, headers=auth("t"))).headers["etag"]

    for if_none_match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        headers = {**auth("t"), "If-None-Match": if_none_match}
        response = await client.get(url, headers=headers)
        assert response.status_code == 304, if_none_match
        assert response.content == b""
        assert response.headers["etag"] == etag
        assert "x-ratelimit-remaining" in response.headers

    stale = await client.get(url, headers={**auth("t"), "If-None-Match": '"old"'})
    assert stale.status_code == 200


async def test_etag_changes_after_change_every(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    """After ``change_every_s`` the old ETag no longer matches: 200 again."""
    config = SandboxConfig(latency_median_s=0.0, latency_p99_s=0.0, change_every_s=0.2)
    sandbox = await start(nursery, config)
    url = f"{sandbox.url}/feeds/5"
    first = await client.get(url, headers=auth("t"))

    await trio.sleep(config.change_every_s)
    headers = {**auth("t"), "If-None-Match": first.headers["etag"]}
    second = await client.get(url, headers=headers)

    assert second.status_code == 200
    assert second.headers["etag"] != first.headers["etag"]
    assert second.json()["version"] > first.json()["version"]


async def test_granted_requests_wait_the_latency_and_refusals_do_not(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    """A 200 comes after the sampled latency; a 429 comes at once."""
    latency_s = 0.3
    config = SandboxConfig(
        rate_per_token=0.1, burst=1, latency_median_s=latency_s, latency_p99_s=latency_s
    )
    sandbox = await start(nursery, config)
    url = f"{sandbox.url}/feeds/1"

    started = trio.current_time()
    granted = await client.get(url, headers=auth("t"))
    granted_s = trio.current_time() - started
    refused = await client.get(url, headers=auth("t"))
    refused_s = trio.current_time() - started - granted_s

    assert granted.status_code == 200
    assert granted_s >= latency_s
    assert refused.status_code == 429
    assert refused_s < latency_s


async def test_waits_overlap_across_connections(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    """Concurrent requests wait their latencies side by side, not in turn."""
    latency_s, concurrent = 0.2, 20
    config = SandboxConfig(latency_median_s=latency_s, latency_p99_s=latency_s)
    sandbox = await start(nursery, config)
    statuses: list[int] = []

    async def fetch(n: int) -> None:
        url = f"{sandbox.url}/feeds/{n}"
        statuses.append((await client.get(url, headers=auth(f"t{n}"))).status_code)

    started = trio.current_time()
    async with trio.open_nursery() as fetches:
        for n in range(concurrent):
            fetches.start_soon(fetch, n)
    elapsed_s = trio.current_time() - started

    assert statuses == [200] * concurrent
    assert elapsed_s < latency_s * concurrent / 4


async def test_statistics_count_answers_by_status(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    """Every answer is counted by status; 429 and 304 have their own totals."""
    config = SandboxConfig(
        rate_per_token=0.1,
        burst=2,
        latency_median_s=0.0,
        latency_p99_s=0.0,
        change_every_s=3600.0,
    )
    sandbox = await start(nursery, config)
    url = f"{sandbox.url}/feeds/3"
    assert sandbox.statistics().requests == 0

    etag = (await client.get(url, headers=auth("t"))).headers["etag"]
    await client.get(url, headers={**auth("t"), "If-None-Match": etag})
    await client.get(url, headers=auth("t"))
    await client.get(url)
    await client.get(f"{sandbox.url}/elsewhere", headers=auth("t"))
    await client.post(url, headers=auth("t"))

    stats = sandbox.statistics()
    assert stats.requests == 6
    assert dict(stats.by_status) == {200: 1, 304: 1, 429: 1, 401: 1, 404: 1, 405: 1}
    assert stats.too_many == 1
    assert stats.not_modified == 1


async def test_unknown_paths_and_methods_are_refused(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    """Only ``GET /feeds/{id}`` exists: other paths 404, other methods 405."""
    sandbox = await start(nursery)

    missing = await client.get(f"{sandbox.url}/feeds/", headers=auth("t"))
    posted = await client.post(f"{sandbox.url}/feeds/1", headers=auth("t"))

    assert missing.status_code == 404
    assert posted.status_code == 405
    assert posted.headers["allow"] == "GET"


async def test_malformed_request_gets_400_then_close(nursery: trio.Nursery) -> None:
    """Bytes that are not HTTP/1.1 get a 400 and the connection is closed."""
    sandbox = await start(nursery)

    async with await trio.open_tcp_stream("127.0.0.1", sandbox.port) as stream:
        await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
        received = b""
        while chunk := await stream.receive_some(4096):
            received += chunk

    assert received.startswith(b"HTTP/1.1 400 ")
    assert sandbox.statistics().by_status[400] == 1


async def test_token_never_appears_in_answers_or_logs(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The bearer token is neither echoed back nor logged, on any status."""
    caplog.set_level(logging.DEBUG, logger="slapoll.sandbox")
    config = SandboxConfig(
        rate_per_token=0.1, burst=1, latency_median_s=0.0, latency_p99_s=0.0
    )
    sandbox = await start(nursery, config)
    secret = "s3cr3t-t0ken"
    url = f"{sandbox.url}/feeds/1"

    responses = [await client.get(url, headers=auth(secret)) for _ in range(2)]
    responses.append(await client.get(url, headers={"Authorization": secret}))

    assert [r.status_code for r in responses] == [200, 429, 401]
    for response in responses:
        assert secret not in response.text
        assert all(secret not in value for value in response.headers.values())
    assert secret not in caplog.text


async def test_stops_serving_when_cancelled() -> None:
    """Cancelling the serving task closes the port."""
    async with trio.open_nursery() as nursery:
        sandbox = await start(nursery)
        nursery.cancel_scope.cancel()

    with pytest.raises(OSError, match="connect"):
        await trio.open_tcp_stream("127.0.0.1", sandbox.port)
