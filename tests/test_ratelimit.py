"""Rate budgets on an explicit clock: declared, learned, never exceeded."""

from __future__ import annotations

import heapq
import itertools
import logging
import math

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slapoll._headers import Quota, RateLimitInfo
from slapoll._ratelimit import (
    CircuitBreaker,
    KeyBudget,
    LimitSpec,
    Rate,
    parse_rate,
    status_class,
)
from slapoll.errors import ConfigError

NO_HEADERS = RateLimitInfo()


def budget(**options: object) -> KeyBudget:
    return KeyBudget(LimitSpec.from_options(**options), key="api")  # type: ignore[arg-type]


def send(b: KeyBudget, now: float) -> float:
    """Book a request at *now*; return the time it may go."""
    return now + b.reserve(now)


def respond(
    b: KeyBudget,
    now: float,
    status: int = 200,
    *,
    sent_at: float | None = None,
    **info: object,
) -> None:
    b.observe(
        now,
        status,
        RateLimitInfo(**info),  # type: ignore[arg-type]
        sent_at=now if sent_at is None else sent_at,
    )


# -- declarations -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "per_s", "period_s"),
    [
        ("5000/h", 5000 / 3600, 3600.0),
        ("10/s", 10.0, 1.0),
        ("100/m", 100 / 60, 60.0),
        ("1/30s", 1 / 30, 30.0),
        ("2 / minute", 2 / 60, 60.0),
        ("50/hours", 50 / 3600, 3600.0),
        ("0.5/s", 0.5, 1.0),
        (3, 3.0, 1.0),
    ],
)
def test_parse_rate_reads_counts_per_period(
    text: str | float, per_s: float, period_s: float
) -> None:
    """Rates are N/unit or N/duration; a number is per second."""
    rate = parse_rate(text)
    assert rate.per_s == pytest.approx(per_s)
    assert rate.period_s == period_s


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fast", r"rate must be a rate such as '5000/h'.*got 'fast'"),
        ("10/fortnight", r"the period of rate '10/fortnight'"),
        ("0/s", r"positive, finite rate, got '0/s'"),
        ("10/0s", r"period above zero, got '10/0s'"),
        (-1, r"positive, finite rate, got -1"),
        (True, r"got True"),
    ],
)
def test_parse_rate_rejects_garbage_naming_the_value(
    value: object, message: str
) -> None:
    """A bad rate is a ConfigError showing the value and what is allowed."""
    with pytest.raises(ConfigError, match=message):
        parse_rate(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"burst": 0}, r"burst must be a whole number >= 1, got 0"),
        ({"concurrency": 0}, r"concurrency must be a whole number >= 1, got 0"),
        ({"reset_format": "iso"}, r"reset_format must be one of .*got 'iso'"),
        ({"backoff": "10m"}, r"backoff \(600.0s\) must not exceed max_backoff"),
        ({"window": 0}, r"window must be greater than 0, got 0.0"),
        ({"backoff": 0}, r"backoff must be greater than 0, got 0.0"),
    ],
)
def test_limit_spec_rejects_bad_options(
    options: dict[str, object], message: str
) -> None:
    """A bad declaration fails at construction with the value."""
    with pytest.raises(ConfigError, match=message):
        LimitSpec.from_options(**options)  # type: ignore[arg-type]


def test_status_classes() -> None:
    """Statuses map to 2xx..5xx; no response is "error"."""
    assert [status_class(s) for s in (200, 304, 429, 503, None, 99)] == [
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "error",
        "error",
    ]


# -- the declared budget ------------------------------------------------------


def test_burst_goes_at_once_then_requests_are_paced() -> None:
    """10/s with burst 3: three at t=0, then one every 0.1 s."""
    b = budget(rate="10/s", burst=3)
    slots = [send(b, 0.0) for _ in range(6)]
    assert slots == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2, 0.3])
    assert b.rate_per_s == 10.0


def test_a_budget_at_rest_refills_its_burst() -> None:
    """After a quiet second the burst is whole again."""
    b = budget(rate="10/s", burst=2)
    assert [send(b, 0.0) for _ in range(3)] == pytest.approx([0.0, 0.0, 0.1])
    assert [send(b, 5.0) for _ in range(3)] == pytest.approx([5.0, 5.0, 5.1])


def test_next_slot_changes_nothing() -> None:
    """Looking at the next slot books nothing."""
    b = budget(rate="1/s")
    assert b.next_slot(0.0) == 0.0
    assert b.next_slot(0.0) == 0.0
    assert send(b, 0.0) == 0.0
    assert b.next_slot(0.0) == pytest.approx(1.0)


def _events() -> st.SearchStrategy[list[tuple[float, str, float]]]:
    kinds = st.sampled_from(["reserve"] * 6 + ["429", "200", "quota", "limit"])
    return st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=2.0), kinds, st.floats(0.0, 30.0)),
        min_size=1,
        max_size=120,
    )


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=50),
    period=st.sampled_from([0.1, 1.0, 60.0]),
    burst=st.integers(min_value=1, max_value=10),
    events=_events(),
)
def test_no_window_ever_admits_more_than_rate_times_window_plus_burst(
    count: int, period: float, burst: int, events: list[tuple[float, str, float]]
) -> None:
    """Any reserve calls, with any learning between: within rate*w + burst.

    A booking is sent at its slot unless the generation changed first (as
    the HTTP layer does); a voided one is released and not counted.
    """
    rate = count / period
    b = KeyBudget(LimitSpec(rate=Rate(count, period), burst=burst), key="k")
    now = 0.0
    slots: list[float] = []
    pending: list[float] = []
    for gap, kind, value in events:
        now += gap
        slots += [slot for slot in pending if slot <= now]
        pending = [slot for slot in pending if slot > now]
        generation = b.generation
        if kind == "reserve":
            slot = send(b, now)
            assert slot >= now  # never a negative wait
            pending.append(slot)
        elif kind == "429":
            retry = None if value < 10 else value
            respond(b, now, 429, retry_after_s=retry, sent_at=now)
        elif kind == "quota":
            quota = Quota("q", limit=None, remaining=int(value), reset_s=value)
            respond(b, now, 200, quotas=(quota,))
        elif kind == "limit":
            quota = Quota("p", limit=int(value) + 1, window_s=value + 1)
            respond(b, now, 200, quotas=(quota,))
        else:
            respond(b, now, 200)
        if b.generation != generation:
            for _ in pending:
                b.release()
            pending = []

    slots = sorted(slots + pending)
    for i, j in itertools.combinations(range(len(slots)), 2):
        admitted = j - i + 1
        assert admitted <= rate * (slots[j] - slots[i]) + burst + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    pause_s=st.floats(min_value=0.0, max_value=1000.0),
    gaps=st.lists(st.floats(min_value=0.0, max_value=50.0), max_size=30),
    declared=st.booleans(),
)
def test_a_paused_key_admits_nothing_before_its_pause_ends(
    pause_s: float, gaps: list[float], declared: bool
) -> None:
    """After a 429 with Retry-After, every booking lands at its end or later."""
    b = budget(rate="100/s", burst=50) if declared else budget()
    respond(b, 10.0, 429, retry_after_s=pause_s)
    end = 10.0 + max(pause_s, b.spec.min_pause_s)
    assert b.paused(10.0)

    now = 10.0
    for gap in gaps:
        now += gap
        slot = send(b, now)
        if now < end:
            assert slot >= end - 1e-9  # float rounding of now + wait


# -- pauses -------------------------------------------------------------------


def test_429_with_retry_after_pauses_for_the_servers_time() -> None:
    """Retry-After 30: nothing before t+30, then requests go again."""
    b = budget()
    respond(b, 5.0, 429, retry_after_s=30.0)
    stats = b.statistics(6.0)
    assert stats.paused
    assert stats.paused_until_s == 35.0
    assert stats.too_many == 1
    assert send(b, 6.0) == 35.0


def test_503_pauses_like_429() -> None:
    """503 with Retry-After pauses the key too."""
    b = budget()
    respond(b, 0.0, 503, retry_after_s=12.0)
    assert b.blocked_until(1.0) == 12.0


def test_c25_past_retry_after_gets_the_minimum_pause() -> None:
    """A past date parses to 0 s; the key still pauses its minimum."""
    b = budget(min_pause="2s")
    respond(b, 0.0, 429, retry_after_s=0.0)
    assert b.blocked_until(0.0) == 2.0


def test_c25_garbage_retry_after_falls_back_to_backoff_and_counts() -> None:
    """No usable time: the backoff applies, and the warning is counted."""
    b = budget(backoff="1s")
    b.observe(
        0.0,
        429,
        RateLimitInfo(warnings=("Retry-After: 'soon' ...",)),
        sent_at=0.0,
    )
    assert b.blocked_until(0.0) == 1.0
    assert b.statistics(0.0).header_warnings == 1


def test_backoff_doubles_only_for_requests_sent_after_the_pause() -> None:
    """429s echoing the same overload do not double; later ones do."""
    b = budget(backoff="1s", max_backoff="3s", min_pause="0s")
    respond(b, 0.0, 429, sent_at=0.0)
    assert b.paused_until == 1.0
    respond(b, 0.5, 429, sent_at=-0.1)  # sent before the pause began
    assert b.paused_until == 1.0
    respond(b, 2.0, 429, sent_at=1.5)
    assert b.paused_until == 4.0
    respond(b, 5.0, 429, sent_at=4.5)
    assert b.paused_until == 8.0  # capped at 3 s
    respond(b, 9.0, 200)
    respond(b, 10.0, 429, sent_at=9.5)
    assert b.paused_until == 11.0  # a success reset the backoff


def test_a_pause_voids_promised_slots() -> None:
    """Bookings made before a pause are void: the generation changes."""
    b = budget(rate="1/s")
    generation = b.generation
    assert send(b, 0.0) == 0.0
    assert send(b, 0.0) == pytest.approx(1.0)
    respond(b, 0.5, 429, retry_after_s=10.0)
    assert b.generation != generation
    assert send(b, 0.6) >= 10.5


def test_voided_slots_that_were_never_sent_are_given_back() -> None:
    """A pause voids slots booked ahead: they do not hold the key after it.

    Ten slots at 10/s are booked at t=0 (the last for t=0.9); a 429 at
    t=0.05 pauses 0.25 s. Only the first was sent, so after the pause the
    key is free again, not idle until the voided slots would have passed.
    """
    b = budget(rate="10/s", min_pause="0.25s")
    slots = [send(b, 0.0) for _ in range(10)]
    assert slots[-1] == pytest.approx(0.9)

    respond(b, 0.05, 429, sent_at=0.0)

    assert b.next_slot(0.05) == pytest.approx(0.3)
    assert send(b, 0.3) == pytest.approx(0.3)


def test_slots_already_sent_are_not_given_back() -> None:
    """Slots whose time has come were sent: a pause leaves them counted."""
    b = budget(rate="10/s", min_pause="0.01s")
    for _ in range(5):
        send(b, 0.0)  # slots 0.0 to 0.4

    respond(b, 0.45, 429, retry_after_s=0.01, sent_at=0.4)

    # Five sent at 10/s owe the key until 0.5 s (a little more at the
    # rate the 429 cut it to).
    assert b.next_slot(0.46) >= 0.5


def test_pause_is_logged_once_as_a_state_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """INFO names the key and the pause."""
    caplog.set_level(logging.INFO, logger="slapoll.ratelimit")
    respond(budget(), 0.0, 429, retry_after_s=30.0)
    assert [r.getMessage() for r in caplog.records] == [
        "limit api: paused 30.0s after HTTP 429"
    ]


# -- server quotas ------------------------------------------------------------


def test_remaining_zero_blocks_until_the_reset() -> None:
    """X-RateLimit-Remaining 0, reset in 1247 s: nothing before then."""
    b = budget()
    quota = Quota("x-ratelimit", limit=60, remaining=0, reset_s=1247.0)
    respond(b, 100.0, 200, quotas=(quota,))
    assert b.statistics(100.0).remaining == 0
    assert b.statistics(100.0).paused
    assert send(b, 101.0) == 1347.0


def test_remaining_n_admits_exactly_n_before_the_reset() -> None:
    """Three left until t=60: three go now, the fourth at the reset."""
    b = budget()
    respond(b, 0.0, 200, quotas=(Quota("q", remaining=3, reset_s=60.0),))
    assert [send(b, 1.0) for _ in range(4)] == [1.0, 1.0, 1.0, 60.0]


def test_requests_in_flight_count_against_what_the_server_reports() -> None:
    """Remaining 3 while 2 others are outstanding: only 1 more goes."""
    b = budget()
    send(b, 0.0)
    send(b, 0.0)
    send(b, 0.0)
    respond(b, 0.1, 200, quotas=(Quota("q", remaining=3, reset_s=60.0),))
    assert [send(b, 0.2) for _ in range(2)] == [0.2, 60.1]


def test_a_quota_with_a_known_window_starts_over_full() -> None:
    """IETF q=2 per 10 s, spent: from its reset on, paced at 2 per 10 s."""
    b = budget()
    quota = Quota("p", limit=2, remaining=0, reset_s=5.0, window_s=10.0)
    respond(b, 0.0, 200, quotas=(quota,))
    assert b.rate_per_s == pytest.approx(0.2)
    assert [send(b, 1.0) for _ in range(5)] == [5.0, 10.0, 15.0, 20.0, 25.0]


def test_a_quota_window_holds_even_with_a_faster_rate() -> None:
    """Declared 10/s, a quota of 2 per 10 s (limit unknown as a rate)."""
    b = budget(rate="10/s", burst=5)
    quota = Quota("q", limit=2, remaining=1, reset_s=5.0, window_s=None)
    respond(b, 0.0, 200, quotas=(quota,))
    assert [send(b, 1.0) for _ in range(3)] == [1.0, 5.0, 5.0]


def test_quotas_can_be_ignored_for_token_bucket_servers() -> None:
    """obey_quotas off: remaining 0 holds nothing; the rate still applies."""
    b = budget(rate="10/s", obey_quotas=False)
    respond(b, 0.0, 200, quotas=(Quota("x-ratelimit", remaining=0, reset_s=60.0),))
    assert not b.paused(0.0)
    assert [send(b, 1.0) for _ in range(2)] == pytest.approx([1.0, 1.1])


def test_the_most_restrictive_quota_binds() -> None:
    """Two quotas: the spent one holds the key though the other has room."""
    b = budget()
    quotas = (
        Quota("minute", remaining=50, reset_s=30.0),
        Quota("day", remaining=0, reset_s=3600.0),
    )
    respond(b, 0.0, 200, quotas=quotas)
    assert send(b, 1.0) == 3600.0


def test_a_learned_limit_lower_than_the_declared_one_wins() -> None:
    """Declared 100/m, the server says 60 (per the declared minute): 1/s."""
    b = budget(rate="100/m")
    respond(b, 0.0, 200, quotas=(Quota("x-ratelimit", limit=60),))
    assert b.rate_per_s == pytest.approx(1.0)


def test_a_learned_limit_higher_than_the_declared_one_does_not() -> None:
    """The declared rate is a ceiling the server cannot raise."""
    b = budget(rate="10/s")
    respond(b, 0.0, 200, quotas=(Quota("p", limit=1000, window_s=1.0),))
    assert b.rate_per_s == pytest.approx(10.0)


def test_an_x_limit_without_a_window_is_not_a_rate() -> None:
    """X-RateLimit-Limit alone says nothing of time unless a window is set."""
    b = budget()
    respond(b, 0.0, 200, quotas=(Quota("x-ratelimit", limit=60),))
    assert b.rate_per_s is None
    b = budget(window="1m")
    respond(b, 0.0, 200, quotas=(Quota("x-ratelimit", limit=60),))
    assert b.rate_per_s == pytest.approx(1.0)


def test_ietf_policy_sets_the_rate_without_a_declaration() -> None:
    """RateLimit-Policy q=10;w=1 and nothing declared: 10/s."""
    b = budget()
    respond(b, 0.0, 200, quotas=(Quota("default", limit=10, window_s=1.0),))
    assert b.rate_per_s == pytest.approx(10.0)


# -- learning without declarations --------------------------------------------


def test_an_undeclared_key_is_unlimited_until_a_429() -> None:
    """Nothing declared, nothing heard: no wait; a 429 sets a rate."""
    b = budget()
    assert all(send(b, 0.0) == 0.0 for _ in range(100))
    assert b.statistics(0.0).capacity_per_s is None
    respond(b, 0.01, 429, sent_at=0.0)
    assert b.rate_per_s is not None


def test_cuts_never_go_below_the_floor_and_never_above_the_declared() -> None:
    """Repeated 429s end at the floor; success never climbs past declared."""
    b = budget(rate="5/s", min_pause="0s", backoff="1ms", max_backoff="1ms")
    now = 0.0
    for _ in range(400):
        now += 1.0
        respond(b, now, 429, sent_at=now)
    rate = b.rate_per_s
    assert rate is not None
    assert rate >= 0.01
    for _ in range(5000):
        now = send(b, now)
        respond(b, now, 200)
    assert b.rate_per_s == pytest.approx(5.0)


@attrs.define
class _Nginx:
    """nginx's limit_req (nodelay): a leaky bucket of ``burst`` excess."""

    rate: float
    burst: int
    excess: float = 0.0
    last: float | None = None

    def accepts(self, t: float) -> bool:
        if self.last is None:
            self.last = t
            return True
        excess = max(0.0, self.excess - self.rate * (t - self.last)) + 1.0
        if excess > self.burst + 1e-9:
            return False
        self.excess, self.last = excess, t
        return True


def simulate(
    server: _Nginx,
    *,
    workers: int = 64,
    latency_s: float = 0.005,
    duration_s: float = 60.0,
    warm_s: float = 10.0,
    horizon_s: float = 0.5,
) -> tuple[float, float]:
    """Workers with endless demand through one undeclared key.

    Each worker waits unbooked while its slot is over *horizon_s* away, as
    the HTTP layer does, then books, sends and learns from the answer.
    Returns (share of 429s after *warm_s*, accepted rate / server rate).
    """
    b = budget()
    seq = itertools.count()
    events: list[tuple[float, int, str, object]] = [
        (0.0, next(seq), "ready", None) for _ in range(workers)
    ]
    ok = rejected = 0
    while events:
        t, _, kind, data = heapq.heappop(events)
        if t > duration_s:
            break
        if kind == "ready":
            slot = b.next_slot(t)
            if slot - t > horizon_s:
                wake = min(slot - horizon_s, t + horizon_s)
                heapq.heappush(events, (wake, next(seq), "ready", None))
                continue
            generation = b.generation
            at = t + b.reserve(t, not_before=slot)
            heapq.heappush(events, (at, next(seq), "send", generation))
        elif kind == "send":
            if data != b.generation:
                b.release()
                heapq.heappush(events, (t, next(seq), "ready", None))
                continue
            accepted = server.accepts(t + latency_s / 2)
            heapq.heappush(events, (t + latency_s, next(seq), "answer", (accepted, t)))
        else:
            assert isinstance(data, tuple)
            accepted, sent = data
            respond(b, t, 200 if accepted else 429, sent_at=float(sent))
            if t > warm_s:
                ok += accepted
                rejected += not accepted
            heapq.heappush(events, (t, next(seq), "ready", None))
    share = rejected / max(1, ok + rejected)
    return share, ok / (duration_s - warm_s) / server.rate


@pytest.mark.parametrize(
    ("rate", "burst", "latency_s"),
    [(100.0, 10, 0.005), (50.0, 20, 0.05), (10.0, 5, 0.1), (500.0, 50, 0.002)],
)
def test_without_a_declaration_it_converges_on_what_the_server_accepts(
    rate: float, burst: int, latency_s: float
) -> None:
    """Against nginx's limiter, no headers: after 10 s, < 1% 429s, >= 90% used."""
    share, used = simulate(_Nginx(rate, burst), latency_s=latency_s)
    assert share < 0.01
    assert used >= 0.9


# -- the circuit --------------------------------------------------------------


def state_of(circuit: CircuitBreaker) -> str:
    return circuit.state


def test_circuit_opens_after_the_threshold_then_probes_once() -> None:
    """5 failures open it; after the cool-down one probe goes; success closes."""
    circuit = CircuitBreaker(threshold=5, cooldown_s=30.0)
    for _ in range(4):
        circuit.failure(0.0)
    assert circuit.allows(0.0)
    assert circuit.failure(0.0)
    assert state_of(circuit) == "open"
    assert not circuit.allows(29.9)

    assert circuit.allows(30.0)
    circuit.admit(30.0)
    assert state_of(circuit) == "half_open"
    assert not circuit.allows(30.0)  # one probe at a time
    assert circuit.success()
    assert state_of(circuit) == "closed"


def test_a_failed_probe_opens_the_circuit_again() -> None:
    """Half-open and the probe fails: open for another cool-down."""
    circuit = CircuitBreaker(threshold=1, cooldown_s=10.0)
    circuit.failure(0.0)
    circuit.admit(10.0)
    assert circuit.failure(10.5)
    assert circuit.open_until == 20.5
    circuit.admit(21.0)
    circuit.abandon()
    assert circuit.allows(21.0)


def test_budget_counts_5xx_and_connection_errors_for_its_circuit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Five 5xx or errors in a row open the key's circuit, with a WARNING."""
    b = budget(failure_threshold=5)
    for i in range(3):
        respond(b, float(i), 500)
    b.observe_failure(3.0)
    b.observe_failure(4.0)
    stats = b.statistics(4.0)
    assert stats.circuit == "open"
    assert stats.responses == {"5xx": 3, "error": 2}
    assert "circuit open for 30s after 5 failures" in caplog.text


def test_429_is_not_a_failure_of_the_upstream() -> None:
    """A server that answers 429 is up: the circuit stays closed."""
    b = budget(failure_threshold=1)
    respond(b, 0.0, 429)
    assert b.circuit.state == "closed"


def test_statistics_snapshot() -> None:
    """Counters by class, 304s, waits, capacity and in-flight count."""
    b = KeyBudget(LimitSpec(rate=Rate(10, 1)), key="api:#ab", limit="api:{user}")
    send(b, 0.0)
    send(b, 0.0)
    respond(b, 0.1, 304)
    b.note_wait(0.25)
    stats = b.statistics(0.2)
    assert stats.key == "api:#ab"
    assert stats.limit == "api:{user}"
    assert stats.capacity_per_s == 10.0
    assert stats.responses == {"3xx": 1}
    assert stats.not_modified == 1
    assert stats.wait_s == 0.25
    assert stats.in_flight == 1
    assert stats.remaining is None
    assert not stats.paused
    assert math.isclose(stats.now_s, 0.2)
