"""HTTP through the engine: one shared client, every request within budget.

``HttpLayer`` owns one ``httpx.AsyncClient`` and the ``KeyBudget`` of every
limit key. A run gets a ``TargetHttp`` from ``layer.for_target(...)``; each
request it makes

1. fails fast if a key's circuit is open (``CircuitOpenError``);
2. waits until every key it draws from has a slot (a pause or an exhausted
   server quota is waited out first, without booking anything, so one
   paused key holds up nobody else); the wait is lag, not an error;
3. takes a connection permit (the pool is sized from the worker pool and
   queueing for it is lag too: httpx's pool timeout is off);
4. sends, with If-None-Match / If-Modified-Since from the last answer to
   the same target and URL, bounded by the run's deadline;
5. teaches every key what the response said (rate headers, 429, 503, 5xx)
   and returns the response as is: a 304 is a successful, fresh poll.

Limit keys may be templates over the target's arguments
(``"github:{account}"``). Arguments may be credentials: a resolved key is
shown (logs, statistics, metrics) with each argument replaced by a short
keyed hash, and metrics are labelled by the declared template only, so their
number stays that of the config.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import attrs
import httpx
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ._headers import RateLimitInfo, parse_rate_limit_headers
from ._policy import template_arguments, template_fields
from ._ratelimit import KeyBudget, KeyStatistics, LimitSpec
from .errors import ConfigError, RunDeadlineError, SlapollError

if TYPE_CHECKING:
    from httpx._client import UseClientDefault
    from httpx._types import (
        AuthTypes,
        CookieTypes,
        HeaderTypes,
        QueryParamTypes,
        RequestContent,
        RequestData,
        RequestExtensions,
        RequestFiles,
        TimeoutTypes,
    )

__all__ = [
    "CircuitOpenError",
    "DeadlineError",
    "HttpLayer",
    "TargetHttp",
    "collect",
]

logger = logging.getLogger("slapoll.http")

# Slots are booked at most this far ahead; a request whose slot lies
# further waits unbooked, so that a lower rate or a pause learned meanwhile
# applies to it, and a higher rate is not wasted on slots given out early.
BOOKING_HORIZON_S = 0.5
# A request that got its connection permit this long after its slot sends
# on a fresh slot instead: held-up requests must not go out in a bunch.
LATE_SEND_TOLERANCE_S = 0.05
# The read, write and connect timeouts of the shared client unless given;
# the run's deadline bounds the whole request anyway.
DEFAULT_TIMEOUT_S = 30.0
# Bad rate headers from one key are logged at most once per this long
# (each is still counted): a server that always sends them must not
# flood the log.
WARNING_LOG_INTERVAL_S = 60.0
# Connections per pool of the sharded transport: small enough that the
# pool's per-request scan stays short, large enough to reuse connections.
CONNECTIONS_PER_SHARD = 4
# A credential's budget (a key filled from a template) that no run has used
# for this long is dropped once at rest: an hour outlasts the windows APIs
# count in, so a fresh budget in its place cannot send what the old one
# would have held back. What it learned from the server is learned again.
IDLE_KEY_S = 3600.0
# A resolved key shows each argument as this many hex digits of a hash.
ARGUMENT_HASH_DIGITS = 12
# The hash is keyed: unkeyed, a weak token could be found from a log line
# by hashing likely candidates. Shown keys only need to tell credentials
# apart within one process (metrics are labelled by template, stores keep
# no shown keys), so a fresh random key per process will do.
_ARGUMENT_HASH_KEY = os.urandom(16)
_CONDITIONAL_METHODS = frozenset({"GET", "HEAD"})

# What an undeclared limit key (or a request with none) goes by.
_DEFAULT_SPEC = LimitSpec()
# (ETag, Last-Modified) of the last full answer to one URL.
_Validators = tuple[str | None, str | None]


class CircuitOpenError(SlapollError, httpx.TransportError):
    """A limit key's circuit is open: the request was not sent.

    Raised at once, without waiting, after the key's upstream failed too
    often in a row; a probe goes through once the cool-down has passed.
    """


class DeadlineError(RunDeadlineError, httpx.TimeoutException):
    """The run's deadline passed before the response was complete.

    Either the budget would only have a slot after the deadline (nothing
    was sent) or the response was still arriving (a trickle is cut off).
    """


# -- keys ---------------------------------------------------------------------


@attrs.frozen
class _Key:
    """One resolved limit key: its identity, how it is shown, its origin."""

    identity: str
    shown: str
    template: str
    templated: bool


def _hash_argument(value: object) -> str:
    digest = hashlib.blake2b(
        str(value).encode(), digest_size=16, key=_ARGUMENT_HASH_KEY
    ).hexdigest()
    return "#" + digest[:ARGUMENT_HASH_DIGITS]


def resolve_key(
    template: str, args: Mapping[str, object], *, task: str, target: str
) -> _Key:
    """Fill *template* from a target's *args*; raises ``ConfigError``."""
    names = template_arguments(template, args, task=task, target=target)
    if not names:
        return _Key(template, template, template, templated=False)
    identity = template.format_map({n: args[n] for n in names})
    shown = template.format_map({n: _hash_argument(args[n]) for n in names})
    return _Key(identity, shown, template, templated=True)


class _KeyState:
    """A resolved key's budget with the trio objects that wait on it."""

    __slots__ = (
        "budget",
        "concurrency",
        "held_until",
        "key",
        "last_warning_log",
        "lot",
    )

    def __init__(self, key: _Key, spec: LimitSpec) -> None:
        self.key = key
        # The latest deadline of a run given this state, or of its latest
        # request: until then a run may still use it (see HttpLayer._prune).
        self.held_until = -math.inf
        self.budget = KeyBudget(spec, key=key.shown, limit=key.template)
        # Requests that wait for this key unbooked park here; a send wakes
        # one, a change that brings the next slot sooner wakes all.
        self.lot = trio.lowlevel.ParkingLot()
        self.concurrency = (
            None if spec.concurrency is None else trio.Semaphore(spec.concurrency)
        )
        self.last_warning_log = -math.inf


# -- the layer ----------------------------------------------------------------


class _CountedStream(httpx.AsyncByteStream):
    """A response body that tells its shard when it is closed."""

    def __init__(self, inner: httpx.AsyncByteStream, done: Callable[[], None]) -> None:
        self._inner = inner
        self._done: Callable[[], None] | None = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done()


class ShardedTransport(httpx.AsyncBaseTransport):
    """httpx's own transport, split into pools of a few connections each.

    httpcore's connection pool checks every waiting request against every
    connection, so one pool gets slower the more requests it holds: against
    nginx on loopback, one shared client served 1,236 requests/s with 1 in
    flight but 127 with 64 (benchmarks/http.py). Each request goes to the
    least busy of several small pools instead; the pools share one TLS
    context, so they cost no more to open than one.
    """

    def __init__(self, max_connections: int) -> None:
        shards = max(1, math.ceil(max_connections / CONNECTIONS_PER_SHARD))
        limits = httpx.Limits(
            max_connections=CONNECTIONS_PER_SHARD,
            max_keepalive_connections=CONNECTIONS_PER_SHARD,
        )
        tls = httpx.create_ssl_context()
        self._shards = [
            httpx.AsyncHTTPTransport(limits=limits, verify=tls) for _ in range(shards)
        ]
        self._busy = [0] * shards

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        busy = self._busy
        shard = busy.index(min(busy))
        busy[shard] += 1

        def done() -> None:
            busy[shard] -= 1

        try:
            response = await self._shards[shard].handle_async_request(request)
        except BaseException:
            done()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _CountedStream(response.stream, done)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


def _quiet_httpx_logger() -> None:
    """Keep httpx's logger to warnings, unless its level was chosen.

    httpx logs every request at INFO with its full URL, query string and
    all, so an application logging at INFO would write out any token a URL
    holds, once per request. A level set on the ``httpx`` logger is the
    user's choice and stays.
    """
    httpx_logger = logging.getLogger("httpx")
    if httpx_logger.level == logging.NOTSET:
        httpx_logger.setLevel(logging.WARNING)


class HttpLayer:
    """The engine's HTTP: one shared client and a budget per limit key.

    *limits* maps limit names and templates (``"github"``,
    ``"github:{account}"``) to what is declared about them; a key with no
    entry learns its budget from the server. *max_connections* sizes the
    client's pool and the permits requests take (change it with
    ``set_max_connections``). *timeout* is httpx's, without a pool timeout:
    queueing for a connection is lag, never an error. *transport* replaces
    the network (tests pass ``httpx.MockTransport``). Times come from
    *clock* (the trio clock by default); *wall_clock* is read only to
    interpret a response without a ``Date`` header.

    Use it inside a trio run and ``await layer.aclose()`` (or ``async
    with``) when done.
    """

    def __init__(
        self,
        limits: Mapping[str, LimitSpec] | None = None,
        *,
        max_connections: int,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise ConfigError(
                f"max_connections must be a whole number >= 1, got {max_connections!r}"
            )
        self._limits: dict[str, LimitSpec] = {}
        for name, spec in (limits or {}).items():
            self.declare(name, spec)
        if not isinstance(timeout, httpx.Timeout):
            timeout = httpx.Timeout(timeout, pool=None)
        else:
            timeout = httpx.Timeout(
                connect=timeout.connect,
                read=timeout.read,
                write=timeout.write,
                pool=None,
            )
        if transport is None:
            transport = ShardedTransport(max_connections)
        _quiet_httpx_logger()
        self.client = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            headers=headers,
        )
        self._connections = trio.CapacityLimiter(max_connections)
        self._keys: dict[str, _KeyState] = {}
        # What the budgets of dropped credentials counted, by template.
        self._retired: dict[str, KeyBudget] = {}
        self._clock = clock
        self._wall_clock = wall_clock
        # Per (task, target): URL -> (ETag, Last-Modified) of the last
        # full answer, and the least poll interval the server asked for.
        self._validators: dict[tuple[str, str], dict[str, _Validators]] = {}
        self._poll_intervals: dict[tuple[str, str], float] = {}

    def declare(self, name: str, spec: LimitSpec) -> None:
        """Declare (or replace) the budget of a limit name or template.

        Keys already in use keep the spec they were made with.
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a limit name must be a non-empty string, got {name!r}")
        template_fields(name)
        if not isinstance(spec, LimitSpec):
            raise ConfigError(f"limit {name!r} needs a LimitSpec, got {spec!r}")
        self._limits[name] = spec

    async def __aenter__(self) -> HttpLayer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the shared client and its connections."""
        await self.client.aclose()

    def now(self) -> float:
        """The layer's clock: the trio clock unless another was given."""
        return trio.current_time() if self._clock is None else self._clock()

    @property
    def max_connections(self) -> int:
        """How many requests may be in flight at once."""
        return int(self._connections.total_tokens)

    def set_max_connections(self, n: int) -> None:
        """Resize the connection permits, as the worker pool is resized.

        The client's own pool keeps its first size: past it, requests
        queue inside httpx (lag, not errors).
        """
        self._connections.total_tokens = max(1, n)

    def for_target(
        self,
        task: str,
        key: str,
        args: Mapping[str, object],
        limit_templates: Iterable[str],
        deadline: float,
    ) -> TargetHttp:
        """The HTTP client of one run of target *key* of *task*.

        *limit_templates* are filled from *args* (a missing argument raises
        ``ConfigError`` naming the template and the argument); *deadline*
        (on the layer's clock) bounds every request of the run.
        """
        states: dict[str, _KeyState] = {}
        for template in limit_templates:
            resolved = resolve_key(template, args, task=task, target=key)
            if resolved.identity not in states:
                states[resolved.identity] = self._state(resolved)
        ordered = [states[k] for k in sorted(states)]
        for state in ordered:  # see _prune; each request holds it longer
            state.held_until = max(state.held_until, deadline)
        return TargetHttp(self, task, key, ordered, deadline)

    def _state(self, key: _Key) -> _KeyState:
        state = self._keys.get(key.identity)
        if state is None:
            spec = self._limits.get(key.identity) or self._limits.get(key.template)
            state = _KeyState(key, spec or LimitSpec())
            self._keys[key.identity] = state
        return state

    def _prune(self, now: float) -> None:
        """Drop the budgets of credentials no run has used for ``IDLE_KEY_S``.

        Users come and go, and each credential of a template has its own
        budget: kept forever, they would grow without end. A budget goes
        only once a fresh one would behave the same (``KeyBudget.at_rest``)
        and no run can still hold it; its counters are kept, added to its
        template's, so the exported totals never fall.
        """
        idle = [
            identity
            for identity, state in self._keys.items()
            if state.key.templated
            and now > state.held_until
            and state.budget.at_rest(now)
            and not state.lot
        ]
        for identity in idle:
            budget = self._keys.pop(identity).budget
            template = budget.limit
            retired = self._retired.setdefault(
                template, KeyBudget(LimitSpec(), key=template, limit=template)
            )
            retired.add_counts(budget)

    def min_interval(self, task: str, key: str) -> float | None:
        """The least poll interval the server asked for (X-Poll-Interval)."""
        return self._poll_intervals.get((task, key))

    def min_intervals(self) -> Mapping[tuple[str, str], float]:
        """The least poll interval the server asked each target for
        (X-Poll-Interval), by (task, target key); targets without one are
        left out. A live view: do not keep it past an await."""
        return self._poll_intervals

    def forget(self, task: str, key: str) -> None:
        """Drop what is kept for a removed target (validators, interval)."""
        self._validators.pop((task, key), None)
        self._poll_intervals.pop((task, key), None)

    def statistics(self) -> tuple[KeyStatistics, ...]:
        """A snapshot of every limit key's budget, ordered by shown key.

        Budgets of credentials idle for ``IDLE_KEY_S`` are dropped first;
        what they counted stays, as one entry per template shown as the
        template itself (no rate, never paused).
        """
        now = self.now()
        self._prune(now)
        budgets = [state.budget for state in self._keys.values()]
        stats = [b.statistics(now) for b in (*budgets, *self._retired.values())]
        return tuple(sorted(stats, key=lambda s: s.key))

    # -- admission -------------------------------------------------------------

    async def _admit(self, states: list[_KeyState], deadline: float) -> float:
        """Wait for a slot on every key and book it; return the slot time.

        Raises ``DeadlineError`` (nothing booked) if the slot would come
        after *deadline*. Cancellation leaves nothing booked.
        """
        budgets = [s.budget for s in states]
        if not budgets:
            return self.now()  # a task without limit keys draws on nothing
        while True:
            now = self.now()
            slots = [b.next_slot(now) for b in budgets]
            slot = max(slots)
            binding = states[slots.index(slot)]
            if slot > deadline:
                raise DeadlineError(
                    f"no budget on limit key {binding.key.shown!r} before the "
                    f"run's deadline: its next slot is {slot - now:.1f}s away, "
                    f"the deadline {max(0.0, deadline - now):.1f}s"
                )
            if slot - now > BOOKING_HORIZON_S:
                # Far off (a pause, a spent quota, a long queue): wait
                # unbooked until near it or until the budget changes.
                with trio.move_on_at(slot - BOOKING_HORIZON_S):
                    await binding.lot.park()
                binding.budget.note_wait(self.now() - now)
                continue

            generations = [b.generation for b in budgets]
            for budget in budgets:
                budget.reserve(now, not_before=slot)
            if slot <= now:
                # The common case: budget to spare. Sending will yield soon
                # enough; a schedule point here would only cost time.
                self._wake_next(states)
                return now
            try:
                await trio.sleep_until(slot)
            except BaseException:
                self._release(states)
                raise
            for budget, own in zip(budgets, slots, strict=True):
                if own >= slot:
                    budget.note_wait(slot - now)
            if [b.generation for b in budgets] == generations:
                self._wake_next(states)
                return slot
            # A pause or a lower rate came meanwhile: the slot is void.
            self._release(states)

    def _release(self, states: list[_KeyState]) -> None:
        for state in states:
            state.budget.release()
        self._wake_next(states)

    @staticmethod
    def _wake_next(states: list[_KeyState]) -> None:
        for state in states:
            state.lot.unpark()

    # -- learning --------------------------------------------------------------

    def _learn(
        self,
        states: list[_KeyState],
        response: httpx.Response,
        sent_at: float,
    ) -> RateLimitInfo:
        """Teach every key of the request what *response* said; return it.

        The returned reading is that of the first key (defaults if none).
        """
        now = self.now()
        wall_now = self._wall_clock()
        infos: dict[tuple[str, float], RateLimitInfo] = {}

        def read(spec: LimitSpec) -> RateLimitInfo:
            # Keys read headers by their own reset_format and max_wait; the
            # usual one or two keys of a request share one reading.
            cache_key = (spec.reset_format, spec.max_wait_s)
            info = infos.get(cache_key)
            if info is None:
                info = infos[cache_key] = parse_rate_limit_headers(
                    response.headers,
                    wall_now=wall_now,
                    reset_format=spec.reset_format,
                    max_wait_s=spec.max_wait_s,
                )
            return info

        # Rate headers describe the most specific keys: the per-credential
        # ones when the task has any, else the API's own.
        learners = [s for s in states if s.key.templated] or states
        for state in states:
            budget = state.budget
            info = read(budget.spec)
            learn = state in learners
            before = budget.next_slot(now)
            budget.observe(
                now, response.status_code, info, sent_at=sent_at, learn=learn
            )
            if learn and info.warnings:
                self._log_warnings(state, info.warnings, now)
            if budget.next_slot(now) < before:
                # Waiters sleep until their slot came near as computed
                # under the old budget: woken, they see it come sooner (a
                # quota renewed, unsent slots given back). A later slot
                # they find when they wake anyway, and waking every
                # waiter on each response (the learned rate moves with
                # each) cost as much CPU as the requests themselves.
                state.lot.unpark_all()

        return read(states[0].budget.spec if states else _DEFAULT_SPEC)

    @staticmethod
    def _log_warnings(state: _KeyState, warnings: tuple[str, ...], now: float) -> None:
        if now - state.last_warning_log < WARNING_LOG_INTERVAL_S:
            return
        state.last_warning_log = now
        logger.warning(
            "limit %s: server rate headers clamped or ignored: %s",
            state.key.shown,
            "; ".join(warnings),
        )

    def _remember(
        self, task: str, key: str, request: httpx.Request, response: httpx.Response
    ) -> None:
        if request.method not in _CONDITIONAL_METHODS:
            return
        etag = response.headers.get("etag")
        modified = response.headers.get("last-modified")
        if response.status_code == 304 and not (etag or modified):
            return  # keep the validators that got the 304
        if response.status_code != 304 and response.status_code // 100 != 2:
            return
        if etag or modified:
            urls = self._validators.setdefault((task, key), {})
            urls[str(request.url)] = (etag, modified)

    def _conditional(self, task: str, key: str, request: httpx.Request) -> None:
        if request.method not in _CONDITIONAL_METHODS:
            return
        known = self._validators.get((task, key), {}).get(str(request.url))
        if known is None:
            return
        etag, modified = known
        headers = request.headers
        # A caller's own validators win.
        if etag and "if-none-match" not in headers:
            headers["If-None-Match"] = etag
        if modified and "if-modified-since" not in headers:
            headers["If-Modified-Since"] = modified


class _Permits:
    """The concurrency and connection permits one request holds."""

    __slots__ = ("_layer", "_request", "_states", "_taken")

    def __init__(
        self, layer: HttpLayer, states: list[_KeyState], request: httpx.Request
    ) -> None:
        self._layer = layer
        self._states = states
        self._request = request
        self._taken: list[trio.Semaphore] = []

    async def take(self) -> None:
        # Always in key order, then the connection: no two requests can
        # each hold what the other waits for.
        # Free permits are taken without a schedule point: most requests
        # find one, and each checkpoint costs as much as parsing headers.
        try:
            for state in self._states:
                semaphore = state.concurrency
                if semaphore is not None:
                    try:
                        semaphore.acquire_nowait()
                    except trio.WouldBlock:
                        await semaphore.acquire()
                    self._taken.append(semaphore)
            connections = self._layer._connections
            try:
                connections.acquire_on_behalf_of_nowait(self._request)
            except trio.WouldBlock:
                await connections.acquire_on_behalf_of(self._request)
        except BaseException:
            self._give_back_semaphores()
            raise

    def release(self) -> None:
        self._layer._connections.release_on_behalf_of(self._request)
        self._give_back_semaphores()

    def _give_back_semaphores(self) -> None:
        while self._taken:
            self._taken.pop().release()


# -- one run's client ---------------------------------------------------------


class TargetHttp:
    """The HTTP client of one run: httpx's request methods, within budget.

    Every request draws from all of the run's limit keys and returns the
    ``httpx.Response`` unchanged (a 304 included). ``wait_s`` adds up the
    seconds this run's requests waited for budget and connections: lag.
    Raises ``CircuitOpenError`` without sending when a key's upstream is
    failing, ``DeadlineError`` when the run's deadline comes first, and
    httpx's errors otherwise.
    """

    __slots__ = ("_layer", "_states", "deadline_s", "key", "task", "wait_s")

    def __init__(
        self,
        layer: HttpLayer,
        task: str,
        key: str,
        states: list[_KeyState],
        deadline_s: float,
    ) -> None:
        self._layer = layer
        self._states = states
        self.task = task
        self.key = key
        self.deadline_s = deadline_s
        self.wait_s = 0.0

    def __repr__(self) -> str:
        keys = ", ".join(s.key.shown for s in self._states)
        return f"TargetHttp(task={self.task!r}, key={self.key!r}, limits=[{keys}])"

    @property
    def limit_keys(self) -> tuple[str, ...]:
        """The resolved limit keys, as shown (arguments hashed)."""
        return tuple(s.key.shown for s in self._states)

    @property
    def min_interval_s(self) -> float | None:
        """The least poll interval the server asked for, if it did."""
        return self._layer.min_interval(self.task, self.key)

    async def request(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        content: RequestContent | None = None,
        data: RequestData | None = None,
        files: RequestFiles | None = None,
        json: object | None = None,
        params: QueryParamTypes | None = None,
        headers: HeaderTypes | None = None,
        cookies: CookieTypes | None = None,
        auth: AuthTypes | UseClientDefault | None = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: bool | UseClientDefault = httpx.USE_CLIENT_DEFAULT,
        timeout: TimeoutTypes | UseClientDefault = httpx.USE_CLIENT_DEFAULT,
        extensions: RequestExtensions | None = None,
    ) -> httpx.Response:
        """Send one request within budget; see ``httpx.AsyncClient.request``.

        Redirects are followed here, not by httpx, so that each hop draws
        from the budget like any request: an API counts them.
        """
        layer = self._layer
        request = layer.client.build_request(
            method,
            url,
            content=content,
            data=data,
            files=files,
            json=json,
            params=params,
            headers=headers,
            cookies=cookies,
            timeout=timeout,
            extensions=extensions,
        )
        layer._conditional(self.task, self.key, request)
        self._check_circuits(request)

        states = self._states
        started = layer.now()
        try:
            with trio.CancelScope(deadline=self.deadline_s) as scope:
                response = await self._send(request, auth, started)
                follow = (
                    follow_redirects
                    if isinstance(follow_redirects, bool)
                    else layer.client.follow_redirects
                )
                if follow:
                    response = await self._follow(response)
        except BaseException:
            for state in states:
                state.budget.circuit.abandon()
            raise
        if scope.cancelled_caught:
            raise DeadlineError(
                "the run's deadline passed before the response was complete",
                request=request,
            )
        return response

    async def _follow(self, response: httpx.Response) -> httpx.Response:
        """Follow *response*'s redirects, each hop sent within budget.

        httpx builds each next request (``Response.next_request``: cookies
        kept, credentials dropped on a change of origin) as it would when
        following them itself, and the client's ``max_redirects`` holds.
        """
        layer = self._layer
        history: list[httpx.Response] = []
        while response.next_request is not None:
            if len(history) >= layer.client.max_redirects:
                raise httpx.TooManyRedirects(
                    "Exceeded maximum allowed redirects.", request=response.request
                )
            await response.aclose()
            history.append(response)
            # No auth again: the first request's headers carried it, and
            # httpx kept them only if the origin stayed the same.
            response = await self._send(response.next_request, None, layer.now())
        response.history = history
        return response

    async def _send(
        self,
        request: httpx.Request,
        auth: AuthTypes | UseClientDefault | None,
        started: float,
    ) -> httpx.Response:
        layer = self._layer
        states = self._states
        try:
            sent_at, permits = await self._acquire(request)
        except BaseException:
            # Cancelled or past the deadline while waiting: all of it waited.
            self.wait_s += max(0.0, layer.now() - started)
            raise
        self.wait_s += max(0.0, sent_at - started)
        try:
            response = await layer.client.send(
                request, auth=auth, follow_redirects=False
            )
        except httpx.TransportError:
            self._failed(states)
            raise
        except trio.Cancelled:
            # Cut off at the deadline, the request counts as a failure of
            # the upstream; cancelled before it (shutdown), as nothing.
            if layer.now() >= self.deadline_s:
                self._failed(states)
            else:
                for state in states:
                    state.budget.release()
            raise
        finally:
            permits.release()

        held = layer.now() + IDLE_KEY_S
        for state in states:
            state.held_until = max(state.held_until, held)
        info = layer._learn(states, response, sent_at)
        layer._remember(self.task, self.key, request, response)
        if info.poll_interval_s is not None:
            layer._poll_intervals[(self.task, self.key)] = info.poll_interval_s
        return response

    def _failed(self, states: list[_KeyState]) -> None:
        now = self._layer.now()
        for state in states:
            state.budget.observe_failure(now)

    def _check_circuits(self, request: httpx.Request) -> None:
        now = self._layer.now()
        for state in self._states:
            circuit = state.budget.circuit
            if not circuit.allows(now):
                raise CircuitOpenError(
                    f"limit key {state.key.shown!r} is failing: circuit open "
                    f"for another {max(0.0, circuit.open_until - now):.1f}s",
                    request=request,
                )
        for state in self._states:
            state.budget.circuit.admit(now)

    async def _acquire(self, request: httpx.Request) -> tuple[float, _Permits]:
        """Book a slot on every key, then take the connection permits.

        Returns when the request may go, and the permits to give back.
        """
        layer = self._layer
        states = self._states
        while True:
            slot = await layer._admit(states, self.deadline_s)
            permits = _Permits(layer, states, request)
            try:
                await permits.take()
            except BaseException:
                layer._release(states)
                raise
            now = layer.now()
            if now - slot <= LATE_SEND_TOLERANCE_S:
                return now, permits
            # Held up by the pool past the slot: requests released together
            # must not go out together, so this one needs a fresh slot.
            if all(s.budget.next_slot(now) <= now for s in states):
                layer._release(states)
                for state in states:
                    state.budget.reserve(now)
                return now, permits
            permits.release()
            layer._release(states)

    async def get(
        self,
        url: httpx.URL | str,
        *,
        params: QueryParamTypes | None = None,
        headers: HeaderTypes | None = None,
        cookies: CookieTypes | None = None,
        auth: AuthTypes | UseClientDefault | None = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: bool | UseClientDefault = httpx.USE_CLIENT_DEFAULT,
        timeout: TimeoutTypes | UseClientDefault = httpx.USE_CLIENT_DEFAULT,
        extensions: RequestExtensions | None = None,
    ) -> httpx.Response:
        """Send a GET within budget; see ``httpx.AsyncClient.get``."""
        return await self.request(
            "GET",
            url,
            params=params,
            headers=headers,
            cookies=cookies,
            auth=auth,
            follow_redirects=follow_redirects,
            timeout=timeout,
            extensions=extensions,
        )

    async def post(
        self,
        url: httpx.URL | str,
        *,
        content: RequestContent | None = None,
        data: RequestData | None = None,
        files: RequestFiles | None = None,
        json: object | None = None,
        params: QueryParamTypes | None = None,
        headers: HeaderTypes | None = None,
        cookies: CookieTypes | None = None,
        auth: AuthTypes | UseClientDefault | None = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: bool | UseClientDefault = httpx.USE_CLIENT_DEFAULT,
        timeout: TimeoutTypes | UseClientDefault = httpx.USE_CLIENT_DEFAULT,
        extensions: RequestExtensions | None = None,
    ) -> httpx.Response:
        """Send a POST within budget; see ``httpx.AsyncClient.post``."""
        return await self.request(
            "POST",
            url,
            content=content,
            data=data,
            files=files,
            json=json,
            params=params,
            headers=headers,
            cookies=cookies,
            auth=auth,
            follow_redirects=follow_redirects,
            timeout=timeout,
            extensions=extensions,
        )

    # The other methods take what request() takes, as httpx's do.
    head = functools.partialmethod(request, "HEAD")
    put = functools.partialmethod(request, "PUT")
    patch = functools.partialmethod(request, "PATCH")
    delete = functools.partialmethod(request, "DELETE")
    options = functools.partialmethod(request, "OPTIONS")


# -- metrics ------------------------------------------------------------------

_Family = CounterMetricFamily | GaugeMetricFamily


def collect(stats: Iterable[KeyStatistics]) -> Iterator[_Family]:
    """The ``slapoll_limit_*``, ``slapoll_http_*`` and circuit series.

    Labelled by ``key``: the declared limit name or template, never a
    resolved key (those may number one per credential and hide secrets).
    Keys of one template add up: capacity and remaining are summed,
    ``slapoll_limit_paused`` and ``slapoll_circuit_open`` count the keys
    paused or not closed. Counters are totals since the layer started.
    """
    groups: dict[str, list[KeyStatistics]] = {}
    for stat in stats:
        groups.setdefault(stat.limit, []).append(stat)

    capacity = GaugeMetricFamily(
        "slapoll_limit_capacity",
        "Requests per second the budget allows now (declared or learned).",
        labels=["key"],
    )
    remaining = GaugeMetricFamily(
        "slapoll_limit_remaining",
        "Requests left in the server's quota until its reset.",
        labels=["key"],
    )
    waits = CounterMetricFamily(
        "slapoll_limit_wait_seconds",
        "Seconds requests waited for rate budget (part of lag).",
        labels=["key"],
    )
    responses = CounterMetricFamily(
        "slapoll_http_responses",
        "Responses by status class; class error counts requests without one.",
        labels=["key", "class"],
    )
    too_many = CounterMetricFamily(
        "slapoll_http_429", "Responses 429 Too Many Requests.", labels=["key"]
    )
    not_modified = CounterMetricFamily(
        "slapoll_http_304", "Responses 304 Not Modified.", labels=["key"]
    )
    paused = GaugeMetricFamily(
        "slapoll_limit_paused",
        "Keys held by a pause (429, 503) or a spent server quota.",
        labels=["key"],
    )
    circuit = GaugeMetricFamily(
        "slapoll_circuit_open",
        "Keys whose circuit is open or half-open.",
        labels=["key"],
    )
    warnings = CounterMetricFamily(
        "slapoll_header_warnings",
        "Rate-limit header values clamped or ignored as absurd.",
        labels=["key"],
    )

    for limit in sorted(groups):
        group = groups[limit]
        rates = [s.capacity_per_s for s in group if s.capacity_per_s is not None]
        if rates:
            capacity.add_metric([limit], sum(rates))
        lefts = [s.remaining for s in group if s.remaining is not None]
        if lefts:
            remaining.add_metric([limit], sum(lefts))
        waits.add_metric([limit], sum(s.wait_s for s in group))
        classes: dict[str, int] = {}
        for stat in group:
            for name, count in stat.responses.items():
                classes[name] = classes.get(name, 0) + count
        for name in sorted(classes):
            responses.add_metric([limit, name], classes[name])
        too_many.add_metric([limit], sum(s.too_many for s in group))
        not_modified.add_metric([limit], sum(s.not_modified for s in group))
        paused.add_metric([limit], sum(s.paused for s in group))
        circuit.add_metric([limit], sum(s.circuit != "closed" for s in group))
        warnings.add_metric([limit], sum(s.header_warnings for s in group))

    yield from (
        capacity,
        remaining,
        waits,
        responses,
        too_many,
        not_modified,
        paused,
        circuit,
        warnings,
    )
