"""Schedule arithmetic: anchored due times and stable phases.

Pure functions of numbers. Due times are anchored: due time k of a target is
``origin + phase + k * interval`` on one clock, so a run that starts late or
lasts long never moves the ones after it. Catching up after a gap is one
division, never a loop over the missed due times.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

__all__ = ["catch_up", "first_due", "hash_fraction", "retimed_due", "spread_fractions"]

# 64 bits of the digest give phases far finer than any clock tick.
_HASH_BYTES = 8
_HASH_SPACE = float(1 << (8 * _HASH_BYTES))


def hash_fraction(text: str) -> float:
    """Map *text* to a fraction in ``[0, 1)``, the same in every process.

    Python's ``hash`` is salted per process, so a digest is used instead:
    phases must survive restarts and agree between processes.
    """
    digest = hashlib.blake2b(text.encode(), digest_size=_HASH_BYTES).digest()
    return int.from_bytes(digest, "big") / _HASH_SPACE


def spread_fractions(keys: Iterable[str], *, salt: str = "") -> dict[str, float]:
    """Spread *keys* evenly over ``[0, 1)`` in the order of their hashes.

    Used for targets registered together (for example all targets declared
    before the engine starts): spacing them ``1/n`` apart keeps every slice
    of the interval equally loaded, where independent hashes would pile
    several into one slice. The result depends only on the set of keys, so
    it is the same after a restart. The whole pattern is rotated by the hash
    of *salt* (the task name), so that different tasks do not all start at
    phase 0.
    """
    ordered = sorted(keys, key=lambda k: (hash_fraction(k), k))
    n = len(ordered)
    offset = hash_fraction(salt)
    return {key: (offset + i / n) % 1.0 for i, key in enumerate(ordered)}


def first_due(now: float, interval_s: float, fraction: float, origin: float) -> float:
    """Return the first due time at or after *now* for a phase *fraction*.

    Due times are ``origin + (k + fraction) * interval_s`` for whole ``k``;
    *origin* ties the grid to a fixed instant (the wall-clock epoch, mapped
    onto the engine's clock) so phases do not depend on when a process
    started.
    """
    k = math.ceil((now - origin) / interval_s - fraction)
    due = origin + (k + fraction) * interval_s
    # Float rounding can land a hair before now; the next slot is then meant.
    if due < now - interval_s * 1e-9:
        due += interval_s
    return due


def catch_up(due: float, now: float, interval_s: float) -> tuple[float, int]:
    """Return ``(latest due time <= now, how many earlier ones were passed)``.

    For a timer that was due at *due* and fires at *now*: the due times
    ``due, due + interval, ...`` that are all in the past collapse into the
    latest of them, and the others count as missed.
    """
    if now < due + interval_s:
        return due, 0
    passed = math.floor((now - due) / interval_s)
    return due + passed * interval_s, passed


def retimed_due(due: float, now: float, old_s: float, new_s: float) -> float:
    """Return a pending *due* time, laid with interval *old_s*, moved onto *new_s*.

    What is left of the wait scales with the interval:
    ``now + (due - now) * new_s / old_s``. Due times spread evenly over the
    old interval stay spread evenly over the new one, and the gap from the
    due time before (``due - old_s``) to the moved one lies between the two
    intervals: the change adds no runs beyond the new rate.
    """
    return now + (due - now) * (new_s / old_s)
