"""The exceptions slapoll raises, in one tree.

    SlapollError
    ├── ConfigError (also ValueError)      a declaration or config value is wrong
    │   └── DurationError                  a duration string cannot be read
    ├── UsageError (also RuntimeError)     the API was used in the wrong order
    ├── UnknownTargetError (also KeyError) a target key that does not exist
    ├── RunDeadlineError                   a run's request outlived its deadline
    │   └── DeadlineError (httpx.TimeoutException too, in slapoll._http)
    └── CircuitOpenError (httpx.TransportError, in slapoll._http)

Run failures are never raised out of the engine: they are recorded as the
run's outcome.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DurationError",
    "RunDeadlineError",
    "SlapollError",
    "UnknownTargetError",
    "UsageError",
]


class SlapollError(Exception):
    """Base class of every error slapoll raises on purpose."""


class ConfigError(SlapollError, ValueError):
    """A declaration or a config value is not allowed.

    The message names the value, shows it with ``repr`` and says what is
    allowed.
    """


class DurationError(ConfigError):
    """A duration such as ``"30s"`` could not be read."""


class UsageError(SlapollError, RuntimeError):
    """The API was called in a state where that call makes no sense."""


class UnknownTargetError(SlapollError, KeyError):
    """A target key was named that the task does not have."""

    def __str__(self) -> str:
        # KeyError.__str__ would show the repr of the whole message.
        return str(self.args[0]) if self.args else ""


class RunDeadlineError(SlapollError):
    """Work inside a run (a request, a wait for budget) passed the run's
    deadline; the run counts as a timeout."""
