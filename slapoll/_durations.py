"""Reading and writing durations: ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``."""

from __future__ import annotations

import decimal
import itertools
import math
import re

from .errors import DurationError

__all__ = ["MAX_DURATION_S", "format_duration", "parse_duration"]

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# A plain decimal number, ASCII digits only: "1e3", "1_000", "nan" and
# other scripts' digits are what float() takes, not what people write for
# a duration (and \d would match any script's digits).
_NUMBER = r"(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
_SECONDS = re.compile(_NUMBER)
# One or more number+unit parts, largest unit first and each unit once, so
# "1h30m" reads as 5400 s and "30s30s" is a typo, not a minute.
_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
_WHOLE = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h|d))+")
# Ten years: longer is a typo, and would overflow the clock arithmetic.
MAX_DURATION_S = 3650 * 86400.0

Duration = str | int | float


def parse_duration(value: Duration, *, name: str = "duration") -> float:
    """Return *value* in seconds; strings take units ms, s, m, h and d.

    Numbers are seconds, and so is a string without a unit, if it is a plain
    decimal number (``"12"``, ``"1.5"``). The result is finite and not
    negative; whether 0 is allowed is the caller's rule. *name* is used in
    the error message.
    """
    if isinstance(value, bool):
        raise DurationError(f"{name} must be a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip(), name)
    else:
        raise DurationError(
            f"{name} must be a duration such as '30s' or a number of seconds, "
            f"got {value!r}"
        )

    if not math.isfinite(seconds) or seconds < 0:
        raise DurationError(
            f"{name} must be a finite, non-negative duration, got {value!r}"
        )
    if seconds > MAX_DURATION_S:
        raise DurationError(f"{name} must be at most 3650d (ten years), got {value!r}")
    return seconds


def _parse_text(text: str, name: str) -> float:
    if _WHOLE.fullmatch(text):
        parts = _PART.findall(text)
        sizes = [_UNIT_S[unit] for _, unit in parts]
        if any(a <= b for a, b in itertools.pairwise(sizes)):
            raise DurationError(
                f"{name} must give each unit once, largest first (as in "
                f"'1h30m'), got {text!r}"
            )
        return sum(float(n) * _UNIT_S[u] for n, u in parts)
    if text.startswith("-"):
        raise DurationError(f"{name} must not be negative, got {text!r}")
    if _SECONDS.fullmatch(text):
        return float(text)
    raise DurationError(
        f"{name} must be a duration such as '250ms', '30s', '5m' or '1h', or a "
        f"plain number of seconds, got {text!r}"
    )


def format_duration(seconds: float) -> str:
    """Render *seconds* so that ``parse_duration`` gives the same float back.

    Whole days, hours, minutes, seconds and milliseconds use their unit;
    anything else is written as a number of seconds, never in exponent
    notation (which ``parse_duration`` does not read).
    """
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s", "ms"):
        n = seconds / _UNIT_S[unit]
        if n >= 1 and n.is_integer() and int(n) * _UNIT_S[unit] == seconds:
            return f"{int(n)}{unit}"
    # repr gives the shortest digits that read back as the same float;
    # Decimal spells them out positionally ("1e-06" as "0.000001").
    return f"{decimal.Decimal(repr(seconds)):f}s"
