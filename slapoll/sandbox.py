"""A loopback HTTP API that rate-limits, lags and changes like a real one.

The demo, the tests and the benchmarks poll it instead of a third-party API.
It serves one endpoint, ``GET /feeds/{id}``, to any bearer token:

- each token has its own token bucket (``rate_per_token`` requests per
  second, ``burst`` at once); an empty bucket answers 429 with
  ``Retry-After`` at once, without the latency;
- every answer carries ``X-RateLimit-Limit`` (the sustained rate per 60 s
  window, as GitHub counts per hour), ``-Remaining`` (requests that would
  be accepted right now) and ``-Reset`` (the epoch second, rounded up, by
  which one more request than that will be accepted: once the remaining
  ones are spent, when the next is). Read as a quota, "Remaining until
  Reset", that is what a token bucket promises; "until the bucket is full
  again" would hold a client that read it so back several times longer
  than the bucket does;
- an accepted request waits a lognormal latency (median and p99 configured,
  so the tail is long) and then answers 200 with a small JSON document whose
  ``ETag`` changes every ``change_every_s``; ``If-None-Match`` with the
  current tag answers 304.

It speaks HTTP/1.1 through h11 directly on trio. Hypercorn with a bare ASGI
app measured about 1,100 requests/s with 1 client and 730 with 64 on this
hardware; this loop serves several times that, so the sandbox is never the
bottleneck of what it is used to measure.

Buckets and ETag versions follow ``trio.current_time()``, so a test can move
them with a ``MockClock``; the wall clock is read only for the ``Date`` and
``X-RateLimit-Reset`` headers. Tokens are never logged or echoed.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import random
import re
import statistics as _statistics
import time
import types
import zlib
from collections import Counter
from collections.abc import Mapping
from http import HTTPStatus

import attrs
import h11
import trio

__all__ = [
    "Sandbox",
    "SandboxConfig",
    "SandboxStatistics",
    "serve_sandbox",
]

logger = logging.getLogger(__name__)

# X-RateLimit-Limit counts requests per window of this length, as GitHub's
# does per hour; a token bucket has no window, so the limit is its rate
# scaled to one.
RATE_LIMIT_WINDOW_S = 60.0
# The z-score of the 99th percentile of a standard normal distribution: with
# it, the lognormal's sigma follows from the configured median and p99.
_Z_P99 = _statistics.NormalDist().inv_cdf(0.99)
# A lognormal tail is unbounded; one freak draw must not hold a connection
# for minutes, so latency is capped at this multiple of the p99.
LATENCY_CAP_P99_MULTIPLE = 10.0
# Buckets left full are dropped once this many tokens have been seen, so a
# client cycling through fresh tokens cannot grow memory without bound. A
# full bucket is what a new token gets anyway, so dropping one changes
# nothing a client can observe.
MAX_BUCKETS = 100_000
# Feed ids are short path segments; anything else is a 404, not a lookup.
_FEED_PATH = re.compile(rb"/feeds/([A-Za-z0-9_.:-]{1,128})")
# Each version of a feed lists this many items.
ITEMS_PER_FEED = 3
_RECEIVE_SIZE = 65536

_SERVER_NAME = b"slapoll-sandbox"
_JSON = b"application/json"
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


@attrs.frozen
class SandboxConfig:
    """How the sandbox behaves; times in seconds, rates per second.

    ``latency_median_s`` of 0 answers without any delay, which tests and
    throughput benchmarks want. The same ``seed`` gives the same sequence of
    latencies and the same ETags.
    """

    rate_per_token: float = 2.0
    burst: int = 5
    latency_median_s: float = 0.05
    latency_p99_s: float = 0.8
    change_every_s: float = 20.0
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if not (math.isfinite(self.rate_per_token) and self.rate_per_token > 0):
            raise ValueError(
                "rate_per_token must be a finite number greater than 0, "
                f"got {self.rate_per_token!r}"
            )
        if isinstance(self.burst, bool) or not isinstance(self.burst, int):
            raise ValueError(f"burst must be a whole number, got {self.burst!r}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst!r}")
        if not (math.isfinite(self.latency_median_s) and self.latency_median_s >= 0):
            raise ValueError(
                "latency_median_s must be a finite number >= 0, "
                f"got {self.latency_median_s!r}"
            )
        if not (
            math.isfinite(self.latency_p99_s)
            and self.latency_p99_s >= self.latency_median_s
        ):
            raise ValueError(
                "latency_p99_s must be finite and at least latency_median_s "
                f"({self.latency_median_s!r}), got {self.latency_p99_s!r}"
            )
        if not (math.isfinite(self.change_every_s) and self.change_every_s > 0):
            raise ValueError(
                "change_every_s must be a finite number greater than 0, "
                f"got {self.change_every_s!r}"
            )


@attrs.frozen
class SandboxStatistics:
    """What the sandbox has answered since it started.

    ``requests`` counts every request it parsed, including those answered
    with an error; ``by_status`` maps each status code to its count.
    """

    port: int
    requests: int
    by_status: Mapping[int, int]
    too_many: int
    not_modified: int


class LatencySampler:
    """Draw response latencies from a seeded lognormal with a long tail.

    The distribution has the configured median and 99th percentile; draws
    are capped at ``LATENCY_CAP_P99_MULTIPLE`` times the p99.
    """

    def __init__(self, median_s: float, p99_s: float, seed: int) -> None:
        self._random = random.Random(seed)
        self._median_s = median_s
        self._cap_s = p99_s * LATENCY_CAP_P99_MULTIPLE
        if median_s > 0:
            self._mu = math.log(median_s)
            self._sigma = (math.log(p99_s) - self._mu) / _Z_P99
        else:
            self._mu = self._sigma = 0.0

    def sample(self) -> float:
        """Return the next latency in seconds (0 when the median is 0)."""
        if self._median_s == 0:
            return 0.0
        return min(self._random.lognormvariate(self._mu, self._sigma), self._cap_s)


@attrs.define
class _Bucket:
    tokens: float
    updated_s: float


class TokenBuckets:
    """One token bucket per bearer token, refilled from ``trio.current_time()``.

    New tokens start with a full bucket.
    """

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}

    def take(self, token: str, now_s: float) -> tuple[bool, float]:
        """Take one request from *token*'s bucket if it has one.

        Return whether it was granted and the (fractional) requests left.
        """
        bucket = self._buckets.get(token)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._drop_full(now_s)
            bucket = self._buckets[token] = _Bucket(self._burst, now_s)
        else:
            elapsed = max(0.0, now_s - bucket.updated_s)
            bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
            bucket.updated_s = now_s

        if bucket.tokens < 1.0:
            return False, bucket.tokens
        bucket.tokens -= 1.0
        return True, bucket.tokens

    def seconds_until(self, tokens_now: float, wanted: float) -> float:
        """Seconds until a bucket holding *tokens_now* holds *wanted*."""
        return max(0.0, wanted - tokens_now) / self._rate

    def _drop_full(self, now_s: float) -> None:
        full = [
            token
            for token, bucket in self._buckets.items()
            if bucket.tokens + (now_s - bucket.updated_s) * self._rate >= self._burst
        ]
        for token in full:
            del self._buckets[token]


class _DateCache:
    """Format the ``Date`` header once per wall-clock second, not per request."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def header(self, wall_s: float) -> bytes:
        second = int(wall_s)
        if second != self._second:
            self._second = second
            self._value = email.utils.formatdate(second, usegmt=True).encode()
        return self._value


@attrs.frozen
class _Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    # A granted request: the feed it asked for and how long to make it wait.
    feed: str = ""
    delay_s: float = 0.0


def _error(status: int, message: str, *extra: tuple[bytes, bytes]) -> _Answer:
    body = json.dumps({"error": message}).encode()
    return _Answer(status, [(b"content-type", _JSON), *extra], body)


def _bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            token = token.strip()
            if scheme.lower() != b"bearer" or not token or b" " in token:
                return None
            return token.decode("ascii", "replace")
    return None


def _header(headers: list[tuple[bytes, bytes]], wanted: bytes) -> bytes | None:
    for name, value in headers:
        if name == wanted:
            return value
    return None


def _etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    # RFC 9110 13.1.2: If-None-Match compares weakly and may list several
    # tags, or be "*".
    for candidate in if_none_match.split(b","):
        tag = candidate.strip()
        if tag == b"*" or tag.removeprefix(b"W/") == etag:
            return True
    return False


class Sandbox:
    """A running sandbox API: its address, and what it has answered so far.

    Obtained from ``await nursery.start(serve_sandbox, config)``; it stops
    when that task is cancelled.
    """

    def __init__(self, config: SandboxConfig, host: str, port: int) -> None:
        self.config = config
        self.host = host
        self.port = port
        self._buckets = TokenBuckets(config.rate_per_token, config.burst)
        self._latency = LatencySampler(
            config.latency_median_s, config.latency_p99_s, config.seed
        )
        self._dates = _DateCache()
        self._limit = str(round(config.rate_per_token * RATE_LIMIT_WINDOW_S)).encode()
        self._requests = 0
        self._by_status: Counter[int] = Counter()

    @property
    def url(self) -> str:
        """The base URL, such as ``http://127.0.0.1:54321``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def statistics(self) -> SandboxStatistics:
        """Return a snapshot of the counts of requests and answers."""
        by_status = types.MappingProxyType(dict(self._by_status))
        return SandboxStatistics(
            port=self.port,
            requests=self._requests,
            by_status=by_status,
            too_many=self._by_status[HTTPStatus.TOO_MANY_REQUESTS],
            not_modified=self._by_status[HTTPStatus.NOT_MODIFIED],
        )

    def feed_etag(self, feed: str, now_s: float) -> tuple[int, bytes]:
        """Return the version of *feed* at *now_s* (trio clock) and its ETag.

        Each feed's versions are shifted by a stable hash of its id, so the
        feeds do not all change in the same instant.
        """
        every_s = self.config.change_every_s
        offset_s = zlib.crc32(feed.encode()) / 2**32 * every_s
        version = math.floor((now_s + offset_s) / every_s)
        digest = zlib.crc32(f"{self.config.seed}:{feed}:{version}".encode())
        return version, b'"%08x"' % digest

    def _answer(self, request: h11.Request) -> _Answer:
        """Decide the answer to one request; the latency is only sampled."""
        match = _FEED_PATH.fullmatch(request.target.partition(b"?")[0])
        if match is None:
            return _error(
                HTTPStatus.NOT_FOUND, "not found: the only resource is /feeds/{id}"
            )
        if request.method != b"GET":
            return _error(
                HTTPStatus.METHOD_NOT_ALLOWED, "only GET is allowed", (b"allow", b"GET")
            )
        token = _bearer_token(list(request.headers))
        if token is None:
            return _error(
                HTTPStatus.UNAUTHORIZED,
                "an 'Authorization: Bearer <token>' header is required",
                (b"www-authenticate", b"Bearer"),
            )

        granted, left = self._buckets.take(token, trio.current_time())
        rate_headers = self._rate_headers(left)
        if not granted:
            wait_s = self._buckets.seconds_until(left, 1.0)
            retry_after = str(max(1, math.ceil(wait_s))).encode()
            rate_headers.append((b"retry-after", retry_after))
            return _Answer(HTTPStatus.TOO_MANY_REQUESTS, rate_headers)

        feed = match.group(1).decode()
        return _Answer(
            HTTPStatus.OK, rate_headers, feed=feed, delay_s=self._latency.sample()
        )

    def _rate_headers(self, left: float) -> list[tuple[bytes, bytes]]:
        # A full bucket gains nothing more: its reset is now.
        wanted = min(math.floor(left) + 1, self.config.burst)
        next_in_s = self._buckets.seconds_until(left, wanted)
        reset = math.ceil(time.time() + next_in_s)
        return [
            (b"x-ratelimit-limit", self._limit),
            (b"x-ratelimit-remaining", b"%d" % math.floor(left)),
            (b"x-ratelimit-reset", b"%d" % reset),
        ]

    def _feed(self, request: h11.Request, answer: _Answer) -> _Answer:
        """Complete a granted request once its latency has passed."""
        feed = answer.feed
        version, etag = self.feed_etag(feed, trio.current_time())
        headers = [*answer.headers, (b"etag", etag)]

        if_none_match = _header(list(request.headers), b"if-none-match")
        if if_none_match is not None and _etag_matches(if_none_match, etag):
            return _Answer(HTTPStatus.NOT_MODIFIED, headers)

        feed_id: int | str = int(feed) if feed.isdigit() else feed
        items = [
            {"id": f"{feed}-{version}-{n}", "seq": version * ITEMS_PER_FEED + n}
            for n in range(ITEMS_PER_FEED)
        ]
        body = json.dumps(
            {"id": feed_id, "version": version, "items": items},
            separators=(",", ":"),
        ).encode()
        return _Answer(HTTPStatus.OK, [*headers, (b"content-type", _JSON)], body)

    async def _respond(self, request: h11.Request) -> _Answer:
        self._requests += 1
        answer = self._answer(request)
        if answer.status == HTTPStatus.OK:
            if answer.delay_s > 0:
                await trio.sleep(answer.delay_s)
            answer = self._feed(request, answer)
        self._by_status[int(answer.status)] += 1
        return answer

    def _encode(self, conn: h11.Connection, answer: _Answer) -> bytes:
        headers = [
            *answer.headers,
            (b"date", self._dates.header(time.time())),
            (b"server", _SERVER_NAME),
            (b"content-length", b"%d" % len(answer.body)),
        ]
        reason = _REASONS.get(answer.status, b"")
        response = h11.Response(
            status_code=int(answer.status), headers=headers, reason=reason
        )
        out = conn.send(response)
        if answer.body:
            out = (out or b"") + (conn.send(h11.Data(data=answer.body)) or b"")
        return (out or b"") + (conn.send(h11.EndOfMessage()) or b"")

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        """Answer the requests of one connection, in order, until it closes."""
        conn = h11.Connection(h11.SERVER)
        try:
            async with stream:
                await self._converse(stream, conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The client went away, possibly in the middle of a latency
            # wait; there is nobody left to answer.
            return

    async def _converse(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        request: h11.Request | None = None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                await self._reject(stream, conn)
                return
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                answer = await self._respond(request)
                await stream.send_all(self._encode(conn, answer))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
                request = None
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            # Data events are request bodies, which no endpoint reads.

    async def _reject(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        """Answer a request that is not valid HTTP/1.1 with 400, then close."""
        self._requests += 1
        self._by_status[int(HTTPStatus.BAD_REQUEST)] += 1
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        # h11's message may quote request bytes, a token among them, so it
        # goes neither into the answer nor into the log.
        answer = _error(HTTPStatus.BAD_REQUEST, "malformed HTTP/1.1 request")
        await stream.send_all(self._encode(conn, answer))


DEFAULT_CONFIG = SandboxConfig()


async def serve_sandbox(
    config: SandboxConfig = DEFAULT_CONFIG,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[Sandbox] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the sandbox API on *host*:*port* until cancelled.

    Port 0 picks a free port. Use it as ``sandbox = await
    nursery.start(serve_sandbox, config)``: the ``Sandbox`` it starts with
    knows the port actually bound.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port = listeners[0].socket.getsockname()[1]
    sandbox = Sandbox(config, host, bound_port)
    logger.info("sandbox API listening on %s", sandbox.url)
    task_status.started(sandbox)

    try:
        await trio.serve_listeners(sandbox._serve_connection, listeners)
    finally:
        logger.info("sandbox API on %s stopped", sandbox.url)
