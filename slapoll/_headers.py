"""Reading what a server says about its rate limits, without trusting it.

One function, ``parse_rate_limit_headers``, turns a response's headers into
a ``RateLimitInfo``: how long the server asks us to wait (``Retry-After``),
what is left of each of its quotas (``X-RateLimit-*`` and the IETF
``RateLimit`` / ``RateLimit-Policy`` fields of
draft-ietf-httpapi-ratelimit-headers, old and new spellings), and the least
interval it wants between polls (``X-Poll-Interval``).

Every time in the result is relative: seconds from when the server produced
the response. Absolute times in headers (HTTP dates, epoch resets) are
measured against the server's own ``Date`` header when it has one, so a
host clock that is ahead, behind or in another time zone changes nothing.
Values that make no sense (garbage, negative, beyond ``max_wait_s``) are
clamped or dropped and described in ``RateLimitInfo.warnings``, so the
caller can log them and count them; this module never raises on header
text. It imports neither trio nor httpx.
"""

from __future__ import annotations

import calendar
import email.utils
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import attrs

from .errors import ConfigError

__all__ = [
    "MAX_WAIT_S",
    "RESET_FORMATS",
    "RESET_MARGIN_S",
    "Quota",
    "RateLimitInfo",
    "ResetFormat",
    "parse_http_date",
    "parse_rate_limit_headers",
    "parse_retry_after",
]

ResetFormat = Literal["auto", "epoch", "delta"]
RESET_FORMATS: tuple[ResetFormat, ...] = ("auto", "epoch", "delta")

# No server-given wait is believed beyond a day: a longer one is far more
# likely a bug (a delta read as an epoch, milliseconds read as seconds)
# than a real instruction, and a key paused for weeks looks like a hang.
MAX_WAIT_S = 86_400.0
# The least wait for a quota reset. ``Date`` has whole-second resolution,
# so a reset at (or just before) the ``Date`` second may still be ahead of
# the server's real clock; clients that retried at once were limited again.
RESET_MARGIN_S = 1.0
# X-RateLimit-Reset detection: numbers this large are epoch seconds
# (2001-09-09 onwards); no API counts a delta in decades.
EPOCH_S_MIN = 1e9
# ... and numbers this large are epoch milliseconds (1e12 s is year 33658).
EPOCH_MS_MIN = 1e12
# A quota larger than this is not a rate limit anyone can reach; it is
# treated as garbage rather than as a number to plan with.
MAX_QUOTA = 1e12
# Header values longer than this are not looked at: no rate-limit field is
# that long, and parsing time must not grow with what a server sends.
MAX_VALUE_CHARS = 1024

# RFC 9110 delay-seconds is 1*DIGIT; decimals and a sign are accepted here
# so that "1.5" and "-3" are read (and clamped) instead of tried as dates.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
# Digits alone never go to the date parser: "120" is seconds, not year 120.
_HAS_LETTER = re.compile(r"[A-Za-z]")

# Quota names for the header families that do not name their policies.
X_RATELIMIT = "x-ratelimit"
IETF_UNNAMED = "ratelimit"


@attrs.frozen
class Quota:
    """One server quota: ``remaining`` of ``limit`` requests until a reset.

    ``reset_s`` is seconds from the response to the reset (at least
    ``RESET_MARGIN_S``); ``window_s`` is the length of the quota's window
    when the server says it (IETF ``w``). Any field the server left out is
    ``None``.
    """

    name: str
    limit: int | None = None
    remaining: int | None = None
    reset_s: float | None = None
    window_s: float | None = None

    @property
    def rate_per_s(self) -> float | None:
        """The sustained rate the quota allows, when its window is known."""
        if self.limit is None or not self.window_s:
            return None
        return self.limit / self.window_s


@attrs.frozen
class RateLimitInfo:
    """What one response says about the rate limit; times in seconds.

    ``retry_after_s`` is how long to wait before the next request, already
    measured against the server's clock and clamped to ``[0, max_wait_s]``;
    ``None`` when absent or unreadable. ``quotas`` holds every quota the
    server reported; ``most_restrictive`` picks the one that binds first.
    ``poll_interval_s`` is the least interval between polls the server asks
    for. ``warnings`` describes each value that was clamped or dropped
    (header name and the value, quoted), for a WARNING and a counter.
    """

    retry_after_s: float | None = None
    quotas: tuple[Quota, ...] = ()
    poll_interval_s: float | None = None
    warnings: tuple[str, ...] = ()

    @property
    def most_restrictive(self) -> Quota | None:
        """The quota with the fewest requests left (the later reset on ties)."""
        known = [q for q in self.quotas if q.remaining is not None]
        if not known:
            return None
        return min(known, key=lambda q: (q.remaining, -(q.reset_s or 0.0)))

    @property
    def slowest_rate_per_s(self) -> float | None:
        """The lowest sustained rate among quotas with a known window."""
        rates = [r for q in self.quotas if (r := q.rate_per_s) is not None]
        return min(rates) if rates else None


def parse_rate_limit_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    *,
    wall_now: float,
    reset_format: ResetFormat = "auto",
    max_wait_s: float = MAX_WAIT_S,
) -> RateLimitInfo:
    """Read every rate-limit header of a response; never raises on their text.

    *headers* is any mapping or sequence of pairs; names are matched without
    regard to case (the first of repeated names wins, unless the mapping
    already joined them). *wall_now* is the local wall clock (epoch
    seconds), used only when the response has no readable ``Date``.
    *reset_format* says how ``X-RateLimit-Reset`` is to be read: ``"auto"``
    detects epoch seconds, epoch milliseconds or a delta by size.
    """
    if reset_format not in RESET_FORMATS:
        raise ConfigError(
            f"reset_format must be one of {', '.join(RESET_FORMATS)}, "
            f"got {reset_format!r}"
        )
    fields = _lower_fields(headers)
    warnings: list[str] = []
    # Only a date or an epoch needs the server's clock: Date is read then.
    server_now = _ServerNow(fields, wall_now, warnings)
    reader = _Reader(warnings, max_wait_s)

    retry_after = None
    if "retry-after" in fields:
        retry_after, warning = _retry_after(
            fields["retry-after"], server_now, max_wait_s
        )
        if warning:
            warnings.append(warning)

    quotas = [
        *_x_ratelimit(fields, reader, server_now, reset_format),
        *_ietf(fields, reader),
    ]
    poll = None
    if "x-poll-interval" in fields:
        poll = reader.seconds("X-Poll-Interval", fields["x-poll-interval"])

    return RateLimitInfo(
        retry_after_s=retry_after,
        quotas=tuple(quotas),
        poll_interval_s=poll,
        warnings=tuple(warnings),
    )


def parse_retry_after(
    value: str, *, server_now: float, max_wait_s: float = MAX_WAIT_S
) -> tuple[float | None, str | None]:
    """Read ``Retry-After`` as ``(wait in seconds, warning or None)``.

    Digits are delay-seconds, never a date. A date (IMF-fixdate, RFC 850 or
    asctime) is measured against *server_now*, the server's ``Date``; a
    date already past gives 0 without a warning (the caller's minimum
    backoff applies). Garbage gives ``None`` and a warning; negative and
    huge values are clamped into ``[0, max_wait_s]`` with a warning.
    """
    return _retry_after(value, lambda: server_now, max_wait_s)


def _retry_after(
    value: str, server_now: Callable[[], float], max_wait_s: float
) -> tuple[float | None, str | None]:
    text = value.strip()
    if len(text) > MAX_VALUE_CHARS:
        return None, _warn("Retry-After", value, "too long; ignored")
    if _NUMBER.fullmatch(text):
        return _clamp("Retry-After", value, float(text), max_wait_s)
    when = parse_http_date(text)
    if when is None:
        return None, _warn("Retry-After", value, "neither seconds nor an HTTP date")
    wait = when - server_now()
    if wait <= 0:
        return 0.0, None
    return _clamp("Retry-After", value, wait, max_wait_s)


def parse_http_date(value: str) -> float | None:
    """Epoch seconds of an HTTP date in any of its three forms, else ``None``.

    Dates without a zone (asctime) are GMT, as HTTP requires; the host's
    time zone is never consulted. Text without a letter is never a date.
    """
    if not _HAS_LETTER.search(value) or len(value) > MAX_VALUE_CHARS:
        return None
    try:
        parts = email.utils.parsedate_tz(value)
        if parts is None:
            return None
        # timegm reads the fields as UTC; mktime or a naive datetime's
        # timestamp() would read them in the host's zone.
        seconds = calendar.timegm(parts[:6]) - (parts[9] or 0)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    return float(seconds)


# -- the pieces ---------------------------------------------------------------


def _lower_fields(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    fields: dict[str, str] = {}
    for name, value in items:
        fields.setdefault(name.lower(), value)
    return fields


class _ServerNow:
    """The server's clock (its ``Date``, else ours), read on first use."""

    def __init__(
        self, fields: Mapping[str, str], wall_now: float, warnings: list[str]
    ) -> None:
        self._fields = fields
        self._wall_now = wall_now
        self._warnings = warnings
        self._now: float | None = None

    def __call__(self) -> float:
        if self._now is None:
            self._now = self._read()
        return self._now

    def _read(self) -> float:
        value = self._fields.get("date")
        if value is None:
            return self._wall_now
        date = parse_http_date(value)
        if date is None:
            self._warnings.append(
                _warn("Date", value, "not an HTTP date; local clock used")
            )
            return self._wall_now
        return date


def _warn(name: str, value: str, what: str) -> str:
    shown = value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "..."
    return f"{name}: {shown!r} {what}"


def _clamp(
    name: str, value: str, seconds: float, max_wait_s: float
) -> tuple[float, str | None]:
    if not math.isfinite(seconds) or seconds > max_wait_s:
        return max_wait_s, _warn(name, value, f"clamped to {max_wait_s:g}s")
    if seconds < 0:
        return 0.0, _warn(name, value, "negative; read as 0s")
    return seconds, None


class _Reader:
    """Reads numeric header values, recording a warning for each bad one.

    Every method takes ``None`` (the field is absent) and returns ``None``.
    """

    def __init__(self, warnings: list[str], max_wait_s: float) -> None:
        self.warnings = warnings
        self.max_wait_s = max_wait_s

    def number(self, name: str, value: str | None) -> float | None:
        if value is None:
            return None
        text = value.strip()
        if len(text) <= MAX_VALUE_CHARS and _NUMBER.fullmatch(text):
            number = float(text)
            if math.isfinite(number):
                return number
        self.warnings.append(_warn(name, value, "not a number; ignored"))
        return None

    def count(
        self, name: str, value: str | None, *, positive: bool = False
    ) -> int | None:
        """A whole count, rounded down; a negative one reads as 0.

        With *positive* (a limit) anything under 1 is dropped instead: a
        limit of 0 would hold the key for ever.
        """
        number = self.number(name, value)
        if number is None or value is None:
            return None
        if number > MAX_QUOTA:
            self.warnings.append(_warn(name, value, "absurdly large; ignored"))
            return None
        if number < 1 and positive:
            self.warnings.append(_warn(name, value, "must be at least 1; ignored"))
            return None
        if number < 0:
            self.warnings.append(_warn(name, value, "negative; read as 0"))
            return 0
        # A fractional count is rounded down: fewer requests is the safe side.
        return math.floor(number)

    def seconds(self, name: str, value: str | None) -> float | None:
        number = self.number(name, value)
        if number is None or value is None:
            return None
        seconds, warning = _clamp(name, value, number, self.max_wait_s)
        if warning:
            self.warnings.append(warning)
        return seconds

    def reset(self, name: str, value: str | None) -> float | None:
        """A delta reset, never shorter than the margin."""
        seconds = self.seconds(name, value)
        return None if seconds is None else max(seconds, RESET_MARGIN_S)


def _x_ratelimit(
    fields: Mapping[str, str],
    reader: _Reader,
    server_now: Callable[[], float],
    reset_format: ResetFormat,
) -> list[Quota]:
    names = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
    if not any(name in fields for name in names):
        return []
    limit = reader.count(
        "X-RateLimit-Limit", fields.get("x-ratelimit-limit"), positive=True
    )
    remaining = reader.count(
        "X-RateLimit-Remaining", fields.get("x-ratelimit-remaining")
    )
    reset = None
    if "x-ratelimit-reset" in fields:
        reset = _x_reset(fields["x-ratelimit-reset"], reader, server_now, reset_format)
    if limit is not None and remaining is not None and remaining > limit:
        reader.warnings.append(
            _warn(
                "X-RateLimit-Remaining",
                fields["x-ratelimit-remaining"],
                f"exceeds the limit {limit}; read as {limit}",
            )
        )
        remaining = limit
    return [Quota(X_RATELIMIT, limit=limit, remaining=remaining, reset_s=reset)]


def _x_reset(
    value: str,
    reader: _Reader,
    server_now: Callable[[], float],
    reset_format: ResetFormat,
) -> float | None:
    name = "X-RateLimit-Reset"
    number = reader.number(name, value)
    if number is None:
        return None
    as_epoch = reset_format == "epoch" or (
        reset_format == "auto" and number >= EPOCH_S_MIN
    )
    if not as_epoch:
        return reader.reset(name, value)
    epoch_s = number / 1000.0 if number >= EPOCH_MS_MIN else number
    # Against the server's Date, not our clock: the reset is its promise.
    seconds, warning = _clamp(
        name, value, max(epoch_s - server_now(), 0.0), reader.max_wait_s
    )
    if warning:
        reader.warnings.append(warning)
    return max(seconds, RESET_MARGIN_S)


# -- IETF RateLimit fields ----------------------------------------------------

# A parsed structured-field member: its bare item and its parameters.
_Member = tuple[str, dict[str, str]]
# Declared policies by name: (quota, window seconds). Unnamed policies of
# the older drafts ("100;w=60") are filed under "#<quota>".
_Policies = dict[str, tuple[int | None, float | None]]


def _ietf(fields: Mapping[str, str], reader: _Reader) -> list[Quota]:
    policies = _policies(fields, reader)
    quotas: list[Quota] = []
    if "ratelimit" in fields:
        quotas.extend(_ratelimit_field(fields["ratelimit"], policies, reader))
    elif any(f"ratelimit-{n}" in fields for n in ("limit", "remaining", "reset")):
        quotas.append(_separate_fields(fields, policies, reader))

    # A named policy the server reported no state for still tells the
    # rate it allows.
    reported = {q.name for q in quotas}
    for name, (limit, window) in policies.items():
        if name not in reported and not name.startswith("#"):
            quotas.append(Quota(name, limit=limit, window_s=window))
    return quotas


def _policies(fields: Mapping[str, str], reader: _Reader) -> _Policies:
    policies: _Policies = {}
    value = fields.get("ratelimit-policy")
    if value is None:
        return policies
    for item, params in _members(value):
        if _is_string(item):
            name = item[1:-1]
            # "q" since draft-08; "l" was briefly the quota's name before.
            quota = params.get("q", params.get("l"))
            limit = reader.count("RateLimit-Policy", quota, positive=True)
        else:
            limit = reader.count("RateLimit-Policy", item, positive=True)
            name = f"#{limit}"
        window = reader.seconds("RateLimit-Policy", params.get("w"))
        policies[name] = (limit, window or None)
    return policies


def _ratelimit_field(value: str, policies: _Policies, reader: _Reader) -> list[Quota]:
    members = _members(value)
    if members and all(_is_string(item) for item, _ in members):
        # draft-08 onwards: one '"name";r=50;t=30' per policy.
        quotas = []
        for item, params in members:
            name = item[1:-1]
            limit, window = policies.get(name, (None, None))
            remaining = reader.count("RateLimit", params.get("r"))
            reset = reader.reset("RateLimit", params.get("t"))
            quotas.append(Quota(name, limit, remaining, reset, window))
        return quotas

    # draft-07: a dictionary, "limit=100, remaining=50, reset=30".
    entries = {}
    for item, _params in members:
        key, sep, number = item.partition("=")
        if sep:
            entries[key.strip().lower()] = number.strip()
    if not entries:
        reader.warnings.append(_warn("RateLimit", value, "not understood; ignored"))
        return []
    return [_unnamed_quota("RateLimit", entries, policies, reader)]


def _separate_fields(
    fields: Mapping[str, str], policies: _Policies, reader: _Reader
) -> Quota:
    # Up to draft-06: RateLimit-Limit (its first member the quota in force,
    # then policies such as "100;w=60"), RateLimit-Remaining, -Reset.
    entries: dict[str, str] = {}
    windows = dict(policies)
    members = _members(fields.get("ratelimit-limit", ""))
    if members:
        entries["limit"] = members[0][0]
    for item, params in members:
        window = reader.seconds("RateLimit-Limit", params.get("w"))
        if window:
            windows.setdefault(f"#{item}", (None, window))
    for name in ("remaining", "reset"):
        if f"ratelimit-{name}" in fields:
            entries[name] = fields[f"ratelimit-{name}"]
    return _unnamed_quota("RateLimit-Limit", entries, windows, reader)


def _unnamed_quota(
    field: str, entries: Mapping[str, str], policies: _Policies, reader: _Reader
) -> Quota:
    limit = reader.count(field, entries.get("limit"), positive=True)
    remaining = reader.count(field, entries.get("remaining"))
    reset = reader.reset(field, entries.get("reset"))
    # The window is that of the policy whose quota is this limit.
    window = None
    if limit is not None:
        for name, (quota, policy_window) in policies.items():
            if name == f"#{limit}" or quota == limit:
                window = policy_window
                break
    return Quota(IETF_UNNAMED, limit, remaining, reset, window)


def _is_string(item: str) -> bool:
    return len(item) >= 2 and item[0] == '"' and item[-1] == '"'


def _members(value: str) -> list[_Member]:
    """Split a structured-field list into members, tolerating sloppiness."""
    if len(value) > MAX_VALUE_CHARS:
        return []
    members: list[_Member] = []
    for member in _split_outside_quotes(value, ","):
        item, *parts = _split_outside_quotes(member, ";")
        item = item.strip()
        if not item:
            continue
        params = {}
        for part in parts:
            key, _, number = part.partition("=")
            params[key.strip().lower()] = number.strip()
        members.append((item, params))
    return members


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts
