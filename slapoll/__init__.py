"""slapoll: an SLA-aware adaptive polling engine on trio.

Declare recurring work with a freshness promise and let the engine decide
when each target runs and how many run at once::

    engine = slapoll.Engine()

    @engine.task(sla="30s", every="10s")
    async def feed(ctx, token):
        ...

    feed.add_target("user:123", token="abc")
    slapoll.run(engine)
"""

from ._durations import format_duration, parse_duration
from ._engine import Engine
from ._policy import Outcome, TaskPolicy
from ._runner import run, run_until_signalled
from ._stats import EngineStatistics, TargetStatistics, TaskStatistics
from ._store import MemoryStore, Store, TargetRecord
from ._task import RunContext, Task
from .errors import (
    ConfigError,
    DurationError,
    SlapollError,
    UnknownTargetError,
    UsageError,
)

__all__ = [
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
