"""Where targets live: one narrow interface, and the in-memory store.

The engine holds its working state in memory and writes through a store so
that targets added at run time can outlive the process. A store knows the
value types below and nothing of the engine. Durable stores (SQLite, Redis)
implement the same four methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import attrs

__all__ = ["MemoryStore", "Store", "TargetRecord"]


@attrs.frozen
class TargetRecord:
    """A target as stored: its identity, arguments, pause state and phase.

    ``args`` may hold credentials, so it is left out of ``repr``.
    ``phase`` is the target's position within its interval as a fraction in
    ``[0, 1)``; it is kept so that a restart does not move the schedule.
    """

    task: str
    key: str
    args: Mapping[str, object] = attrs.field(factory=dict, repr=False)
    paused: bool = False
    phase: float | None = None


class Store(Protocol):
    """Persistence for targets; every method is safe to call concurrently."""

    async def load_targets(self) -> list[TargetRecord]:
        """All stored targets, in the order they were first stored."""
        ...

    async def put_target(self, record: TargetRecord) -> None:
        """Insert or replace the target with the record's task and key."""
        ...

    async def remove_target(self, task: str, key: str) -> None:
        """Forget a target; removing one that is not there is not an error."""
        ...

    async def aclose(self) -> None:
        """Release what the store holds open."""
        ...


class MemoryStore:
    """A store that lives as long as the process: for tests and one-offs."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], TargetRecord] = {}

    async def load_targets(self) -> list[TargetRecord]:
        return list(self._records.values())

    async def put_target(self, record: TargetRecord) -> None:
        self._records[record.task, record.key] = record

    async def remove_target(self, task: str, key: str) -> None:
        self._records.pop((task, key), None)

    async def aclose(self) -> None:
        return None
