"""The public API is one door: ``slapoll`` and its ``__all__``."""

from __future__ import annotations

import slapoll


def test_public_names_are_pinned() -> None:
    """Adding or removing a public name is a deliberate change."""
    assert sorted(slapoll.__all__) == [
        "ConfigError",
        "DurationError",
        "Engine",
        "EngineStatistics",
        "MemoryStore",
        "Outcome",
        "RunContext",
        "SlapollError",
        "Store",
        "TargetRecord",
        "TargetStatistics",
        "Task",
        "TaskPolicy",
        "TaskStatistics",
        "UnknownTargetError",
        "UsageError",
        "format_duration",
        "parse_duration",
        "run",
        "run_until_signalled",
    ]
    for name in slapoll.__all__:
        assert getattr(slapoll, name) is not None


def test_config_errors_are_value_errors_and_misuse_is_a_runtime_error() -> None:
    """The exception tree lets callers catch by the builtin kind too."""
    assert issubclass(slapoll.ConfigError, ValueError)
    assert issubclass(slapoll.DurationError, slapoll.ConfigError)
    assert issubclass(slapoll.UsageError, RuntimeError)
    assert issubclass(slapoll.UnknownTargetError, KeyError)
