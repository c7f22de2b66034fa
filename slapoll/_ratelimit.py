"""Rate budgets per limit key, on an explicit clock: declared, then learned.

A ``KeyBudget`` decides when the next request on its key may be sent. It
never admits more than its budget: a request is given a slot to wait for,
not sent to be rejected. Four things bound the slots it gives out:

- a GCRA (generic cell rate algorithm, a token bucket kept as one
  timestamp) at the lowest of the declared rate, the rate the server's
  quotas imply, and the rate learned from 429s;
- the server's quotas ("49 left until the reset in 30 s"): none of them is
  overdrawn before its reset;
- a pause after 429 or 503, until the time the server gave, else an
  exponential backoff;
- a circuit breaker that fails requests fast while the upstream is down.

With no declared rate the budget starts unlimited and, on the first 429,
falls to just under the rate the server was accepting, then probes upward
slowly while it is the bottleneck (multiplicative decrease, slow increase).

Times are floats on one monotonic clock (the engine's), passed in; the
wall clock enters only through ``RateLimitInfo``, whose times are relative.
The module imports neither trio nor httpx, so properties can be checked on
any sequence of calls.
"""

from __future__ import annotations

import collections
import logging
import math
import re
from collections.abc import Mapping
from typing import Literal

import attrs

from ._durations import Duration, parse_duration
from ._headers import MAX_WAIT_S, RESET_FORMATS, RateLimitInfo, ResetFormat
from .errors import ConfigError

__all__ = [
    "CircuitBreaker",
    "CircuitState",
    "KeyBudget",
    "KeyStatistics",
    "LimitSpec",
    "Rate",
    "parse_rate",
    "status_class",
]

logger = logging.getLogger("slapoll.ratelimit")

CircuitState = Literal["closed", "open", "half_open"]

# A request waits for every key it draws from; one that only ever waits for
# bursts this large is paced one by one, the safe default for an API whose
# burst tolerance nobody declared.
DEFAULT_BURST = 1
# After a 429 or 503 that gives no usable time, the key pauses this long,
# doubling with each further one, up to the maximum.
DEFAULT_BACKOFF_S = 0.25
DEFAULT_MAX_BACKOFF_S = 300.0
# A server saying "retry now" (Retry-After: 0, a past date) after a 429
# still gets this pause: retrying at once is what got it overloaded.
DEFAULT_MIN_PAUSE_S = DEFAULT_BACKOFF_S
# Consecutive connection errors or 5xx answers that open the circuit, and
# how long it stays open before one probe may go.
DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_CIRCUIT_COOLDOWN_S = 30.0

# On a 429 the learned rate drops to this share of the rate the server was
# accepting: close under it, so the average stays near the server's limit.
DECREASE_FACTOR = 0.95
# While the budget is the bottleneck the learned rate grows by this share
# per second: a 5% gap takes about 10 s to close, so a steady server limit
# costs one or two 429s per thousand requests.
INCREASE_PER_S = 0.005
# ... and slower at low rates: climbing back from a cut to where the 429
# came takes at least this many requests, so its one or two 429s stay
# well under 1% of them ...
PROBE_REQUESTS = 300
# ... unless that would take longer than a 5% climb at this rate (about
# 50 s): a key must not take hours to find its way back.
MIN_INCREASE_PER_S = 0.001
# A key that probed this many climbs' worth of time without a 429 is far
# below the server's limit (the limit rose, or a cut undershot): it climbs
# fast again until a 429 measures the limit anew.
RECOVERY_PROBES = 3.0
# After a cut that had no measurement to go by, the rate grows this much
# faster (about e-fold a second) until the next 429 measures it.
FAST_INCREASE_PER_S = 1.0
# Growth is credited for at most this long at a time, so a key that sat
# idle does not come back with a rate it never tried.
MAX_INCREASE_STEP_S = 1.0
# The learned rate never falls below one request per 100 s: a key learned
# down to nothing could never learn its way back.
MIN_LEARNED_RATE_PER_S = 0.01
# The accepted rate at a 429 is measured over this trailing window: long
# enough to count tens of responses at useful rates, short enough that a
# ramp in progress is not averaged with where it started.
MEASURE_S = 1.0
# Two reports of a quota whose resets lie this close are the same window:
# resets computed from whole-second Date headers jitter by up to a second.
SAME_RESET_S = 2.0

_RATE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*/\s*(.+?)\s*")
_RATE_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}


def status_class(status: int | None) -> str:
    """The label of a status: ``"2xx"`` and so on; ``"error"`` for none."""
    if status is None or not 100 <= status <= 599:
        return "error"
    return f"{status // 100}xx"


# -- declarations -------------------------------------------------------------


@attrs.frozen
class Rate:
    """``count`` requests per ``period_s`` seconds, as declared."""

    count: float
    period_s: float

    @property
    def per_s(self) -> float:
        """The sustained rate in requests per second."""
        return self.count / self.period_s


def parse_rate(value: str | float | Rate, *, name: str = "rate") -> Rate:
    """Read a rate: ``"5000/h"``, ``"10/s"``, ``"100/m"``, ``"1/30s"``.

    A number is requests per second. Units: s, m, h, d (also sec, min,
    hour, day and their plurals) or any duration (``"5m"``). Raises
    ``ConfigError`` naming *name* and the value.
    """
    if isinstance(value, Rate):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(
            f"{name} must be a rate such as '5000/h' or '10/s', got {value!r}"
        )
    if isinstance(value, int | float):
        rate = Rate(float(value), 1.0)
    else:
        rate = _parse_rate_text(value, name)
    if not (math.isfinite(rate.per_s) and rate.per_s > 0):
        raise ConfigError(f"{name} must be a positive, finite rate, got {value!r}")
    return rate


def _parse_rate_text(text: str, name: str) -> Rate:
    match = _RATE.fullmatch(text)
    if match is None:
        raise ConfigError(
            f"{name} must be a rate such as '5000/h', '10/s', '100/m' or "
            f"'1/30s', got {text!r}"
        )
    count, unit = float(match[1]), match[2].lower()
    period = _RATE_UNITS.get(unit.removesuffix("s") if len(unit) > 3 else unit)
    if period is None:
        period = parse_duration(unit, name=f"the period of {name} {text!r}")
    if period <= 0:
        raise ConfigError(f"{name} needs a period above zero, got {text!r}")
    return Rate(count, period)


def _positive_int(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")


@attrs.frozen
class LimitSpec:
    """What is declared about one limit key (or key template); seconds.

    ``rate`` of ``None`` means nothing is declared: the budget learns from
    the server. ``burst`` is how many requests may go at once from rest.
    ``concurrency`` caps requests in flight on the key. ``window_s`` is the
    window ``X-RateLimit-Limit`` counts over when the server does not say
    (by default the period of a rate declared as "N/unit"; ``None``: the
    limit is not turned into a rate). ``reset_format`` reads
    ``X-RateLimit-Reset`` (``"auto"`` detects it). With ``obey_quotas``
    the server's remaining count is a hard quota until its reset, as in a
    fixed window (GitHub); turn it off for a server whose remaining count
    refills continuously (a token bucket whose reset is "full again"),
    where it would hold the key far longer than needed. A 429 or 503 without a
    usable time pauses the key ``backoff_s``, doubling up to
    ``max_backoff_s``; any such pause lasts at least ``min_pause_s``; no
    server time beyond ``max_wait_s`` is believed. ``failure_threshold``
    consecutive connection errors or 5xx open the circuit for
    ``circuit_cooldown_s``.
    """

    rate: Rate | None = None
    burst: int = DEFAULT_BURST
    concurrency: int | None = None
    window_s: float | None = None
    reset_format: ResetFormat = "auto"
    backoff_s: float = DEFAULT_BACKOFF_S
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S
    min_pause_s: float = DEFAULT_MIN_PAUSE_S
    max_wait_s: float = MAX_WAIT_S
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    circuit_cooldown_s: float = DEFAULT_CIRCUIT_COOLDOWN_S
    obey_quotas: bool = True

    def __attrs_post_init__(self) -> None:
        _positive_int("burst", self.burst)
        _positive_int("concurrency", self.concurrency, allow_none=True)
        _positive_int("failure_threshold", self.failure_threshold)
        if self.reset_format not in RESET_FORMATS:
            raise ConfigError(
                f"reset_format must be one of {', '.join(RESET_FORMATS)}, "
                f"got {self.reset_format!r}"
            )
        for name in ("backoff_s", "max_backoff_s", "max_wait_s", "circuit_cooldown_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name[:-2]} must be greater than 0, got {value!r}")
        if self.window_s is not None and not self.window_s > 0:
            raise ConfigError(f"window must be greater than 0, got {self.window_s!r}")
        if not isinstance(self.obey_quotas, bool):
            raise ConfigError(
                f"obey_quotas must be true or false, got {self.obey_quotas!r}"
            )
        if self.backoff_s > self.max_backoff_s:
            raise ConfigError(
                f"backoff ({self.backoff_s!r}s) must not exceed max_backoff "
                f"({self.max_backoff_s!r}s)"
            )

    @property
    def learning_window_s(self) -> float | None:
        """The window ``X-RateLimit-Limit`` is read over, if any is known."""
        if self.window_s is not None:
            return self.window_s
        return None if self.rate is None else self.rate.period_s

    @classmethod
    def from_options(
        cls,
        *,
        rate: str | float | Rate | None = None,
        burst: int = DEFAULT_BURST,
        concurrency: int | None = None,
        window: Duration | None = None,
        reset_format: str = "auto",
        backoff: Duration = DEFAULT_BACKOFF_S,
        max_backoff: Duration = DEFAULT_MAX_BACKOFF_S,
        min_pause: Duration = DEFAULT_MIN_PAUSE_S,
        max_wait: Duration = MAX_WAIT_S,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        circuit_cooldown: Duration = DEFAULT_CIRCUIT_COOLDOWN_S,
        obey_quotas: bool = True,
    ) -> LimitSpec:
        """Build a spec from config spelling: ``rate="5000/h"``, ``"30s"``."""
        return cls(
            rate=None if rate is None else parse_rate(rate),
            burst=burst,
            concurrency=concurrency,
            window_s=None if window is None else parse_duration(window, name="window"),
            reset_format=reset_format,  # type: ignore[arg-type]  # validated
            backoff_s=parse_duration(backoff, name="backoff"),
            max_backoff_s=parse_duration(max_backoff, name="max_backoff"),
            min_pause_s=parse_duration(min_pause, name="min_pause"),
            max_wait_s=parse_duration(max_wait, name="max_wait"),
            failure_threshold=failure_threshold,
            circuit_cooldown_s=parse_duration(
                circuit_cooldown, name="circuit_cooldown"
            ),
            obey_quotas=obey_quotas,
        )


# -- the circuit --------------------------------------------------------------


class CircuitBreaker:
    """Fails requests fast after ``threshold`` failures in a row.

    Closed: everything passes; ``threshold`` consecutive failures open it.
    Open: nothing passes until ``cooldown_s`` has passed; then one probe
    may go (half-open). The probe's success closes it, its failure opens it
    again. Any success closes it.
    """

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.state: CircuitState = "closed"
        self.failures_in_a_row = 0
        self.open_until = -math.inf
        self._probe_out = False

    def allows(self, now: float) -> bool:
        """Whether a request could go now; changes nothing."""
        if self.state == "closed":
            return True
        return not self._probe_out and now >= self.open_until

    def admit(self, now: float) -> None:
        """Let a request go that ``allows`` passed: in open, it is the probe."""
        if self.state != "closed":
            self.state = "half_open"
            self._probe_out = True

    def abandon(self) -> None:
        """An admitted request was not sent after all: free the probe."""
        if self.state == "half_open":
            self._probe_out = False

    def success(self) -> bool:
        """Record a success; return whether that closed the circuit."""
        was_open = self.state != "closed"
        self.state = "closed"
        self.failures_in_a_row = 0
        self._probe_out = False
        return was_open

    def failure(self, now: float) -> bool:
        """Record a failure; return whether that opened the circuit."""
        self.failures_in_a_row += 1
        if self.state == "half_open" or (
            self.state == "closed" and self.failures_in_a_row >= self.threshold
        ):
            self.state = "open"
            self.open_until = now + self.cooldown_s
            self._probe_out = False
            return True
        return False


# -- the budget ---------------------------------------------------------------


@attrs.define
class _QuotaState:
    """A server quota as we track it: requests left until ``reset_at``.

    With a known window and limit it starts over full at each reset;
    ``ahead`` counts slots already booked in the window after this one.
    """

    remaining: int
    reset_at: float
    limit: int | None
    window_s: float | None
    ahead: int = 0

    def _next_window_end(self) -> float | None:
        # Only a quota whose limit and window are known starts over.
        if self.limit is None or self.window_s is None:
            return None
        return self.reset_at + self.window_s

    def free_at(self, t: float) -> float:
        """The earliest time at or after *t* this quota lets a request go."""
        if t < self.reset_at:
            return t if self.remaining >= 1 else self.reset_at
        end = self._next_window_end()
        if end is not None and t < end and self.ahead >= (self.limit or 0):
            return end
        return t

    def book(self, t: float) -> None:
        if t < self.reset_at:
            self.remaining -= 1
            return
        end = self._next_window_end()
        if end is not None and t < end:
            self.ahead += 1

    def renew(self, now: float) -> bool:
        """Move past resets that *now* has passed; False once it lapsed."""
        if now < self.reset_at:
            return True
        if self.limit is None or self.window_s is None:
            return False
        periods = math.floor((now - self.reset_at) / self.window_s) + 1
        self.remaining = self.limit - (self.ahead if periods == 1 else 0)
        self.reset_at += periods * self.window_s
        self.ahead = 0
        return True


@attrs.frozen
class KeyStatistics:
    """One limit key's budget at ``now_s`` (engine clock), for metrics.

    ``key`` is the resolved key as it may be shown (arguments hashed);
    ``limit`` the declared name or template it comes from.
    ``capacity_per_s`` is the rate in force (``None``: unlimited so far);
    ``remaining`` the fewest requests left in any server quota (``None``:
    no quota known). Counters are totals since the budget was made.
    """

    key: str
    limit: str
    now_s: float
    capacity_per_s: float | None
    remaining: int | None
    wait_s: float
    responses: Mapping[str, int]
    too_many: int
    not_modified: int
    paused: bool
    paused_until_s: float | None
    circuit: CircuitState
    header_warnings: int
    in_flight: int


class KeyBudget:
    """When requests on one limit key may go; never more than it allows.

    ``reserve(now)`` books the earliest slot every bound allows and returns
    the seconds to wait for it. Bookings are promises: after waiting, the
    caller checks ``generation`` and books again if it changed (a pause or
    a lower rate voided what was promised). Every booking ends in exactly
    one of ``release`` (not sent), ``observe`` (a response) or
    ``observe_failure`` (no response).
    """

    def __init__(self, spec: LimitSpec, *, key: str, limit: str | None = None) -> None:
        self.spec = spec
        self.key = key
        self.limit = key if limit is None else limit
        self.generation = 0
        self.circuit = CircuitBreaker(spec.failure_threshold, spec.circuit_cooldown_s)
        self.paused_until = -math.inf
        self.outstanding = 0

        # The GCRA: the theoretical arrival time of the next request, and
        # the spacing and burst tolerance of the rate in force.
        self._tat = -math.inf
        self._interval_s = 0.0
        # Bookings whose slot lay ahead when made, oldest first, each with
        # the TAT before it: voided unsent, they give their slots back.
        self._ahead: collections.deque[tuple[float, float]] = collections.deque()
        self._learned_rate: float | None = None
        self._aimd_rate: float | None = None
        self._set_rate(-math.inf)

        self._quotas: dict[str, _QuotaState] = {}
        self._pause_started = -math.inf
        self._backoffs = 0
        self._last_cut = -math.inf
        self._last_raise = -math.inf
        self._limited = False
        self._accepted: collections.deque[float] = collections.deque()
        self._first_seen = math.inf
        self._ceiling = math.inf

        self.wait_s = 0.0
        self.responses: collections.Counter[str] = collections.Counter()
        self.too_many = 0
        self.not_modified = 0
        self.header_warnings = 0

    # -- admitting ------------------------------------------------------------

    @property
    def rate_per_s(self) -> float | None:
        """The rate in force, or ``None`` while unlimited."""
        return 1.0 / self._interval_s if self._interval_s else None

    def add_counts(self, other: KeyBudget) -> None:
        """Add *other*'s counters to this budget's, as when it is dropped."""
        self.wait_s += other.wait_s
        self.responses.update(other.responses)
        self.too_many += other.too_many
        self.not_modified += other.not_modified
        self.header_warnings += other.header_warnings

    def at_rest(self, now: float) -> bool:
        """Whether a fresh budget of the same spec would admit no more now:
        nothing booked or in flight, no pause or spent quota, the circuit
        closed and the burst refilled."""
        return (
            self.outstanding == 0
            and self.circuit.state == "closed"
            and self.blocked_until(now) <= now
            and self._tat <= now
        )

    def blocked_until(self, now: float) -> float:
        """The end of the pause or exhausted quota holding the key, else *now*.

        Changes nothing a caller can see. Unlike a GCRA slot this can be
        far away, so a caller waits it out before booking anything.
        """
        self._renew_quotas(now)
        t = max(now, self.paused_until)
        # Passing one quota's reset may land inside another's exhaustion.
        moved = True
        while moved:
            moved = False
            for quota in self._quotas.values():
                free_at = quota.free_at(t)
                if free_at > t:
                    t = free_at
                    moved = True
        return t

    def next_slot(self, now: float) -> float:
        """The earliest time a request could be booked for; changes nothing."""
        t = self.blocked_until(now)
        if self._interval_s:
            t = max(t, self._tat - self._tolerance_s())
        return t

    def reserve(self, now: float, *, not_before: float = -math.inf) -> float:
        """Book the earliest allowed slot (not before *not_before*).

        Returns seconds from *now* to the slot. The slot counts against
        every bound at once, so bookings never exceed the budget.
        """
        t = self.blocked_until(max(now, not_before))
        if self._interval_s:
            earliest = self._tat - self._tolerance_s()
            if earliest > now:
                # The rate holds requests back: only then is probing a
                # higher one worth it.
                self._limited = True
            if earliest > t:
                t = self.blocked_until(earliest)
            while self._ahead and self._ahead[0][0] <= now:
                self._ahead.popleft()  # sent by now: no longer voidable
            if t > now:
                self._ahead.append((t, self._tat))
            self._tat = max(self._tat, t) + self._interval_s
        for quota in self._quotas.values():
            quota.book(t)
        self.outstanding += 1
        self._first_seen = min(self._first_seen, t)
        return t - now

    def release(self) -> None:
        """A booking that will not be sent; its slot is not given back."""
        self.outstanding = max(0, self.outstanding - 1)

    def note_wait(self, seconds: float) -> None:
        """Count seconds a request waited for this key (for metrics)."""
        self.wait_s += seconds

    def paused(self, now: float) -> bool:
        """Whether a pause or an exhausted quota holds the key at *now*."""
        return self.blocked_until(now) > now

    # -- learning -------------------------------------------------------------

    def observe(
        self,
        now: float,
        status: int,
        info: RateLimitInfo,
        *,
        sent_at: float,
        learn: bool = True,
    ) -> None:
        """Take in a response sent at *sent_at* and received at *now*.

        With *learn* false only counters and the circuit change: the
        response's rate headers describe another key of the request.
        """
        self.outstanding = max(0, self.outstanding - 1)
        self.responses[status_class(status)] += 1
        self.header_warnings += len(info.warnings) if learn else 0
        if status == 304:
            self.not_modified += 1
        elif status == 429:
            self.too_many += 1
        if status >= 500:
            self._circuit_failure(now)
        elif self.circuit.success():
            logger.info("limit %s: circuit closed", self.key)
        if not learn:
            return

        if status == 429:
            self._cut(now, sent_at)
        if status in (429, 503):
            self._pause(now, status, info.retry_after_s, sent_at)
        else:
            self._backoffs = 0
            self._accepted.append(now)
            self._raise(now)
        self._learn_quotas(now, info)

    def observe_failure(self, now: float) -> None:
        """A booked request got no response (connection error, timeout)."""
        self.outstanding = max(0, self.outstanding - 1)
        self.responses["error"] += 1
        self._circuit_failure(now)

    def _circuit_failure(self, now: float) -> None:
        if self.circuit.failure(now):
            logger.warning(
                "limit %s: circuit open for %.0fs after %d failures in a row",
                self.key,
                self.circuit.cooldown_s,
                self.circuit.failures_in_a_row,
            )

    def _pause(
        self, now: float, status: int, retry_after_s: float | None, sent_at: float
    ) -> None:
        spec = self.spec
        if retry_after_s is None:
            # Answers to requests sent before the last pause began are
            # echoes of the overload it was for: only later ones count.
            if sent_at < self._pause_started:
                return
            self._backoffs += 1
            pause = min(spec.backoff_s * 2 ** (self._backoffs - 1), spec.max_backoff_s)
        else:
            pause = min(retry_after_s, spec.max_wait_s)
        pause = max(pause, spec.min_pause_s)

        until = now + pause
        if until > self.paused_until:
            self.paused_until = until
            self._pause_started = now
            self._void_bookings(now)
            logger.info("limit %s: paused %.1fs after HTTP %d", self.key, pause, status)

    def _cut(self, now: float, sent_at: float) -> None:
        # One cut per overload: 429s for requests sent before the last cut
        # say nothing about the rate since.
        if sent_at < self._last_cut:
            return
        current = self.rate_per_s or math.inf
        accepted, measured = self._accepted_rate(now)
        ramping = math.isinf(self._ceiling)
        if math.isfinite(current) and (ramping or not measured):
            # The rate that first drew a 429 bounds the server's from
            # above; the accepted count of a ramp would lag far behind it.
            base = current
        elif measured:
            base = min(current, accepted)
        else:
            # Nothing to go by (the first 429 of an unlimited key): a guess
            # on the low side, and a fast climb until the next 429.
            base = accepted
        self._ceiling = base if math.isfinite(current) or measured else math.inf
        self._aimd_rate = max(MIN_LEARNED_RATE_PER_S, DECREASE_FACTOR * base)
        self._last_cut = self._last_raise = now
        self._set_rate(now)
        logger.debug("limit %s: rate cut to %.3g/s", self.key, self._aimd_rate)

    def _raise(self, now: float) -> None:
        if self._aimd_rate is None or not self._limited:
            self._last_raise = now
            return
        step = min(now - self._last_raise, MAX_INCREASE_STEP_S)
        self._last_raise = now
        self._limited = False
        gap = math.log(1.0 / DECREASE_FACTOR)
        growth = min(INCREASE_PER_S, self._aimd_rate * gap / PROBE_REQUESTS)
        growth = max(MIN_INCREASE_PER_S, growth)
        quiet_s = now - self._last_cut
        if (
            self._aimd_rate < DECREASE_FACTOR * self._ceiling
            or quiet_s > RECOVERY_PROBES * gap / growth
        ):
            growth = FAST_INCREASE_PER_S
        declared = self.spec.rate.per_s if self.spec.rate is not None else math.inf
        self._aimd_rate = min(declared, self._aimd_rate * (1.0 + growth * step))
        self._set_rate(now)

    def _accepted_rate(self, now: float) -> tuple[float, bool]:
        """Responses accepted per second lately, and whether it was measured.

        Counted over the trailing ``MEASURE_S``, less the time the key was
        paused or not yet started (that would read as a low rate). Over
        less than half the window it is a guess on the low side.
        """
        accepted = self._accepted
        start = now - MEASURE_S
        while accepted and accepted[0] <= start:
            accepted.popleft()
        idle = max(0.0, self._first_seen - start)
        pause_start, pause_end = self._pause_started, min(self.paused_until, now)
        idle += max(0.0, pause_end - max(pause_start, start, self._first_seen))
        active = MEASURE_S - idle
        count = max(len(accepted), 1)
        if active < MEASURE_S / 2:
            return count / MEASURE_S, False
        return count / active, True

    def _learn_quotas(self, now: float, info: RateLimitInfo) -> None:
        rates = []
        for quota in info.quotas:
            window = quota.window_s
            if window is None and quota.name == "x-ratelimit":
                window = self.spec.learning_window_s
            if quota.limit is not None and window:
                rates.append(quota.limit / window)
            if not self.spec.obey_quotas:
                continue
            if quota.remaining is None or quota.reset_s is None:
                continue
            self._update_quota(
                now, quota.name, quota.remaining, quota.reset_s, quota.limit, window
            )
        if rates and min(rates) != self._learned_rate:
            self._learned_rate = min(rates)
            self._set_rate(now)

    def _update_quota(
        self,
        now: float,
        name: str,
        remaining: int,
        reset_s: float,
        limit: int | None,
        window: float | None,
    ) -> None:
        # Requests booked or in flight may not be counted by the server
        # yet: assume they all will be.
        estimate = max(0, remaining - self.outstanding)
        if remaining < self.outstanding:
            # More is promised than the server has left: void the promises.
            self._void_bookings(now)
        reset_at = now + reset_s
        state = self._quotas.get(name)
        was_spent = state is not None and state.remaining < 1
        if state is not None and abs(state.reset_at - reset_at) < SAME_RESET_S:
            state.remaining = min(state.remaining, estimate)
            state.reset_at = max(state.reset_at, reset_at)
        else:
            self._quotas[name] = _QuotaState(estimate, reset_at, limit, window)
        if estimate == 0 and not was_spent:
            logger.info(
                "limit %s: server quota %r spent; waiting %.1fs for its reset",
                self.key,
                name,
                reset_s,
            )

    def _renew_quotas(self, now: float) -> None:
        # Past its reset a quota with a known window starts over full;
        # without one it lapses until the next response tells its state.
        lapsed = [n for n, q in self._quotas.items() if not q.renew(now)]
        for name in lapsed:
            del self._quotas[name]

    # -- the rate in force ----------------------------------------------------

    def _set_rate(self, now: float) -> None:
        candidates = [
            r
            for r in (
                None if self.spec.rate is None else self.spec.rate.per_s,
                self._learned_rate,
                self._aimd_rate,
            )
            if r is not None
        ]
        old = self._interval_s
        new = 1.0 / min(candidates) if candidates else 0.0
        if new == old:
            return
        if new > old:
            # Slots promised at the old rate are void: waiters book again.
            self._void_bookings(now)
        if old and new > old and self._tat > now:
            # A slower rate keeps the requests owed, not the seconds: a
            # burst spent at the old rate stays spent. (A faster one keeps
            # the seconds: slots already given out keep their spacing.)
            self._tat = now + (self._tat - now) * new / old
        elif not old and new:
            # Leaving "unlimited": assume the burst was just spent.
            self._tat = max(now, self._tat) + self.spec.burst * new
        self._interval_s = new

    def _void_bookings(self, now: float) -> None:
        """Void every promise made so far; unsent slots are given back.

        Waiters see ``generation`` change and book again. The TAT goes back
        to where it was before the latest run of bookings whose slots all
        still lie ahead: none of those was sent, and counting them would
        hold the key idle for as long as they would have taken (after a
        cut from a fast rate to a slow one, a second or more). Bookings
        made after one that was sent keep theirs, which errs on the safe
        side when bursts let slots come out of order.
        """
        self.generation += 1
        rewind = None
        while self._ahead and self._ahead[-1][0] > now:
            rewind = self._ahead.pop()[1]
        self._ahead.clear()
        if rewind is not None:
            self._tat = min(self._tat, rewind)

    def _tolerance_s(self) -> float:
        return (self.spec.burst - 1) * self._interval_s

    # -- statistics -----------------------------------------------------------

    def statistics(self, now: float) -> KeyStatistics:
        """A snapshot of the budget at *now*."""
        blocked = self.blocked_until(now)
        active = [q.remaining for q in self._quotas.values()]
        return KeyStatistics(
            key=self.key,
            limit=self.limit,
            now_s=now,
            capacity_per_s=self.rate_per_s,
            remaining=max(0, min(active)) if active else None,
            wait_s=self.wait_s,
            responses=dict(self.responses),
            too_many=self.too_many,
            not_modified=self.not_modified,
            paused=blocked > now,
            paused_until_s=blocked if blocked > now else None,
            circuit=self.circuit.state,
            header_warnings=self.header_warnings,
            in_flight=self.outstanding,
        )
