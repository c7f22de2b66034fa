"""Reading rate-limit headers: every form, and never trusting garbage."""

from __future__ import annotations

import calendar
import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slapoll._headers import (
    MAX_WAIT_S,
    RESET_MARGIN_S,
    Quota,
    RateLimitInfo,
    parse_http_date,
    parse_rate_limit_headers,
    parse_retry_after,
)
from slapoll.errors import ConfigError

# C25's server clock: 2026-10-21 (a Wednesday) 07:26:00 GMT.
C25_DATE = "Wed, 21 Oct 2026 07:26:00 GMT"
C25_NOW = float(calendar.timegm((2026, 10, 21, 7, 26, 0)))
# C27's first scenario: GitHub's documented example.
C27_DATE = "Mon, 01 Jul 2013 17:27:06 GMT"
C27_NOW = float(calendar.timegm((2013, 7, 1, 17, 27, 6)))


def parse(headers: dict[str, str], **kwargs: object) -> RateLimitInfo:
    kwargs.setdefault("wall_now", C25_NOW)
    return parse_rate_limit_headers(headers, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def new_york() -> Iterator[None]:
    """Run with the host in America/New_York, then restore the zone."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


# -- C25: Retry-After ---------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Wed, 21 Oct 2026 07:28:00 GMT",  # IMF-fixdate
        "Wednesday, 21-Oct-26 07:28:00 GMT",  # RFC 850
        "Wed Oct 21 07:28:00 2026",  # asctime
        "120",  # delay-seconds
    ],
)
def test_c25_retry_after_forms_all_wait_120s(value: str) -> None:
    """All three HTTP-date forms and 120 give 120 s from the server's Date."""
    info = parse({"Date": C25_DATE, "Retry-After": value})
    assert info.retry_after_s == 120.0
    assert info.warnings == ()


def test_c25_dates_are_measured_from_the_server_date_not_our_clock() -> None:
    """Our clock 40 s ahead or behind changes nothing when Date is there."""
    headers = {"Date": C25_DATE, "Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}
    assert parse(headers, wall_now=C25_NOW + 40).retry_after_s == 120.0
    assert parse(headers, wall_now=C25_NOW - 40).retry_after_s == 120.0


def test_c25_without_a_date_header_our_clock_is_used() -> None:
    """No Date: the date is measured against the wall clock given."""
    info = parse(
        {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, wall_now=C25_NOW + 20
    )
    assert info.retry_after_s == 100.0


def test_c25_120_is_never_read_as_a_date() -> None:
    """Digits are seconds: never year 120 (which would be a past date, 0 s)."""
    assert parse_http_date("120") is None
    assert parse_retry_after("120", server_now=C25_NOW) == (120.0, None)


def test_c25_past_date_waits_zero_without_a_warning() -> None:
    """A date before the server's Date is 0 s; the caller's minimum applies."""
    info = parse({"Date": C25_DATE, "Retry-After": "Wed, 21 Oct 2026 07:25:00 GMT"})
    assert info.retry_after_s == 0.0
    assert info.warnings == ()


def test_c25_garbage_gives_no_wait_and_a_warning() -> None:
    """'soon' is neither seconds nor a date: None, and a warning naming it."""
    info = parse({"Date": C25_DATE, "Retry-After": "soon"})
    assert info.retry_after_s is None
    assert info.warnings == ("Retry-After: 'soon' neither seconds nor an HTTP date",)


@pytest.mark.parametrize(
    ("value", "seconds", "warning"),
    [
        ("-5", 0.0, "Retry-After: '-5' negative; read as 0s"),
        ("99999999999", MAX_WAIT_S, "Retry-After: '99999999999' clamped to 86400s"),
        ("Wed, 21 Oct 2126 07:28:00 GMT", MAX_WAIT_S, "clamped to 86400s"),
        ("1.5", 1.5, None),
        ("  30 ", 30.0, None),
    ],
)
def test_retry_after_is_clamped_and_reported(
    value: str, seconds: float, warning: str | None
) -> None:
    """Negative reads as 0, huge as a day; both with a warning."""
    wait, message = parse_retry_after(value, server_now=C25_NOW)
    assert wait == seconds
    if warning is None:
        assert message is None
    else:
        assert message is not None
        assert warning in message


def test_retry_after_date_in_new_york_is_the_same(new_york: None) -> None:
    """Date forms without a zone (asctime) are GMT whatever the host's zone."""
    for value in ("Wed Oct 21 07:28:00 2026", "Wed, 21 Oct 2026 07:28:00 GMT"):
        info = parse({"Date": C25_DATE, "Retry-After": value})
        assert info.retry_after_s == 120.0


# -- C27: X-RateLimit-Reset ---------------------------------------------------


def test_c27_epoch_reset_waits_1247s_not_decades() -> None:
    """GitHub's example: reset 1372700873 is 17:47:53Z, 1247 s after Date."""
    info = parse(
        {
            "Date": C27_DATE,
            "X-RateLimit-Limit": "60",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "1372700873",
        }
    )
    assert info.quotas == (Quota("x-ratelimit", 60, 0, 1247.0),)
    assert info.most_restrictive == info.quotas[0]


@pytest.mark.parametrize("reset_format", ["auto", "delta"])
def test_c27_delta_reset_waits_1247s(reset_format: str) -> None:
    """The same API sending seconds-until-reset: 1247 is 1247 s."""
    info = parse(
        {"Date": C27_DATE, "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1247"},
        reset_format=reset_format,
    )
    assert info.quotas[0].reset_s == 1247.0


def test_c27_epoch_milliseconds_are_detected() -> None:
    """Values of 10^12 and more are epoch milliseconds."""
    info = parse({"Date": C27_DATE, "X-RateLimit-Reset": "1372700873000"})
    assert info.quotas[0].reset_s == 1247.0


def test_c27_forced_epoch_reads_small_values_as_long_past() -> None:
    """reset_format = "epoch": 1247 is 1970, a past reset: the margin only."""
    info = parse({"Date": C27_DATE, "X-RateLimit-Reset": "1247"}, reset_format="epoch")
    assert info.quotas[0].reset_s == RESET_MARGIN_S


def test_c27_forced_delta_clamps_an_epoch_with_a_warning() -> None:
    """reset_format = "delta" on an epoch value: a day at most, reported."""
    info = parse(
        {"Date": C27_DATE, "X-RateLimit-Reset": "1372700873"}, reset_format="delta"
    )
    assert info.quotas[0].reset_s == MAX_WAIT_S
    assert info.warnings == ("X-RateLimit-Reset: '1372700873' clamped to 86400s",)


def test_c27_reset_equal_to_date_still_waits_the_margin() -> None:
    """Reset at the very second of Date: at least 1 s, not 0."""
    info = parse(
        {
            "Date": "Mon, 23 Oct 2023 21:48:42 GMT",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "1698097722",
        }
    )
    reset = info.quotas[0].reset_s
    assert reset is not None
    assert reset >= 1.0


@pytest.mark.parametrize("skew_s", [-40.0, 40.0])
def test_c27_local_clock_skew_does_not_move_the_wait(skew_s: float) -> None:
    """40 s behind or ahead of the server: the wait is still 1247 s."""
    info = parse(
        {"Date": C27_DATE, "X-RateLimit-Reset": "1372700873"},
        wall_now=C27_NOW + skew_s,
    )
    assert info.quotas[0].reset_s == 1247.0


def test_c27_past_reset_is_the_margin_never_negative() -> None:
    """Reset 30 s before Date: the margin, not -30 s and not the epoch."""
    info = parse({"Date": C27_DATE, "X-RateLimit-Reset": str(int(C27_NOW) - 30)})
    assert info.quotas[0].reset_s == RESET_MARGIN_S
    assert info.warnings == ()


def test_c27_new_york_gives_the_same_waits_as_utc(new_york: None) -> None:
    """TZ=America/New_York: every C27 wait as under UTC."""
    info = parse({"Date": C27_DATE, "X-RateLimit-Reset": "1372700873"})
    assert info.quotas[0].reset_s == 1247.0
    info = parse({"Date": C25_DATE, "Retry-After": "Wednesday, 21-Oct-26 07:28:00 GMT"})
    assert info.retry_after_s == 120.0


@pytest.mark.parametrize(
    ("headers", "warning"),
    [
        ({"X-RateLimit-Remaining": "-3"}, "X-RateLimit-Remaining: '-3' negative"),
        ({"X-RateLimit-Limit": "0"}, "X-RateLimit-Limit: '0' must be at least 1"),
        ({"X-RateLimit-Limit": "lots"}, "X-RateLimit-Limit: 'lots' not a number"),
        ({"X-RateLimit-Reset": "nan"}, "X-RateLimit-Reset: 'nan' not a number"),
        ({"X-RateLimit-Remaining": "1e400"}, "not a number"),
        ({"X-RateLimit-Limit": "9" * 20}, "absurdly large"),
        (
            {"Date": "yesterday", "X-RateLimit-Reset": "1372700873"},
            "Date: 'yesterday' not an HTTP date",
        ),
    ],
)
def test_absurd_x_ratelimit_values_are_dropped_with_a_warning(
    headers: dict[str, str], warning: str
) -> None:
    """Each bad value is named, with its text, in the warnings."""
    info = parse(headers)
    assert any(warning in w for w in info.warnings), info.warnings


def test_remaining_above_the_limit_is_read_as_the_limit() -> None:
    """Remaining 500 of a 100 limit cannot be: 100, with a warning."""
    info = parse({"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "500"})
    assert info.quotas[0].remaining == 100
    assert len(info.warnings) == 1


def test_reset_format_must_be_known() -> None:
    """An unknown reset_format is a ConfigError naming the value."""
    with pytest.raises(ConfigError, match=r"reset_format must be one of .*'soon'"):
        parse({}, reset_format="soon")


# -- IETF RateLimit fields ----------------------------------------------------


def test_ietf_named_policies_the_most_restrictive_wins() -> None:
    """draft-08+: two policies; the one with fewer left binds first."""
    info = parse(
        {
            "RateLimit-Policy": '"burst";q=100;w=60, "daily";q=1000;w=86400',
            "RateLimit": '"burst";r=50;t=30, "daily";r=5;t=3600',
        }
    )
    assert info.quotas == (
        Quota("burst", 100, 50, 30.0, 60.0),
        Quota("daily", 1000, 5, 3600.0, 86400.0),
    )
    assert info.most_restrictive == info.quotas[1]
    assert info.slowest_rate_per_s == pytest.approx(1000 / 86400)


def test_ietf_policy_without_state_still_gives_its_rate() -> None:
    """A declared policy the server reports nothing for tells its rate."""
    info = parse({"RateLimit-Policy": '"default";q=10;w=1'})
    assert info.quotas == (Quota("default", limit=10, window_s=1.0),)
    assert info.slowest_rate_per_s == 10.0


def test_ietf_draft_07_dictionary_form() -> None:
    """draft-07: RateLimit: limit=, remaining=, reset= with a policy window."""
    info = parse(
        {
            "RateLimit-Policy": "100;w=60",
            "RateLimit": "limit=100, remaining=0, reset=30",
        }
    )
    assert info.quotas == (Quota("ratelimit", 100, 0, 30.0, 60.0),)


def test_ietf_separate_fields_of_the_early_drafts() -> None:
    """Up to draft-06: RateLimit-Limit with policies, -Remaining, -Reset."""
    info = parse(
        {
            "RateLimit-Limit": "100, 100;w=60",
            "RateLimit-Remaining": "3",
            "RateLimit-Reset": "7",
        }
    )
    assert info.quotas == (Quota("ratelimit", 100, 3, 7.0, 60.0),)


def test_ietf_and_x_headers_together_are_both_kept() -> None:
    """Both families at once: both quotas, the tighter one binding."""
    info = parse(
        {
            "X-RateLimit-Remaining": "10",
            "X-RateLimit-Reset": "60",
            "RateLimit": "limit=100, remaining=2, reset=5",
        }
    )
    assert [q.name for q in info.quotas] == ["x-ratelimit", "ratelimit"]
    most = info.most_restrictive
    assert most is not None
    assert most.remaining == 2


def test_ietf_garbage_is_reported() -> None:
    """A RateLimit field that is neither form: ignored, with a warning."""
    info = parse({"RateLimit": "whatever"})
    assert info.quotas == ()
    assert info.warnings == ("RateLimit: 'whatever' not understood; ignored",)


def test_ietf_negative_remaining_and_reset_are_clamped() -> None:
    """r=-1 reads as 0, t=-5 as the margin, both reported."""
    info = parse({"RateLimit": '"p";r=-1;t=-5'})
    assert info.quotas == (Quota("p", None, 0, RESET_MARGIN_S, None),)
    assert len(info.warnings) == 2


# -- X-Poll-Interval ----------------------------------------------------------


def test_poll_interval_is_read_and_clamped() -> None:
    """GitHub's X-Poll-Interval: seconds; absurd values clamped, reported."""
    assert parse({"X-Poll-Interval": "60"}).poll_interval_s == 60.0
    info = parse({"X-Poll-Interval": "-60"})
    assert info.poll_interval_s == 0.0
    assert info.warnings


def test_headers_are_matched_without_regard_to_case() -> None:
    """Names in any case; pairs as well as mappings."""
    info = parse_rate_limit_headers(
        [("retry-AFTER", "7"), ("x-ratelimit-remaining", "1")], wall_now=0.0
    )
    assert info.retry_after_s == 7.0
    assert info.quotas[0].remaining == 1


# -- properties ---------------------------------------------------------------

_NAMES = st.sampled_from(
    [
        "Date",
        "Retry-After",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "RateLimit",
        "RateLimit-Policy",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
        "X-Poll-Interval",
    ]
)
_VALUES = st.one_of(
    st.text(max_size=60),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(
        [
            "Wed, 21 Oct 2026 07:28:00 GMT",
            "Wednesday, 21-Oct-26 07:28:00 GMT",
            "Wed Oct 21 07:28:00 2026",
            '"a";q=10;w=1, "b";q=0;w=-1',
            '"a";r=-1;t=99999999999',
            "limit=5, remaining=, reset=x",
            '"unterminated;r=1',
        ]
    ),
)


@given(
    headers=st.dictionaries(_NAMES, _VALUES, max_size=8),
    wall_now=st.floats(min_value=-1e12, max_value=1e12),
    reset_format=st.sampled_from(["auto", "epoch", "delta"]),
)
def test_any_header_text_parses_without_error_or_negative_waits(
    headers: dict[str, str], wall_now: float, reset_format: str
) -> None:
    """Whatever the server sends: no exception, every wait in [0, a day]."""
    info = parse_rate_limit_headers(
        headers,
        wall_now=wall_now,
        reset_format=reset_format,  # type: ignore[arg-type]
    )
    waits = [info.retry_after_s, info.poll_interval_s]
    waits += [q.reset_s for q in info.quotas] + [q.window_s for q in info.quotas]
    for wait in waits:
        assert wait is None or 0.0 <= wait <= MAX_WAIT_S
    for quota in info.quotas:
        assert quota.remaining is None or quota.remaining >= 0
        assert quota.limit is None or quota.limit >= 1
        if quota.reset_s is not None:
            assert quota.reset_s >= RESET_MARGIN_S


@given(st.from_regex(r"[0-9]{1,30}", fullmatch=True))
def test_retry_after_digits_are_never_a_date(digits: str) -> None:
    """Any run of digits is delay-seconds (clamped), never a date."""
    assert parse_http_date(digits) is None
    wait, _ = parse_retry_after(digits, server_now=C25_NOW)
    assert wait == min(float(digits), MAX_WAIT_S)


@given(st.text(max_size=80))
def test_any_retry_after_text_is_a_wait_or_none(text: str) -> None:
    """Arbitrary text: None with a warning, or a wait in [0, a day]."""
    wait, warning = parse_retry_after(text, server_now=C25_NOW)
    if wait is None:
        assert warning is not None
    else:
        assert 0.0 <= wait <= MAX_WAIT_S
