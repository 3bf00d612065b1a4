"""The one clock: what time it is, in UTC.

Adapters that stamp or compare times take a ``Clock`` (the system's by default);
``sync.services.Services`` wires one into all of them, so a process reads time from one place.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

#: A clock: called, tells the time now, timezone-aware in UTC.
Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The machine's time, in UTC."""
    return datetime.now(timezone.utc)
