"""Value types shared by every module: a task's policy and run outcomes,
and how the limit key templates a policy lists are read.

They depend on nothing else in slapoll, so the controller, the stores and
the config can all use them.
"""

from __future__ import annotations

import enum
import string
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from ._durations import Duration, parse_duration
from .errors import ConfigError

__all__ = [
    "OVERLAP_POLICIES",
    "Outcome",
    "Overlap",
    "TaskPolicy",
    "template_arguments",
    "template_fields",
]

Overlap = Literal["skip", "queue_one", "allow"]
OVERLAP_POLICIES: tuple[Overlap, ...] = ("skip", "queue_one", "allow")

# Below these the engine would spend its time scheduling rather than
# polling: no API is polled for freshness at sub-millisecond intervals.
MIN_SLA_S = 0.01
MIN_EVERY_S = 0.001
# Retries wait 1 s, 2 s, 4 s, ... unless the task says otherwise.
DEFAULT_RETRY_BACKOFF_S = 1.0


class Outcome(enum.Enum):
    """How one run ended."""

    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


def template_fields(template: str) -> list[str]:
    """The target arguments limit key *template* names, in order.

    A name without fields (``"github"``) names none. Raises ``ConfigError``
    for a template that could never be filled in: unbalanced braces, or a
    field that is more than an argument's name (``{a.b}``, ``{0}``,
    ``{a!r}``).
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        raise ConfigError(
            f"limit key template {template!r} is not a valid template; write "
            "arguments as {name}, literal braces as {{ and }}"
        ) from None
    names = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ConfigError(
                f"limit key template {template!r} may only name target "
                f"arguments, as {{account}}; got {{{name}}}"
            )
        names.append(name)
    return names


def template_arguments(
    template: str, args: Mapping[str, object], *, task: str, target: str
) -> list[str]:
    """The arguments *template* names, once *args* is known to hold them all.

    Raises ``ConfigError`` naming the template, the target and the argument
    it lacks, or saying what is wrong with the template itself.
    """
    names = template_fields(template)
    missing = [name for name in names if name not in args]
    if missing:
        raise ConfigError(
            f"limit key template {template!r} of task {task!r} needs the "
            f"argument {missing[0]!r}, which target {target!r} does not have; "
            f"its arguments are {sorted(args)!r}"
        )
    return names


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{name} must be greater than 0, got {value!r}")


@attrs.frozen
class TaskPolicy:
    """What a task promises and how its runs behave; all times in seconds.

    ``every_s`` is the preferred interval; ``None`` lets the engine run as
    rarely as the SLA safely allows. ``timeout_s`` of ``None`` means the SLA:
    a run longer than that cannot keep the promise anyway. Higher
    ``priority`` wins when work competes. ``overlap`` says what happens when
    a due time comes while a run of the same target is still going:
    ``"skip"`` drops that due time, ``"queue_one"`` starts one run as soon as
    the current one ends, ``"allow"`` runs up to ``max_concurrent`` at once.
    """

    sla_s: float
    every_s: float | None = None
    priority: int = 0
    limits: tuple[str, ...] = ()
    timeout_s: float | None = None
    retries: int = 0
    retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S
    overlap: Overlap = "skip"
    max_concurrent: int = 1
    phase_s: float | None = None

    def __attrs_post_init__(self) -> None:
        _positive("sla", self.sla_s)
        _positive("every", self.every_s)
        if self.sla_s < MIN_SLA_S:
            raise ConfigError(
                f"sla must be at least {MIN_SLA_S * 1000:g}ms, got {self.sla_s!r}s"
            )
        if self.every_s is not None and self.every_s < MIN_EVERY_S:
            raise ConfigError(
                f"every must be at least {MIN_EVERY_S * 1000:g}ms, "
                f"got {self.every_s!r}s"
            )
        _positive("timeout", self.timeout_s)
        _positive("retry_backoff", self.retry_backoff_s)
        if self.phase_s is not None and not (
            0 <= self.phase_s < (self.every_s or self.sla_s)
        ):
            raise ConfigError(
                f"phase must be at least 0 and less than the interval, "
                f"got {self.phase_s!r}"
            )
        if self.every_s is not None and self.every_s > self.sla_s:
            raise ConfigError(
                f"every ({self.every_s!r}s) must not exceed sla "
                f"({self.sla_s!r}s): a target polled less often than its SLA "
                "cannot stay fresh"
            )
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ConfigError(f"priority must be an integer, got {self.priority!r}")
        if (
            isinstance(self.retries, bool)
            or not isinstance(self.retries, int)
            or (self.retries < 0)
        ):
            raise ConfigError(
                f"retries must be a whole number >= 0, got {self.retries!r}"
            )
        if self.overlap not in OVERLAP_POLICIES:
            raise ConfigError(
                f"overlap must be one of {', '.join(OVERLAP_POLICIES)}, "
                f"got {self.overlap!r}"
            )
        if (
            isinstance(self.max_concurrent, bool)
            or not isinstance(self.max_concurrent, int)
            or self.max_concurrent < 1
        ):
            raise ConfigError(
                f"max_concurrent must be a whole number >= 1, "
                f"got {self.max_concurrent!r}"
            )
        if self.max_concurrent > 1 and self.overlap != "allow":
            raise ConfigError(
                f"max_concurrent = {self.max_concurrent!r} needs overlap = "
                f"'allow'; with {self.overlap!r} a target runs once at a time"
            )
        for key in self.limits:
            if not isinstance(key, str) or not key:
                raise ConfigError(f"limits must be non-empty strings, got {key!r}")
            # A malformed template would fail every run of the task; the
            # option is named first so that a config can say which key.
            try:
                template_fields(key)
            except ConfigError as exc:
                raise ConfigError(f"limits: {exc}") from None

    @property
    def effective_timeout_s(self) -> float:
        """The run timeout in force: the declared one, or the SLA."""
        return self.sla_s if self.timeout_s is None else self.timeout_s

    @classmethod
    def from_options(
        cls,
        *,
        sla: Duration,
        every: Duration | None = None,
        priority: int = 0,
        limits: Iterable[str] = (),
        timeout: Duration | None = None,
        retries: int = 0,
        retry_backoff: Duration = DEFAULT_RETRY_BACKOFF_S,
        overlap: str = "skip",
        max_concurrent: int = 1,
        phase: Duration | None = None,
    ) -> TaskPolicy:
        """Build a policy from the decorator's (and config's) spelling."""
        if isinstance(limits, str):
            raise ConfigError(f"limits must be a list of keys, got {limits!r}")
        return cls(
            sla_s=parse_duration(sla, name="sla"),
            every_s=None if every is None else parse_duration(every, name="every"),
            priority=priority,
            limits=tuple(limits),
            timeout_s=None
            if timeout is None
            else parse_duration(timeout, name="timeout"),
            retries=retries,
            retry_backoff_s=parse_duration(retry_backoff, name="retry_backoff"),
            overlap=overlap,  # type: ignore[arg-type]  # validated above
            max_concurrent=max_concurrent,
            phase_s=None if phase is None else parse_duration(phase, name="phase"),
        )

    def with_options(self, **options: Any) -> TaskPolicy:
        """Return a copy with some options replaced, in decorator spelling."""
        current: dict[str, Any] = {
            "sla": self.sla_s,
            "every": self.every_s,
            "priority": self.priority,
            "limits": self.limits,
            "timeout": self.timeout_s,
            "retries": self.retries,
            "retry_backoff": self.retry_backoff_s,
            "overlap": self.overlap,
            "max_concurrent": self.max_concurrent,
            "phase": self.phase_s,
        }
        unknown = sorted(set(options) - set(current))
        if unknown:
            raise ConfigError(
                f"unknown task option {unknown[0]!r}; allowed: "
                f"{', '.join(sorted(current))}"
            )
        current.update(options)
        return TaskPolicy.from_options(**current)
