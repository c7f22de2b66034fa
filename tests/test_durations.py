"""Reading and writing durations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slapoll import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("2d", 172800.0),
        ("12", 12.0),
        (7, 7.0),
        (0.5, 0.5),
        (0, 0.0),
    ],
)
def test_parse_duration_reads_units_and_numbers(
    text: str | float, seconds: float
) -> None:
    """Units ms, s, m, h, d and plain numbers of seconds are accepted."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", "must be a duration such as '250ms'"),
        ("5 minutes", "got '5 minutes'"),
        ("-3s", "must not be negative, got .-3s."),
        (-1, "finite, non-negative duration, got -1"),
        (float("inf"), "finite"),
        (True, "got True"),
        ([1], r"got \[1\]"),
        ("30s30s", r"each unit once, largest first .* got '30s30s'"),
        ("30m1h", r"each unit once, largest first .* got '30m1h'"),
        (1e308, r"at most 3650d \(ten years\), got 1e\+308"),
        ("3651d", r"at most 3650d"),
    ],
)
def test_parse_duration_rejects_garbage_with_the_value(
    value: object, message: str
) -> None:
    """Bad durations name the value and what is allowed."""
    with pytest.raises(DurationError, match=message):
        parse_duration(value, name="every")  # type: ignore[arg-type]


@given(
    st.floats(min_value=0, max_value=3650 * 86400, allow_nan=False)
    | st.integers(min_value=0, max_value=10**6).map(lambda n: n * 0.001)
    | st.integers(min_value=0, max_value=10**5).map(float)
)
def test_format_then_parse_gives_the_same_seconds(seconds: float) -> None:
    """format_duration round-trips through parse_duration exactly."""
    assert parse_duration(format_duration(seconds)) == seconds


def test_format_duration_uses_the_largest_exact_unit() -> None:
    """Whole units read as people write them."""
    assert [format_duration(s) for s in (0.25, 30, 300, 3600, 5400, 1.5)] == [
        "250ms",
        "30s",
        "5m",
        "1h",
        "90m",
        "1500ms",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "1e3",
        "1E3",
        "1_000",
        "nan",
        "inf",
        "0x10",
        "+5",
        "1.",
        # Arabic-Indic digits: float() reads them, people would not.
        "\u0663",
        "\u0661s",
        "1\u0660m",
    ],
)
def test_a_number_without_a_unit_is_a_plain_decimal(text: str) -> None:
    """What float() reads beyond digits and a point is no duration anyone
    writes: exponents, underscores, nan, and other scripts' digits."""
    with pytest.raises(
        DurationError,
        match=r"^every must be a duration such as '250ms', '30s', '5m' or '1h', "
        r"or a plain number of seconds, got ",
    ):
        parse_duration(text, name="every")


def test_seconds_too_small_for_a_unit_are_written_without_an_exponent() -> None:
    """parse_duration reads no exponents, so format_duration writes none."""
    assert format_duration(1e-06) == "0.000001s"
    assert parse_duration(format_duration(1e-06)) == 1e-06
